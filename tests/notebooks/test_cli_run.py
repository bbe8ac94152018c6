"""`nbflow run` and the example notebooks, executed in real kernels through nbclient."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def nbflow_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nbflow.cli", *args], capture_output=True, text=True, cwd=cwd,
        env=env or dict(os.environ), timeout=600, stdin=subprocess.DEVNULL,
    )


def assert_stopped(pid: int, what: str) -> None:
    """The process ``pid`` ends within 5 s (else it is killed and the test fails)."""
    import time

    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    raise AssertionError(f"{what} is still running")


def write_notebook(path: Path, *sources: str) -> Path:
    notebook = new_notebook(cells=[new_code_cell(source) for source in sources])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, str(path))
    return path


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_every_example_notebook_runs_twice_and_the_second_run_is_cached(notebook: Path, tmp_path: Path) -> None:
    output = tmp_path / "executed.ipynb"
    first = nbflow_cli("run", str(notebook), "-o", str(output), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert " 0 computed" not in first.stdout, first.stdout
    executed = nbformat.read(str(output), as_version=4)
    assert any(cell.get("outputs") for cell in executed.cells if cell.cell_type == "code")
    second = nbflow_cli("run", str(notebook), cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert " 0 computed" in second.stdout, second.stdout
    assert "Cached" in second.stdout


def test_quickstart_second_run_is_fast_and_all_cached(tmp_path: Path) -> None:
    notebook = ROOT / "notebooks" / "quickstart.ipynb"
    first = nbflow_cli("run", str(notebook), cwd=tmp_path)
    second = nbflow_cli("run", str(notebook), cwd=tmp_path)
    assert first.returncode == second.returncode == 0, first.stdout + second.stdout
    assert "3 computed" in first.stdout
    lines = [line for line in second.stdout.splitlines() if line.startswith(("load", "featurize", "train"))]
    assert len(lines) >= 3 and all("cached" in line for line in lines), second.stdout


def test_failed_task_exits_1_and_names_the_task(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "fails.ipynb",
        "import nbflow",
        "@nbflow.task\ndef explode(x):\n    raise ValueError(f'bad input {x}')",
        "explode(3)",
        "print('never reached')",
    )
    done = nbflow_cli("run", str(path), cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed task explode: ValueError: bad input 3" in done.stdout
    assert "A cell failed (cell 3: explode(3)): ValueError: bad input 3" in done.stdout


def test_failed_cell_without_tasks_exits_1(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "cellfail.ipynb", "1 / 0")
    done = nbflow_cli("run", str(path), cwd=tmp_path)
    assert done.returncode == 1
    assert "ZeroDivisionError" in done.stdout


def test_bad_usage_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    missing = nbflow_cli("run", "nope.ipynb", cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    (tmp_path / "broken.ipynb").write_text("{not json")
    broken = nbflow_cli("run", "broken.ipynb", cwd=tmp_path)
    assert broken.returncode == 2 and "not a valid Jupyter notebook" in broken.stderr
    path = write_notebook(tmp_path / "ok.ipynb", "1")
    kernel = nbflow_cli("run", str(path), "--kernel", "no-such-kernel", cwd=tmp_path)
    assert kernel.returncode == 2 and "kernel 'no-such-kernel' is not installed" in kernel.stderr
    nothing = nbflow_cli(cwd=tmp_path)
    assert nothing.returncode == 2
    helped = nbflow_cli("run", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "NOTEBOOK" in helped.stdout.upper()


def test_cli_and_notebook_share_the_store_and_history(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "shared.ipynb",
        "import nbflow\n@nbflow.task\ndef square(x):\n    return x * x",
        "square(12)",
    )
    store = tmp_path / "store"
    env = {**os.environ, "NBFLOW_HOME": str(store)}
    assert nbflow_cli("run", str(path), cwd=tmp_path, env=env).returncode == 0
    # A plain Python process with the same NBFLOW_HOME sees the run and hits the entry.
    code = (
        "import json, nbflow\n"
        "@nbflow.task\ndef square(x):\n    return x * x\n"
        "state = square(12, return_state=True)\n"
        "runs = nbflow.runs.list_runs()\n"
        "print(json.dumps([state.name, len(runs), runs[-1].task_runs[0].task_name]))\n"
    )
    script = tmp_path / "script.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    name, count, first_task = json.loads(done.stdout)
    # The function is defined in a different place (a cell vs. a script) but its code is the same.
    assert name == "Cached"
    assert count == 2 and first_task == "square"


def test_run_from_the_project_root_uses_the_store_the_other_commands_see_there(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "notebooks" / ".nbflow").mkdir(parents=True)  # an older store next to the notebook
    (root / "pyproject.toml").write_text("")
    write_notebook(
        root / "notebooks" / "x.ipynb",
        "import nbflow\n@nbflow.task\ndef one():\n    return 1\none()",
        "print('home', nbflow.settings.get_settings().home)",
    )
    env = {key: value for key, value in os.environ.items() if key != "NBFLOW_HOME"}
    env["HOME"] = str(tmp_path)  # the walk stops below it: no store outside the test is found
    output = tmp_path / "out.ipynb"
    done = nbflow_cli("run", "notebooks/x.ipynb", "-o", str(output), cwd=root, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"store {root / '.nbflow'})" in done.stdout.splitlines()[0]
    printed = nbformat.read(str(output), as_version=4).cells[1].outputs[0]["text"]
    assert printed.strip() == f"home {root / '.nbflow'}"  # the kernel was handed the CLI's store
    listed = nbflow_cli("runs", "--json", cwd=root, env=env)
    assert [run["name"] for run in json.loads(listed.stdout)["runs"]] == ["x.ipynb"]
    assert not list((root / "notebooks" / ".nbflow").iterdir())  # the older store was not written
    # From the notebook's directory, the older store is the nearest one: what a kernel started there uses.
    assert nbflow_cli("runs", cwd=root / "notebooks", env=env).stdout.splitlines()[0] == (
        f"store {root / 'notebooks' / '.nbflow'}")


def parameterized_notebook(path: Path) -> Path:
    notebook = new_notebook(cells=[
        new_code_cell("import time\nimport nbflow"),
        new_code_cell("start = '2025-01-01'\nn_trials = 1", metadata={"tags": ["parameters"]}),
        new_code_cell(
            "@nbflow.task\ndef simulate(start, n_trials):\n    time.sleep(2)\n    return f'{start}:{n_trials * 2}'"
        ),
        new_code_cell("print('params', start, n_trials)\nresult = simulate(start, n_trials)\nresult"),
        # No %load_ext in the notebook: `nbflow run` loads the extension.
        new_code_cell("%%task tail\nlast = result[-3:]\nprint(last)"),
    ])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, str(path))
    return path


def test_parameters_live_lines_json_summary_and_output_notebook(tmp_path: Path) -> None:
    path = parameterized_notebook(tmp_path / "analysis.ipynb")
    output = tmp_path / "out" / "analysis.ipynb"
    args = ("run", str(path), "-p", "start=2026-01-01", "-p", "n_trials=50")
    first = nbflow_cli(*args, "-o", str(output), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert "parameters: start='2026-01-01', n_trials=50" in lines
    # The 2 s task is shown while it runs, then when it ends, with a progress count.
    started = next(i for i, line in enumerate(lines) if "start" in line.split() and "simulate" in line)
    ended = next(i for i, line in enumerate(lines) if "computed" in line.split() and "simulate" in line)
    assert started < ended
    assert "cell 5/6" in lines[started] and "0 done, 1 running" in lines[started]
    assert "1 done" in lines[ended] and "2.0" in lines[ended]
    assert "2 task run(s): 0 cached, 2 computed, 0 failed" in first.stdout

    executed = nbformat.read(str(output), as_version=4)
    tags = [cell.metadata.get("tags") for cell in executed.cells]
    assert tags == [None, ["parameters"], ["injected-parameters"], None, None, None, ["nbflow-run-summary"]]
    assert executed.cells[2].source == "# Parameters\nstart = '2026-01-01'\nn_trials = 50\n"
    printed = "".join(o.get("text", "") for o in executed.cells[4].outputs if o.output_type == "stream")
    assert printed == "params 2026-01-01 50\n"
    assert "'2026-01-01:100'" in executed.cells[4].outputs[-1]["data"]["text/plain"]
    summary = executed.metadata["nbflow"]["run"]
    assert summary["status"] == "ok" and summary["parameters"] == {"start": "2026-01-01", "n_trials": 50}
    assert [(t["task"], t["result"]) for t in summary["tasks"]] == [("simulate", "computed"), ("tail", "computed")]
    graph = executed.cells[-1].outputs[0]["data"]
    assert graph["image/svg+xml"].startswith("<svg") and graph["image/svg+xml"].count('data-state="completed"') == 2
    assert "simulate" in graph["image/svg+xml"] and "2 task run(s)" in graph["text/plain"]

    # Same parameters: served from the cache. The executed notebook runs again as well (its injected
    # cell and graph are replaced, not added).
    again = nbflow_cli("run", str(output), "-p", "start=2026-01-01", "-p", "n_trials=50", "--json",
                       "-o", str(output), cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    data = json.loads(again.stdout)
    assert data["counts"] == {"cached": 2, "computed": 0, "failed": 0, "other": 0}
    assert data["status"] == "ok" and data["exit_code"] == 0 and data["failed_tasks"] == []
    assert "cached" in again.stderr  # the live lines go to stderr with --json
    rerun = nbformat.read(str(output), as_version=4)
    assert [cell.metadata.get("tags") for cell in rerun.cells] == tags
    # Other parameters: computed again.
    other = json.loads(nbflow_cli(*args[:4], "-p", "n_trials=7", "--json", cwd=tmp_path).stdout)
    assert other["counts"]["computed"] == 2

    # The history the CLI and notebooks share names the run after its notebook, with its parameters.
    runs = json.loads(nbflow_cli("runs", "--json", cwd=tmp_path).stdout)["runs"]
    assert [run["name"] for run in runs] == ["analysis.ipynb"] * 3
    assert runs[0]["parameters"] == {"start": "2026-01-01", "n_trials": 7}  # JSON values, not reprs
    assert [run["tasks"]["cached"] for run in runs] == [0, 2, 0]


def test_failure_with_json_names_the_task_and_bad_parameters_exit_2(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "fails.ipynb",
        "import nbflow\n@nbflow.task(retries=1)\ndef fetch(url):\n    raise ConnectionError(f'{url} is down')",
        "fetch('http://example.invalid')",
    )
    done = nbflow_cli("run", str(path), "--json", "--home", "elsewhere", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert data["status"] == "failed" and data["exit_code"] == 1
    assert data["home"] == str(tmp_path / "elsewhere")
    runs = json.loads(nbflow_cli("runs", "--home", "elsewhere", "--json", cwd=tmp_path).stdout)["runs"]
    assert [(run["state"], run["tasks"]["failed"]) for run in runs] == [("Failed", 1)]
    assert data["failed_tasks"] == [{"task": "fetch", "state": "Failed", "id": data["failed_tasks"][0]["id"],
                                     "error": "ConnectionError: http://example.invalid is down"}]
    assert data["failed_cell"]["index"] == 1 and data["failed_cell"]["ename"] == "ConnectionError"
    assert data["tasks"][0]["attempts"] == 2
    bad = nbflow_cli("run", str(path), "-p", "2x=1", cwd=tmp_path)
    assert bad.returncode == 2 and "'2x' is not a valid Python variable name" in bad.stderr


def test_a_task_failure_the_notebook_catches_still_fails_the_run(tmp_path: Path) -> None:
    notebook = new_notebook(cells=[
        new_code_cell("import nbflow\n@nbflow.task\ndef parse(text):\n    return float(text)"),
        # The cell is expected to raise (nbclient lets it): its task's failure is allowed too.
        new_code_cell("parse('n/a')", metadata={"tags": ["raises-exception"]}),
        new_code_cell("state = parse('n/b', return_state=True)\nprint(state.name)"),
        new_code_cell("parse('1.5')"),
    ])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, str(tmp_path / "caught.ipynb"))
    done = nbflow_cli("run", "caught.ipynb", "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert data["failed_cell"] is None
    # The failure the next cell caught (return_state=True) fails the run: nothing ever retries the task.
    assert [task["error"] for task in data["failed_tasks"]] == ["ValueError: could not convert string to float: 'n/b'"]
    assert [task["error"] for task in data["allowed_failures"]] == [
        "ValueError: could not convert string to float: 'n/a'"]


def test_a_kernel_that_dies_keeps_the_tasks_of_earlier_cells(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "dies.ipynb",
        "import nbflow\n@nbflow.task\ndef prepare():\n    return 1\nprepare()",
        "import os\nos._exit(3)  # no atexit handler runs",
    )
    done = nbflow_cli("run", str(path), "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert data["failed_cell"]["ename"] == "DeadKernelError"
    assert [(task["task"], task["result"]) for task in data["tasks"]] == [("prepare", "computed")]


def test_a_cell_past_the_timeout_is_interrupted_and_named(tmp_path: Path) -> None:
    import time

    path = write_notebook(tmp_path / "slow.ipynb", "x = 1", "import time\ntime.sleep(120)", "print('never')")
    started = time.monotonic()
    result = nbflow_cli("run", str(path), "--timeout", "3", "--json", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    failed = json.loads(result.stdout)["failed_cell"]
    assert failed["index"] == 1 and failed["ename"] == "CellTimeoutError", failed
    assert failed["first_line"] == "import time" and "--timeout 3 s" in failed["evalue"]
    assert elapsed < 60, elapsed  # interrupted near the limit, not left running for the 120 s it asked for


def test_a_cell_that_ignores_the_interrupt_is_abandoned_named_and_its_kernel_stopped(tmp_path: Path) -> None:
    import time

    hang = ("import os, signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "open('kernel.pid', 'w').write(str(os.getpid()))\ntime.sleep(45)")
    path = write_notebook(tmp_path / "hangs.ipynb", "x = 1", hang, "print('never')")
    started = time.monotonic()
    result = nbflow_cli("run", str(path), "--timeout", "2", "--json", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    failed = json.loads(result.stdout)["failed_cell"]
    assert failed["ename"] == "CellTimeoutError" and failed["index"] == 1, failed
    assert failed["first_line"] == "import os, signal, time"
    assert "did not stop when interrupted" in failed["evalue"] and "AssertionError" not in result.stdout
    assert elapsed < 30, elapsed  # not the 45 s the cell asked for
    assert_stopped(int((tmp_path / "kernel.pid").read_text()), "the kernel of the abandoned cell")
    text = nbflow_cli("run", str(path), "--timeout", "1.5", cwd=tmp_path).stdout  # a fraction of a second too
    assert ("A cell failed (cell 2: import os, signal, time): CellTimeoutError: the cell ran past --timeout 1.5 s"
            in text)


def test_run_prints_a_tasks_log_lines_under_its_line(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "logs.ipynb",
        "import nbflow\n@nbflow.task\ndef load(x):\n    log = nbflow.get_run_logger()\n"
        "    log.info('loading %s', x)\n    log.debug('not shown')\n    return x\nload(7)",
    )
    result = nbflow_cli("run", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if "computed" in line and "load" in line)
    assert lines[at + 1].split() == ["|", "INFO", "|", "Task", "run", "'load'", "-", "loading", "7"]
    assert "not shown" not in result.stdout


@pytest.mark.parametrize("whole_group", [True, False], ids=["terminal", "process"])
def test_ctrl_c_stops_the_kernel_and_ends_with_a_summary_and_status_130(tmp_path: Path, whole_group: bool) -> None:
    """Ctrl-C in a terminal reaches the whole process group (nbflow and its kernel); `kill -INT` only nbflow."""
    import signal
    import time

    cells = ["import nbflow\n@nbflow.task\ndef square(x):\n    return x * x\nsquare(3)",
             "import os, time\nopen('kernel.pid', 'w').write(str(os.getpid()))\ntime.sleep(45)", "print('never')"]
    path = write_notebook(tmp_path / "long.ipynb", *cells)
    process = subprocess.Popen([sys.executable, "-m", "nbflow.cli", "run", str(path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "kernel.pid").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    time.sleep(0.5)
    if whole_group:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGINT)
    out, errors = process.communicate(timeout=60)
    assert process.returncode == 130, out + errors
    assert "Interrupted (cell 2: import os, time): KeyboardInterrupt" in out and "INTERRUPTED" in out, out
    assert "Traceback" not in errors and "DeadKernelError" not in out + errors, errors
    assert "square" in out  # the summary of what ran before
    assert_stopped(int((tmp_path / "kernel.pid").read_text()), "the interrupted run's kernel")
    (session,) = json.loads(nbflow_cli("runs", "--json", cwd=tmp_path).stdout)["runs"]
    assert session["state"] == "Cancelled" and session["end_time"] is not None  # not "Running" for ever
    assert "square" in nbflow_cli("runs", "show", session["id"], cwd=tmp_path).stdout


def test_run_piped_into_a_reader_that_leaves_stops_printing_quietly(tmp_path: Path) -> None:
    cells = ["import time, nbflow\n@nbflow.task\ndef square(x):\n    return x * x"]
    cells += [f"time.sleep(0.4)\n[square(i) for i in range({k * 3}, {k * 3 + 3})]" for k in range(4)]
    path = write_notebook(tmp_path / "lines.ipynb", *cells)
    process = subprocess.Popen([sys.executable, "-m", "nbflow.cli", "run", str(path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().startswith("nbflow run ")  # `| head -1`: the header, then the reader leaves
    process.stdout.close()
    errors = process.stderr.read()
    assert process.wait(timeout=300) == 141
    assert "Traceback" not in errors and "BrokenPipeError" not in errors, errors
    listed = nbflow_cli("runs", "--json", cwd=tmp_path)
    [run] = json.loads(listed.stdout)["runs"]
    assert run["tasks"]["computed"] == 12  # the run went on to its end: its results are stored


def test_auto_runs_every_cell_as_a_cell_task_and_says_what_each_cell_did(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "auto.ipynb",
        "import time\nopen(f'ran-{time.time_ns()}', 'x').close()\ntime.sleep(0.2)\nx = 21",
        "y = x * 2\nprint(y)",
        "!echo shell",
        "y + 1",
    )
    runs = []
    for _ in range(2):
        done = nbflow_cli("run", "--auto", "--json", str(path), cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        runs.append(json.loads(done.stdout))
    first, second = ([(cell["state"], cell["reason"]) for cell in run["cells"]] for run in runs)
    assert [state for state, _ in first] == ["computed", "computed", "uncached", "computed"]
    assert [state for state, _ in second] == ["cached", "cached", "uncached", "cached"]
    assert "shell command" in second[2][1]
    assert len(list(tmp_path.glob("ran-*"))) == 1  # the first cell's body ran once
    assert runs[1]["saved"] > 0.15
    table = nbflow_cli("run", "--auto", str(path), cwd=tmp_path).stdout
    assert "not cacheable" in table and "it runs a shell command" in table and "the cache saved" in table


def test_auto_output_notebook_equals_a_plain_run_but_for_the_status_lines(tmp_path: Path) -> None:
    sources = ("import numpy as np\nrng = np.random.default_rng(0)", "v = rng.normal(size=3)\nprint(v.round(3))",
               "v.sum().round(3)")
    path = write_notebook(tmp_path / "same.ipynb", *sources)
    plain, auto = tmp_path / "plain.ipynb", tmp_path / "auto.ipynb"
    assert nbflow_cli("run", str(path), "-o", str(plain), cwd=tmp_path).returncode == 0
    for _ in range(2):  # computed, then restored: both show what the plain run shows
        assert nbflow_cli("run", "--auto", str(path), "-o", str(auto), cwd=tmp_path).returncode == 0

        def shown(notebook: Path) -> list[list[Any]]:
            cells = nbformat.read(str(notebook), as_version=4).cells[: len(sources)]
            return [[(output.get("text"), output.get("data", {}).get("text/plain")) for output in cell.outputs
                     if "nbflow" not in output.get("metadata", {})] for cell in cells]

        assert shown(auto) == shown(plain)


def test_a_cell_allowed_to_fail_does_not_fail_an_auto_run(tmp_path: Path) -> None:
    notebook = new_notebook(cells=[new_code_cell("x = 1"),
                                   new_code_cell("raise ValueError('shown on purpose')",
                                                 metadata={"tags": ["raises-exception"]}),
                                   new_code_cell("y = x + 1")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "allowed.ipynb"
    nbformat.write(notebook, str(path))
    done = nbflow_cli("run", "--auto", "--json", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [cell["state"] for cell in json.loads(done.stdout)["cells"]] == ["computed", "failed", "computed"]
    unallowed = write_notebook(tmp_path / "unallowed.ipynb", "x = 1", "raise ValueError('a real failure')")
    assert nbflow_cli("run", "--auto", str(unallowed), cwd=tmp_path).returncode == 1


def test_a_task_failing_in_a_cell_allowed_to_fail_does_not_fail_the_run(tmp_path: Path) -> None:
    notebook = new_notebook(cells=[
        new_code_cell("import nbflow\n@nbflow.task\ndef check(x):\n    if x < 0:\n"
                      "        raise ValueError('negative')\n    return x"),
        new_code_cell("check(-1)  # the exercise shows the error on purpose", metadata={"tags": ["raises-exception"]}),
        new_code_cell("check(2)"),
    ])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "exercise.ipynb"
    nbformat.write(notebook, str(path))
    done = nbflow_cli("run", "--json", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["failed_tasks"] == [] and summary["status"] == "ok"
    allowed = [(task["task"], task["error"]) for task in summary["allowed_failures"]]
    assert allowed == [("check", "ValueError: negative")]
    text = nbflow_cli("run", str(path), cwd=tmp_path).stdout
    assert "1 failed (1 in cells tagged raises-exception)" in text and "OK in" in text
    # The same failure in a cell not tagged fails the run.
    notebook.cells[1].metadata["tags"] = []
    notebook.cells[1].source = "try:\n    check(-1)\nexcept ValueError:\n    pass"
    nbformat.write(notebook, str(path))
    assert nbflow_cli("run", str(path), cwd=tmp_path).returncode == 1


def test_the_summary_says_how_much_task_time_the_cache_saved(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "slow.ipynb",
        "import time, nbflow\n@nbflow.task\ndef slow(x):\n    time.sleep(0.5)\n    return x",
        "[slow(1), slow(2), slow(1)]",  # the third call is a hit on the first's entry, within the same run
    )
    first = nbflow_cli("run", "--json", str(path), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert 0.45 <= json.loads(first.stdout)["task_time_saved"] < 0.9
    second = nbflow_cli("run", str(path), cwd=tmp_path)
    line = next(line for line in second.stdout.splitlines() if "task run(s)" in line)
    assert line.startswith("3 task run(s): 3 cached, 0 computed, 0 failed; the cache saved 1."), line
    assert line.endswith(" s of task time"), line
    saved = float(line.split("saved ")[1].split(" s")[0])
    assert 1.4 <= saved < 2.0, line


def test_auto_shows_outputs_in_the_order_a_plain_run_does(tmp_path: Path) -> None:
    notebook = new_notebook(cells=[
        # (a kernel sends what a stream holds every 0.2 s: after 0.5 s stderr has gone out, stdout not yet)
        new_code_cell("import sys, time\nsys.stderr.write('first: stderr\\n')\ntime.sleep(0.5)\n"
                      "print('second: stdout')"),
        new_code_cell("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nundefined_name",
                      metadata={"tags": ["raises-exception"]}),
    ])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "order.ipynb"
    nbformat.write(notebook, str(path))

    def kinds(output: Path) -> list[list[str]]:
        cells = nbformat.read(str(output), as_version=4).cells[:2]
        return [[output.get("name") or output.output_type for output in cell.outputs
                 if "nbflow" not in output.get("metadata", {})] for cell in cells]

    plain = tmp_path / "plain.ipynb"
    nbflow_cli("run", str(path), "-o", str(plain), cwd=tmp_path)
    assert kinds(plain) == [["stderr", "stdout"], ["error", "display_data"]]
    for run in (1, 2):  # computed, then the first cell restored from the cache
        auto = tmp_path / f"auto{run}.ipynb"
        nbflow_cli("run", "--auto", str(path), "-o", str(auto), cwd=tmp_path)
        assert kinds(auto) == kinds(plain), run
