"""Concurrency and rate limits shared by every process that uses one ``NBFLOW_HOME``.

Limits live in ``<NBFLOW_HOME>/concurrency.sqlite``: one row per limit (``limit`` slots, and for a rate
limit ``slot_decay_per_second``), one row per held slot (the holder's process id and thread, and when it
was taken). Taking a slot is one SQLite write transaction (``BEGIN IMMEDIATE``), so kernels, ``nbflow run``
and worker processes count against the same limit. Waiting is polling with a short, growing sleep.

Nothing here can hang a notebook for good:

- a slot held by a process that has died (a killed kernel) is freed by the next process that looks;
- asking for more slots than the limit has fails at once, naming the limit and its size;
- a thread that already holds a slot of a limit and asks for more than is left fails at once (it would
  wait for itself);
- ``timeout_seconds`` bounds every wait (:class:`~nbflow.exceptions.ConcurrencyTimeout`, a
  ``TimeoutError``), and ``KeyboardInterrupt`` stops one (the slots of the interrupted block are freed).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from nbflow.exceptions import ConcurrencyTimeout, ConfigurationError, NbflowError

__all__ = ["ConcurrencyLimit", "acquire", "delete_limit", "get_limit", "list_limits", "rate_limit_wait",
           "release", "set_limit"]

_FIRST_SLEEP = 0.01
_MAX_SLEEP = 0.25
_local = threading.local()


@dataclass(frozen=True)
class ConcurrencyLimit:
    """A named limit: at most ``limit`` slots held at once; with ``slot_decay_per_second`` it is a rate
    limit too (``rate_limit`` takes slots that free themselves at that rate)."""

    name: str
    limit: int
    slot_decay_per_second: float = 0.0
    active: bool = True


def _path() -> Path:
    from nbflow.settings import get_settings

    return get_settings().home / "concurrency.sqlite"


def _connect() -> sqlite3.Connection:
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.executescript(
        """
        CREATE TABLE IF NOT EXISTS limits (
            name TEXT PRIMARY KEY, size INTEGER NOT NULL, decay REAL NOT NULL DEFAULT 0,
            active INTEGER NOT NULL DEFAULT 1, used REAL NOT NULL DEFAULT 0, updated REAL NOT NULL DEFAULT 0);
        CREATE TABLE IF NOT EXISTS slots (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, pid INTEGER NOT NULL, thread INTEGER NOT NULL,
            occupy INTEGER NOT NULL, taken REAL NOT NULL);
        CREATE INDEX IF NOT EXISTS slots_name ON slots(name);
        """
    )
    return connection


@contextlib.contextmanager
def _write() -> Iterator[sqlite3.Connection]:
    connection = _connect()
    try:
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    finally:
        connection.close()


def _check_name(name: object, caller: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{caller}: a limit's name must be a non-empty string, got {name!r}")
    return name


def set_limit(name: str, limit: int, *, slot_decay_per_second: float = 0.0, active: bool = True) -> ConcurrencyLimit:
    """Create or change the limit ``name``: at most ``limit`` slots held at once, in every process using
    this ``NBFLOW_HOME`` (Prefect's ``prefect gcl create NAME --limit N``). ``slot_decay_per_second`` > 0
    makes it a rate limit for :func:`nbflow.rate_limit` (``limit`` calls at once, refilled at that rate).
    ``active=False`` keeps the limit but stops it limiting."""
    _check_name(name, "set_concurrency_limit")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigurationError(f"set_concurrency_limit({name!r}): limit={limit!r} must be a whole number >= 0")
    if isinstance(slot_decay_per_second, bool) or not isinstance(slot_decay_per_second, (int, float)) or not (
            slot_decay_per_second >= 0):
        raise ConfigurationError(
            f"set_concurrency_limit({name!r}): slot_decay_per_second={slot_decay_per_second!r} must be a number >= 0"
        )
    with _write() as connection:
        connection.execute(
            "INSERT INTO limits(name, size, decay, active, used, updated) VALUES (?, ?, ?, ?, 0, ?) "
            "ON CONFLICT(name) DO UPDATE SET size=excluded.size, decay=excluded.decay, active=excluded.active",
            (name, limit, float(slot_decay_per_second), int(bool(active)), time.time()),
        )
    return ConcurrencyLimit(name, limit, float(slot_decay_per_second), bool(active))


def get_limit(name: str) -> ConcurrencyLimit | None:
    """The limit ``name``, or None if none is set."""
    connection = _connect()
    try:
        row = connection.execute("SELECT name, size, decay, active FROM limits WHERE name = ?", (name,)).fetchone()
    finally:
        connection.close()
    return None if row is None else ConcurrencyLimit(row[0], row[1], row[2], bool(row[3]))


def list_limits() -> list[ConcurrencyLimit]:
    """Every limit set under this ``NBFLOW_HOME``, by name."""
    connection = _connect()
    try:
        rows = connection.execute("SELECT name, size, decay, active FROM limits ORDER BY name").fetchall()
    finally:
        connection.close()
    return [ConcurrencyLimit(row[0], row[1], row[2], bool(row[3])) for row in rows]


def delete_limit(name: str) -> bool:
    """Remove the limit ``name`` (and its held slots); True if there was one."""
    with _write() as connection:
        connection.execute("DELETE FROM slots WHERE name = ?", (name,))
        return connection.execute("DELETE FROM limits WHERE name = ?", (name,)).rowcount > 0


def _alive(pid: int) -> bool:
    """Whether a slot holder's process still runs (the run history's test of it)."""
    from nbflow.runs import _process_alive

    return _process_alive(pid)


def _free_dead(connection: sqlite3.Connection, name: str) -> None:
    """Free the slots of processes that are gone (a killed kernel never ran its ``finally``)."""
    pids = {row[0] for row in connection.execute("SELECT DISTINCT pid FROM slots WHERE name = ?", (name,))}
    for pid in pids:
        if not _alive(pid):
            connection.execute("DELETE FROM slots WHERE name = ? AND pid = ?", (name, pid))


def _held_here() -> dict[str, int]:
    held: dict[str, int] | None = getattr(_local, "held", None)
    if held is None:
        held = _local.held = {}
    return held


def _missing(names: Sequence[str], strict: bool, caller: str) -> None:
    """Limits that are not set: an error with ``strict``, else Prefect's warning through the run logger
    (printed, and kept in the run's logs), each time."""
    if strict:
        from nbflow.exceptions import ConcurrencySlotAcquisitionError

        raise ConcurrencySlotAcquisitionError(
            f"Concurrency limits {list(names)!r} must be created before acquiring slots: {caller} with "
            f"strict=True; set one with nbflow.set_concurrency_limit({names[0]!r}, 2)"
        )
    from nbflow.engine.logs import get_run_logger

    get_run_logger().warning(f"Concurrency limits {list(names)!r} do not exist - skipping acquisition.")


def _check_request(names: str | Sequence[str], occupy: int, timeout_seconds: float | None, caller: str) -> list[str]:
    if isinstance(names, str):
        names = [names]
    names = [_check_name(name, caller) for name in names]
    if isinstance(occupy, bool) or not isinstance(occupy, int) or occupy < 1:
        raise ConfigurationError(f"{caller}: occupy={occupy!r} must be a whole number >= 1")
    if timeout_seconds is not None and (isinstance(timeout_seconds, bool) or not isinstance(
            timeout_seconds, (int, float)) or not timeout_seconds >= 0):
        raise ConfigurationError(f"{caller}: timeout_seconds={timeout_seconds!r} must be seconds >= 0 or None")
    return names


def acquire(names: str | Sequence[str], occupy: int = 1, timeout_seconds: float | None = None,
            strict: bool = False) -> list[int]:
    """Take ``occupy`` slots of each limit in ``names`` (all or none), waiting while they are taken; the ids
    of the slot rows (for :func:`release`)."""
    names = _check_request(names, occupy, timeout_seconds, "nbflow.concurrency")
    caller = f"nbflow.concurrency({names[0]!r})" if len(names) == 1 else f"nbflow.concurrency({names!r})"
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    sleep = _FIRST_SLEEP
    held = _held_here()
    while True:
        with _write() as connection:
            limits = {row[0]: (row[1], bool(row[2])) for row in connection.execute(
                f"SELECT name, size, active FROM limits WHERE name IN ({','.join('?' * len(names))})", names)}
            missing = [name for name in names if name not in limits]
            if missing:
                _missing(missing, strict, caller)
            limited = [name for name in names if name in limits and limits[name][1]]
            free = True
            for name in limited:
                size = limits[name][0]
                if occupy > size:
                    raise NbflowError(
                        f"{caller}: occupy={occupy} is more than the limit {name!r} has ({size} slots), so it "
                        f"could never run; occupy fewer, or raise it with nbflow.set_concurrency_limit({name!r}, "
                        f"{occupy})"
                    )
                _free_dead(connection, name)
                used = connection.execute("SELECT COALESCE(SUM(occupy), 0) FROM slots WHERE name = ?",
                                          (name,)).fetchone()[0]
                if used + occupy > size:
                    free = False
                    # Slots this thread holds come back only when its enclosing block ends: never, if it waits.
                    if held.get(name, 0) + occupy > size:
                        raise NbflowError(
                            f"{caller}: this thread already holds {held[name]} of the {size} slots of {name!r} (an "
                            "enclosing `with nbflow.concurrency(...)`), so waiting for more would wait for itself; "
                            "take them in one block, or raise the limit"
                        )
            if free:
                now = time.time()
                thread = threading.get_ident()
                ids = [connection.execute(
                    "INSERT INTO slots(name, pid, thread, occupy, taken) VALUES (?, ?, ?, ?, ?)",
                    (name, os.getpid(), thread, occupy, now)).lastrowid or 0 for name in limited]
                for name in limited:
                    held[name] = held.get(name, 0) + occupy
                return ids
        if deadline is not None and time.monotonic() + sleep > deadline:
            raise ConcurrencyTimeout(
                f"{caller}: could not take {occupy} slot(s) within {timeout_seconds:g} s; every slot is held by "
                "other runs (see nbflow.concurrency.list_limits())"
            )
        time.sleep(sleep)
        sleep = min(sleep * 1.5, _MAX_SLEEP)


def release(ids: list[int], names: Sequence[str], occupy: int) -> None:
    """Give back the slots :func:`acquire` took."""
    held = _held_here()
    for name in names:
        if name in held:
            held[name] -= occupy
            if held[name] <= 0:
                del held[name]
    if not ids:
        return
    with _write() as connection:
        connection.executemany("DELETE FROM slots WHERE id = ?", [(slot,) for slot in ids])


def rate_limit_wait(names: str | Sequence[str], occupy: int = 1, timeout_seconds: float | None = None,
                    strict: bool = False) -> None:
    """Wait until ``occupy`` slots of each rate limit in ``names`` are free and take them; they free
    themselves at the limit's ``slot_decay_per_second``."""
    names = _check_request(names, occupy, timeout_seconds, "nbflow.rate_limit")
    caller = f"nbflow.rate_limit({names[0]!r})" if len(names) == 1 else f"nbflow.rate_limit({names!r})"
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    while True:
        with _write() as connection:
            rows = {row[0]: row[1:] for row in connection.execute(
                f"SELECT name, size, decay, active, used, updated FROM limits WHERE name IN "
                f"({','.join('?' * len(names))})", names)}
            missing = [name for name in names if name not in rows]
            if missing:
                _missing(missing, strict, caller)
            now = time.time()
            wait = 0.0
            levels: dict[str, float] = {}
            for name, (size, decay, active, used, updated) in rows.items():
                if not active:
                    continue
                if decay <= 0:
                    raise NbflowError(
                        f"{caller}: the limit {name!r} has no slot decay, so its slots would never come back; "
                        f"make it a rate limit with nbflow.set_concurrency_limit({name!r}, {size}, "
                        "slot_decay_per_second=1.0)"
                    )
                if occupy > size:
                    raise NbflowError(
                        f"{caller}: occupy={occupy} is more than the limit {name!r} has ({size} slots); occupy "
                        "fewer, or raise the limit"
                    )
                level = max(0.0, used - (now - updated) * decay)
                levels[name] = level
                if level + occupy > size:
                    wait = max(wait, (level + occupy - size) / decay)
            if wait <= 0:
                for name, level in levels.items():
                    connection.execute("UPDATE limits SET used = ?, updated = ? WHERE name = ?",
                                       (level + occupy, now, name))
                return
        if deadline is not None and time.monotonic() + wait > deadline:
            raise ConcurrencyTimeout(
                f"{caller}: {occupy} slot(s) would not be free within {timeout_seconds:g} s at the limit's rate"
            )
        time.sleep(min(max(wait, _FIRST_SLEEP), 1.0))
