"""diskcache's table, as the store's direct SQL reads and writes it.

The store reads and writes diskcache's ``Cache`` table with statements of its own on its hot paths (a hit is
one ``SELECT``; a batch of saves one upsert), writing exactly the columns diskcache's own ``set`` writes, so
that diskcache's API (used for deleting, pruning and listing) reads those rows as its own. A diskcache whose
table looks different is used through its API instead (nbflow.store.opening.table_is_known). The functions
at the end read and write an entry's two rows so, and fall back to diskcache's API where they must. The
fast and the plain way are checked against each other on randomized saves (tests/store/test_fast_paths.py).
"""

from __future__ import annotations

import contextlib
import functools
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from nbflow import _pid
from nbflow.store.opening import STREAM_IN_ROW_MAX
from nbflow.store.record import Record

if TYPE_CHECKING:
    from nbflow.store.store import ResultStore

# diskcache's table layout, for the direct reads and writes below: string keys are stored with raw = 1,
# and values held in the row itself (str, int, and bytes under its min_file_size) have mode 1
# (diskcache.core.MODE_RAW), size 0 and no file name.
MODE_RAW = 1
CACHE_COLUMNS = [
    "rowid", "key", "raw", "store_time", "expire_time", "access_time", "access_count", "tag", "size", "mode",
    "filename", "value",
]
SELECT_RAW = "SELECT mode, value FROM Cache WHERE key = ? AND raw = 1"
# The rows of any format version other than the one a store was opened with: ``<version>:<key>:m`` or ``:p``
# (format 4 on), ``m:<version>:<key>``, ``p:...`` or ``s:...`` (formats 1 to 3).
OTHER_FORMAT = re.compile(r"[0-9]+:.*:[mp]\Z|[mps]:[0-9]+:", re.DOTALL)


def is_record_key(db_key: str) -> bool:
    """Whether ``db_key`` names the record row of an entry, of any format version."""
    return db_key.startswith("m:") or (db_key.endswith(":m") and db_key.partition(":")[0].isdigit())

# A cache hit: the payload, and when its record was last written (the payload row's diskcache store_time,
# which saves and touches set together with the record).
# With a second part for a miss: a row (0, NULL...) if there is a record without its payload (which the load
# then reports), so a miss is one statement and one read transaction too. On a hit, LIMIT 1 ends the query
# before that part runs.
SELECT_HIT = (
    "SELECT 1, store_time, mode, value FROM Cache WHERE key = ?1 AND raw = 1"
    " UNION ALL SELECT 0, NULL, NULL, NULL FROM Cache WHERE key = ?2 AND raw = 1 LIMIT 1"
)
SET_STORE_TIME = "UPDATE Cache SET store_time = ? WHERE key = ? AND raw = 1"
# A touch in one statement, inside SQLite (no read, parse and rewrite of the record in Python: a fifth of the
# cost, which a restarted kernel pays once per entry it hits). Parameters: 1 the time written, 2 the new
# last_used (NULL: unchanged) and 6 the same as JSON text, 3 the hits to add, 4 the record's key, 5 the MAC
# of the entry that was read (NULL: any), so an entry replaced in the meantime is left alone. The new time
# goes in as text (?2) and an unchanged one is not set at all: json_set leaves the numbers it does not
# set as they were written, but writes a number it is given with 15 digits, which would round a time.
TOUCH_RECORD = (
    "UPDATE Cache SET store_time = ?1, access_time = ?1, access_count = 0, value = CASE"
    " WHEN ?2 IS NOT NULL AND ?2 > json_extract(value, '$.last_used')"
    " THEN json_set(value, '$.last_used', json(?6), '$.hits', json_extract(value, '$.hits') + ?3)"
    " ELSE json_set(value, '$.hits', json_extract(value, '$.hits') + ?3) END"
    " WHERE key = ?4 AND raw = 1 AND mode = 1 AND json_valid(value)"
    " AND typeof(json_extract(value, '$.last_used')) IN ('real', 'integer')"
    " AND typeof(json_extract(value, '$.hits')) = 'integer'"
    " AND (?5 IS NULL OR json_extract(value, '$.mac') = ?5)"
)
# What diskcache's set() changes in a row that keeps its value inline and stays that way.
SET_RECORD = "UPDATE Cache SET store_time = ?, access_time = ?, access_count = 0, value = ? WHERE key = ? AND raw = 1"
# A save: the rows of the entries it replaces, the records' text (not the payloads'), and whether a row keeps
# its value in a diskcache file instead of the row (a direct write would leave such a file behind, so those
# saves go through diskcache's API). Formatted with the "?" of the record keys, then of the payload keys.
SELECT_PREVIOUS = (
    "SELECT key, mode, filename, value FROM Cache WHERE key IN ({0}) AND raw = 1"
    " UNION ALL SELECT key, mode, filename, NULL FROM Cache WHERE key IN ({0}) AND raw = 1"
)
# The columns diskcache's own set() writes for a value kept in the row, but for ``size``: the entry's size on
# its record row (see the module documentation). An upsert (rather than INSERT OR REPLACE) so that
# diskcache's row-count and size triggers see an update, not an untracked delete.
ROW = "(?, 1, ?, NULL, ?, 0, NULL, ?, 1, NULL, ?)"
INSERT = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode,"
    " filename, value) VALUES "
)
ON_CONFLICT = (
    " ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time,"
    " expire_time = NULL, access_time = excluded.access_time, access_count = 0, tag = NULL,"
    " size = excluded.size, mode = 1, filename = NULL, value = excluded.value"
)


