"""Opening a store: its directories, its database, and what to do when they are not as they should be.

A cache is an optimisation, so opening never stops a notebook when it can be helped: a ``blobs/`` that is a
link or a file is replaced, a damaged database is moved aside and a fresh one started, a database that
cannot be written is opened read-only, and entries written under another secret key are removed, each with
one warning (see :mod:`nbflow._recovery`). Directories are made private (0700), and ones other users can
write to are named in a warning.
"""

from __future__ import annotations

import functools
import hmac
import os
import secrets
import sqlite3
import stat
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from nbflow._recovery import cannot_write, is_damaged, move_aside
from nbflow._recovery import warn_once as _warn_once
from nbflow.exceptions import ConfigurationError, NbflowWarning
from nbflow.store import sql
from nbflow.store.paths import open_inside, replace_inside, unlink_inside

if TYPE_CHECKING:
    from nbflow.store.store import ResultStore

__all__ = ["check_key", "make_directories", "open_cache", "recover", "recovering", "table_is_known"]

# Streams up to this size are kept inside the database row rather than in a file of diskcache's own.
# diskcache deletes the file of a value that is replaced or deleted inside an enclosing transaction before
# that transaction commits: a process killed in between would leave the old, still committed entry
# pointing at a deleted file. In the row, a stream commits and rolls back together with its record.
# (SQLite rows hold up to 1 GB; larger streams still go to files. Large arrays never reach the stream.)
STREAM_IN_ROW_MAX = 1 << 29


def make_directories(store: ResultStore) -> None:
    exposed: list[str] = []
    blobs = store.directory / "blobs"
    if blobs.is_symlink():
        # The store never follows a link out of its directory (nbflow.store.paths): the link goes (not
        # what it points at), and a directory takes its place.
        target = os.readlink(blobs)
        blobs.unlink()
        warnings.warn(
            f"{blobs} was a symbolic link (to {target}); nbflow never follows links out of its store, so it "
            "replaced the link with a directory. To keep results on another disk, point NBFLOW_HOME there.",
            NbflowWarning,
            stacklevel=3,
        )
    elif blobs.exists() and not blobs.is_dir():
        moved = move_aside(blobs)
        _warn_once(f"the nbflow store's {blobs} was not a directory; it was moved to {moved} and a new one "
                   "made: results cached with arrays are computed again")
    for directory in (store.home, store.directory, blobs):
        try:
            directory.mkdir(mode=0o700, parents=True)
            continue
        except FileExistsError:
            pass
        except OSError as error:
            raise ConfigurationError(
                f"cannot create the nbflow store directory {directory}: {error}"
            ) from error
        try:
            mode = directory.stat().st_mode
        except OSError as error:
            raise ConfigurationError(
                f"cannot access the nbflow store directory {directory}: {error}"
            ) from error
        if not stat.S_ISDIR(mode):
            raise ConfigurationError(f"the nbflow store path {directory} exists but is not a directory")
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            exposed.append(str(directory))
    if exposed:
        fix = " ".join(exposed)
        warnings.warn(
            f"the nbflow store directory {', '.join(exposed)} is writable by other users, who could "
            f"delete or tamper with cached results; run `chmod 700 {fix}`",
            NbflowWarning,
            stacklevel=3,
        )


def open_cache(store: ResultStore) -> Any:
    """diskcache's Cache on the store directory; a damaged database is moved aside first, and one that
    cannot be written is opened read-only (see nbflow.store.recovery)."""
    # Imported here so that importing nbflow.store stays cheap.
    import diskcache

    from nbflow.store.disk import SafeDisk
    from nbflow.store.readonly import ReadOnlyCache

    def cache() -> Any:
        return diskcache.Cache(
            store._root,
            # Never unpickles a row and never leaves the store directory (see nbflow.store.disk).
            disk=SafeDisk,
            # Wait for other processes' transactions instead of failing with "database is locked".
            timeout=60,
            # Eviction is done by prune(), so that a record and its payload always go together.
            eviction_policy="none",
            size_limit=2**62,
            cull_limit=0,
            statistics=False,
            # Streams stay inside their database row (see STREAM_IN_ROW_MAX), and a large write
            # does not leave the write-ahead log that large afterwards.
            disk_min_file_size=STREAM_IN_ROW_MAX,
            sqlite_journal_size_limit=64 << 20,
        )

    database = store.directory / "cache.db"
    try:
        return cache()
    except (OSError, sqlite3.Error) as error:
        failure: BaseException = error
    if is_damaged(failure):
        moved = move_aside(database)
        _warn_once(
            f"the nbflow store's database {database} is damaged ({failure}); it was moved to {moved} for "
            "inspection and a new one started: results cached before are computed again"
        )
        try:
            return cache()
        except (OSError, sqlite3.Error) as error:
            failure = error
    if cannot_write(failure) and database.is_file():
        try:
            read_only = ReadOnlyCache(store._root)
        except sqlite3.Error:
            pass
        else:
            store.read_only = True
            _warn_once(
                f"the nbflow store in {store.directory} cannot be written ({failure}): cached results are "
                "served, and new results are returned without being saved until it can be written again "
                "(free some space, then restart the kernel)"
            )
            return read_only
    raise ConfigurationError(f"cannot open the nbflow result store in {store.directory}: {failure}") from failure


