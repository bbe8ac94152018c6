"""The run history: what is written to runs.sqlite, what is read back, and the files earlier versions wrote."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import nbflow
from nbflow import runs
from nbflow.cli.history import load_run, task_counts
from nbflow.runs import RunHistory, RunRecord, StateEntry, TaskRunRecord, new_id, new_task_run_id


def _hit(run: RunRecord, x: int) -> TaskRunRecord:
    """A task run as the engine records a cache hit."""
    task_run = TaskRunRecord(id=new_task_run_id(), run_id=run.id, task_name="double", task_key="m.double",
                             tags=[])
    task_run.inputs = {"x": repr(x)}
    run.add_task_run(task_run)
    task_run.history.append(StateEntry("Pending", "PENDING", time.time()))
    task_run.key_parts = {"code": "c0de" * 8, "input:x": "1234" * 8}
    task_run.cache_key = "cafe" * 8
    task_run.cache_hit = task_run.persisted = True
    task_run.start_time = task_run.end_time = time.time()
    task_run.result = repr(2 * x)
    task_run.state, task_run.state_type = "Cached", "COMPLETED"
    task_run.history.append(StateEntry("Cached", "COMPLETED", time.time()))
    return task_run


def _everything(run: RunRecord) -> TaskRunRecord:
    """A task run with every field away from its default, and states the engine does not name."""
    task_run = TaskRunRecord(
        id=new_task_run_id(), run_id=run.id, task_name="fetch \u00e9t\u00e9 \"q\"", task_key="m.fetch",
        state="Custom", state_type="FAILED", attempts=3, start_time=1.5, end_time=0.1 + 0.2,
        cache_key="k", key_parts={"code": "a", "input:url": "b"}, cache_hit=False, persisted=False,
        error="ValueError: bad\nline", traceback="Traceback ...\n  \x00\t", logs=["one", "two \u2603"],
        history=[StateEntry("Pending", "PENDING", 1.0), StateEntry("Running", "RUNNING", 1.5, "go"),
                 StateEntry("Retrying", "RUNNING", 2.0, "attempt 2"), StateEntry("Odd", "SCHEDULED", 2.5),
                 StateEntry("Failed", "CRASHED", 3.0, None)],
        inputs={"url": "'http://x'"}, result=None, upstream=["u1", "u2"], tags=["net"],
        map_id="m1", map_index=0, map_size=4,
    )
    run.add_task_run(task_run)
    return task_run


def _stored(home: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(home / "runs.sqlite") as connection:
        return connection.execute("SELECT data, schema FROM task_runs ORDER BY seq").fetchall()


def test_every_field_reads_back_as_it_was_written(nbflow_home: Path) -> None:
    run = RunRecord(id=new_id(), flow_name="f")
    records = [_hit(run, 1), _everything(run), TaskRunRecord(id=new_task_run_id(), run_id=run.id,
                                                             task_name="bare", task_key="m.bare")]
    run.add_task_run(records[-1])
    history = RunHistory(nbflow_home)
    for record in records:
        history.mark(run, record)
        # The direct writer and the generic one (for unusual values) write the same row.
        assert json.loads(runs._fast_json(record)) == runs._json_safe(record._compact())
    loaded = history.get_run(run.id)
    assert loaded is not None
    assert [t.to_dict() for t in loaded.task_runs] == [t.to_dict() for t in records]
    # ... through the CLI's reader too, which reads the file on its own.
    assert [t.to_dict() for t in load_run(nbflow_home, run.id[:8]).task_runs] == [t.to_dict() for t in records]
    history.close()


def test_a_cache_hit_is_stored_compactly(nbflow_home: Path) -> None:
    run = RunRecord(id=new_id(), flow_name="session", kind="session")
    history = RunHistory(nbflow_home)
    history.mark(run, _hit(run, 7))
    history.flush()
    [(data, schema)] = _stored(nbflow_home)
    assert schema == 2
    row = json.loads(data)
    # Defaults are left out; the history is arrays whose state type follows from the name.
    assert not {"error", "traceback", "logs", "upstream", "tags", "attempts", "map_id", "duration"} & set(row)
    assert [entry[0] for entry in row["history"]] == ["Pending", "Cached"] and len(row["history"][0]) == 2
    assert len(data) < 550  # the full to_dict() JSON of the same record is ~800 bytes
    # The CLI counts outcomes in SQL, from the row's state_type.
    with sqlite3.connect(nbflow_home / "runs.sqlite") as connection:
        assert task_counts(connection, [run.id])[run.id]["cached"] == 1
    history.close()


def test_files_written_by_earlier_versions_are_still_read(nbflow_home: Path) -> None:
    # A schema-1 file as earlier versions wrote it: the full to_dict() JSON, history as objects.
    old_run = RunRecord(id=new_id(), flow_name="old", state="Completed", state_type="COMPLETED")
    old = _everything(old_run)
    nbflow_home.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(nbflow_home / "runs.sqlite") as connection:
        connection.executescript(
            """
            CREATE TABLE runs (id TEXT PRIMARY KEY, flow_name TEXT, kind TEXT, state TEXT, start_time REAL,
                end_time REAL, data TEXT NOT NULL, schema INTEGER NOT NULL);
            CREATE INDEX runs_start ON runs(start_time);
            CREATE TABLE task_runs (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, seq INTEGER, task_name TEXT,
                state TEXT, data TEXT NOT NULL, schema INTEGER NOT NULL);
            CREATE INDEX task_runs_run ON task_runs(run_id, seq);
            """
        )
        header = old_run.header()
        connection.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?)",
                           (old_run.id, "old", "flow", "Completed", old_run.start_time - 10, None,
                            json.dumps(header), 1))
        connection.execute("INSERT INTO task_runs VALUES (?,?,?,?,?,?,?)",
                           (old.id, old_run.id, old.seq, old.task_name, old.state, json.dumps(old.to_dict()), 1))
    # This version adds schema-2 rows to the same file.
    @nbflow.task
    def double(x: int) -> int:
        return 2 * x

    assert double(2) == 4 and double(2) == 4
    listed = nbflow.runs.list_runs()
    assert [run.flow_name for run in listed] == ["session", "old"]
    assert [t.state for t in listed[0].task_runs] == ["Completed", "Cached"]
    assert [t.to_dict() for t in listed[1].task_runs] == [old.to_dict()]
    assert {schema for _, schema in _stored(nbflow_home)} == {1, 2}
    assert load_run(nbflow_home, old_run.id).task_runs[0].to_dict() == old.to_dict()


def test_unusual_values_are_recorded_rather_than_lost(nbflow_home: Path) -> None:
    run = RunRecord(id=new_id(), flow_name="f")
    task_run = _hit(run, 1)
    # What hooks and retry_condition_fns may leave behind: not the types the record declares.
    task_run.inputs = {"x": 3}  # type: ignore[dict-item]
    task_run.result = ["a"]  # type: ignore[assignment]
    odd = _hit(run, 2)
    odd.end_time = math.inf
    odd.inputs = {"x": math.nan}  # type: ignore[dict-item]
    history = RunHistory(nbflow_home)
    history.mark(run, task_run)
    history.mark(run, odd)
    loaded = history.get_run(run.id)
    assert loaded is not None
    assert [t.inputs for t in loaded.task_runs] == [{"x": 3}, {"x": None}]
    assert loaded.task_runs[0].result == ["a"] and loaded.task_runs[1].cache_hit is True
    # Not a number is not JSON: such a row would stop the CLI's count of outcomes, which reads it in SQL.
    assert loaded.task_runs[1].end_time is None
    with sqlite3.connect(nbflow_home / "runs.sqlite") as connection:
        assert task_counts(connection, [run.id])[run.id]["cached"] == 2
    history.close()


class _ChangingDict(dict[str, str]):
    """A dict that another thread changes while it is read, the first time."""

    changed = False

    def items(self) -> Any:
        if not self.changed:
            self.changed = True
            raise RuntimeError("dictionary changed size during iteration")
        return super().items()


def test_a_record_changing_while_it_is_written_is_read_again(nbflow_home: Path) -> None:
    run = RunRecord(id=new_id(), flow_name="f")
    task_run = _hit(run, 1)
    task_run.key_parts = _ChangingDict(code="c")
    history = RunHistory(nbflow_home)
    history.mark(run, task_run)
    loaded = history.get_run(run.id)
    assert loaded is not None and loaded.task_runs[0].key_parts == {"code": "c"}
    history.close()


def test_a_record_is_written_as_it_is_when_its_batch_is(nbflow_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = RunRecord(id=new_id(), flow_name="f")
    history = RunHistory(nbflow_home)
    running = _hit(run, 1)
    running.state, running.state_type = "Running", "RUNNING"
    history.mark(run, running)
    running.state, running.state_type = "Cached", "COMPLETED"  # finished before the batch was written
    broken = _hit(run, 2)
    broken.logs.append(broken.logs)  # type: ignore[arg-type]  # refers to itself: no JSON can hold it
    history.mark(run, broken)
    history.mark(run, _hit(run, 3))
    with caplog.at_level("ERROR", logger="nbflow.runs"):
        loaded = history.get_run(run.id)  # reading writes the batch first
    assert loaded is not None
    # The record that could not be written is reported and left out; the rest of its batch is written.
    assert [(t.seq, t.state) for t in loaded.task_runs] == [(0, "Cached"), (2, "Cached")]
    assert any(broken.id in record.getMessage() for record in caplog.records)
    history.close()


def test_task_run_ids_sort_by_creation_time() -> None:
    ids = []
    for _ in range(3):
        ids.append(new_task_run_id())
        time.sleep(0.002)
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len({new_task_run_id() for _ in range(1000)}) == 1000


def _rows_on_disk(home: Path) -> int:
    """Task-run rows another process would see now (0 while the writer is still creating the file)."""
    if not (home / "runs.sqlite").exists():
        return 0
    with sqlite3.connect(home / "runs.sqlite") as connection:
        try:
            return int(connection.execute("SELECT COUNT(*) FROM task_runs").fetchone()[0])
        except sqlite3.OperationalError:  # the tables are not made yet
            return 0


def test_an_idle_process_writes_its_history_without_being_asked(nbflow_home: Path) -> None:
    run = RunRecord(id=new_id(), flow_name="session", kind="session")
    history = RunHistory(nbflow_home)
    history.mark(run, _hit(run, 1))
    history.mark(run, _hit(run, 2))  # a mark into a batch that waits already
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _rows_on_disk(nbflow_home) < 2:
        time.sleep(0.05)
    assert _rows_on_disk(nbflow_home) == 2
    # A later batch, after the first was written, is written too.
    history.mark(run, _hit(run, 3))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _rows_on_disk(nbflow_home) < 3:
        time.sleep(0.05)
    assert _rows_on_disk(nbflow_home) == 3
    history.close()


def test_the_log_is_copied_into_the_database_in_the_background(nbflow_home: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "_CHECKPOINT_BYTES", 50_000)
    run = RunRecord(id=new_id(), flow_name="session", kind="session")
    history = RunHistory(nbflow_home)
    history.mark(run, _hit(run, 0))
    history.flush()
    database = nbflow_home / "runs.sqlite"
    before = database.stat().st_size
    for x in range(400):
        history.mark(run, _hit(run, x))
    history.flush()
    # The writes went to the write-ahead log; a checkpoint copies them into the database file.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and database.stat().st_size <= before:
        time.sleep(0.05)
    assert database.stat().st_size > before
    assert _rows_on_disk(nbflow_home) == 401
    history.close()


def test_marks_from_many_threads_are_all_written(nbflow_home: Path) -> None:
    run = RunRecord(id=new_id(), flow_name="session", kind="session")
    history = RunHistory(nbflow_home)

    def work(offset: int) -> None:
        for x in range(300):
            task_run = _hit(run, offset + x)
            history.mark(run, task_run)
            task_run.logs.append("late")  # a change after the mark marks again, as the engine does
            history.mark(run, task_run)

    threads = [threading.Thread(target=work, args=(1000 * i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    loaded = history.get_run(run.id)
    assert loaded is not None
    assert len(loaded.task_runs) == 1200 and all(t.logs == ["late"] for t in loaded.task_runs)
    assert [t.seq for t in loaded.task_runs] == list(range(1200))
    history.close()


def test_prune_deletes_old_finished_runs_and_runs_of_killed_processes(nbflow_home: Path) -> None:
    import datetime
    import subprocess
    import sys

    from nbflow.exceptions import ConfigurationError

    day = 86400.0
    now = time.time()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process that no longer exists, as a killed kernel's

    def run(name: str, started: float, ended: float | None, pid: int) -> RunRecord:
        record = RunRecord(id=new_id(), flow_name=name, start_time=started, end_time=ended, pid=pid,
                           state="Completed" if ended else "Running",
                           state_type="COMPLETED" if ended else "RUNNING")
        for x in range(3):
            runs.history().mark(record, _hit(record, x))
        return record

    old = run("old", now - 10 * day, now - 10 * day + 5, gone.pid)
    killed = run("killed", now - 10 * day, None, gone.pid)
    recent = run("recent", now - 10 * day, now - 3600, gone.pid)  # started long ago, ended an hour ago
    live = run("live", now - 10 * day, None, os.getpid())  # a kernel open for ten days: still writing
    fresh_killed = run("fresh-killed", now - 3600, None, gone.pid)

    assert runs.prune(datetime.timedelta(days=7)) == (2, 6)
    kept = {r.flow_name: r for r in runs.list_runs()}
    assert set(kept) == {"recent", "live", "fresh-killed"}
    assert all(len(r.task_runs) == 3 for r in kept.values())
    with sqlite3.connect(nbflow_home / "runs.sqlite") as connection:
        orphans = connection.execute("SELECT COUNT(*) FROM task_runs WHERE run_id IN (?, ?)", (old.id, killed.id))
        assert orphans.fetchone()[0] == 0
    assert runs.get_run(old.id) is None and runs.get_run(recent.id) is not None
    assert runs.prune(7 * day) == (0, 0)
    # Everything that has ended, and the fresh run of a killed process: only the live run is left.
    assert runs.prune(0) == (2, 6)
    assert [r.id for r in runs.list_runs()] == [live.id]
    assert runs.get_run(fresh_killed.id) is None

    for bad in (-1, "7d", None, True, float("nan")):
        with pytest.raises(ConfigurationError, match="give an age of zero or more"):
            runs.prune(bad)  # type: ignore[arg-type]


def test_list_runs_of_one_process_and_without_the_task_runs_of_some(nbflow_home: Path) -> None:
    mine = RunRecord(id=new_id(), flow_name="mine")
    other = RunRecord(id=new_id(), flow_name="other", pid=os.getpid() + 1)
    for run in (mine, other):
        for x in range(3):
            runs.history().mark(run, _hit(run, x))
    everything = runs.history().list_runs()
    assert {r.flow_name: len(r.task_runs) for r in everything} == {"mine": 3, "other": 3}
    (only,) = runs.history().list_runs(pid=os.getpid())
    assert only.id == mine.id and len(only.task_runs) == 3
    (header,) = runs.history().list_runs(10, pid=os.getpid(), headers_only={mine.id})
    assert header.id == mine.id and header.task_runs == [] and header.task_run_count == 3


def test_find_task_runs_by_name_and_state_and_runs_without_their_task_runs(nbflow_home: Path) -> None:
    first, second = RunRecord(id=new_id(), flow_name="a"), RunRecord(id=new_id(), flow_name="b")
    for run in (first, second):
        for x in range(3):
            runs.history().mark(run, _hit(run, x))
        failed = _everything(run)  # task_name 'fetch ...', state 'Custom'
        runs.history().mark(run, failed)
    recorded = runs.history()
    headers = recorded.list_runs(task_runs=False)
    assert {run.flow_name for run in headers} == {"a", "b"} and all(run.task_runs == [] for run in headers)
    hits = recorded.find_task_runs([first.id, second.id], task_name="double", state="Cached")
    assert len(hits) == 6 and {t.run_id for t in hits} == {first.id, second.id}
    assert len(recorded.find_task_runs([first.id], state="Custom")) == 1
    assert recorded.find_task_runs([first.id], task_name="double", state="Completed") == []
    assert recorded.find_task_runs([]) == []
    many = [new_id() for _ in range(1200)] + [second.id]  # more ids than one statement takes
    assert len(recorded.find_task_runs(many)) == 4


def test_the_history_file_is_private_even_in_a_home_others_can_read(nbflow_home: Path) -> None:
    # Records keep argument values verbatim: the file (and SQLite's -wal and -shm beside it) is 0600.
    nbflow_home.mkdir(parents=True, mode=0o755)
    os.chmod(nbflow_home, 0o755)
    history = RunHistory(nbflow_home)
    run = RunRecord(id=new_id(), flow_name="f", kind="flow", state="Running", start_time=time.time())
    history.mark(run)
    history.flush()
    for path in nbflow_home.glob("runs.sqlite*"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    history.close()


def test_list_runs_prints_one_line_per_run_and_a_table_in_a_notebook(nbflow_home: Path) -> None:
    @nbflow.task
    def square(x: int) -> int:
        return x * x

    @nbflow.flow
    def pipeline(n: int, label: str = "a <b>") -> list[int]:
        return [square(i) for i in range(n)]

    pipeline(3)
    pipeline(3)
    square(9)
    listed = runs.list_runs()
    assert isinstance(listed, list) and len(listed) == 3
    text = repr(listed)
    assert len(text) < 600, text  # was kilobytes of nested dataclass fields
    lines = text.splitlines()
    assert lines[0] == "RunList of 3 runs:" and len(lines) == 4
    assert all(line.startswith("  <RunRecord ") and line.endswith(">") for line in lines[1:])
    flow_lines = [line for line in lines if "'pipeline'" in line]
    assert "flow 'pipeline' Completed, started " in flow_lines[0] and "3 cached, 0 computed, 0 failed" in flow_lines[0]
    assert "0 cached, 3 computed, 0 failed" in flow_lines[1]
    assert repr(listed[0].task_runs[0]).startswith("<TaskRunRecord #0 'square' Completed, ")
    html = listed._repr_html_()
    assert html.startswith("<table") and html.count("<tr>") == 4
    assert "label=&#x27;a &lt;b&gt;&#x27;" in html  # parameters shown, escaped
    assert repr(runs.RunList()) == "RunList([])"


def test_a_long_flow_keeps_its_newest_task_runs_in_memory_and_every_one_in_the_history(
        nbflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbflow.context import FlowRunContext
    from nbflow.ui.model import GraphModel

    # Small numbers, the same rule as a flow of a million calls: memory holds a bounded number of records.
    monkeypatch.setattr(runs, "_IN_MEMORY", 10)
    released = threading.Event()
    live: list[RunRecord] = []

    @nbflow.task(cache_policy=nbflow.cache_policies.NONE)
    def quick(i: int) -> int:
        if i == 3:
            raise ValueError("three")
        return i

    @nbflow.task(cache_policy=nbflow.cache_policies.NONE)
    def slow() -> int:
        released.wait(30)
        return -1

    @nbflow.flow
    def many() -> int:
        context = FlowRunContext.get()
        assert context is not None
        live.append(context.run)
        waiting = [slow.submit(), slow.submit()]
        try:
            states = [quick(i, return_state=True) for i in range(33)]
            total = sum(state.result() for state in states if not state.is_failed())
            # The submitted calls still under way were never left out, however old.
            assert [t.task_name for t in context.run.task_runs[:2]] == ["slow", "slow"]
            assert all(t.state_type in ("PENDING", "RUNNING") for t in context.run.task_runs[:2])
        finally:
            released.set()
        return total + sum(future.result() for future in waiting)

    many()
    (run,) = live
    assert len(run.task_runs) <= 10 and run.task_run_count == 35
    assert run.counts() == {"cached": 0, "computed": 34, "failed": 1, "other": 0}
    assert "34 computed, 1 failed" in repr(run)
    assert [t.seq for t in run.all_task_runs()] == list(range(35))
    stored = runs.history().get_run(run.id)
    assert stored is not None and [t.seq for t in stored.task_runs] == list(range(35))
    model = GraphModel()
    model.add_run(run)  # the graph of the whole run reads the calls memory no longer holds
    assert {t.id for t in stored.task_runs} <= set(model.alias)


def test_many_calls_under_way_are_not_looked_through_at_every_new_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # Calls still under way stay in memory; with thousands of them (a flow submitting many slow tasks) each new
    # call must not scan and copy them all again (that was quadratic: 25,000 submitted calls took 16 s).
    monkeypatch.setattr(runs, "_IN_MEMORY", 10)
    looks = []
    forget = RunRecord._forget_oldest

    def counted(self: RunRecord) -> None:
        looks.append(len(self.task_runs))
        forget(self)

    monkeypatch.setattr(RunRecord, "_forget_oldest", counted)
    run = RunRecord(id=new_id(), flow_name="many")
    for i in range(400):
        task_run = TaskRunRecord(id=new_task_run_id(), run_id=run.id, task_name="t", task_key="m.t")
        if i % 2:
            task_run.state, task_run.state_type = "Completed", "COMPLETED"
        run.add_task_run(task_run)
    assert len(looks) <= 400 // 5 + 1, len(looks)
    assert run.counts()["computed"] == 200 and sum(run.counts().values()) == 400
    assert all(t.state_type == "PENDING" for t in run.task_runs[:-10])  # the finished ones were let go