@functools.cache
def upsert_entries(count: int) -> str:
    """The statement writing both rows of ``count`` entries."""
    return f"{INSERT}{', '.join([ROW] * (2 * count))}{ON_CONFLICT}"


@functools.cache
def select_previous(count: int) -> str:
    """The statement reading what the rows of ``count`` entries replace."""
    return SELECT_PREVIOUS.format(", ".join("?" * count))
# The store's volume: diskcache's running total of the rows' size column, kept by its triggers.
SELECT_VOLUME = "SELECT value FROM Settings WHERE key = 'size'"
# A record row written by diskcache's own set() (size 0): its size set again, less the payload row's.
SIZE_RECORD = (
    "UPDATE Cache SET size = ? - COALESCE((SELECT size FROM Cache WHERE key = ? AND raw = 1), 0)"
    " WHERE key = ? AND raw = 1"
)
# Sets the total right if it ever drifted (a row written some other way, tampering): prune() does this.
RECOUNT_VOLUME = "UPDATE Settings SET value = (SELECT COALESCE(SUM(size), 0) FROM Cache) WHERE key = 'size'"


# Entries per statement of a batch's write, whatever the batch: 10 parameters each, within the 999 of older
# SQLite builds.
ENTRIES_PER_STATEMENT = 64


def commit(store: ResultStore, key: str, record: Record, payload: bytes) -> tuple[Record | None, int]:
    """Write payload and record in one transaction; return the replaced record and the new total."""
    if (
        store._fast_writes
        and len(payload) < STREAM_IN_ROW_MAX
        and getattr(store._cache, "_txn_id", None) != threading.get_ident()  # not nested in a transaction
    ):
        try:
            replaced, total, left = commit_directly(store, [(key, record, payload)])
        except sqlite3.OperationalError as error:
            if "no such" not in str(error) and "has no column" not in str(error):
                raise
            store._fast_writes = False  # a diskcache with another layout after all
        else:
            if not left:
                return replaced.get(key), total
    cache = store._cache
    mkey = store._mkey(key)
    with transaction(store):
        previous = store._try_parse(cache.get(mkey))
        cache.set(store._pkey(key), payload)
        cache.set(mkey, record.to_json())
        size_record(store, key, record.size)
        volume = volume_total(store)
    return previous, volume


def size_record(store: ResultStore, key: str, size: int) -> None:
    """Give a record row that diskcache's own ``set()`` wrote (size 0) the entry's size again."""
    if store._fast_reads:
        try:
            store._cache._sql(SIZE_RECORD, (size, store._pkey(key), store._mkey(key)))
        except (AttributeError, sqlite3.OperationalError) as error:
            fast_read_failed(store, error)


