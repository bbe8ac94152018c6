"""``nbflow runs`` and ``nbflow runs show``, and the reader ``nbflow run`` polls while its kernel works.

They read ``<NBFLOW_HOME>/runs.sqlite`` directly (WAL mode: reading never blocks the kernels that write
it) and never create it. Listing runs counts task runs in SQL rather than loading them, so a session run
of a million task calls lists as fast as a small flow.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, TextIO

from nbflow.cli.common import EXIT_OK, Usage, format_size, format_time, parse_age, print_json, table
from nbflow.runs import RunHistory, RunRecord, TaskRunRecord, _id_chunks, _run_from_json, format_duration

__all__ = ["LaunchWatcher", "computed_durations", "list_command", "outcome", "prune_command", "show_command"]

_FAILED_TYPES = frozenset({"FAILED", "CRASHED", "CANCELLED"})
_FINAL_TYPES = frozenset({"COMPLETED", *_FAILED_TYPES})  # a task run in one of these is not written again


def outcome(state: str, state_type: str) -> str:
    """``cached``, ``computed``, ``failed`` or ``other`` (still running, pending) for a task run's state."""
    if state == "Cached":
        return "cached"
    if state_type == "COMPLETED":
        return "computed"
    if state_type in _FAILED_TYPES:
        return "failed"
    return "other"


def connect(home: Path) -> sqlite3.Connection | None:
    """A reading connection to the history of ``home``, or None if nothing was ever recorded there."""
    path = Path(home) / "runs.sqlite"
    if not path.exists():
        return None
    # Used by one thread at a time (the CLI's poller, then its main thread once the poller stopped).
    connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
    try:
        connection.execute("SELECT 1 FROM runs LIMIT 1")
    except sqlite3.OperationalError:  # created by a writer that has not made its tables yet
        connection.close()
        return None
    return connection


def task_counts(connection: sqlite3.Connection, run_ids: list[str]) -> dict[str, dict[str, int]]:
    """Task runs by outcome (cached, computed, failed, other) for each run id, counted in SQL."""
    counts = {run_id: {"cached": 0, "computed": 0, "failed": 0, "other": 0} for run_id in run_ids}
    for chunk in _id_chunks(run_ids):
        marks = ",".join("?" * len(chunk))
        query = (
            "SELECT run_id, state, json_extract(data, '$.state_type'), COUNT(*) FROM task_runs "
            f"WHERE run_id IN ({marks}) GROUP BY run_id, state, 3"
        )
        for run_id, state, state_type, count in connection.execute(query, chunk):
            counts[run_id][outcome(state or "", state_type or "")] += count
    return counts


def _duration(run: RunRecord) -> float | None:
    return run.duration


def _run_name(run: RunRecord) -> str:
    return run.name


