"""Run history: one :class:`RunRecord` per flow run (or per process session), each with its task runs.

Records live in memory while a run is in progress and are written to ``<NBFLOW_HOME>/runs.sqlite``
(SQLite in WAL mode, so the CLI can read while a kernel writes). Writes are batched: a background thread
flushes changed records at most a few times a second, a finished flow flushes at once, and so does
process exit. A crash can lose the last fraction of a second of *history*, never a stored result.

Query with :func:`list_runs` (newest first) and :func:`get_run`.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import sqlite3
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunRecord", "StateEntry", "TaskRunRecord", "format_duration", "get_run", "list_runs"]

_SCHEMA_VERSION = 1
_FLUSH_INTERVAL = 0.25
_FLUSH_ROWS = 2000
_SESSION_IN_MEMORY = 10_000


_add_lock = threading.Lock()
_ids = random.Random(int.from_bytes(os.urandom(16), "big") ^ os.getpid())


def new_id() -> str:
    """A random 128-bit hex id. Seeded once from the OS: ``uuid4`` reads the OS entropy pool on every
    call, which costs ~20 µs on some virtual machines — too much per task call."""
    return f"{_ids.getrandbits(128):032x}"


def _reseed_after_fork() -> None:
    _ids.seed(int.from_bytes(os.urandom(16), "big") ^ os.getpid())


os.register_at_fork(after_in_child=_reseed_after_fork)


@dataclass
class StateEntry:
    """One step of a run's state history."""

    name: str
    type: str
    timestamp: float
    message: str | None = None


@dataclass
class TaskRunRecord:
    """The record of one task call: every attempt, the cache key and how it ended."""

    id: str
    run_id: str
    task_name: str
    task_key: str
    state: str = "Pending"
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
        data = dict(data)
        data.pop("duration", None)
        data["history"] = [StateEntry(**entry) for entry in data.get("history", [])]
        known = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in known})


_TASK_RUN_FIELDS = tuple(TaskRunRecord.__dataclass_fields__)


