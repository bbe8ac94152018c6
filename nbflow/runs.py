"""Run history: one :class:`RunRecord` per flow run (or per process session), each with its task runs.

Records live in memory while a run is in progress and are written to ``<NBFLOW_HOME>/runs.sqlite``
(SQLite in WAL mode, so the CLI can read while a kernel writes). Writes are batched: a background thread
flushes changed records at most a few times a second, a finished flow flushes at once, and so does
process exit. A crash can lose the last fraction of a second of *history*, never a stored result.

A task call only queues its record here; the record is serialized when its batch is written. The rows
are kept cheap to write all the same, since a long loop of calls pays for them: a task run's row holds
compact JSON (schema 2: the fields away from their defaults, the history as arrays), written by hand
rather than by an encoder; task-run ids sort by creation time so the id index grows at its end; and
the write-ahead log is copied into the database by the idle writer, not by the engine's flushes. Rows
of earlier versions (schema 1: the full ``to_dict()``) are read alike.

Query with :func:`list_runs` (newest first) and :func:`get_run`; delete old runs with :func:`prune`
(nothing is deleted on its own: the history grows by a few hundred bytes per task call until pruned).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbflow._idle import IdleWriter
from nbflow._recovery import cannot_write, is_damaged, move_aside
from nbflow._recovery import warn_once as _warn_once
from nbflow.states import state_name

# Records hold their state as a StateName: a string ("Cached") that also answers .name, .type and
# .is_failed() as a State does, for code written against Prefect's run objects.
_PENDING = state_name("Pending", "PENDING")

if TYPE_CHECKING:
    import datetime

__all__ = ["RunList", "RunRecord", "StateEntry", "TaskRunRecord", "format_duration", "get_run", "list_runs",
           "prune", "time_saved"]

# Row formats. Runs: 1 = the JSON of ``RunRecord.header()``. Task runs: 1 = the JSON of ``to_dict()``
# (written by earlier versions; still read), 2 = compact JSON (see ``_task_run_json``).
_RUN_SCHEMA = 1
_TASK_RUN_SCHEMA = 2
_FLUSH_INTERVAL = 0.25
_FLUSH_ROWS = 2000
# The idle writer copies the write-ahead log into the database once about this much was written, so
# the flushes in the engine's thread do not (SQLite's own checkpoint, at 1000 pages, would run inside
# the flush that crosses it: about a third of the cost of writing a row). SQLite's stays as a backstop
# at a larger size, should the idle writer fall behind.
_CHECKPOINT_BYTES = 2_000_000
_AUTOCHECKPOINT_BYTES = 32_000_000
# A run keeps at most this many of its task runs in memory (then the newest half of them, and any still
# under way); every one is in the history on disk. A flow of a million calls, or a kernel's session, then
# holds a bounded amount whatever its length.
_IN_MEMORY = 10_000
_FINISHED_TYPES = frozenset(("COMPLETED", "FAILED", "CRASHED", "CANCELLED"))


_add_lock = threading.Lock()
_ids = random.Random(int.from_bytes(os.urandom(16), "big") ^ os.getpid())


def new_id() -> str:
    """A random 128-bit hex id. Seeded once from the OS: ``uuid4`` reads the OS entropy pool on every
    call, which costs ~20 µs on some virtual machines — too much per task call."""
    return f"{_ids.getrandbits(128):032x}"


def new_task_run_id() -> str:
    """A 128-bit hex id for a task run that sorts by creation time: a 48-bit millisecond timestamp, then
    80 random bits. The history's id index then grows at its end, where random ids would land all over a
    large index and rewrite one page of it per row. Run ids stay :func:`new_id`: people type their
    prefixes, which must tell runs apart from the first characters."""
    return f"{int(time.time() * 1000) << 80 | _ids.getrandbits(80):032x}"


def _reseed_after_fork() -> None:
    _ids.seed(int.from_bytes(os.urandom(16), "big") ^ os.getpid())


os.register_at_fork(after_in_child=_reseed_after_fork)


@dataclass(slots=True)
class StateEntry:
    """One step of a run's state history."""

    name: str
    type: str
    timestamp: float
    message: str | None = None


