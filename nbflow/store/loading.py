"""Reading an entry back: its payload row, verified, then its buffer files, then the value rebuilt.

The MAC is checked before anything is parsed or unpickled (:mod:`nbflow.store.sealing`), buffer checksums
before the value is rebuilt (:mod:`nbflow.store.blobs`). An entry that fails a check is deleted and reported
with one warning naming its task, and the load is a miss; one that a save or an eviction replaced while it
was being read is read again.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import TYPE_CHECKING, Any

from nbflow.exceptions import ConfigurationError, NbflowWarning
from nbflow.store import eviction, sql
from nbflow.store.blobs import KEYED
from nbflow.store.eviction import count_hit
from nbflow.store.interface import CacheMiss, Invalid
from nbflow.store.serializers import WritableBuffer, get_serializer

if TYPE_CHECKING:
    from nbflow.store.store import ResultStore

__all__ = ["load", "open_entry"]

# How often load() retries when the entry changes while it is being read (its buffer files replaced).
LOAD_ATTEMPTS = 4


def load(store: ResultStore, key: str, type_hint: Any) -> Any:
    """The value stored for ``key`` (see ResultStore.load); raises CacheMiss."""
    store._commit_deferred(key)  # rare (the same call again within milliseconds): then read as any other
    for _ in range(LOAD_ATTEMPTS):
        payload, written = sql.read_payload(store, key)
        if written is None:
            raise CacheMiss(key)
        try:
            value = open_entry(store, key, payload, type_hint)
        except Invalid as failure:
            # A save or an eviction may have replaced or deleted the entry (and its buffer files) while
            # it was being read: only an entry that is still the one read is corrupt.
            current, still = sql.read_payload(store, key)
            if still is None:
                raise CacheMiss(key) from None
            if current != payload:
                continue
            eviction.reject(store, key, payload, str(failure))
            raise CacheMiss(key, f"failed verification: {failure}") from None
        count_hit(store, key, written, payload)
        return value
    raise CacheMiss(key, "the entry kept changing while being read")


def open_entry(store: ResultStore, key: str, payload: Any, type_hint: Any) -> Any:
    """Verify a payload row read for ``key`` and rebuild its value (raises :class:`~nbflow.store.interface.Invalid`)."""
    task_name, expires, name, checksums, stream_size, blob_id, end = store._sealer.verify(key, payload)
    if len(payload) - end != stream_size:
        raise Invalid("has a payload of the wrong size")
    if expires is not None and expires <= time.time():
        eviction.delete_if(store, key, eviction.always, payload)
        raise CacheMiss(key, "expired")
    buffers: list[WritableBuffer] = []
    lease: int | None = None
    if checksums:
        if store.strict_buffers and not all(c.startswith(KEYED) for _, c in checksums):
            # Written without keyed buffer MACs: not trusted in strict mode, but not corrupt either.
            raise CacheMiss(key, "written without strict buffer authentication")
        # Held until the value is rebuilt: eviction skips an entry whose first buffer file is leased,
        # so an entry is never evicted from under a load that is reading it.
        lease = store._files.lease(store._files.path(key, blob_id, 0))
    try:
        for index, (size, checksum) in enumerate(checksums):
            buffers.append(store._files.read(store._files.path(key, blob_id, index), size, checksum))
        try:
            serializer = get_serializer(name)
        except ConfigurationError:
            warnings.warn(
                f"the cached result of task {task_name!r} was written with serializer {name!r}, which "
                f"is not registered in this process; it is treated as a cache miss",
                NbflowWarning,
                stacklevel=3,
            )
            raise CacheMiss(key, "unknown serializer") from None
        try:
            return serializer.loads(payload[end:], buffers, type_hint)
        except Exception as error:
            # Authentic but unusable here, e.g. a class that was renamed since, or a changed type hint.
            eviction.delete_if(store, key, eviction.always, payload)
            warnings.warn(
                f"the cached result of task {task_name!r} could not be deserialized "
                f"({type(error).__name__}: {error}); it was deleted and is treated as a cache miss",
                NbflowWarning,
                stacklevel=3,
            )
            raise CacheMiss(key, "could not be deserialized") from error
    finally:
        if lease is not None:
            os.close(lease)


