"""A store database opened read-only, for when it cannot be written (a full disk, a read-only file system).

diskcache's ``Cache`` writes its settings every time it opens, so it cannot open a database on a full disk
at all. :class:`ReadOnlyCache` stands in for it: the same reads (``get``, ``iterkeys``, the connection the
store's direct queries use), through a SQLite connection opened ``mode=ro``, and every write fails with
``sqlite3.OperationalError``, which the store already treats as "not persisted". Values are read through
the store's :class:`~nbflow.store.disk.SafeDisk`, so nothing is unpickled here either.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

from nbflow.store.disk import SafeDisk

__all__ = ["ReadOnlyCache"]

_READ = "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1"


def _refuse(*_args: Any, **_kwargs: Any) -> Any:
    raise sqlite3.OperationalError("attempt to write a readonly database (the nbflow store is read-only)")


class ReadOnlyCache:
    """The subset of ``diskcache.Cache`` the store uses, read-only (see the module documentation)."""

    set = delete = clear = touch = add = pop = _refuse

    def __init__(self, directory: str, timeout: float = 60) -> None:
        self.directory = directory
        self._disk = SafeDisk(directory)
        uri = "file:" + urllib.parse.quote(os.path.join(directory, "cache.db"))
        try:
            self._con = self._connect(f"{uri}?mode=ro", timeout)
        except sqlite3.Error:
            # A read-only connection to a database in WAL mode still writes its shared-memory index, which
            # a full disk refuses. Opened as immutable, SQLite reads the file as it is, without locks: what a
            # writer may change meanwhile is caught by the MAC and the checksums, as any damage is.
            self._con = self._connect(f"{uri}?immutable=1", timeout)
        self._txn_id: int | None = None
        # The store takes this thread-local's connection on its hit path when it was opened by this process.
        self._local = threading.local()

    @staticmethod
    def _connect(uri: str, timeout: float) -> sqlite3.Connection:
        connection = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            connection.execute("SELECT COUNT(*) FROM Cache WHERE 0").fetchall()  # a database of the right shape
        except sqlite3.Error:
            connection.close()
            raise
        return connection

    def _sql(self, query: str, parameters: Any = ()) -> sqlite3.Cursor:
        return self._con.execute(query, parameters)

    def get(self, key: str, default: Any = None, **_options: Any) -> Any:
        rows = self._con.execute(_READ, (key,)).fetchall()
        if not rows:
            return default
        ((mode, filename, value),) = rows
        try:
            return self._disk.fetch(mode, filename, value, False)
        except OSError:
            return default

    def __contains__(self, key: str) -> bool:
        return bool(self._con.execute("SELECT 1 FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchall())

    def iterkeys(self, reverse: bool = False) -> Iterator[Any]:
        order = "DESC" if reverse else "ASC"
        rows = self._con.execute(f"SELECT key, raw FROM Cache ORDER BY key {order}").fetchall()
        for key, raw in rows:
            yield self._disk.get(key, raw)

    @contextlib.contextmanager
    def transact(self, retry: bool = False) -> Iterator[None]:
        _refuse()
        yield  # never reached

    def close(self) -> None:
        """Nothing to do: the read-only connection stays open for the store's later reads."""