# Slots: a session keeps its latest 10,000 task runs in memory, and a slotted record is a third smaller.
@dataclass(slots=True)
class TaskRunRecord:
    """The record of one task call: every attempt, the cache key and how it ended."""

    id: str
    run_id: str
    task_name: str
    task_key: str
    state: str = _PENDING
    state_type: str = "PENDING"
    attempts: int = 0
    start_time: float | None = None
    end_time: float | None = None
    cache_key: str | None = None
    # The digests the key was made of ("code", "input:<name>", "run_id", ...), to explain a miss.
    key_parts: dict[str, str] = field(default_factory=dict)
    cache_hit: bool = False
    persisted: bool | None = None
    error: str | None = None
    traceback: str | None = None
    logs: list[str] = field(default_factory=list)
    history: list[StateEntry] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    result: str | None = None
    upstream: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    seq: int = 0
    # The runs of one ``Task.map`` call share ``map_id`` (the graph draws them as one node with a
    # progress count); ``map_index`` is the run's position and ``map_size`` the number of runs.
    map_id: str | None = None
    map_index: int | None = None
    map_size: int | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from the first Running to the final state (None while it runs)."""
        if self.start_time is None or self.end_time is None:
            return None
        return self.end_time - self.start_time

    def __repr__(self) -> str:
        # One line: the full record (history, key parts, traceback) is kilobytes, and lists print many.
        attempts = f", {self.attempts} attempts" if self.attempts > 1 else ""
        # (`#seq`, not the id: task-run ids begin with their creation time, so their heads look alike)
        took = format_duration(self.duration)
        return f"<TaskRunRecord #{self.seq} {self.task_name!r} {self.state}, {took}{attempts}>"

    def to_dict(self) -> dict[str, Any]:
        # Built by hand: dataclasses.asdict deep-copies and costs ~10x more, on every task call.
        data = {name: getattr(self, name) for name in _TASK_RUN_FIELDS}
        data["history"] = [
            {"name": e.name, "type": e.type, "timestamp": e.timestamp, "message": e.message} for e in self.history
        ]
        data["logs"] = list(self.logs)
        data["inputs"] = dict(self.inputs)
        data["key_parts"] = dict(self.key_parts)
        data["upstream"] = list(self.upstream)
        data["tags"] = list(self.tags)
        data["duration"] = self.duration
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRunRecord:
        """The record from :meth:`to_dict`'s output or from a stored row of any schema (a compact row
        leaves out the fields at their defaults and writes its history as arrays)."""
        data = dict(data)
        data.pop("duration", None)
        data["history"] = [_entry_from_json(entry) for entry in data.get("history", [])]
        if "state" in data:
            data["state"] = state_name(data["state"], data.get("state_type") or "")
        known = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in known})

    def _compact(self) -> dict[str, Any]:
        """What a schema-2 row holds: the fields that differ from their defaults (the ids, names, state and
        ``seq`` always), the history as ``[name, timestamp, message?, type?]`` arrays."""
        data: dict[str, Any] = {
            "id": self.id, "run_id": self.run_id, "task_name": self.task_name, "task_key": self.task_key,
            "state": self.state, "state_type": self.state_type, "seq": self.seq,
        }
        for name, default in _TASK_RUN_OPTIONAL:
            value = getattr(self, name)
            if value is not default and not (type(value) is type(default) and value == default):
                data[name] = _copy(value)
        if self.history:
            data["history"] = [_entry_to_json(entry) for entry in list(self.history)]
        return data


_TASK_RUN_FIELDS = tuple(TaskRunRecord.__dataclass_fields__)
# (name, default) of the fields a compact row leaves out when they hold their default.
_TASK_RUN_OPTIONAL = tuple(
    (f.name, f.default_factory() if f.default_factory is not MISSING else f.default)
    for f in fields(TaskRunRecord)
    if f.name not in ("id", "run_id", "task_name", "task_key", "state", "state_type", "seq", "history")
)

# The type of each state name the engine uses: a compact history entry leaves out a type found here.
_STATE_TYPES = {
    "Pending": "PENDING", "Running": "RUNNING", "Retrying": "RUNNING", "AwaitingRetry": "SCHEDULED",
    "Completed": "COMPLETED", "Cached": "COMPLETED", "Failed": "FAILED", "TimedOut": "FAILED",
    "UpstreamFailed": "FAILED", "Crashed": "CRASHED", "Cancelled": "CANCELLED", "RolledBack": "CANCELLED",
}


# Each of them with the start of its compact history entry: ``["Pending",``.
_STATE_ENTRY_HEADS = {name: (state_type, f"[{json.dumps(name)},") for name, state_type in _STATE_TYPES.items()}


def _copy(value: Any) -> Any:
    # Lists and dicts are copied so that the encoder sees one consistent version.
    if type(value) is list:
        return list(value)
    if type(value) is dict:
        return dict(value)
    return value


def _entry_to_json(entry: StateEntry) -> list[Any]:
    if _STATE_TYPES.get(entry.name) == entry.type:
        if entry.message is None:
            return [entry.name, entry.timestamp]
        return [entry.name, entry.timestamp, entry.message]
    return [entry.name, entry.timestamp, entry.message, entry.type]


def _entry_from_json(entry: dict[str, Any] | list[Any]) -> StateEntry:
    if isinstance(entry, dict):  # schema 1
        return StateEntry(**entry)
    name = entry[0]
    return StateEntry(
        name,
        entry[3] if len(entry) > 3 else _STATE_TYPES.get(name, "PENDING"),
        entry[1],
        entry[2] if len(entry) > 2 else None,
    )


@dataclass
class RunRecord:
    """The record of one flow run, or of the task calls one process made outside any flow
    (``kind="session"``).

    ``task_runs`` holds its newest 10,000 task runs at most (and any still under way): a flow of a million
    calls, or a kernel's session, stays small in memory. The history on disk has every one:
    :meth:`all_task_runs` and :func:`get_run` read them, and :meth:`counts` counts them all."""

    id: str
    flow_name: str
    kind: str = "flow"
    state: str = _PENDING
    state_type: str = "PENDING"
    start_time: float = field(default_factory=time.time)
    end_time: float | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    parent_run_id: str | None = None
    attempts: int = 0
    pid: int = field(default_factory=os.getpid)
    history: list[StateEntry] = field(default_factory=list)
    task_runs: list[TaskRunRecord] = field(default_factory=list)
    source: str | None = None
    task_run_count: int = 0
    failed_task_runs: int = 0
    # Set by `nbflow run` (through NBFLOW_LAUNCH_ID) so it can find the runs its kernel made.
    launch_id: str | None = field(default_factory=lambda: os.environ.get("NBFLOW_LAUNCH_ID") or None)
    # What the flow's own body logged (get_run_logger() outside its tasks, its prints with log_prints).
    logs: list[str] = field(default_factory=list)
    # The name given by the flow's flow_run_name (None: the flow's name).
    run_name: str | None = None
    # Outcomes (as counts() names them) of the finished task runs no longer kept in memory, and the number of
    # task runs in memory at which the next are forgotten (0: the limit).
    forgotten: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    _trim_at: int = field(default=0, init=False, repr=False, compare=False)

    @property
    def duration(self) -> float | None:
        """Seconds from the start to the end (None while it runs)."""
        if self.end_time is None:
            return None
        return self.end_time - self.start_time

    @property
    def name(self) -> str:
        """The flow's name; for a session run, the notebook or script it ran (``session`` if unknown)."""
        if self.kind == "session":
            return os.path.basename(self.source) if self.source else "session"
        return self.flow_name

    def __repr__(self) -> str:
        # One line (kind, name, state, start, duration, task counts): the dataclass repr of a run with its
        # task runs is kilobytes, and list_runs() shows many.
        return (f"<RunRecord {self.kind} {self.name!r} {self.state}, started {_clock(self.start_time)}, "
                f"{format_duration(self.duration)}, {self._counts_text()}, id {self.id[:12]}>")

    def _counts_text(self) -> str:
        if not self.task_runs and not self.forgotten and self.task_run_count:  # listed without its task runs
            return f"{self.task_run_count} task runs"
        counts = self.counts()
        other = f", {counts['other']} other" if counts["other"] else ""
        return f"{counts['cached']} cached, {counts['computed']} computed, {counts['failed']} failed{other}"

    def add_task_run(self, task_run: TaskRunRecord) -> None:
        """Append a task run, numbering it. A run keeps only its newest task runs in memory (all are in the
        history on disk: :func:`get_run` reads them), so a flow or a kernel that makes millions of calls
        does not grow."""
        with _add_lock:  # task calls may start from several threads at once
            task_run.seq = self.task_run_count
            self.task_run_count += 1
            self.task_runs.append(task_run)
            if len(self.task_runs) > max(_IN_MEMORY, self._trim_at):
                self._forget_oldest()

    def _forget_oldest(self) -> None:
        # The oldest finished task runs leave memory, counted by outcome so that counts() stays whole; those
        # still under way stay (the engine changes them, and they are this run's to show). Each is looked at
        # once: one finishing meanwhile (another thread) is either kept or counted, never both. Called under
        # _add_lock.
        cut = len(self.task_runs) - _IN_MEMORY // 2
        kept: list[TaskRunRecord] = []
        tally = self.forgotten
        for task_run in self.task_runs[:cut]:
            if task_run.state_type in _FINISHED_TYPES:
                outcome = _outcome(task_run)
                tally[outcome] = tally.get(outcome, 0) + 1
            else:
                kept.append(task_run)
        self.task_runs[:cut] = kept
        # Many calls still under way stay: the next look is half the limit later, not at every call.
        self._trim_at = len(self.task_runs) + _IN_MEMORY // 2

    def all_task_runs(self) -> list[TaskRunRecord]:
        """Every task run of this run, in call order: :attr:`task_runs` when it holds them all, else the
        history's copies of the ones no longer in memory followed by those in memory."""
        with _add_lock:
            in_memory = list(self.task_runs)
        if len(in_memory) >= self.task_run_count:
            return in_memory
        live = {task_run.id for task_run in in_memory}
        try:
            stored = history().find_task_runs([self.id])
        except Exception:  # the history cannot be read: what memory holds
            return in_memory
        older = [task_run for task_run in stored if task_run.id not in live]
        return sorted([*older, *in_memory], key=lambda task_run: task_run.seq)

    def counts(self) -> dict[str, int]:
        """Task runs by outcome: cached, computed, failed, other (those no longer in memory included)."""
        counts = {"cached": 0, "computed": 0, "failed": 0, "other": 0}
        with _add_lock:  # not halfway through a trim
            forgotten, records = list(self.forgotten.items()), list(self.task_runs)
        for outcome, number in forgotten:
            counts[outcome] += number
        for task_run in records:
            counts[_outcome(task_run)] += 1
        return counts

    def header(self) -> dict[str, Any]:
        """Every field but the task runs (which are stored, and copied, separately)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in _MEMORY_ONLY}
        data["history"] = [asdict(entry) for entry in self.history]
        data["parameters"] = dict(self.parameters)
        return data


# RunRecord fields that are not written to the history's row of the run.
_MEMORY_ONLY = frozenset(("task_runs", "forgotten", "_trim_at"))


def _outcome(task_run: TaskRunRecord) -> str:
    if task_run.state == "Cached":
        return "cached"
    if task_run.state_type == "COMPLETED":
        return "computed"
    if task_run.state_type in ("FAILED", "CRASHED", "CANCELLED"):
        return "failed"
    return "other"


class RunHistory:
    """The SQLite-backed history under one home directory. One instance per home per process.

    Writes are batched in the caller's thread: a change is buffered, and the buffer is written when
    it is older than a quarter second (or large) at the next change, when a flow ends, and at exit. A
    helper thread writes what an idle process leaves behind. Writing in the engine's own thread keeps
    a background thread from holding the GIL while the engine waits on the store.
    """

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / "runs.sqlite"
        self._lock = threading.RLock()
        self._dirty_runs: dict[str, RunRecord] = {}
        self._dirty_tasks: dict[str, TaskRunRecord] = {}
        self._oldest: float | None = None
        self._idle = IdleWriter("nbflow-run-history", _FLUSH_INTERVAL, self._oldest_change, self._flush_quietly,
                                before=self._checkpoint_if_due)
        self._closed = False
        self._connection: sqlite3.Connection | None = None
        self._unchecked_bytes = 0  # written to the log since the last checkpoint (roughly)
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_lock = threading.Lock()

    # -- connection -----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        connection = self._connection
        if connection is not None and self.path.exists():
            return connection
        if connection is not None:  # the file was deleted under us (a cleared home): start again
            connection.close()
            with self._checkpoint_lock:
                if self._checkpointer is not None:
                    self._checkpointer.close()
                    self._checkpointer = None
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            connection = self._open()
        except sqlite3.DatabaseError as error:
            if not self._set_aside(error):
                raise
            connection = self._open()
        self._connection = connection
        return connection

    def _set_aside(self, error: BaseException) -> bool:
        """If ``error`` says the history file is damaged: move it aside (warning once, naming where) so that
        the next connection starts a new one; return whether it did."""
        if not is_damaged(error):
            return False
        if self._connection is not None:
            with contextlib.suppress(sqlite3.Error):
                self._connection.close()
            self._connection = None
        try:
            moved = move_aside(self.path)
        except OSError:
            return False
        _warn_once(f"the nbflow run history {self.path} is damaged ({error}); it was moved to {moved} for "
                   "inspection and a new one started: earlier runs are no longer listed")
        return True

    def _open(self) -> sqlite3.Connection:
        if not self.path.exists():
            # Created private: records keep argument values verbatim. SQLite gives its -wal and -shm
            # files the mode of the database file.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600))
        connection = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        # Larger pages for a new file (an existing one keeps its own): appending a few hundred bytes per
        # task run then writes fewer pages to the log. Measured: ~0.5 µs less per row.
        connection.execute("PRAGMA page_size=16384")
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        connection.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_BYTES // page_size}")
        # Once a checkpoint has copied it all, the log starts over; the file is cut back to this size then
        # (without it, it would keep the largest size it ever reached while the process runs).
        connection.execute(f"PRAGMA journal_size_limit={_CHECKPOINT_BYTES * 2}")
        connection.executescript(
            """
            CREATE TABLE IF NOT EXISTS runs (
                id TEXT PRIMARY KEY, flow_name TEXT, kind TEXT, state TEXT, start_time REAL,
                end_time REAL, data TEXT NOT NULL, schema INTEGER NOT NULL);
            CREATE INDEX IF NOT EXISTS runs_start ON runs(start_time);
            CREATE TABLE IF NOT EXISTS task_runs (
                id TEXT PRIMARY KEY, run_id TEXT NOT NULL, seq INTEGER, task_name TEXT,
                state TEXT, data TEXT NOT NULL, schema INTEGER NOT NULL);
            CREATE INDEX IF NOT EXISTS task_runs_run ON task_runs(run_id, seq);
            """
        )
        return connection

    # -- writing --------------------------------------------------------------------------------
    def mark(self, run: RunRecord, task_run: TaskRunRecord | None = None) -> None:
        """Note that ``run`` (and ``task_run``) changed; they are written soon (see the class doc)."""
        now = time.monotonic()
        with self._lock:
            self._dirty_runs[run.id] = run
            if task_run is not None:
                # The record itself, serialized when the batch is written: a task call does not wait for
                # its row's JSON (a third of a cache hit's time), and a record marked twice in one batch
                # is written once, as it is by then.
                self._dirty_tasks[task_run.id] = task_run
            oldest = self._oldest
            if oldest is None:
                self._oldest = oldest = now
            due = now - oldest >= _FLUSH_INTERVAL or len(self._dirty_tasks) >= _FLUSH_ROWS
        if due:
            self._flush_quietly()
        elif oldest == now:
            self._idle.wake()  # only the first change of a batch: the idle writer then watches the batch

    def _oldest_change(self) -> float | None:
        return self._oldest

    def _checkpoint_if_due(self) -> None:
        if self._unchecked_bytes >= _CHECKPOINT_BYTES:
            self._checkpoint_quietly()

    def _checkpoint_quietly(self) -> None:
        """Copy the write-ahead log into the database (a passive checkpoint: writers go on meanwhile).
        Its own connection, so the engine's flushes never wait for it; SQLite lets the GIL go meanwhile."""
        self._unchecked_bytes = 0
        try:
            with self._checkpoint_lock:
                if self._closed:
                    return
                if self._checkpointer is None:  # mode=rw: never create the file (a cleared home)
                    self._checkpointer = sqlite3.connect(f"{self.path.as_uri()}?mode=rw", uri=True, timeout=60,
                                                         check_same_thread=False)
                self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except Exception:  # the next flush, or SQLite's own checkpoint, will do
            import logging

            logging.getLogger("nbflow.runs").debug("checkpoint of %s failed", self.path, exc_info=True)

    def _flush_quietly(self) -> bool:
        try:
            self.flush()
        except Exception as error:  # history must never take a task down
            if cannot_write(error):
                _warn_once(f"the nbflow run history {self.path} cannot be written ({error}); runs are kept in "
                           "memory and written once it can be")
                return False
            import logging

            logging.getLogger("nbflow.runs").exception("could not write run history to %s", self.path)
            return False
        return True

    def flush(self) -> None:
        """Write every changed record now."""
        with self._lock:
            runs = list(self._dirty_runs.values())
            tasks = list(self._dirty_tasks.values())
            self._dirty_runs.clear()
            self._dirty_tasks.clear()
            self._oldest = None
            if not runs and not tasks:
                return
            run_rows = [
                (r.id, r.flow_name, r.kind, r.state, r.start_time, r.end_time, _dumps(r.header()), _RUN_SCHEMA)
                for r in runs
            ]
            rows = [row for row in map(_task_run_row, tasks) if row is not None]
            try:
                connection = self._connect()
                connection.execute("BEGIN IMMEDIATE")
                try:
                    connection.executemany("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?)", run_rows)
                    connection.executemany("INSERT OR REPLACE INTO task_runs VALUES (?,?,?,?,?,?,?)", rows)
                    connection.execute("COMMIT")
                    # Rows and index entries: a few hundred bytes each beyond their data.
                    written = sum(len(row[6]) for row in run_rows) + sum(len(row[5]) for row in rows)
                    self._unchecked_bytes += written + 200 * (len(run_rows) + len(rows))
                except BaseException:
                    # A failed COMMIT on a full disk may have ended the transaction already.
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute("ROLLBACK")
                    raise
            except BaseException as error:
                self._set_aside(error)  # a damaged file: the next try starts a new one
                for r in runs:  # keep them for the next try
                    self._dirty_runs.setdefault(r.id, r)
                for t in tasks:
                    self._dirty_tasks.setdefault(t.id, t)
                self._oldest = time.monotonic()
                raise
        if self._unchecked_bytes >= _CHECKPOINT_BYTES and not self._closed:
            self._idle.wake()

    def close(self) -> None:
        """Write what is left and close the files (at exit)."""
        self._closed = True
        self._idle.stop()
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
        with self._lock:
            self.flush()
            if self._connection is not None:
                self._connection.close()  # the last connection to close checkpoints the log
                self._connection = None

    # -- deleting -------------------------------------------------------------------------------
    def prune(self, older_than: float) -> tuple[int, int]:
        """Delete the runs that ended more than ``older_than`` seconds ago, with their task runs; return
        how many runs and task runs were deleted. See :func:`prune`."""
        self.flush()
        if not self.path.exists():
            return 0, 0
        with self._lock:
            return _delete_old_runs(self._connect(), time.time() - older_than)

    # -- reading --------------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        with self._lock:
            self._connect()  # creates the file and tables if this process never wrote
        return sqlite3.connect(self.path, timeout=60)

    def list_runs(self, limit: int | None = None, *, pid: int | None = None,
                  headers_only: Collection[str] = (), task_runs: bool = True) -> list[RunRecord]:
        """Runs newest first, with their task runs; only those of process ``pid`` if given, and without the
        task runs of the runs in ``headers_only`` (a live run whose records the caller has in memory), or
        of any run with ``task_runs=False``. A kernel's session run may have millions of task runs."""
        self.flush()
        if not self.path.exists():
            return []
        connection = self._reader()
        try:
            query = "SELECT id, data FROM runs"
            parameters: list[Any] = []
            if pid is not None:
                query += " WHERE json_extract(data, '$.pid') = ?"
                parameters.append(pid)
            query += " ORDER BY start_time DESC"
            if limit:
                query += " LIMIT ?"
                parameters.append(limit)
            rows = connection.execute(query, parameters).fetchall()
            runs = [_run_from_json(data) for _, data in rows]
            by_id = {run.id: run for run in runs if task_runs and run.id not in headers_only}
            if by_id:
                marks = ",".join("?" * len(by_id))
                for (data,) in connection.execute(
                    f"SELECT data FROM task_runs WHERE run_id IN ({marks}) ORDER BY seq", tuple(by_id)
                ):
                    task_run = TaskRunRecord.from_dict(json.loads(data))
                    by_id[task_run.run_id].task_runs.append(task_run)
            return runs
        finally:
            connection.close()

    def find_task_runs(self, run_ids: Collection[str], *, task_name: str | None = None,
                       state: str | None = None) -> list[TaskRunRecord]:
        """The task runs of the runs ``run_ids`` with this task name and/or state (chosen in SQL: only the
        matches are parsed), in no particular order."""
        self.flush()
        if not self.path.exists() or not run_ids:
            return []
        conditions, values = "", []
        for column, value in (("task_name", task_name), ("state", state)):
            if value is not None:
                conditions += f" AND {column} = ?"
                values.append(value)
        ids = list(run_ids)
        found: list[TaskRunRecord] = []
        connection = self._reader()
        try:
            for chunk in _id_chunks(ids):
                query = f"SELECT data FROM task_runs WHERE run_id IN ({','.join('?' * len(chunk))}){conditions}"
                found += [TaskRunRecord.from_dict(json.loads(data))
                          for (data,) in connection.execute(query, [*chunk, *values])]
        finally:
            connection.close()
        return found

    def get_run(self, run_id: str) -> RunRecord | None:
        self.flush()
        if not self.path.exists():
            return None
        connection = self._reader()
        try:
            row = connection.execute("SELECT data FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                matches = connection.execute(
                    "SELECT data FROM runs WHERE id LIKE ? LIMIT 2", (run_id + "%",)
                ).fetchall()
                if len(matches) != 1:
                    return None
                row = matches[0]
            run = _run_from_json(row[0])
            for (data,) in connection.execute(
                "SELECT data FROM task_runs WHERE run_id = ? ORDER BY seq", (run.id,)
            ):
                run.task_runs.append(TaskRunRecord.from_dict(json.loads(data)))
            return run
        finally:
            connection.close()