def commit_directly(
    store: ResultStore, entries: list[tuple[str, Record, bytes]]
) -> tuple[dict[str, Record], int, list[tuple[str, Record, bytes]]]:
    """Write the rows of ``entries`` in one transaction of a few SQL statements on diskcache's table,
    writing them as its ``set`` would (a third of the cost of going through it) but for the record
    row's size, which diskcache's triggers add to the volume total. Returns the records of the entries
    replaced, by key, the new total, and the entries left unwritten: those with a row that keeps its
    value in a diskcache file, which only diskcache knows to clean up.

    The transaction is begun and ended here rather than with ``transact()``, so the interrupt safety
    of :meth:`_transaction` is repeated: whatever ends this early rolls back, and an interrupt drops
    the connection, in case it landed where this code cannot tell whether a transaction is open.
    """
    connection = store._cache._con
    execute = connection.execute
    replaced: dict[str, Record] = {}
    left: list[tuple[str, Record, bytes]] = []
    try:
        execute("BEGIN IMMEDIATE")
        for start in range(0, len(entries), ENTRIES_PER_STATEMENT):
            chunk = entries[start : start + ENTRIES_PER_STATEMENT]
            mkeys = [store._mkey(key) for key, _, _ in chunk]
            pkeys = [store._pkey(key) for key, _, _ in chunk]
            in_files: set[str] = set()
            for db_key, mode, filename, value in execute(select_previous(len(chunk)), mkeys + pkeys).fetchall():
                key = db_key[len(store._kstart) : -2]
                if filename is not None or mode != MODE_RAW:
                    in_files.add(key)
                elif value is not None:  # a record row
                    previous = store._try_parse(value)
                    if previous is not None:
                        replaced[key] = previous
            rows: list[Any] = []
            now = time.time()
            for (key, record, payload), mkey, pkey in zip(chunk, mkeys, pkeys):
                if key in in_files:
                    left.append((key, record, payload))
                else:
                    rows += (pkey, now, now, 0, payload, mkey, now, now, record.size, record.to_json())
            if rows:
                execute(upsert_entries(len(rows) // 10), rows)
        ((total,),) = execute(SELECT_VOLUME).fetchall()
        execute("COMMIT")
    except BaseException as error:
        if isinstance(error, Exception):
            try:
                if connection.in_transaction:
                    execute("ROLLBACK")
            except sqlite3.Error:
                drop_connection(store)
        else:
            drop_connection(store)
        raise
    for key, _, _ in left:
        replaced.pop(key, None)
    return replaced, int(total or 0), left


def read_payload(store: ResultStore, key: str) -> tuple[Any, float | None]:
    """The payload of an entry (``None`` if it has none) and when its record was last written (``None``
    if there is no record), in one query when possible."""
    start = store._kstart
    pkey = f"{start}{key}:p"  # store._pkey(key), without the call on the hit path
    if store._fast_reads:
        try:
            cache = store._cache
            # diskcache's own connection for this thread, taken without its per-call process check
            # (a system call) when it was opened in this process; otherwise through that check.
            local = cache._local
            con = getattr(local, "con", None)
            if con is None or getattr(local, "pid", None) != _pid.pid:
                con = cache._con
            row = con.execute(SELECT_HIT, (pkey, f"{start}{key}:m")).fetchone()
        except (AttributeError, sqlite3.OperationalError) as error:
            fast_read_failed(store, error)
        else:
            if row is None:
                return None, None  # a miss
            found, written, mode, payload = row
            if not found:
                return None, 0.0  # a record without its payload
            if not (mode == MODE_RAW and type(payload) is bytes):
                payload = store._cache.get(pkey)  # kept in a diskcache file (a very large stream)
            # diskcache writes store_time with every value; without one, a touch is simply due.
            return payload, written if type(written) is float else 0.0
    # Through the public API: two reads, but the payload holds all a load trusts.
    raw = store._cache.get(store._mkey(key))
    payload = store._cache.get(pkey)
    if raw is None and payload is None:
        return None, None
    record = store._try_parse(raw)
    return payload, record.last_used if record is not None else 0.0


def fast_read_failed(store: ResultStore, error: Exception) -> None:
    # A diskcache with another layout: use its public API from now on. Transient errors (a busy
    # database) only send this one read through the public API, which has its own handling.
    if isinstance(error, AttributeError) or "no such" in str(error):
        store._fast_reads = False


def read(store: ResultStore, db_key: str) -> Any:
    """``store._cache.get(db_key)``, faster on the cache-hit path.

    Values stored inside the database row (all records and small streams) are read with one direct
    query on diskcache's table, skipping its generic per-call work (about a third of a small hit's
    cost). Anything else (values diskcache keeps in files), and any diskcache whose internals differ
    from what this expects, goes through the public ``get``.
    """
    if store._fast_reads:
        try:
            rows = store._cache._sql(SELECT_RAW, (db_key,)).fetchall()
        except (AttributeError, sqlite3.OperationalError) as error:
            fast_read_failed(store, error)
        else:
            if not rows:
                return None
            ((mode, value),) = rows
            if mode == MODE_RAW and type(value) in (str, bytes):
                return value
    return store._cache.get(db_key)


@contextlib.contextmanager
def transaction(store: ResultStore) -> Iterator[None]:
    """``store._cache.transact()``, safe to interrupt.

    A KeyboardInterrupt can land inside diskcache's own bookkeeping around a transaction (between
    ``BEGIN`` and noting the transaction, or between clearing that note and ``COMMIT``), leaving this
    thread's connection inside a transaction nobody will end: every later write would then fail.
    After an interrupt the connection is dropped instead, which rolls back whatever it left open;
    the next use opens a fresh one.
    """
    try:
        with store._cache.transact():
            yield
    except BaseException as error:
        if not isinstance(error, Exception):
            drop_connection(store)
        raise


def drop_connection(store: ResultStore) -> None:
    cache = store._cache
    if getattr(cache, "_txn_id", None) == threading.get_ident():
        cache._txn_id = None
    try:
        cache.close()  # this thread's connection only
    except Exception:
        pass


def records(store: ResultStore) -> Iterator[Record]:
    """The records of the store's format version, in key order (unreadable ones skipped)."""
    store.flush_quietly()
    start = store._kstart
    for db_key in store._cache.iterkeys():
        if not (isinstance(db_key, str) and db_key.startswith(start) and db_key.endswith(":m")):
            continue
        raw = read(store, db_key)
        if raw is None:
            continue
        try:
            yield store._parse_record(raw)
        except ValueError:
            continue


def volume_total(store: ResultStore) -> int:
    """The store's volume, as diskcache's triggers keep it in its Settings table."""
    if store._fast_reads:
        try:
            row = store._cache._sql(SELECT_VOLUME).fetchone()
        except (AttributeError, sqlite3.OperationalError) as error:
            fast_read_failed(store, error)
        else:
            return max(0, int(row[0])) if row is not None and isinstance(row[0], int) else 0
    # A diskcache this store cannot query directly: add the records up (slow, but right).
    return sum(record.size for record in store.records())


