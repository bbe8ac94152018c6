"""``nbflow runs`` and ``nbflow cache``: on stores written by real processes, output read through ``--json``.

(``nbflow run``, which starts kernels, is tested in tests/notebooks/test_cli_run.py.)
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from nbflow.cli import main
from nbflow.cli.common import parse_age
from nbflow.cli.run import inject_parameters, parse_parameters, unresolved_failures
from nbflow.runs import RunRecord, TaskRunRecord

WORKLOAD = textwrap.dedent(
    """
    import nbflow

    @nbflow.task
    def square(x):
        return x * x

    @nbflow.task
    def boom(x):
        raise ValueError(f"bad input {x}")

    @nbflow.flow
    def pipeline(n):
        return [square(i) for i in range(n)]

    pipeline(3)
    square(2)  # computed inside the flow: served from the store here
    try:
        boom(7)
    except ValueError:
        pass
    """
)


def run_python(code: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=env or dict(os.environ))
    assert done.returncode == 0, done.stderr


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Exit code, stdout without its header line (the store, tested below), stderr."""
    code = main(list(args))
    captured = capsys.readouterr()
    out = captured.out
    if out.startswith("store "):
        out = out.split("\n", 1)[1]
    return code, out, captured.err


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = cli(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def workload(tmp_path: Path) -> None:
    run_python(WORKLOAD, tmp_path)


def test_runs_lists_flow_and_session_runs_with_task_counts(workload: None, capsys: pytest.CaptureFixture[str]) -> None:
    data = cli_json(capsys, "runs")
    by_kind = {run["kind"]: run for run in data["runs"]}
    assert set(by_kind) == {"flow", "session"}
    flow, session = by_kind["flow"], by_kind["session"]
    assert flow["name"] == "pipeline" and flow["state"] == "Completed"
    assert flow["tasks"] == {"cached": 0, "computed": 3, "failed": 0, "other": 0}
    assert session["tasks"] == {"cached": 1, "computed": 0, "failed": 1, "other": 0}
    assert session["state"] == "Failed" and session["duration"] is not None
    # Newest first.
    assert data["runs"][0]["start_time"] >= data["runs"][1]["start_time"]

    code, text, _ = cli(capsys, "runs")
    assert code == 0
    assert "pipeline" in text and "0 cached, 3 computed, 0 failed" in text
    assert "1 cached, 0 computed, 1 failed" in text
    assert len(cli_json(capsys, "runs", "--limit", "1")["runs"]) == 1


def test_runs_show_gives_the_task_table_with_errors(workload: None, capsys: pytest.CaptureFixture[str]) -> None:
    session = next(run for run in cli_json(capsys, "runs")["runs"] if run["kind"] == "session")
    shown = cli_json(capsys, "runs", "show", session["id"][:8])  # a prefix is enough
    assert shown["id"] == session["id"]
    assert [(t["task"], t["result"]) for t in shown["task_runs"]] == [("square", "cached"), ("boom", "failed")]
    assert shown["task_runs"][1]["error"] == "ValueError: bad input 7"
    assert "ValueError" in shown["task_runs"][1]["traceback"]

    code, text, _ = cli(capsys, "runs", "show", session["id"])
    assert code == 0
    assert "boom (Failed): ValueError: bad input 7" in text
    code, text, _ = cli(capsys, "runs", "show", session["id"], "--traceback")
    assert "Traceback" in text

    code, _, err = cli(capsys, "runs", "show", "0000nosuchrun")
    assert code == 2 and "no run '0000nosuchrun'" in err


def test_cache_info_ls_and_clear(workload: None, capsys: pytest.CaptureFixture[str], nbflow_home: Path) -> None:
    info = cli_json(capsys, "cache", "info")
    assert info["entries"] == 3  # square(0), square(1), square(2); boom failed and is not stored
    assert info["tasks"]["square"]["entries"] == 3
    assert info["size"] > 0 and info["disk_usage"] >= info["size"]
    assert info["size_limit"] == 10 * 1024**3
    assert info["oldest"] <= info["newest"] <= time.time()
    assert info["home"] == str(nbflow_home)

    listed = cli_json(capsys, "cache", "ls", "--task", "square")
    assert listed["total"] == 3
    assert {entry["task"] for entry in listed["entries"]} == {"square"}
    assert all(entry["size"] > 0 and entry["created"] <= entry["last_used"] for entry in listed["entries"])
    assert cli_json(capsys, "cache", "ls", "--task", "nothing")["total"] == 0
    assert len(cli_json(capsys, "cache", "ls", "--limit", "2")["entries"]) == 2

    # Nothing is older than a day; everything is older than zero seconds.
    assert cli_json(capsys, "cache", "clear", "--older-than", "1d")["removed"] == 0
    assert cli_json(capsys, "cache", "clear", "--task", "other")["removed"] == 0
    cleared = cli_json(capsys, "cache", "clear", "--task", "square", "--older-than", "0s")
    assert cleared["removed"] == 3 and {entry["task"] for entry in cleared["entries"]} == {"square"}
    assert cli_json(capsys, "cache", "info")["entries"] == 0


def test_hit_counts_and_clear_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A plain script: the hit counts batched in memory are written when the process exits.
    code = WORKLOAD + "\nfor _ in range(4):\n    square(2)\n"
    run_python(code, tmp_path)
    entries = {e["key"]: e for e in cli_json(capsys, "cache", "ls")["entries"]}
    assert sorted(entry["hits"] for entry in entries.values()) == [0, 0, 5]
    assert cli_json(capsys, "cache", "info")["hits"] == 5
    code_, text, _ = cli(capsys, "cache", "clear")
    assert code_ == 0 and text.startswith("removed 3 cache entries")
    assert cli_json(capsys, "cache", "ls")["total"] == 0


def test_prune_applies_a_smaller_size_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    run_python(
        "import nbflow\n@nbflow.task\ndef blob(i):\n    return bytes(20_000) + bytes([i])\n"
        "for i in range(5):\n    blob(i)\n", tmp_path,
    )
    before = cli_json(capsys, "cache", "info")
    assert before["entries"] == 5
    from nbflow import settings

    monkeypatch.setenv("NBFLOW_SIZE_LIMIT", "50000")
    settings.reset()
    pruned = cli_json(capsys, "cache", "prune")
    assert pruned["size_limit"] == 50000 and pruned["removed"] == 3
    assert pruned["size_after"] <= 50000 < pruned["size_before"]
    assert cli_json(capsys, "cache", "info")["entries"] == 2


def test_listing_never_reads_payloads(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      nbflow_home: Path) -> None:
    # A large array is stored out of band. Truncating its file would be caught (and the entry deleted)
    # by anything that reads the payload; the listings must show the entry unchanged.
    run_python(
        "import nbflow, numpy as np\n@nbflow.task\ndef big():\n    return np.ones(4_000_000)\nbig()\n", tmp_path,
    )
    blobs = [path for path in (nbflow_home / "store" / "blobs").rglob("*.bin")]
    assert len(blobs) == 1
    blobs[0].write_bytes(b"")
    for _ in range(2):
        listed = cli_json(capsys, "cache", "ls")
        assert [(e["task"], e["size"] >= 32_000_000) for e in listed["entries"]] == [("big", True)]
        info = cli_json(capsys, "cache", "info")
        assert info["entries"] == 1 and info["size"] >= 32_000_000


def test_commands_work_while_another_process_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            """
            import time, nbflow
            @nbflow.task
            def step(i):
                return list(range(i % 50))
            @nbflow.flow
            def busy(start):
                return [step(i) for i in range(start, start + 20)]
            deadline = time.time() + 4
            n = 0
            while time.time() < deadline:
                busy(n)
                n += 20
            """
        )],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        seen = 0
        while writer.poll() is None:
            seen = max(seen, cli_json(capsys, "cache", "info")["entries"])
            listed = cli_json(capsys, "cache", "ls")
            assert all(entry["task"] == "step" for entry in listed["entries"])
            runs = cli_json(capsys, "runs", "--limit", "5")["runs"]
            assert all(run["name"] == "busy" for run in runs)
            time.sleep(0.1)
    finally:
        _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert seen > 0
    final = cli_json(capsys, "cache", "info")["entries"]
    assert final >= seen


