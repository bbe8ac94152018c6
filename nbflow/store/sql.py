"""diskcache's table, as the store's direct SQL reads and writes it.

The store reads and writes diskcache's ``Cache`` table with statements of its own on its hot paths (a hit is
one ``SELECT``; a batch of saves one upsert), writing exactly the columns diskcache's own ``set`` writes, so
that diskcache's API (used for deleting, pruning and listing) reads those rows as its own. A diskcache whose
table looks different is used through its API instead (nbflow.store.opening.table_is_known). The fast and the plain
way are checked against each other on randomized saves (tests/store/test_fast_paths.py).
"""

from __future__ import annotations

import functools
import re

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