def recover(store: ResultStore, error: BaseException) -> bool:
    """If ``error`` says the database is damaged: move it aside, start a fresh one, warn once; return
    whether it did. (Other processes that have the old file open keep it until they reopen.)"""
    if not is_damaged(error):
        return False
    with store._lock:
        try:
            store._cache.close()
        except Exception:
            pass
        database = store.directory / "cache.db"
        try:
            moved = move_aside(database)
        except OSError:
            return False
        _warn_once(
            f"the nbflow store's database {database} is damaged ({error}); it was moved to {moved} for "
            "inspection and a new one started: results cached before are computed again"
        )
        store._cache = open_cache(store)
        store._pending_hits.clear()
        store._pending_touches.clear()
        store._touched.clear()
    with store._deferred_lock:
        lost, store._deferred = store._deferred, {}
        store._deferred_since = None
    for _record, _payload, on_lost in lost.values():
        if on_lost is not None:
            on_lost("the store's database was damaged and has been replaced")
    return True


def check_key(store: ResultStore) -> None:
    """If the secret key is not the one the store's entries were written with (lost, replaced, or another key
    file configured in this process), say so once, and let the entries that then fail their MAC go quietly
    (a miss each, deleted as it is met) instead of with one warning each.

    Nothing is deleted here: a process that was merely given another key file (a shell whose
    NBFLOW_SECRET_FILE differs from the kernel's) must not wipe the store. ``key-id`` in the store directory
    holds an HMAC of a constant under the key: it tells whether keys match without telling anything about
    the key. Someone who can write the store can copy that file along with entries of their own: those
    still fail verification, one warning each.
    """
    if store.read_only:
        return
    key_id = hmac.new(store._secret, b"nbflow-key-id", "sha256").hexdigest()[:32]
    try:
        with open(open_inside(store._root, "key-id", os.O_RDONLY), encoding="ascii", errors="replace") as file:
            known: str | None = file.read(64).strip()
    except FileNotFoundError:
        known = None
    except OSError:
        return
    if known == key_id:
        return
    if known is not None and sql.volume_total(store) > 0:  # an empty store has nothing to say about
        store.other_key = True
        _warn_once(
            f"the nbflow secret key {store.secret_file} is not the key the results in {store.directory} were "
            "written with (it was lost or replaced, or another key file is set here): those results cannot be "
            "verified, so they are computed again (each is removed when met, without a warning of its own)"
        )
    temporary = f"key-id.{secrets.token_hex(4)}.tmp"
    try:
        fd = open_inside(store._root, temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(key_id + "\n")
        replace_inside(store._root, temporary, "key-id")
    except OSError:
        unlink_inside(store._root, temporary)


def table_is_known(store: ResultStore) -> bool:
    """Whether diskcache's table has exactly the columns the direct writes fill in."""
    try:
        columns = [row[1] for row in store._cache._sql("PRAGMA table_info(Cache)").fetchall()]
    except (AttributeError, sqlite3.Error):
        return False
    return columns == sql.CACHE_COLUMNS


_R = TypeVar("_R")
_P = ParamSpec("_P")


def recovering(method: Callable[Concatenate[ResultStore, _P], _R]) -> Callable[Concatenate[ResultStore, _P], _R]:
    """A store method that, meeting a damaged database, replaces it (recover) and runs again."""

    @functools.wraps(method)
    def run(self: ResultStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as error:
            if not recover(self, error):
                raise
            return method(self, *args, **kwargs)

    return run
