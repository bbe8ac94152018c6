"""Deferred saves: the small results of quick calls, committed together, one transaction per batch.

``ResultStore.save(defer=True)`` seals an entry at once and leaves it here; a batch is written when
DEFER_BATCH saves wait, when its oldest has waited DEFER_DELAY seconds at the next save, by the store's idle
thread after that, before anything reads or replaces one of its keys, when a flow ends, and at exit. A commit
writes a handful of pages to SQLite's log whatever it holds, most of a small save's cost: measured on a loop
of trivial misses, 64 per batch costs about half of saving each on its own. Until then this process reads a
deferred entry from memory; a crash loses it (never anything committed). A forked child drops the parent's.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from nbflow.exceptions import PersistError
from nbflow.store import sql
from nbflow.store.record import Record

if TYPE_CHECKING:
    from nbflow.store.store import ResultStore

__all__ = ["DEFER_BATCH", "DEFER_DELAY", "DEFER_MAX_BYTES", "Deferred", "defer", "write_deferred"]

# Deferred saves (``save(defer=True)``, the results of quick calls) are written together, one transaction per
# batch: a commit writes a handful of pages to SQLite's log whatever it holds, most of a small save's cost.
# A batch is written when DEFER_BATCH saves wait, when its oldest has waited DEFER_DELAY seconds at the
# next save, by an idle thread after that, before anything reads or changes the store, and at exit.
# Measured on a loop of trivial misses: 64 per batch costs about half of saving each on its own; larger
# batches gain nothing more. A payload over DEFER_MAX_BYTES is saved at once.
DEFER_BATCH = 64
DEFER_DELAY = 0.05
DEFER_MAX_BYTES = 1 << 20
# Stores that may hold deferred saves: written at exit, dropped in a forked child (they are the parent's).
deferring: weakref.WeakSet[ResultStore] = weakref.WeakSet()

# A deferred save: the record, the payload row, and what to call if it is never written.
Deferred = tuple[Record, bytes, Callable[[str], None] | None]


def defer(store: ResultStore, key: str, entry: Deferred) -> None:
    now = time.monotonic()
    with store._deferred_lock:
        store._deferred[key] = entry
        since = store._deferred_since
        if since is None:
            store._deferred_since = since = now
            deferring.add(store)
        due = len(store._deferred) >= DEFER_BATCH or now - since >= DEFER_DELAY
    if due:
        store.flush()
    elif since == now:
        store._idle.wake()  # only the first save of a batch: the idle thread then watches it


def write_deferred(store: ResultStore) -> tuple[list[tuple[str, Deferred]], dict[str, Record], int] | None:
    """:meth:`flush`'s transaction: the batch written, the records it replaced, the new total."""
    try:
        with store._deferred_lock:
            batch = list(store._deferred.items())
            store._deferred_since = None
        if not batch:
            return None
        replaced, total, left = sql.commit_directly(store, [(key, record, payload)
                                                       for key, (record, payload, _) in batch])
        for key, record, payload in left:  # rows diskcache keeps in files: through its API
            previous, total = sql.commit(store, key, record, payload)
            if previous is not None:
                replaced[key] = previous
    except store._write_errors as error:
        forget(store, batch)
        reason = f"writing to the store in {store.directory} failed ({error})"
        for _, (_, _, on_lost) in batch:
            if on_lost is not None:
                on_lost(reason)
        tasks = ", ".join(sorted({repr(record.task_name) for _, (record, _, _) in batch}))
        count = "the result" if len(batch) == 1 else f"{len(batch)} results"
        message = f"{count} of task(s) {tasks} not persisted: {reason}"
        code = getattr(error, "errno", None)
        raise (PersistError(code, message) if code else PersistError(message)) from error
    except BaseException:
        with store._deferred_lock:  # interrupted: still waiting, and the idle thread knows again
            if store._deferred and store._deferred_since is None:
                store._deferred_since = time.monotonic()
        raise
    forget(store, batch)
    return batch, replaced, total


def forget(store: ResultStore, batch: list[tuple[str, Deferred]]) -> None:
    """Take a written (or lost) batch out of the deferred saves, but for keys saved again meanwhile."""
    with store._deferred_lock:
        deferred = store._deferred
        for key, entry in batch:
            if deferred.get(key) is entry:
                del deferred[key]
        if deferred and store._deferred_since is None:
            store._deferred_since = time.monotonic()



@atexit.register
def _flush_at_exit() -> None:
    for store in list(deferring):
        try:
            store.flush_quietly()
        except Exception:  # a store whose files are gone: nothing to do at exit
            pass


def _after_fork_in_child() -> None:
    # The deferred saves are the parent's to write; a lock another thread held at the fork stays held here.
    for store in list(deferring):
        store._deferred = {}
        store._deferred_since = None
        store._deferred_lock = threading.Lock()
        store._flush_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
