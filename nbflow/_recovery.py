"""What nbflow does when one of its SQLite files cannot be used as it is: damaged, or on a disk it cannot write.

The result store (``cache.db``) and the run history (``runs.sqlite``) are conveniences, so neither may
stop a notebook:

* a **damaged** database (not a database, malformed pages) is moved aside — kept for inspection, the
  warning says where — and a fresh one takes its place;
* a database that opens but cannot be **written** (a full disk, a read-only file system) is opened
  read-only: hits are served, new results are returned without being saved.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
import warnings
from pathlib import Path

__all__ = ["cannot_write", "is_damaged", "move_aside", "warn_once"]

# SQLite's primary result codes (sqlite3 exceptions carry them from Python 3.11 on).
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 8, 10, 11, 13, 14, 26
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, getattr(errno, "EDQUOT", -1)}


def _code(error: BaseException) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_damaged(error: BaseException) -> bool:
    """Whether ``error`` says the database file itself is damaged (not busy, full or unwritable)."""
    if not isinstance(error, sqlite3.DatabaseError):
        return False
    code = _code(error)
    if code is not None:
        return code in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(error)
    return "malformed" in text or "not a database" in text


def cannot_write(error: BaseException) -> bool:
    """Whether ``error`` says the store cannot be written (full disk, read-only file system, no access)."""
    if isinstance(error, OSError):
        return error.errno in _WRITE_ERRNOS
    if isinstance(error, sqlite3.Error):
        code = _code(error)
        if code is not None:
            return code in (_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN)
        text = str(error)
        return any(word in text for word in ("disk is full", "readonly", "read-only", "disk I/O", "unable to open"))
    return False


def move_aside(path: Path) -> Path:
    """Rename ``path`` (a database, with its ``-wal``, ``-shm`` and ``-journal`` files) to
    ``<name>.damaged-<time>``; return the new path of the main file."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    count = 1
    while target.exists():
        count += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{count}")
    for suffix in ("", "-wal", "-shm", "-journal"):
        source = Path(f"{path}{suffix}")
        if os.path.lexists(source):
            os.replace(source, f"{target}{suffix}")
    return target


_said: set[str] = set()


def warn_once(message: str, stacklevel: int = 4) -> None:
    """A warning about a file as a whole: said once per process, however many calls meet it."""
    if message not in _said:
        _said.add(message)
        from nbflow.exceptions import NbflowWarning

        warnings.warn(message, NbflowWarning, stacklevel=stacklevel)