@dataclass
class RunRecord:
    """The record of one flow run, or of the task calls one process made outside any flow
    (``kind="session"``)."""

    id: str
    flow_name: str
    kind: str = "flow"
    state: str = "Pending"
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

    @property
    def duration(self) -> float | None:
        if self.end_time is None:
            return None
        return self.end_time - self.start_time

    def add_task_run(self, task_run: TaskRunRecord) -> None:
        """Append a task run, numbering it. A session run keeps only its latest task runs in memory
        (all are in the history on disk), so a kernel that makes millions of calls does not grow."""
        with _add_lock:  # task calls may start from several threads at once
            task_run.seq = self.task_run_count
            self.task_run_count += 1
            self.task_runs.append(task_run)
            if self.kind == "session" and len(self.task_runs) > _SESSION_IN_MEMORY:
                del self.task_runs[: len(self.task_runs) - _SESSION_IN_MEMORY // 2]

    def counts(self) -> dict[str, int]:
        """Task runs by outcome: cached, computed, failed, other."""
        counts = {"cached": 0, "computed": 0, "failed": 0, "other": 0}
        for task_run in self.task_runs:
            if task_run.state == "Cached":
                counts["cached"] += 1
            elif task_run.state_type == "COMPLETED":
                counts["computed"] += 1
            elif task_run.state_type in ("FAILED", "CRASHED", "CANCELLED"):
                counts["failed"] += 1
            else:
                counts["other"] += 1
        return counts

    def header(self) -> dict[str, Any]:
        """Every field but the task runs (which are stored, and copied, separately)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "task_runs"}
        data["history"] = [asdict(entry) for entry in self.history]
        data["parameters"] = dict(self.parameters)
        return data


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
        self._dirty_tasks: dict[str, tuple[Any, ...]] = {}
        self._oldest: float | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._connection: sqlite3.Connection | None = None

    # -- connection -----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        connection = self._connection
        if connection is not None and self.path.exists():
            return connection
        if connection is not None:  # the file was deleted under us (a cleared home): start again
            connection.close()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        connection = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
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
        self._connection = connection
        return connection

    # -- writing --------------------------------------------------------------------------------
    def mark(self, run: RunRecord, task_run: TaskRunRecord | None = None) -> None:
        """Note that ``run`` (and ``task_run``) changed; they are written soon (see the class doc)."""
        row = None
        if task_run is not None:
            # Serialized now: the record is final or nearly so, and a later change marks it again.
            row = (task_run.id, task_run.run_id, task_run.seq, task_run.task_name, task_run.state,
                   _dumps(task_run.to_dict()), _SCHEMA_VERSION)
        now = time.monotonic()
        with self._lock:
            self._dirty_runs[run.id] = run
            if row is not None:
                self._dirty_tasks[row[0]] = row
            if self._oldest is None:
                self._oldest = now
            due = now - self._oldest >= _FLUSH_INTERVAL or len(self._dirty_tasks) >= _FLUSH_ROWS
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._idle_writer, name="nbflow-run-history", daemon=True)
                self._thread.start()
        if due:
            self._flush_quietly()
        else:
            self._wake.set()

    def _idle_writer(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            time.sleep(2 * _FLUSH_INTERVAL)
            oldest = self._oldest
            if oldest is not None and time.monotonic() - oldest >= _FLUSH_INTERVAL:
                self._flush_quietly()

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception:  # history must never take a task down
            import logging

            logging.getLogger("nbflow.runs").exception("could not write run history to %s", self.path)

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
                (r.id, r.flow_name, r.kind, r.state, r.start_time, r.end_time, _dumps(r.header()),
                 _SCHEMA_VERSION)
                for r in runs
            ]
            try:
                connection = self._connect()
                connection.execute("BEGIN IMMEDIATE")
                try:
                    connection.executemany("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?)", run_rows)
                    connection.executemany("INSERT OR REPLACE INTO task_runs VALUES (?,?,?,?,?,?,?)", tasks)
                    connection.execute("COMMIT")
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
            except BaseException:
                for r in runs:  # keep them for the next try
                    self._dirty_runs.setdefault(r.id, r)
                for t in tasks:
                    self._dirty_tasks.setdefault(t[0], t)
                self._oldest = time.monotonic()
                raise

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        with self._lock:
            self.flush()
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # -- reading --------------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        with self._lock:
            self._connect()  # creates the file and tables if this process never wrote
        return sqlite3.connect(self.path, timeout=60)

    def list_runs(self, limit: int | None = None) -> list[RunRecord]:
        self.flush()
        if not self.path.exists():
            return []
        connection = self._reader()
        try:
            query = "SELECT id, data FROM runs ORDER BY start_time DESC"
            rows = connection.execute(query + (" LIMIT ?" if limit else ""), (limit,) if limit else ()).fetchall()
            runs = [_run_from_json(data) for _, data in rows]
            by_id = {run.id: run for run in runs}
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


def format_duration(seconds: float | None) -> str:
    """A duration as people read it in tables and notices: ``<1 ms``, ``503 ms``, ``1.25 s`` (``-`` if None)."""
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return "<1 ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


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


def _run_from_json(text: str) -> RunRecord:
    data = json.loads(text)
    data["history"] = [StateEntry(**entry) for entry in data.get("history", [])]
    known = RunRecord.__dataclass_fields__
    return RunRecord(**{key: value for key, value in data.items() if key in known})


_histories: dict[Path, RunHistory] = {}
_histories_lock = threading.Lock()


_current: RunHistory | None = None


def _forget_current(_: object) -> None:
    global _current
    _current = None


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


def list_runs(limit: int | None = None) -> list[RunRecord]:
    """Recorded runs, newest first, each with its task runs (state, attempts, duration, cache key, ...)."""
    if limit is not None and limit <= 0:
        from nbflow.exceptions import ConfigurationError

        raise ConfigurationError(f"list_runs(limit={limit!r}): limit must be a positive number or None")
    return history().list_runs(limit)


def get_run(run_id: str) -> RunRecord | None:
    """One run by id (a unique prefix of the id works too), or None if there is no such run."""
    return history().get_run(run_id)