# SQLite limits the number of parameters of one statement (999 in older builds).
_ID_BATCH = 500


def _id_chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    """``ids`` in slices small enough for one ``IN (...)`` each."""
    for start in range(0, len(ids), _ID_BATCH):
        yield ids[start : start + _ID_BATCH]


def _delete_old_runs(connection: sqlite3.Connection, cutoff: float) -> tuple[int, int]:
    """Delete, in one transaction, the runs that ended before ``cutoff`` (an epoch time) and the runs that
    never ended, started before it, and whose process is gone (a kernel that was killed); their task runs
    go with them. Runs in progress are kept whole."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        rows = connection.execute(
            "SELECT id, end_time, json_extract(data, '$.pid') FROM runs WHERE COALESCE(end_time, start_time) < ?",
            (cutoff,),
        ).fetchall()
        doomed = [run_id for run_id, end_time, pid in rows if end_time is not None or not _process_alive(pid)]
        task_runs = 0
        for chunk in _id_chunks(doomed):
            marks = ",".join("?" * len(chunk))
            task_runs += connection.execute(f"DELETE FROM task_runs WHERE run_id IN ({marks})", chunk).rowcount
            connection.execute(f"DELETE FROM runs WHERE id IN ({marks})", chunk)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return len(doomed), task_runs


def _process_alive(pid: Any) -> bool:
    """Whether process ``pid`` exists on this machine (a run without a pid counts as alive: kept)."""
    if type(pid) is not int or pid <= 0:
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (PermissionError), or a platform without signal 0
        return True
    return True


def format_duration(seconds: float | None) -> str:
    """A duration as people read it in tables and notices: ``<1 ms``, ``503 ms``, ``1.25 s`` (``-`` if None)."""
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return "<1 ms"
    if seconds < 0.9995:  # (0.9996 s would read "1000 ms")
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def time_saved(computed: float, restored: float) -> float:
    """Seconds a cache hit saved: what computing the entry took, less what the hit took (never below 0).
    A cell's hit line, ``%nbflow status`` and ``nbflow run``'s summary all count it so."""
    return max(computed - restored, 0.0)


# One encoder for every record: json.dumps with options builds a new one per call (a third of its time).
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def _dumps(data: dict[str, Any]) -> str:
    # pydantic-core's encoder is several times faster than json.dumps, and this runs per task call; but
    # importing it costs a fresh process ~50 ms, so it is used only once something else has loaded it.
    core = sys.modules.get("pydantic_core")
    # A record may gain a log line or a state while it is written; a retry sees a consistent copy.
    for _ in range(5):
        try:
            if core is not None:
                return str(core.to_json(data, fallback=str).decode())
            return _ENCODER.encode(data)
        except RuntimeError:
            continue
    return json.dumps(data, default=str)


_quote = json.encoder.encode_basestring  # C-accelerated: a str as a JSON string, TypeError for anything else
_FINITE = 1e300


def _time(value: Any) -> str:
    # 17 significant digits give the float back exactly, and cost less than float.__repr__.
    if type(value) is not float or not -_FINITE < value < _FINITE:  # NaN and infinities are not JSON
        raise ValueError(value)
    return f"{value:.17g}"


def _strings(items: list[Any]) -> str:
    return "[" + ",".join([_quote(item) for item in items]) + "]"


def _int(value: Any) -> str:
    if type(value) is not int:
        raise TypeError(value)
    return int.__repr__(value)


def _fast_json(t: TaskRunRecord) -> str:
    """The JSON of ``t._compact()``, written directly: even the C encoder of the json module costs
    several times more per task call. Raises TypeError or ValueError for a value of a type it does not
    expect, RuntimeError for a dict that another thread changes while it is read."""
    q = _quote
    text = (
        f'{{"id":{q(t.id)},"run_id":{q(t.run_id)},"task_name":{q(t.task_name)},"task_key":{q(t.task_key)},'
        f'"state":{q(t.state)},"state_type":{q(t.state_type)},"seq":{int.__repr__(t.seq)}'
    )
    if t.attempts != 0:
        text += f',"attempts":{_int(t.attempts)}'
    start, end = t.start_time, t.end_time
    if start is not None:
        if type(start) is not float or not -_FINITE < start < _FINITE:
            raise ValueError(start)
        start_text = f"{start:.17g}"
        text += ',"start_time":' + start_text
        if end is not None:  # a cache hit starts and ends at once
            text += ',"end_time":' + (start_text if end == start else _time(end))
    elif end is not None:
        text += ',"end_time":' + _time(end)
    if t.cache_key is not None:
        text += f',"cache_key":{q(t.cache_key)}'
    if t.key_parts:
        sep = ',"key_parts":{'  # written in place (a helper and a comprehension cost more than the dict)
        for key, value in t.key_parts.items():
            text += f"{sep}{q(key)}:{q(value)}"
            sep = ","
        text += "}"
    if t.cache_hit is not False:
        if t.cache_hit is not True:
            raise TypeError(t.cache_hit)
        text += ',"cache_hit":true'
    if t.persisted is not None:
        if type(t.persisted) is not bool:
            raise TypeError(t.persisted)
        text += ',"persisted":true' if t.persisted else ',"persisted":false'
    if t.error is not None:
        text += f',"error":{q(t.error)}'
    if t.traceback is not None:
        text += f',"traceback":{q(t.traceback)}'
    if t.logs:
        text += f',"logs":{_strings(list(t.logs))}'
    if t.inputs:
        sep = ',"inputs":{'
        for key, value in t.inputs.items():
            text += f"{sep}{q(key)}:{q(value)}"
            sep = ","
        text += "}"
    if t.result is not None:
        text += f',"result":{q(t.result)}'
    if t.upstream:
        text += f',"upstream":{_strings(list(t.upstream))}'
    if t.tags:
        text += f',"tags":{_strings(list(t.tags))}'
    if t.map_id is not None:
        text += f',"map_id":{q(t.map_id)}'
    if t.map_index is not None:
        text += f',"map_index":{_int(t.map_index)}'
    if t.map_size is not None:
        text += f',"map_size":{_int(t.map_size)}'
    if t.history:
        entries = []
        for entry in t.history:  # a list: another thread's append does not disturb the loop
            name, message, timestamp = entry.name, entry.message, entry.timestamp
            if type(timestamp) is not float or not -_FINITE < timestamp < _FINITE:
                raise ValueError(timestamp)
            known = _STATE_ENTRY_HEADS.get(name)
            if known is not None and known[0] == entry.type:
                if message is None:  # the common entry: a state of the engine's, no message
                    entries.append(f"{known[1]}{timestamp:.17g}]")
                else:
                    entries.append(f"{known[1]}{timestamp:.17g},{q(message)}]")
            else:
                message = "null" if message is None else q(message)
                entries.append(f"[{q(name)},{timestamp:.17g},{message},{q(entry.type)}]")
        text += ',"history":[' + ",".join(entries) + "]"
    return text + "}"


def _task_run_row(task_run: TaskRunRecord) -> tuple[Any, ...] | None:
    """The ``task_runs`` row of a record as it is now; None (logged) for one that cannot be serialized."""
    try:
        return (task_run.id, task_run.run_id, task_run.seq, task_run.task_name, task_run.state,
                _task_run_json(task_run), _TASK_RUN_SCHEMA)
    except Exception:  # history must never take a task down
        import logging

        logging.getLogger("nbflow.runs").exception("could not record task run %s", task_run.id)
        return None


def _task_run_json(task_run: TaskRunRecord) -> str:
    """The compact (schema 2) JSON of a task run's row."""
    for _ in range(5):
        try:
            return _fast_json(task_run)
        except RuntimeError:  # a dict changed while it was read (another thread): read it again
            continue
        except (TypeError, ValueError):  # a value of an unusual type: the encoder's ``default=str`` takes it
            break
    return _dumps(_json_safe(task_run._compact()))


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as null: json writes them as NaN and Infinity, which are not JSON,
    and SQLite's JSON functions (which the CLI uses to count outcomes) refuse the whole row."""
    if isinstance(value, float):
        return value if -_FINITE < value < _FINITE else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _run_from_json(text: str) -> RunRecord:
    data = json.loads(text)
    data["history"] = [StateEntry(**entry) for entry in data.get("history", [])]
    if "state" in data:
        data["state"] = state_name(data["state"], data.get("state_type") or "")
    known = RunRecord.__dataclass_fields__
    return RunRecord(**{key: value for key, value in data.items() if key in known})