def test_runs_prune_deletes_finished_runs_older_than_the_age(workload: None, nbflow_home: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    home = nbflow_home
    listed = cli_json(capsys, "runs", "--home", str(home))["runs"]
    assert len(listed) == 2  # the flow run and the session run of the workload's process, both ended
    pruned = cli_json(capsys, "runs", "prune", "--older-than", "1h", "--home", str(home))
    assert (pruned["runs"], pruned["task_runs"]) == (0, 0)  # nothing that old
    time.sleep(0.05)
    code, text, err = cli(capsys, "runs", "prune", "--older-than", "0.01s", "--home", str(home))
    assert code == 0, err
    assert text.startswith("deleted 2 runs (5 task runs) that ended more than 0.01s ago;")
    assert "free in runs.sqlite" in text
    assert cli_json(capsys, "runs", "--home", str(home))["runs"] == []
    cached = cli_json(capsys, "cache", "info", "--home", str(home))
    assert cached["entries"] == 3  # results are not history: square(0..2) stay cached


def test_empty_home_is_reported_not_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "never-used"
    assert cli_json(capsys, "runs", "--home", str(home))["runs"] == []
    assert cli_json(capsys, "cache", "info", "--home", str(home))["entries"] == 0
    assert cli_json(capsys, "cache", "ls", "--home", str(home))["entries"] == []
    assert cli_json(capsys, "cache", "clear", "--home", str(home))["removed"] == 0
    assert cli_json(capsys, "cache", "prune", "--home", str(home))["removed"] == 0
    assert cli_json(capsys, "runs", "prune", "--older-than", "1d", "--home", str(home))["runs"] == 0
    assert not home.exists()
    code, text, _ = cli(capsys, "runs", "--home", str(home))
    assert code == 0 and "no runs recorded" in text


@pytest.mark.parametrize("args", [
    ["--help"], ["run", "--help"], ["runs", "--help"], ["runs", "show", "--help"], ["runs", "prune", "--help"],
    ["cache", "--help"],
    ["cache", "info", "--help"], ["cache", "ls", "--help"], ["cache", "clear", "--help"], ["cache", "prune", "--help"],
])
def test_every_command_has_help(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, text, _ = cli(capsys, *args)
    assert code == 0 and "usage: nbflow" in text
    if args not in (["--help"], ["cache", "--help"]):  # every command (not a group) has --json
        assert "--json" in text


@pytest.mark.parametrize(("args", "message"), [
    ([], "usage"),
    (["cache"], "needs a subcommand"),
    (["cache", "clear", "--older-than", "soon"], "cannot read 'soon' as an age"),
    (["runs", "--limit", "0"], "--limit must be a positive number"),
    (["cache", "ls", "--limit", "-1"], "--limit must be a positive number"),
    (["runs", "show"], "required"),
    (["runs", "prune"], "--older-than"),
    (["runs", "prune", "--older-than", "3 days"], "cannot read '3 days' as an age"),
    (["nosuchcommand"], "invalid choice"),
    (["run", "missing.ipynb", "-p", "novalue"], "write parameters as NAME=VALUE"),
])
def test_bad_usage_exits_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, *args)
    assert code == 2
    assert message in err


def test_the_console_script_runs_as_a_program(workload: None, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "nbflow.cli", "runs", "--json"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["runs"]) == 2


# -- pieces of `nbflow run` that need no kernel ---------------------------------------------------------

def test_parameters_are_literals_else_strings() -> None:
    assert parse_parameters(["start=2026-01-01", "n_trials=50", "rate=0.5", "names=['a', 'b']", "flag=True",
                             "empty=", "text=hello world", "eq=a=b"]) == {
        "start": "2026-01-01", "n_trials": 50, "rate": 0.5, "names": ["a", "b"], "flag": True, "empty": "",
        "text": "hello world", "eq": "a=b",
    }
    assert parse_parameters(["n=1", "n=2"]) == {"n": 2}


@pytest.mark.parametrize("item", ["novalue", "1x=3", "class=1", "=5", "a-b=1"])
def test_malformed_parameters_name_the_item(item: str) -> None:
    from nbflow.cli.common import Usage

    with pytest.raises(Usage, match=f"-p '{item}'"):
        parse_parameters([item])


def test_parameters_are_injected_after_the_parameters_cell() -> None:
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    notebook = new_notebook(cells=[
        new_markdown_cell("# title"),
        new_code_cell("n = 1", metadata={"tags": ["parameters"]}),
        new_code_cell("print(n)"),
    ])
    inject_parameters(notebook, {"n": 5, "name": "x"})
    assert [cell.metadata.get("tags") for cell in notebook.cells] == [
        None, ["parameters"], ["injected-parameters"], None]
    assert notebook.cells[2].source == "# Parameters\nn = 5\nname = 'x'\n"
    # Running an executed notebook again replaces the injected cell.
    inject_parameters(notebook, {"n": 6})
    assert [cell.source for cell in notebook.cells if "injected-parameters" in cell.metadata.get("tags", [])] == [
        "# Parameters\nn = 6\n"]
    untagged = new_notebook(cells=[new_code_cell("print(n)")])
    inject_parameters(untagged, {"n": 1})
    assert untagged.cells[0].metadata["tags"] == ["injected-parameters"]


def test_ages() -> None:
    assert parse_age("90s") == 90 and parse_age("30m") == 1800 and parse_age("12h") == 43200
    assert parse_age("7d") == 7 * 86400 and parse_age("2w") == 14 * 86400 and parse_age("1.5") == 1.5 * 86400


def test_a_failure_retried_successfully_is_resolved() -> None:
    def task_run(seq: int, state: str, state_type: str, inputs: dict[str, str]) -> TaskRunRecord:
        return TaskRunRecord(id=f"t{seq}", run_id="r", task_name="load", task_key="load-key", state=state,
                             state_type=state_type, inputs=inputs, seq=seq)

    run = RunRecord(id="r", flow_name="session", kind="session")
    run.task_runs = [
        task_run(0, "Failed", "FAILED", {"x": "1"}),
        task_run(1, "Completed", "COMPLETED", {"x": "1"}),  # the retry of the call above
        task_run(2, "Failed", "FAILED", {"x": "2"}),  # another call: still failed
        task_run(3, "Completed", "COMPLETED", {"x": "3"}),
        task_run(4, "TimedOut", "FAILED", {"x": "3"}),  # failed after the success: a failure
    ]
    assert [failure.id for failure in unresolved_failures([run])] == ["t2", "t4"]


def test_the_launch_watcher_reads_only_what_changed(tmp_path: Path) -> None:
    from nbflow.cli.history import LaunchWatcher
    from nbflow.runs import RunHistory, new_id, new_task_run_id

    history = RunHistory(tmp_path)
    run = RunRecord(id=new_id(), flow_name="session", kind="session", launch_id="L1")
    other = RunRecord(id=new_id(), flow_name="other", launch_id="L2")  # another launch: never reported

    def call(name: str, state: str, state_type: str, target: RunRecord = run) -> TaskRunRecord:
        task_run = TaskRunRecord(id=new_task_run_id(), run_id=target.id, task_name=name, task_key=f"m.{name}",
                                 state=state, state_type=state_type)
        target.add_task_run(task_run)
        history.mark(target, task_run)
        return task_run

    def written(*task_runs: TaskRunRecord) -> None:
        for task_run in task_runs:
            history.mark(run, task_run)
        history.flush()

    def poll() -> list[tuple[str, str]]:
        return sorted((task_run.task_name, task_run.state) for task_run in watcher.poll())

    watcher = LaunchWatcher(tmp_path, "L1", time.time())
    try:
        done = call("done", "Completed", "COMPLETED")
        call("elsewhere", "Running", "RUNNING", other)
        history.flush()
        slow = call("slow", "Running", "RUNNING")
        history.flush()  # written last, alone: the row with the highest rowid
        assert poll() == [("done", "Completed"), ("slow", "Running")]
        assert poll() == []
        slow.state, slow.state_type = "Completed", "COMPLETED"
        written(slow)
        assert poll() == [("slow", "Completed")]
        # Finished out of call order (a map): the row of the earlier call is written after the later one's.
        first, second = call("first", "Running", "RUNNING"), call("second", "Running", "RUNNING")
        history.flush()
        assert poll() == [("first", "Running"), ("second", "Running")]
        second.state, second.state_type = "Failed", "FAILED"
        written(second)
        first.state, first.state_type = "Cached", "COMPLETED"
        written(first)
        done.logs.append("written again, same state")  # a final row rewritten: no change to report
        written(done)
        assert poll() == [("first", "Cached"), ("second", "Failed")]
        assert poll() == []
        # The rows at the top deleted (`nbflow runs prune` of a flow run of this launch that ended): SQLite
        # gives their rowids out again, and a poll can miss the row that gets one; the last poll cannot.
        ended = RunRecord(id=new_id(), flow_name="ended", launch_id="L1")
        call("gone", "Completed", "COMPLETED", ended)
        history.flush()
        assert poll() == [("gone", "Completed")]
        with sqlite3.connect(tmp_path / "runs.sqlite") as connection:
            connection.execute("DELETE FROM task_runs WHERE run_id = ?", (ended.id,))
        call("after", "Completed", "COMPLETED")
        history.flush()
        assert [task_run.task_name for task_run in watcher.poll(everything=True)] == ["after"]
        assert [task_run.task_name for task_run in watcher.records()[0].task_runs] == [
            "done", "slow", "first", "second", "after"]
    finally:
        watcher.close()
        history.close()


def test_runs_lists_a_processs_flows_under_its_session_run_with_parameters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = textwrap.dedent(
        """
        import nbflow

        @nbflow.task
        def square(x):
            return x * x

        @nbflow.flow
        def inner(k):
            return square(k)

        @nbflow.flow
        def pipeline(n, name="a", sizes=(1, 2), opts={"lr": 0.1}, flag=None):
            return [square(i) for i in range(n)] + [inner(5)]

        pipeline(3)
        square(9)
        """
    )
    run_python(code, tmp_path)
    run_python(code, tmp_path)  # a second process: its runs are not mixed up with the first's
    data = cli_json(capsys, "runs")["runs"]
    by_id = {run["id"]: run for run in data}
    sessions = [run for run in data if run["kind"] == "session"]
    assert len(sessions) == 2
    for session in sessions:
        flows = [run for run in data if run["parent"] == session["id"]]
        assert [run["name"] for run in flows] == ["pipeline"] and flows[0]["pid"] == session["pid"]
        [inner] = [run for run in data if run["parent"] == flows[0]["id"]]
        assert inner["name"] == "inner" and inner["parameters"] == {"k": 5}
    pipeline = next(run for run in data if run["name"] == "pipeline")
    # JSON values where the recorded value is JSON-able; the recorded text otherwise.
    assert pipeline["parameters"] == {"n": 3, "name": "a", "sizes": "tuple[2]", "opts": "dict[1]", "flag": None}
    assert by_id[pipeline["parent"]]["kind"] == "session"

    _, text, _ = cli(capsys, "runs")
    lines = text.splitlines()
    assert "parameters" in lines[0]
    names = [line[14:].strip().split("  ")[0] for line in lines[2:]]  # after the 12-character run id
    assert names == ["session", "└ pipeline", "└ inner"] * 2, text
    assert "n=3, name='a', sizes=tuple[2]" in text


def test_a_reader_that_leaves_ends_the_command_quietly(workload: None, tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(read)  # `nbflow runs | head` after head has exited: every write fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "nbflow.cli", "runs"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120, cwd=tmp_path)
    finally:
        os.close(write)
    assert done.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored"
    assert done.returncode == 141
