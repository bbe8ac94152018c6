"""``from nbflow.locking.filesystem import FileSystemLockManager`` — accepted for Prefect code (see
:mod:`nbflow.locking`)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["FileSystemLockManager"]


class FileSystemLockManager:
    """Prefect's file lock manager; nbflow locks keys with files under ``<NBFLOW_HOME>/locks`` whatever
    ``lock_files_directory`` says (see :mod:`nbflow.locking`)."""

    def __init__(self, lock_files_directory: str | os.PathLike[str] | None = None, **options: Any) -> None:
        self.lock_files_directory = lock_files_directory

    def __repr__(self) -> str:
        return f"FileSystemLockManager(lock_files_directory={self.lock_files_directory!r})"