_histories: dict[Path, RunHistory] = {}
_histories_lock = threading.Lock()


_current: RunHistory | None = None


def _forget_current(_: object) -> None:
    global _current
    _current = None


def set_aside_if_damaged(home: Path, error: BaseException) -> bool:
    """If ``error`` says the run history of ``home`` is damaged: move the file aside (one warning says
    where) so that the next use starts a new one; return whether it did."""
    return history(home)._set_aside(error)


def history(home: Path | None = None) -> RunHistory:
    """The run history of ``home`` (default: the configured ``NBFLOW_HOME``)."""
    global _current
    if home is None:
        current = _current
        if current is not None:
            return current
        from nbflow import settings

        if _forget_current not in settings._listeners:  # once: a new NBFLOW_HOME means another history
            settings.on_change(_forget_current)
        _current = history(settings.get_settings().home)
        return _current
    with _histories_lock:
        found = _histories.get(home)
        if found is None:
            found = _histories[home] = RunHistory(home)
        return found


@atexit.register
def _flush_all() -> None:
    for found in list(_histories.values()):
        try:
            found.close()
        except Exception:
            pass


def _clock(timestamp: float | None) -> str:
    """A local date and time as run listings show it."""
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


class RunList(list[RunRecord]):
    """The runs :func:`list_runs` returns: a plain list, shown as one line per run (and as a table in a
    notebook) instead of every field of every task run."""

    def __repr__(self) -> str:
        if not self:
            return "RunList([])"
        return "\n".join([f"RunList of {len(self)} run{'' if len(self) == 1 else 's'}:"]
                         + [f"  {run!r}" for run in self])

    def _repr_html_(self) -> str:
        from html import escape

        rows = []
        for run in self:
            parameters = ", ".join(f"{name}={value}" for name, value in run.parameters.items())
            cells = (run.id[:12], run.kind, run.name, run.state, _clock(run.start_time),
                     format_duration(run.duration), parameters, run._counts_text())
            rows.append("<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in cells) + "</tr>")
        header = "".join(f"<th>{name}</th>" for name in
                         ("run", "kind", "name", "state", "started", "duration", "parameters", "tasks"))
        return (f'<table class="nbflow-runs"><thead><tr>{header}</tr></thead>'
                f"<tbody>{''.join(rows)}</tbody></table>")


def list_runs(limit: int | None = None) -> RunList:
    """Recorded runs, newest first, each with its task runs (state, attempts, duration, cache key, ...).

    A list (a :class:`RunList`) that prints one line per run and shows as a table in a notebook."""
    if limit is not None and limit <= 0:
        from nbflow.exceptions import ConfigurationError

        raise ConfigurationError(f"list_runs(limit={limit!r}): limit must be a positive number or None")
    return RunList(history().list_runs(limit))


def prune(older_than: float | datetime.timedelta) -> tuple[int, int]:
    """Delete the runs that ended longer ago than ``older_than`` (seconds, or a ``timedelta``), with their
    task runs, from the history of the configured ``NBFLOW_HOME``; return ``(runs, task_runs)`` deleted.

    Runs still in progress are kept whole, however old: a kernel's session run until the kernel exits. A
    run that never ended because its process was killed counts from its start. Cached results are not
    touched (``nbflow cache clear --older-than`` does that). The space freed inside ``runs.sqlite`` is
    reused by later runs; the file does not shrink. ``nbflow runs prune --older-than AGE`` does the same.
    """
    # A timedelta's module is loaded if one was given: nbflow does not import datetime for this.
    dates = sys.modules.get("datetime")
    if dates is not None and isinstance(older_than, dates.timedelta):
        older_than = older_than.total_seconds()
    if isinstance(older_than, bool) or not isinstance(older_than, (int, float)) or not older_than >= 0:
        from nbflow.exceptions import ConfigurationError

        raise ConfigurationError(
            f"prune(older_than={older_than!r}): give an age of zero or more, in seconds or as a timedelta"
        )
    return history().prune(float(older_than))


def get_run(run_id: str) -> RunRecord | None:
    """One run by id (a unique prefix of the id works too), or None if there is no such run."""
    return history().get_run(run_id)
