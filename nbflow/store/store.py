"""The result store: task results cached on local disk, authenticated, surviving kernel restarts.

Layout under ``<home>/store/`` (directories mode 0700): a diskcache database, ``cache.db``, holding two rows
per entry, written together in one transaction, the commit point:

- ``<FORMAT_VERSION>:<key>:p``, the payload: the serialized value behind a MAC and the signed fields a load
  trusts (:mod:`nbflow.store.sealing`). A hit reads this one row and parses no record;
- ``<FORMAT_VERSION>:<key>:m``, the :class:`Record` as JSON: the same fields plus the LRU bookkeeping
  (``last_used``, ``hits``). Probing, listing, pruning and the CLI read these, never a payload. Its diskcache
  ``size`` column holds the entry's size, so diskcache's triggers keep the store's volume transactionally.

and ``blobs/``, the out-of-band buffers of large arrays (:mod:`nbflow.store.blobs`), written and fsynced
before the rows commit: a crash at any moment leaves the old entry or the complete new one. The two rows'
keys differ only in their last character, so a save changes one page of diskcache's key index, not two.

The pieces, one concern each: :mod:`~nbflow.store.opening` (directories, the database, recovery, the key
check), :mod:`~nbflow.store.sql` (diskcache's table and nbflow's own SQL on it, on the hot paths),
:mod:`~nbflow.store.sealing` (payload and MAC), :mod:`~nbflow.store.blobs` (buffer files),
:mod:`~nbflow.store.batches` (deferred saves of quick calls), :mod:`~nbflow.store.eviction` (pruning, LRU
bookkeeping, deleting an entry), :mod:`~nbflow.store.disk` and :mod:`~nbflow.store.paths` (never a pickle,
never a path outside the store). This module is the :class:`ResultStore` that puts them together.

(Format 1 kept the MAC and signed fields in the record only, so a hit read and parsed both rows. Format 2
kept the volume in a row of its own, one more page for every save to write. Formats 1 to 3 keyed the rows
``m:<version>:<key>`` and ``p:<version>:<key>``, far apart in the index.)
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbflow._idle import IdleWriter
from nbflow.exceptions import ConfigurationError, NbflowWarning, PersistError, StoreUnwritable
from nbflow.store import batches, eviction, loading, sql
from nbflow.store.batches import DEFER_DELAY, DEFER_MAX_BYTES, Deferred
from nbflow.store.blobs import BlobFiles
from nbflow.store.eviction import PRUNE_LOW_WATER, flush_touches, prune
from nbflow.store.interface import CacheMiss
from nbflow.store.opening import check_key, make_directories, open_cache, recover, recovering, table_is_known
from nbflow.store.paths import tree_size
from nbflow.store.record import FORMAT_VERSION, Record
from nbflow.store.sealing import Sealer
from nbflow.store.secret import load_or_create_secret
from nbflow.store.serializers import Serializer, get_serializer, register_serializer, serialize

if TYPE_CHECKING:
    from nbflow.settings import Settings

__all__ = ["CacheMiss", "ResultStore"]
















class ResultStore:
    """Task results cached on local disk under ``<home>/store``, safe across processes and threads.

    See the module documentation for the layout and the guarantees. Entries are evicted least recently
    used first when the total size exceeds ``size_limit`` bytes; ``last_used`` has a granularity of
    :attr:`touch_interval` seconds so that cache hits stay read-only.
    """

    #: A load rewrites the entry's record (``last_used``, ``hits``) only when ``last_used`` is older than
    #: this many seconds, so that nearly all cache hits are pure reads.
    touch_interval: float = 60.0

    def __init__(
        self,
        home: Path,
        *,
        size_limit: int,
        secret_file: Path,
        strict_buffers: bool = False,
    ) -> None:
        if size_limit <= 0:
            raise ConfigurationError(f"size_limit must be a positive number of bytes, not {size_limit!r}")
        self.home = Path(home).expanduser().absolute()
        self.directory = self.home / "store"
        self.size_limit = int(size_limit)
        self.secret_file = Path(secret_file).expanduser().absolute()
        self.strict_buffers = bool(strict_buffers)

        self._secret = load_or_create_secret(self.secret_file)
        self._sealer = Sealer(self._secret)
        make_directories(self)
        self._root = str(self.directory)
        self._files = BlobFiles(self._root, self._secret, strict=self.strict_buffers)
        #: Whether the entries were written under another secret key than this store's (opening.check_key).
        self.other_key = False
        #: Whether the store could only be opened read-only (a full disk, a read-only file system): hits
        #: are served, saves raise :class:`~nbflow.exceptions.StoreUnwritable`.
        self.read_only = False
        self._cache = open_cache(self)
        # Whether reads may query diskcache's table directly, and saves write it directly (checked once
        # here; a diskcache with another layout is used through its public API instead).
        import diskcache

        self._fast_reads = getattr(diskcache.core, "MODE_RAW", None) == sql.MODE_RAW
        self._fast_writes = (self._fast_reads and not self.read_only and sqlite3.sqlite_version_info >= (3, 35)
                             and table_is_known(self))
        # Whether touches may rewrite records with SQLite's JSON functions (see eviction.touch_directly).
        self._json_touches = True
        self._write_errors: tuple[type[BaseException], ...] = (OSError, sqlite3.Error, diskcache.Timeout)
        # pydantic-core's JSON parser is several times faster than the json module on records, which
        # matters on the cache-hit path.
        # pydantic-core parses records faster than json, but importing it costs a fresh process about
        # as much as a thousand hits: use it only when something else has loaded it already.
        core = sys.modules.get("pydantic_core")
        self._parse_json: Callable[[str], Any] = core.from_json if core is not None else json.loads
        # Every key of this format starts so (see the module documentation for the two rows' keys).
        self._kstart = f"{FORMAT_VERSION}:"
        # Hits not yet written to their records (they are added at the next touch or at close()), and
        # when this process last touched each key (so a stale record passed to load() touches only once).
        self._pending_hits: dict[str, int] = {}
        self._touched: dict[str, float] = {}
        # Records due for a new last_used time, written together in one transaction (a hit stays
        # read-only): when TOUCH_BATCH are due, when the oldest is TOUCH_DELAY seconds old, before this
        # process prunes, and at close().
        self._pending_touches: dict[str, tuple[str, float]] = {}
        self._oldest_touch = 0.0
        self._lock = threading.Lock()
        # Deferred saves by key (a newer save of a key replaces the one waiting), and since when the oldest
        # has waited (time.monotonic(); None: nothing waits). An entry leaves the dict only once committed,
        # so a read that does not find its key there finds it in the database.
        self._deferred: dict[str, Deferred] = {}
        self._deferred_since: float | None = None
        self._deferred_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one batch written at a time: saves of a key land in order
        self._idle = IdleWriter("nbflow-store", DEFER_DELAY, self._waiting_since, self.flush_quietly)
        check_key(self)
        self._files.sweep_if_due(self.read_only)

    @classmethod
    def from_settings(cls, settings: Settings) -> ResultStore:
        """A store configured from nbflow's :class:`~nbflow.settings.Settings`."""
        return cls(
            settings.home,
            size_limit=settings.size_limit,
            secret_file=settings.secret_file,
            strict_buffers=settings.strict_buffers,
        )

    def __repr__(self) -> str:
        return f"ResultStore({str(self.home)!r}, size_limit={self.size_limit})"

    # -- reading -----------------------------------------------------------------------------------

    def probe(self, key: str) -> Record | None:
        """The record of the entry for ``key``, or ``None`` if there is none or it has expired.

        Reads metadata only: no payload bytes, no unpickling. The record is not authenticated yet; that
        happens in :meth:`load`. Expired entries are deleted; unreadable ones are deleted with a warning.
        """
        try:
            self._commit_deferred(key)
            raw = sql.read(self, self._mkey(key))
        except sqlite3.DatabaseError as error:
            if not recover(self, error):
                raise
            return None
        return None if raw is None else self._checked_record(key, raw)

    def _checked_record(self, key: str, raw: Any) -> Record | None:
        """Parse a stored record; ``None`` (after deleting the entry) if it is unreadable or expired."""
        try:
            record = self._parse_record(raw)
            expired = record.expires is not None and record.expires <= time.time()
        except (ValueError, TypeError):
            eviction.discard(self, key, None, raw, "has unreadable metadata")
            return None
        if record.key != key or record.format_version != FORMAT_VERSION:
            # Metadata of another entry (or format) stored under this key: tampering or a bug.
            eviction.discard(self, key, record, raw, "has metadata that belongs to another entry")
            return None
        if expired:
            eviction.delete_if(self, key, lambda current: current == raw)
            return None
        return record

    def load(self, key: str, record: Record | None = None, *, type_hint: Any = None) -> Any:
        """The stored value for ``key``; raises :class:`CacheMiss` if there is no usable entry.

        ``record`` (the result of a preceding :meth:`probe`) is accepted but not needed: a load reads the
        entry's payload row, which carries its own signed fields, and never trusts a metadata record.
        ``type_hint`` is passed to the serializer (the JSON serializer validates into it).

        The MAC is verified before anything is parsed or unpickled, and buffer checksums before the value
        is rebuilt. An entry that fails verification is deleted, reported with one
        :class:`~nbflow.exceptions.NbflowWarning` naming its task, and treated as a miss.
        """
        try:
            return loading.load(self, key, type_hint)
        except sqlite3.DatabaseError as error:
            if not recover(self, error):
                raise
            raise CacheMiss(key, "the store's database was damaged and has been replaced") from None

    def records(self) -> Iterator[Record]:
        """All records of the current format version, in key order. Reads metadata only."""
        try:
            yield from sql.records(self)
        except sqlite3.DatabaseError as error:
            if not recover(self, error):
                raise

    @recovering
    def volume(self) -> int:
        """Total size in bytes of the entries (kept as a running total by SQLite triggers, within the same
        transactions as the entries; :meth:`prune` recounts it)."""
        self.flush_quietly()
        return sql.volume_total(self)

    # -- writing -----------------------------------------------------------------------------------

    def save(
        self,
        key: str,
        value: Any,
        *,
        task_name: str,
        run_id: str | None = None,
        serializer: str | Serializer = "pickle",
        expires: float | None = None,
        defer: bool = False,
        on_lost: Callable[[str], None] | None = None,
    ) -> Record:
        """Store ``value`` under ``key`` and return its record, replacing any previous entry.

        Raises :class:`~nbflow.exceptions.SerializationError` if the value cannot be serialized (nothing
        is written) and :class:`~nbflow.exceptions.PersistError` if writing fails (nothing of the new
        entry is kept; a previous entry under the key stays as it was). If the store then exceeds its
        size limit, least recently used entries are evicted (never the one just saved).

        With ``defer=True`` a small entry (a stream of up to 1 MiB and no array buffers) is serialized and
        sealed at once but committed later, together with others, within about 50 ms (see :meth:`flush`):
        a batch costs about half of saving each entry on its own. This process reads it back meanwhile;
        other processes see it once committed, and a process killed before then loses it. If writing the
        batch fails, the save that wrote it raises :class:`~nbflow.exceptions.PersistError` (a batch
        written by the idle thread or at exit warns instead) and ``on_lost`` of each of its entries is
        called with the reason. Larger entries are saved at once, as without ``defer``.
        """
        if not isinstance(key, str) or not key:
            raise ValueError(f"a store key must be a non-empty string, not {key!r}")
        if expires is not None and not (isinstance(expires, (int, float)) and expires == expires):
            raise ValueError(f"expires must be an epoch timestamp or None, not {expires!r}")
        if self.read_only:
            raise StoreUnwritable(f"the result of task {task_name!r} was not persisted: the store in "
                                  f"{self.directory} is read-only")
        chosen = get_serializer(serializer)
        if not isinstance(serializer, str) and _registered(chosen.name) is not chosen:
            register_serializer(chosen)  # so that this process can load what it saved
        stream, views = serialize(chosen, value, task_name)
        if defer and not views and len(stream) <= DEFER_MAX_BYTES and self._fast_writes:
            record, payload = self._sealer.entry(key, task_name, run_id, expires, chosen.name, stream, [], "")
            batches.defer(self, key, (record, payload, on_lost))
            return record
        self._commit_deferred(key)  # a waiting save of this key is older: it must not land over this one

        blob_id = secrets.token_hex(8) if views else ""
        written: list[str] = []
        try:
            buffers = [
                (view.nbytes, self._files.write(self._files.path(key, blob_id, index), view, written))
                for index, view in enumerate(views)
            ]
            record, payload = self._sealer.entry(key, task_name, run_id, expires, chosen.name, stream, buffers, blob_id)
            for path in written:
                os.utime(path)  # see ORPHAN_AGE: the files' age counts from the commit
            previous, total = sql.commit(self, key, record, payload)
        except self._write_errors as error:
            for path in written:
                self._files.remove(path)
            recover(self, error)  # a damaged database is replaced: the next save works
            message = (
                f"the result of task {task_name!r} was not persisted: writing it to the store in "
                f"{self.directory} failed ({error})"
            )
            code = getattr(error, "errno", None)
            raise (PersistError(code, message) if code else PersistError(message)) from error
        except BaseException:
            # Interrupted (KeyboardInterrupt): the files of an entry that did not commit are removed.
            # The interrupt may land just after the commit, so check which entry is live first.
            live = self._try_parse(self._cache.get(self._mkey(key))) if written else None
            if live is None or live.blob_id != blob_id:
                for path in written:
                    self._files.remove(path)
            raise
        finally:
            for view in views:
                view.release()
        self._after_commit([previous] if previous is not None else [], total, key, blob_id)
        return record

    def _after_commit(self, replaced: Iterable[Record], total: int, key: str, blob_id: str = "") -> None:
        """After a commit: remove the buffer files of the entries it replaced, and evict entries if the
        store's ``total`` is over its limit (never ``key``'s, just saved)."""
        for previous in replaced:
            if previous.blob_id and previous.blob_id != blob_id:
                self._files.remove_entry_files(previous)
        if total > self.size_limit:
            try:
                prune(self, protect=key, target=int(self.size_limit * PRUNE_LOW_WATER))
            except self._write_errors:
                pass  # eviction is retried by the next save or prune()

    # -- deferred saves ----------------------------------------------------------------------------

    def _waiting_since(self) -> float | None:
        return self._deferred_since

    @recovering
    def flush(self) -> None:
        """Commit the deferred saves now (see :meth:`save`), in one transaction.

        Raises :class:`~nbflow.exceptions.PersistError` if that fails: those results are then not stored,
        and each one's ``on_lost`` has been called. Interrupted, they stay deferred.
        """
        if not self._deferred:
            return
        with self._flush_lock:
            # A call, not the code itself: an exception raised at a ``try`` line in a ``with`` block (as a
            # trace function can) would skip the lock's release.
            written = batches.write_deferred(self)
        if written is None:
            return
        batch, replaced, total = written
        self._after_commit(replaced.values(), total, batch[-1][0])

    def _commit_deferred(self, key: str) -> None:
        """Commit the deferred saves first if one of them is ``key``'s (what follows reads or replaces it)."""
        if self._deferred and key in self._deferred:
            self.flush_quietly()

    def flush_quietly(self) -> bool:
        """:meth:`flush`, warning instead of raising (where no task call would get the error)."""
        try:
            self.flush()
        except PersistError as error:
            warnings.warn(str(error), NbflowWarning, stacklevel=2)
            return False
        return True

    # -- deleting ----------------------------------------------------------------------------------

    @recovering
    def delete(self, key: str) -> bool:
        """Delete the entry for ``key``; return whether there was one."""
        self._commit_deferred(key)
        return eviction.delete_if(self, key, lambda current: True)

    @recovering
    def prune(self) -> int:
        """Delete expired entries, then least recently used ones until the total size is within the limit.

        Also removes unreadable records, entries of other format versions, and payloads and buffer files
        that no record refers to (files only once they are over a minute old, so that saves in progress
        are left alone). Returns the number of entries removed.
        """
        self.flush_quietly()
        return prune(self, protect=None, target=self.size_limit)

    @recovering
    def clear(self) -> int:
        """Delete every entry in the store; return the number of entries removed.

        Safe while other processes save: it deletes the entries it found, each with its own files (as an
        eviction of everything would), and leftovers only once they are old enough not to belong to a save
        in progress. An entry committed while it runs is kept whole; one a load is reading right then is
        left for a later clear or prune.
        """
        self.flush_quietly()
        count = prune(self, protect=None, target=-1)
        with self._lock:
            self._pending_hits.clear()
            self._touched.clear()
            self._pending_touches.clear()
        return count

    def disk_usage(self) -> int:
        """Bytes the store's files take on disk (database and journal, diskcache's value files, buffer
        files), summed from file sizes."""
        return tree_size(self._root)

    def close(self) -> None:
        """Commit the deferred saves, write pending hit counts and use times, and close the database
        connection (the store reopens on next use)."""
        self.flush_quietly()
        flush_touches(self, all_hits=True)
        self._cache.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- LRU bookkeeping ---------------------------------------------------------------------------

    # -- helpers -----------------------------------------------------------------------------------

    def _mkey(self, key: str) -> str:
        """The diskcache key of the record row of ``key``."""
        return f"{self._kstart}{key}:m"

    def _pkey(self, key: str) -> str:
        """The diskcache key of the payload row of ``key``."""
        return f"{self._kstart}{key}:p"

    def _parse_record(self, raw: Any) -> Record:
        try:
            data = self._parse_json(raw)
        except (ValueError, TypeError) as error:
            raise ValueError(f"unreadable store record: {error}") from None
        if not isinstance(data, dict):
            raise ValueError("a store record must be a JSON object")
        return Record.from_dict(data)

    def _try_parse(self, raw: Any) -> Record | None:
        if raw is None:
            return None
        try:
            return self._parse_record(raw)
        except ValueError:
            return None

    # -- for `nbflow cache`: sizing and clearing by metadata alone ----------------------------------
    # (Used by the CLI, possibly while kernels write the same store. Nothing here reads a payload.)

    @recovering
    def delete_records(self, records: list[Record]) -> list[Record]:
        """Delete the entries ``records`` describe, each only if it is still that entry (one saved again
        since the records were read is kept); return the records of the entries deleted."""
        self.flush_quietly()
        return [record for record in records if eviction.delete_if(self, record.key, eviction.same_entry(self, record))]




def _registered(name: str) -> Serializer | None:
    try:
        return get_serializer(name)
    except ConfigurationError:
        return None