def json_parameters(parameters: dict[str, str]) -> dict[str, Any]:
    """Recorded parameters (short reprs) as JSON values where the repr is a JSON-able literal (``3``,
    ``'a'``, ``[1, 2]``, ``None``), else the repr itself (``list[1000]``, ``<DataFrame ...>``)."""
    import ast

    values: dict[str, Any] = {}
    for name, text in parameters.items():
        try:
            value = ast.literal_eval(text)
            # Round-trips through JSON unchanged (no tuples, sets, bytes, NaN, non-string keys).
            if json.loads(json.dumps(value, allow_nan=False)) != value:
                raise ValueError(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            value = text
        values[name] = value
    return values


def parents(runs: list[RunRecord]) -> dict[str, str]:
    """The run each listed run was made in, by id: a subflow's parent flow; a top-level flow's session
    run (the notebook, headless run or script that called it). The session run of a process starts at its
    first task call outside a flow (a kernel's, at once), so a top-level flow belongs to the earliest
    session run of its process (same pid and launch) that had not ended when the flow started."""
    sessions = sorted((run for run in runs if run.kind == "session"), key=lambda run: run.start_time)
    found: dict[str, str] = {}
    for run in runs:
        if run.parent_run_id is not None:
            found[run.id] = run.parent_run_id
        elif run.kind == "flow":
            for session in sessions:
                if (session.pid == run.pid and session.launch_id == run.launch_id
                        and (session.end_time is None or run.start_time <= session.end_time)):
                    found[run.id] = session.id
                    break
    return found


def _nested(runs: list[RunRecord], parent_of: dict[str, str]) -> list[tuple[int, RunRecord]]:
    """The runs in listing order (newest first), each run's children right under it, with their depth; a
    run whose parent is not listed (beyond --limit) is listed at the top level."""
    listed = {run.id for run in runs}
    children: dict[str, list[RunRecord]] = {}
    for run in runs:
        parent = parent_of.get(run.id)
        if parent in listed:
            children.setdefault(parent, []).append(run)
    ordered: list[tuple[int, RunRecord]] = []

    def visit(run: RunRecord, depth: int) -> None:
        ordered.append((depth, run))
        for child in children.get(run.id, ()):
            visit(child, depth + 1)

    for run in runs:
        if parent_of.get(run.id) not in listed:
            visit(run, 0)
    return ordered


def _parameters_text(parameters: dict[str, str], width: int = 40) -> str:
    text = ", ".join(f"{name}={value}" for name, value in parameters.items())
    return text if len(text) <= width else text[: width - 1] + "…"


def run_summary(run: RunRecord, counts: dict[str, int], parent: str | None = None) -> dict[str, Any]:
    """One run as ``nbflow runs --json`` lists it: ``parent`` is the run it was made in (see :func:`parents`)."""
    return {
        "id": run.id,
        "name": _run_name(run),
        "kind": run.kind,
        "flow_name": run.flow_name,
        "source": run.source,
        "state": run.state,
        "state_type": run.state_type,
        "start_time": run.start_time,
        "end_time": run.end_time,
        "duration": _duration(run),
        "parent_run_id": run.parent_run_id,
        "parent": parent or run.parent_run_id,
        "launch_id": run.launch_id,
        "pid": run.pid,
        "parameters": json_parameters(run.parameters),
        "tasks": counts,
    }


def list_command(home: Path, *, limit: int, as_json: bool, out: TextIO) -> int:
    """``nbflow runs``: the latest runs, newest first."""
    if limit <= 0:
        raise Usage(f"--limit must be a positive number, not {limit}")
    connection = connect(home)
    runs: list[RunRecord] = []
    counts: dict[str, dict[str, int]] = {}
    if connection is not None:
        try:
            rows = connection.execute("SELECT data FROM runs ORDER BY start_time DESC LIMIT ?", (limit,)).fetchall()
            runs = [_run_from_json(data) for (data,) in rows]
            counts = task_counts(connection, [run.id for run in runs])
        finally:
            connection.close()
    parent_of = parents(runs)
    if as_json:
        summaries = [run_summary(run, counts[run.id], parent_of.get(run.id)) for run in runs]
        print_json({"home": str(home), "runs": summaries}, out)
        return EXIT_OK
    if not runs:
        print(f"no runs recorded in {home}", file=out)
        return EXIT_OK
    rows_out = []
    # A run's flows (and a flow's subflows) are listed under it, indented.
    for depth, run in _nested(runs, parent_of):
        tasks = counts[run.id]
        running = f", {tasks['other']} other" if tasks["other"] else ""
        rows_out.append((
            run.id[:12], "  " * depth + ("└ " if depth else "") + run.name, run.kind, run.state,
            format_time(run.start_time), format_duration(run.duration), _parameters_text(run.parameters) or "-",
            f"{tasks['cached']} cached, {tasks['computed']} computed, {tasks['failed']} failed{running}",
        ))
    table(("run", "notebook/flow", "kind", "state", "started", "duration", "parameters", "tasks"), rows_out, out)
    return EXIT_OK


def computed_durations(connection: sqlite3.Connection, keys: set[str], runs: int = 1000) -> dict[str, float]:
    """Seconds the runs that computed the cache entries ``keys`` took, by key (the latest such run of each),
    looked up among the task runs of the latest ``runs`` runs. Read in SQL, without parsing the rows."""
    if not keys:
        return {}
    run_ids = [run_id for (run_id,) in connection.execute(
        "SELECT id FROM runs ORDER BY start_time DESC LIMIT ?", (runs,))]
    latest: dict[str, tuple[float, float]] = {}  # key -> (end, duration)
    for chunk in _id_chunks(run_ids):
        marks = ",".join("?" * len(chunk))
        for key, start, end in connection.execute(
            "SELECT json_extract(data, '$.cache_key'), json_extract(data, '$.start_time'), "
            f"json_extract(data, '$.end_time') FROM task_runs WHERE run_id IN ({marks}) AND state = 'Completed'",
            chunk,
        ):
            if key in keys and start is not None and end is not None and end >= latest.get(key, (-1.0, 0.0))[0]:
                latest[key] = (end, end - start)
    return {key: duration for key, (_, duration) in latest.items()}


def load_run(home: Path, run_id: str) -> RunRecord:
    """One run with its task runs, by id or unique id prefix; a usage error naming the id otherwise."""
    connection = connect(home)
    if connection is None:
        raise Usage(f"no runs recorded in {home} (set NBFLOW_HOME or --home to the store the run used)")
    try:
        rows = connection.execute(
            "SELECT data FROM runs WHERE id = ? OR id LIKE ? LIMIT 3", (run_id, run_id + "%")
        ).fetchall()
        exact = [data for (data,) in rows if json.loads(data).get("id") == run_id]
        if exact:
            rows = [(exact[0],)]
        if not rows:
            raise Usage(f"no run {run_id!r} in {home}; `nbflow runs` lists the recorded runs")
        if len(rows) > 1:
            raise Usage(f"run id prefix {run_id!r} is ambiguous; give more characters")
        run = _run_from_json(rows[0][0])
        for (data,) in connection.execute("SELECT data FROM task_runs WHERE run_id = ? ORDER BY seq", (run.id,)):
            run.task_runs.append(TaskRunRecord.from_dict(json.loads(data)))
        return run
    finally:
        connection.close()


def task_row(task_run: TaskRunRecord, run: RunRecord | None = None) -> dict[str, Any]:
    """One task run as the JSON summaries list it."""
    row: dict[str, Any] = {
        "id": task_run.id,
        "task": task_run.task_name,
        "run_id": task_run.run_id,
        "state": task_run.state,
        "state_type": task_run.state_type,
        "result": outcome(task_run.state, task_run.state_type),
        "attempts": task_run.attempts,
        "start_time": task_run.start_time,
        "end_time": task_run.end_time,
        "duration": task_run.duration,
        "cache_key": task_run.cache_key,
        "error": task_run.error,
        "cell": task_run.task_key.startswith("cell:"),
    }
    if run is not None:
        row["flow"] = run.flow_name if run.kind == "flow" else None
    return row


def prune_command(home: Path, *, older_than: str, as_json: bool, out: TextIO) -> int:
    """``nbflow runs prune --older-than AGE``: delete the runs that ended longer ago than AGE."""
    age = parse_age(older_than)
    runs = task_runs = free = 0
    path = Path(home) / "runs.sqlite"
    if path.exists():  # never created by a command that deletes
        recorded = RunHistory(Path(home))
        try:
            runs, task_runs = recorded.prune(age)
        finally:
            recorded.close()
        connection = sqlite3.connect(path, timeout=60)
        try:
            pages = connection.execute("PRAGMA freelist_count").fetchone()[0]
            free = pages * connection.execute("PRAGMA page_size").fetchone()[0]
        finally:
            connection.close()
    if as_json:
        print_json({"home": str(home), "older_than": age, "runs": runs, "task_runs": task_runs,
                    "free_bytes": free}, out)
        return EXIT_OK
    if not path.exists():
        print(f"no runs recorded in {home}", file=out)
        return EXIT_OK
    print(f"deleted {runs} run{'' if runs == 1 else 's'} ({task_runs} task run{'' if task_runs == 1 else 's'}) "
          f"that ended more than {older_than} ago; {format_size(free)} free in {path.name}, reused by later runs",
          file=out)
    return EXIT_OK


def show_command(home: Path, run_id: str, *, as_json: bool, tracebacks: bool, out: TextIO) -> int:
    """``nbflow runs show RUN_ID``: a run's task table, with errors."""
    run = load_run(home, run_id)
    counts = run.counts()
    if as_json:
        data = run_summary(run, counts)
        data["error"] = run.error
        data["task_runs"] = [{**task_row(task_run), "traceback": task_run.traceback, "logs": task_run.logs}
                             for task_run in run.task_runs]
        print_json(data, out)
        return EXIT_OK
    print(f"run {run.id}  {_run_name(run)} ({run.kind})  {run.state}", file=out)
    print(f"started {format_time(run.start_time)}, ended {format_time(run.end_time)}, "
          f"duration {format_duration(run.duration)}", file=out)
    if run.parameters:
        print("parameters: " + ", ".join(f"{k}={v}" for k, v in run.parameters.items()), file=out)
    print(f"{len(run.task_runs)} task run(s): {counts['cached']} cached, {counts['computed']} computed, "
          f"{counts['failed']} failed", file=out)
    if run.task_runs:
        print(file=out)
        rows = [(tr.task_name, tr.state, outcome(tr.state, tr.state_type), str(tr.attempts),
                 format_duration(tr.duration), format_time(tr.start_time), (tr.cache_key or "-")[:16])
                for tr in run.task_runs]
        table(("task", "state", "result", "attempts", "duration", "started", "cache key"), rows, out)
    failures = [tr for tr in run.task_runs if tr.error]
    if run.error:
        print(f"\nrun error: {run.error}", file=out)
    for task_run in failures:
        print(f"\n{task_run.task_name} ({task_run.state}): {task_run.error}", file=out)
        if tracebacks and task_run.traceback:
            print(task_run.traceback.rstrip(), file=out)
    if failures and not tracebacks:
        print("\n(--traceback shows the tracebacks)", file=out)
    return EXIT_OK


class LaunchWatcher:
    """The runs one ``nbflow run`` launch made, read from the history while its kernel works.

    :meth:`poll` returns the task runs whose state changed since the previous poll, reading only what was
    written since: a record that changes is written as a new row (``INSERT OR REPLACE``, which numbers
    the new row before removing the old one), so the rows with a higher ``rowid`` than any seen are the
    new and rewritten ones. The task runs still under way are also looked up by id (few: the calls running
    at the moment), in case a rewrite ever kept its rowid. A poll costs the changes, not the size of the
    run. Rows deleted at the top (``nbflow runs prune`` of a run of this launch that ended) let SQLite give
    their rowids out again, so a poll can miss a row then: the last poll, ``poll(everything=True)``, reads
    every row, and the records are complete.
    """

    def __init__(self, home: Path, launch_id: str, since: float) -> None:
        self.home = Path(home)
        self.launch_id = launch_id
        self.since = since - 5.0  # clock steps between processes of one machine are small
        self.runs: dict[str, RunRecord] = {}
        self.task_runs: dict[str, TaskRunRecord] = {}
        self._headers: dict[str, str] = {}
        self._connection: sqlite3.Connection | None = None
        self._rowid = 0  # the highest task_runs rowid read
        self._unfinished: set[str] = set()

    def _connect(self) -> sqlite3.Connection | None:
        if self._connection is None:
            self._connection = connect(self.home)
        return self._connection

    def poll(self, everything: bool = False) -> list[TaskRunRecord]:
        """The task runs whose state changed since the last poll (all of them with ``everything``)."""
        if everything:
            self._rowid = 0
        connection = self._connect()
        if connection is None:
            return []
        for run_id, data in connection.execute(
            "SELECT id, data FROM runs WHERE start_time >= ? AND json_extract(data, '$.launch_id') = ?",
            (self.since, self.launch_id),
        ):
            if self._headers.get(run_id) != data:
                self._headers[run_id] = data
                self.runs[run_id] = _run_from_json(data)
        known = self.task_runs
        changed: list[str] = []

        def note(task_run_id: str, state: str) -> None:
            current = known.get(task_run_id)
            if current is None or current.state != state:
                changed.append(task_run_id)

        if self.runs:
            # `+run_id`: no index on it, so SQLite walks the rowid range (the new rows), not the whole run.
            for chunk in _id_chunks(list(self.runs)):
                marks = ",".join("?" * len(chunk))
                for rowid, task_run_id, state in connection.execute(
                    f"SELECT rowid, id, state FROM task_runs WHERE rowid > ? AND +run_id IN ({marks})",
                    [self._rowid, *chunk],
                ):
                    self._rowid = max(self._rowid, rowid)
                    note(task_run_id, state)
            for chunk in _id_chunks(sorted(self._unfinished.difference(changed))):
                marks = ",".join("?" * len(chunk))
                for task_run_id, state in connection.execute(
                    f"SELECT id, state FROM task_runs WHERE id IN ({marks})", chunk
                ):
                    note(task_run_id, state)
        updates: list[TaskRunRecord] = []
        for chunk in _id_chunks(list(dict.fromkeys(changed))):
            marks = ",".join("?" * len(chunk))
            for (data,) in connection.execute(f"SELECT data FROM task_runs WHERE id IN ({marks})", chunk):
                task_run = TaskRunRecord.from_dict(json.loads(data))
                known[task_run.id] = task_run
                if task_run.state_type in _FINAL_TYPES:
                    self._unfinished.discard(task_run.id)
                else:
                    self._unfinished.add(task_run.id)
                updates.append(task_run)
        updates.sort(key=lambda tr: (tr.end_time or tr.start_time or time.time(), tr.seq))
        return updates

    def records(self) -> list[RunRecord]:
        """The launch's runs (oldest first), each with its task runs in call order."""
        runs = sorted(self.runs.values(), key=lambda run: run.start_time)
        by_run: dict[str, list[TaskRunRecord]] = {run.id: [] for run in runs}
        for task_run in self.task_runs.values():
            by_run.setdefault(task_run.run_id, []).append(task_run)
        for run in runs:
            run.task_runs = sorted(by_run[run.id], key=lambda tr: tr.seq)
        return runs

    def computed_durations(self, keys: set[str]) -> dict[str, float]:
        """:func:`computed_durations` in this watcher's history."""
        connection = self._connect()
        return computed_durations(connection, keys) if connection is not None else {}

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
