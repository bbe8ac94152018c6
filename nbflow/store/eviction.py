"""Eviction and the store's LRU bookkeeping: which entries go when the store is over its limit, and when.

:func:`prune` deletes expired entries, then least recently used ones until the store is within a target,
plus what no record refers to (rows of other format versions, unreadable records, payloads and buffer
files no record names, once they are older than a save in progress). An entry a load is reading (its first
buffer file leased) is left for a later prune.

``last_used`` and ``hits`` live in each entry's record row. A hit stays read-only: :func:`count_hit` notes
it in memory, and only an entry whose record is older than the store's ``touch_interval`` gets a new
``last_used``, written with others in one transaction (:func:`flush_touches`), in SQL where it can be
(:func:`touch_directly`), through diskcache's API otherwise (:func:`touch`).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbflow.exceptions import NbflowWarning
from nbflow.store import sql
from nbflow.store.blobs import IN_USE, ORPHAN_AGE, release
from nbflow.store.record import Record
from nbflow.store.sealing import MAC_MISMATCH, mac_of

if TYPE_CHECKING:
    from nbflow.store.store import ResultStore

__all__ = ["PRUNE_LOW_WATER", "count_hit", "flush_touches", "prune"]

# A save that takes the store over its limit prunes down to this fraction of the limit, so that the next
# saves do not each trigger a full scan.
PRUNE_LOW_WATER = 0.9
# Last-used times of hit entries are written in batches (see count_hit).
TOUCH_BATCH = 256
TOUCH_DELAY = 5.0
# A long kernel hits many distinct keys: the hit counts not yet written are written once this many keys
# have one (~15 MB; writing them costs ~10 µs a key, paid at close() below this), and the per-key times
# of the last touch are thinned out (those past touch_interval mean nothing) once this many are kept, so
# neither grows with every key the process ever hit.
PENDING_HITS_MAX = 100_000
TOUCHED_MAX = 100_000


def prune(store: ResultStore, *, protect: str | None, target: int) -> int:
    flush_touches(store)  # least recently used as far as this process knows
    cache = store._cache
    now = time.time()
    # Blob files are listed before records are read: a file listed here whose save commits during
    # the scan is then either referenced by a scanned record or younger than ORPHAN_AGE.
    blob_files = list(store._files.files())

    live: list[tuple[Record, str]] = []
    broken: list[tuple[str, Any]] = []  # (key, record text) of unreadable records
    garbage: list[str] = []  # diskcache keys of other format versions
    garbage_records = 0
    streams: list[str] = []
    for db_key in cache.iterkeys():
        if not isinstance(db_key, str):
            continue
        ours = db_key.startswith(store._kstart)
        if ours and db_key.endswith(":m"):
            raw = cache.get(db_key)
            record = store._try_parse(raw)
            key = db_key[len(store._kstart) : -2]
            # A size that is not a count of bytes (an edited record) makes the record unreadable here.
            if record is not None and record.key == key and type(record.size) is int and record.size >= 0:
                live.append((record, raw))
            elif raw is not None:
                broken.append((key, raw))
        elif ours and db_key.endswith(":p"):
            streams.append(db_key)
        elif not ours and sql.OTHER_FORMAT.match(db_key):
            # Another format version: never readable by this code.
            garbage_records += sql.is_record_key(db_key)
            garbage.append(db_key)

    total = sum(record.size for record, _ in live)
    victims: list[tuple[Record, str]] = []
    keep: list[tuple[Record, str]] = []
    for record, raw in live:
        if record.expires is not None and record.expires <= now and record.key != protect:
            victims.append((record, raw))
            total -= record.size
        else:
            keep.append((record, raw))
    keep.sort(key=lambda item: item[0].last_used)
    for record, raw in keep:
        if total <= target:
            break
        if record.key == protect:
            continue
        victims.append((record, raw))
        total -= record.size

    removed: list[Record] = []
    for start in range(0, len(victims), 256):
        batch: list[tuple[Record, str]] = []
        claims: list[int | None] = []
        try:
            for record, raw in victims[start : start + 256]:
                claim = store._files.claim(record)
                if claim == IN_USE:
                    continue  # a load is reading it right now; a later prune evicts it
                batch.append((record, raw))
                claims.append(claim)
            evicted: list[Record] = []
            with sql.transaction(store):
                for record, raw in batch:
                    mkey = store._mkey(record.key)
                    # Compare the whole text: a record touched or replaced since the scan is kept.
                    if cache.get(mkey) == raw:
                        cache.delete(mkey)
                        cache.delete(store._pkey(record.key))
                        evicted.append(record)
            # Files go while the claims are held, so that no load can lease them in between.
            for record in evicted:
                store._files.remove_entry_files(record)
            removed += evicted
        finally:
            for claim in claims:
                release(claim)
    live_keys = {record.key for record, _ in live}
    with sql.transaction(store):
        for key, raw in broken:
            if cache.get(store._mkey(key)) == raw:  # not replaced by a save since the scan
                cache.delete(store._mkey(key))
                cache.delete(store._pkey(key))
                garbage_records += 1
        for db_key in garbage:
            cache.delete(db_key)
        for db_key in streams:
            key = db_key[len(store._kstart) : -2]
            # A stream is committed together with its record, so checking inside a transaction
            # cannot catch a save half-way.
            if key not in live_keys and store._mkey(key) not in cache:
                cache.delete(db_key)
        # The triggers keep the total exact; a row written some other way (by hand, by tampering) would
        # not, and this sets it right while nothing can change.
        if store._fast_reads:
            try:
                cache._sql(sql.RECOUNT_VOLUME)
            except (AttributeError, sqlite3.OperationalError) as error:
                sql.fast_read_failed(store, error)

    removed_keys = {record.key for record in removed}
    referenced = {
        (store._files.name(record.key), record.blob_id)
        for record, _ in live
        if record.blob_id and record.key not in removed_keys
    }
    for path, name, blob_id, mtime in blob_files:
        if (name, blob_id) not in referenced and now - mtime > ORPHAN_AGE:
            store._files.remove(path)
    return len(removed) + garbage_records


def flush_touches(store: ResultStore, *, all_hits: bool = False) -> None:
    """Write the due last_used times (with the hits counted for those keys; every pending hit count
    with ``all_hits``) in one transaction."""
    with store._lock:
        touches, store._pending_touches = store._pending_touches, {}
        if all_hits:
            hits, store._pending_hits = store._pending_hits, {}
        else:
            hits = {key: store._pending_hits.pop(key) for key in touches if key in store._pending_hits}
    keys = list(dict.fromkeys([*touches, *hits]))
    if not keys:
        return
    try:
        with sql.transaction(store):
            for key in keys:
                mac, now = touches.get(key, (None, None))
                if not touch_directly(store, key, mac, hits.get(key, 0), now):
                    touch(store, key, mac, hits.get(key, 0), now)
    except store._write_errors:
        pass  # bookkeeping only


def count_hit(store: ResultStore, key: str, written: float, payload: bytes) -> None:
    """Count a hit, and queue a new ``last_used`` when the record was ``written`` (its ``store_time``)
    over :attr:`touch_interval` ago."""
    # No lock on this hot path: a hit lost to a race between threads only makes the count approximate.
    pending = store._pending_hits
    count = pending.get(key)
    if count is None and len(pending) >= PENDING_HITS_MAX:
        flush_touches(store, all_hits=True)  # which starts a new dict
        pending = store._pending_hits
    pending[key] = 1 if count is None else count + 1
    now = time.time()
    interval = store.touch_interval
    if now - written >= interval and now - store._touched.get(key, 0.0) >= interval:
        if len(store._touched) >= TOUCHED_MAX:
            store._touched = {known: at for known, at in store._touched.items() if now - at < interval}
        store._touched[key] = now
        touches = store._pending_touches
        if not touches:
            store._oldest_touch = now
        touches[key] = (mac_of(payload), now)
    if store._pending_touches and (
        len(store._pending_touches) >= TOUCH_BATCH or now - store._oldest_touch >= TOUCH_DELAY
    ):
        flush_touches(store)


def touch_directly(store: ResultStore, key: str, mac: str | None, hits: int, now: float | None) -> bool:
    """:meth:`_touch` as one SQL statement on the record's row (and one on the payload's); False when
    this store cannot (another table layout, no JSON functions in this SQLite, or a record that is not
    the plain JSON text it writes), and the caller then touches through :meth:`_touch`."""
    if not store._fast_writes or not store._json_touches:
        return False
    cache = store._cache
    try:
        parameters = (time.time(), now, hits, store._mkey(key), mac, None if now is None else repr(float(now)))
        changed = cache._sql(sql.TOUCH_RECORD, parameters).rowcount
    except sqlite3.OperationalError as error:
        if "no such function" not in str(error):
            raise
        store._json_touches = False
        return False
    if changed != 1:
        return False  # gone, replaced, or not a record this can rewrite: _touch decides
    if now is not None:
        # What a hit reads to tell whether the record is due for another touch.
        cache._sql(sql.SET_STORE_TIME, (now, store._pkey(key)))
    return True


def touch(store: ResultStore, key: str, mac: str | None, hits: int, now: float | None = None) -> None:
    cache = store._cache
    mkey = store._mkey(key)
    with sql.transaction(store):
        # Read and rewritten directly when the record is kept in its row, as it always is (a third of
        # the cost of diskcache's get and set, which matters when a restarted kernel's first hits
        # touch thousands of entries).
        raw: Any = None
        direct = False
        if store._fast_writes:
            rows = cache._sql(sql.SELECT_RAW, (mkey,)).fetchall()
            if rows and rows[0][0] == sql.MODE_RAW and type(rows[0][1]) is str:
                ((_, raw),) = rows
                direct = True
        if not direct:
            raw = cache.get(mkey)
        current = store._try_parse(raw)
        # Only update the entry that was read, never one that replaced it in the meantime.
        if current is None or (mac is not None and current.mac != mac):
            return
        updated = dataclasses.replace(
            current,
            last_used=current.last_used if now is None else max(now, current.last_used),
            hits=current.hits + hits,
        )
        if direct:
            written = time.time()
            cache._sql(sql.SET_RECORD, (written, written, updated.to_json(), mkey))
        else:
            cache.set(mkey, updated.to_json())
            sql.size_record(store, key, updated.size)
        if now is not None and store._fast_reads:
            # What a hit reads to tell whether the record is due for another touch.
            cache._sql(sql.SET_STORE_TIME, (updated.last_used, store._pkey(key)))


# -- deleting one entry ----------------------------------------------------------------------------

# "Any payload" for delete_if.
ANY = object()


def always(raw: str) -> bool:
    return True


def delete_if(store: ResultStore, key: str, condition: Callable[[str], bool], payload: Any = ANY) -> bool:
    """Delete the entry if its current record text satisfies ``condition`` (and, when ``payload`` is
    given, its payload row still holds exactly that); return whether it did."""
    cache = store._cache
    mkey = store._mkey(key)
    with sql.transaction(store):
        raw = cache.get(mkey)
        if raw is None or not condition(raw):
            return False
        if payload is not ANY and cache.get(store._pkey(key)) != payload:
            return False
        cache.delete(mkey)
        cache.delete(store._pkey(key))
        record = store._try_parse(raw)
    if record is not None:
        store._files.remove_entry_files(record)
    return True


def same_entry(store: ResultStore, record: Record) -> Callable[[str], bool]:
    """A condition for :func:`delete_if`: the stored entry is still the one ``record`` describes."""

    def same(raw: str) -> bool:
        current = store._try_parse(raw)
        return current is None or current.mac == record.mac

    return same


def discard(store: ResultStore, key: str, record: Record | None, raw: str, reason: str) -> None:
    """Delete an entry that failed verification and warn once (naming its task, if known)."""
    if record is None:
        delete_if(store, key, lambda current: current == raw)
    else:
        delete_if(store, key, same_entry(store, record))
    warn_failed(store, key, record, reason)


def reject(store: ResultStore, key: str, payload: Any, reason: str) -> None:
    """Delete an entry whose payload failed verification and warn once, naming its task as its
    (unauthenticated) record does: the payload's own signed fields are not to be trusted."""
    cache = store._cache
    pkey = store._pkey(key)
    raw = cache.get(store._mkey(key))
    record = store._try_parse(raw)
    if raw is not None:
        delete_if(store, key, lambda current: current == raw, payload)
        if record is None:
            reason = "has unreadable metadata"
    else:
        # A payload without a record (left by tampering): removed on its own.
        with sql.transaction(store):
            if cache.get(store._mkey(key)) is None and cache.get(pkey) == payload:
                cache.delete(pkey)
    warn_failed(store, key, record, reason)


def warn_failed(store: ResultStore, key: str, record: Record | None, reason: str) -> None:
    """The one warning for an entry that failed verification and was deleted (naming its task, if known).

    Not for a MAC that fails under a key the store already said is not the entries' (opening.check_key).
    """
    if store.other_key and reason == MAC_MISMATCH:
        return
    task = f"task {record.task_name!r}" if record is not None else "an unknown task"
    warnings.warn(
        f"the cached result of {task} (key {key}) {reason}; it failed verification, was deleted, "
        f"and is treated as a cache miss",
        NbflowWarning,
        stacklevel=4,  # the caller of the store method that met the entry
    )


