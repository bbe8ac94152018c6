"""Lock managers under Prefect's module names (``nbflow.locking.memory``, ``nbflow.locking.filesystem``), for
``policy.configure(lock_manager=...)``. nbflow needs none: a ``SERIALIZABLE`` policy locks each key with a
file under ``<NBFLOW_HOME>/locks`` (and a lock per key within the process), which serves threads and
processes alike. These classes are accepted so that Prefect code runs unchanged; they do nothing."""

from __future__ import annotations

from nbflow.locking.filesystem import FileSystemLockManager
from nbflow.locking.memory import MemoryLockManager

__all__ = ["FileSystemLockManager", "MemoryLockManager"]
