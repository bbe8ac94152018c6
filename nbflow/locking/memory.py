"""``from nbflow.locking.memory import MemoryLockManager`` — accepted for Prefect code (see :mod:`nbflow.locking`)."""

from __future__ import annotations

__all__ = ["MemoryLockManager"]


class MemoryLockManager:
    """Prefect's in-process lock manager; nbflow's key locks already cover threads (see :mod:`nbflow.locking`)."""

    def __repr__(self) -> str:
        return "MemoryLockManager()"
