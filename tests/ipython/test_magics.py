"""``%%task`` and ``%nbflow`` in a real in-process IPython shell."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nbflow.engine import runtime


def ok(ip: Any, source: str) -> Any:
    result = ip.run_cell(source)
    assert result.success, result.error_in_exec or result.error_before_exec
    return result


def task_runs(name: str) -> list[Any]:
    return [t for t in runtime.session_run().task_runs if t.task_name == name]


def calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


CELL = """%%task features --retries 2
raw = load_table(path)   # inputs: load_table, path
X = [value * 2 for value in raw]
with open(log, "a") as f:
    f.write("features ")
print("rows", len(X))
X[:2]
"""


@pytest.fixture
def table(shell: Any, tmp_path: Path) -> Path:
    log = tmp_path / "calls.log"
    shell.user_ns["log"] = str(log)
    ok(shell, "path = 'data.csv'\ndef load_table(p):\n    return [1, 2, 3]\n")
    return log


# -- loading --------------------------------------------------------------------------------------


def test_load_registers_and_unload_removes_the_magics(shell: Any) -> None:
    magics = shell.magics_manager.magics
    assert "task" in magics["cell"] and "nbflow" in magics["line"]
    assert runtime.session_tracker is not None
    shell.run_line_magic("load_ext", "nbflow")  # harmless
    import nbflow

    nbflow.load_ipython_extension(shell)  # even when called directly
    assert runtime.session_tracker is not None
    shell.run_line_magic("unload_ext", "nbflow")
    assert "task" not in magics["cell"] and "nbflow" not in magics["line"]
    assert runtime.session_tracker is None
    shell.run_line_magic("load_ext", "nbflow")
    assert "task" in magics["cell"]


def test_import_nbflow_does_not_import_ipython() -> None:
    code = "import sys, nbflow; nbflow.task; print('IPython' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_task_functions_work_with_and_without_the_extension(shell: Any) -> None:
    ok(shell, "import nbflow\n@nbflow.task\ndef square(x):\n    return x * x\nfirst = square(4)")
    shell.run_line_magic("unload_ext", "nbflow")
    ok(shell, "second = square(4)")
    assert shell.user_ns["first"] == shell.user_ns["second"] == 16
    assert [t.state for t in task_runs("square")] == ["Completed", "Cached"]


# -- options ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("line", ["--bogus", "--retries x", "--retries -1", "--timeout 0", "--inputs 1a",
                                  "'unclosed", "--help"])
def test_bad_options_give_a_usage_message_not_a_traceback(shell: Any, line: str, capsys: Any) -> None:
    from IPython.core.error import UsageError

    result = shell.run_cell(f"%%task {line}\nx = 1\n")
    assert isinstance(result.error_in_exec, UsageError)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "usage: %%task" in text and "Traceback" not in text
    assert "x" not in shell.user_ns


def test_inputs_that_are_not_defined_are_a_usage_error(shell: Any) -> None:
    from IPython.core.error import UsageError

    result = shell.run_cell("%%task --inputs nope\nx = 1\n")
    assert isinstance(result.error_in_exec, UsageError)


def test_parse_task_line_reads_every_option() -> None:
    from nbflow.ipython.magics import parse_task_line

    options = parse_task_line("fit --retries 2 --retry-delay 0.5 --timeout 3 --no-cache --refresh "
                              "--inputs a,b --outputs x,y --tags t1,t2")
    assert (options.name, options.retries, options.retry_delay, options.timeout) == ("fit", 2, 0.5, 3.0)
    assert options.no_cache and options.refresh
    assert (options.inputs, options.outputs, options.tags) == (["a", "b"], ["x", "y"], ["t1", "t2"])
    assert parse_task_line("").name is None


# -- caching ---------------------------------------------------------------------------------------


def test_a_hit_skips_the_body_rebinds_values_and_replays_outputs(shell: Any, table: Path, capsys: Any) -> None:
    ok(shell, CELL)
    first = capsys.readouterr().out
    assert "rows 3" in first and "[2, 4]" in first
    assert shell.user_ns["X"] == [2, 4, 6]
    del shell.user_ns["X"], shell.user_ns["raw"]
    ok(shell, "123")
    assert shell.user_ns["_"] == 123
    ok(shell, CELL)
    second = capsys.readouterr().out
    assert calls(table) == ["features"]  # the body ran once
    assert shell.user_ns["X"] == [2, 4, 6] and shell.user_ns["raw"] == [1, 2, 3]
    assert shell.user_ns["_"] == [2, 4]  # the Out[] value is bound again too
    assert "rows 3" in second and "Out[" in second and "[2, 4]" in second
    notices = [o for o in shell.display_pub.outputs if o["metadata"].get("nbflow", {}).get("cache_notice")]
    assert len(notices) == 1
    assert "features: restored from the cache" in notices[0]["data"]["text/plain"]
    assert "saved" in notices[0]["data"]["text/plain"]
    assert [t.state for t in task_runs("features")] == ["Completed", "Cached"]


def test_comments_and_formatting_keep_the_hit_inputs_and_helpers_do_not(shell: Any, table: Path) -> None:
    ok(shell, CELL)
    ok(shell, CELL.replace("# inputs: load_table, path", "# another comment").replace("= [", "=  ["))
    assert calls(table) == ["features"]
    ok(shell, "path = 'other.csv'")
    ok(shell, CELL)
    assert calls(table) == ["features"] * 2
    ok(shell, "def load_table(p):\n    return [1, 2, 3, 4]\n")
    ok(shell, CELL)
    assert calls(table) == ["features"] * 3
    assert shell.user_ns["X"] == [2, 4, 6, 8]
    ok(shell, "def load_table(p):\n    # only a comment changed\n    return [1, 2, 3, 4]\n")
    ok(shell, CELL)
    assert calls(table) == ["features"] * 3


def test_the_magic_line_is_not_part_of_the_key(shell: Any, table: Path) -> None:
    ok(shell, CELL)
    ok(shell, CELL.replace("--retries 2", "--retries 3 --timeout 60"))
    assert calls(table) == ["features"]


def test_definitions_and_imports_exist_again_after_a_hit(shell: Any, tmp_path: Path) -> None:
    shell.user_ns["log"] = str(tmp_path / "log")
    cell = (
        "%%task defs\nimport json\nfrom os import path as osp\n"
        "def helper(x):\n    return x + 1\n"
        "class Box:\n    size = 3\n"
        "value = helper(1)\nopen(log, 'a').write('ran ')\n"
    )
    ok(shell, cell)
    for name in ("json", "osp", "helper", "Box", "value"):
        del shell.user_ns[name]
    ok(shell, cell)
    assert calls(tmp_path / "log") == ["ran"]
    ok(shell, "assert helper(2) == 3 and Box.size == 3 and json.dumps(value) == '2' and osp.join('a') == 'a'")
    # A function defined in a cell task has a code identity, so a task that calls it is cached by it.
    ok(shell, "import nbflow\n@nbflow.task\ndef uses(x):\n    return helper(x)\nuses(1)\nuses(1)")
    assert [t.state for t in task_runs("uses")] == ["Completed", "Cached"]


def test_rich_outputs_and_streams_are_replayed_in_order(shell: Any, capsys: Any) -> None:
    cell = (
        "%%task rich\nimport sys\nfrom IPython.display import HTML, display\n"
        "print('before')\nprint('warn', file=sys.stderr)\ndisplay(HTML('<b>table</b>'))\nprint('after')\n"
        "{'answer': 42}\n"
    )
    ok(shell, cell)
    first_display = [o["data"] for o in shell.display_pub.outputs]
    first = capsys.readouterr()
    shell.display_pub.outputs.clear()
    ok(shell, cell)
    second_display = [o["data"] for o in shell.display_pub.outputs
                      if not o["metadata"].get("nbflow", {}).get("cache_notice")]
    second = capsys.readouterr()
    assert first_display == second_display and "text/html" in first_display[0]
    assert first.out == second.out and "before" in first.out and "{'answer': 42}" in first.out
    assert "warn" in second.err
    assert first.out.index("before") < first.out.index("after") < first.out.index("answer")


def test_a_trailing_semicolon_hides_the_last_value(shell: Any, capsys: Any) -> None:
    ok(shell, "%%task quiet\nx = 5\nx * 2;\n")
    assert "10" not in capsys.readouterr().out


def test_output_streams_live_while_the_cell_runs(shell: Any) -> None:
    import io

    class Clock(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[tuple[float, str]] = []

        def write(self, text: str) -> int:
            self.times.append((time.monotonic(), text))
            return super().write(text)

    clock = Clock()
    saved = sys.stdout
    sys.stdout = clock
    try:
        ok(shell, "%%task --no-cache\nimport time\nprint('early')\ntime.sleep(0.4)\nprint('late')\n")
        ended = time.monotonic()
    finally:
        sys.stdout = saved
    early = next(t for t, text in clock.times if "early" in text)
    assert ended - early >= 0.35, "'early' was only written when the cell ended"
    assert sys.stdout is saved


def test_the_default_name_is_stable_and_comes_from_the_first_output(shell: Any) -> None:
    ok(shell, "%%task\nmodel = 1\nscore = 2\n")
    ok(shell, "%%task\nprint('no outputs')\n")
    ok(shell, "%%task\nprint('no outputs')   # again\n")
    names = [t.task_name for t in runtime.session_run().task_runs]
    assert names[0] == "model"
    assert names[1].startswith("cell-") and len(names[1]) == 13 and names[1] == names[2]
    assert runtime.session_run().task_runs[2].state == "Cached"


def test_inputs_and_outputs_can_be_given(shell: Any, tmp_path: Path) -> None:
    shell.user_ns.update(log=str(tmp_path / "log"), a=1, noise=0)
    cell = "%%task pick --inputs a --outputs y\nx = a + noise\ny = x * 10\nopen(log, 'a').write('ran ')\n"
    ok(shell, cell)
    task_run = task_runs("pick")[-1]
    assert set(task_run.inputs) == {"a"} and "input:a" in task_run.key_parts
    del shell.user_ns["x"], shell.user_ns["y"]
    shell.user_ns["noise"] = 5  # not an input: the cell is a hit anyway (the user said so)
    ok(shell, cell)
    assert shell.user_ns["y"] == 10 and "x" not in shell.user_ns
    assert calls(tmp_path / "log") == ["ran"]


def test_no_cache_and_refresh_always_run(shell: Any, tmp_path: Path) -> None:
    shell.user_ns["log"] = str(tmp_path / "log")
    for _ in range(2):
        ok(shell, "%%task nc --no-cache\nopen(log, 'a').write('nc ')\n")
    ok(shell, "%%task rf\nopen(log, 'a').write('rf ')\n")
    ok(shell, "%%task rf --refresh\nopen(log, 'a').write('rf ')\n")
    ok(shell, "%%task rf\nopen(log, 'a').write('rf ')\n")
    assert calls(tmp_path / "log") == ["nc", "nc", "rf", "rf"]


def test_unstorable_values_are_bound_named_in_a_warning_and_not_cached(shell: Any, tmp_path: Path) -> None:
    shell.user_ns["log"] = str(tmp_path / "log")
    cell = "%%task gen\nopen(log, 'a').write('gen ')\nnumbers = (i for i in range(3))\ntotal = 6\n"
    with pytest.warns(Warning, match="'numbers' cannot be stored"):
        ok(shell, cell)
    assert list(shell.user_ns["numbers"]) == [0, 1, 2] and shell.user_ns["total"] == 6
    with pytest.warns(Warning, match="'numbers'"):
        ok(shell, cell)
    assert calls(tmp_path / "log") == ["gen", "gen"]


def test_unfingerprintable_inputs_run_uncached_with_a_warning(shell: Any) -> None:
    ok(shell, "import threading\nlock = threading.Lock()")
    with pytest.warns(Warning, match="input 'lock' cannot be fingerprinted"):
        ok(shell, "%%task locked\nwith lock:\n    y = 1\n")
    assert shell.user_ns["y"] == 1


# -- failures ---------------------------------------------------------------------------------------


def test_a_failure_shows_the_users_traceback_and_can_be_retried(shell: Any, capsys: Any) -> None:
    ok(shell, "def parse(text):\n    return int(text)\nraw = 'x'")
    result = shell.run_cell("%%task parsed\nvalue = parse(raw)\n")
    assert isinstance(result.error_in_exec, ValueError)
    shown = capsys.readouterr()
    text = shown.out + shown.err
    assert "ValueError" in text and "parse(raw)" in text and "return int(text)" in text
    assert "nbflow" not in text.replace("nbflow-home", "")  # no frames of nbflow's internals
    assert task_runs("parsed")[-1].state == "Failed"
    assert "int(text)" in (task_runs("parsed")[-1].traceback or "")
    # A retry uses the inputs the failed run saw: with raw still 'x' it fails again...
    assert not shell.run_cell("%nbflow retry parsed").success
    # ...and once the cause outside the cell's inputs is fixed (parse's code), it succeeds with them.
    ok(shell, "def parse(text):\n    return len(text)")
    ok(shell, "raw = 'changed since'")
    ok(shell, "%nbflow retry parsed")
    assert shell.user_ns["value"] == 1  # len('x'): the original input, not the current one
    assert [t.state for t in task_runs("parsed")] == ["Failed", "Failed", "Completed"]


def test_retry_failed_reruns_failed_cells_and_task_calls(shell: Any) -> None:
    ok(shell, "import nbflow\nok_now = False\ndef ready():\n    return ok_now\n@nbflow.task\ndef flaky(x):\n"
              "    if not ok_now:\n        raise RuntimeError('not yet')\n    return x\n")
    assert not shell.run_cell("flaky(1)").success
    assert not shell.run_cell("%%task cellfail\nif not ready():\n    raise RuntimeError('nope')\nz = 3\n").success
    ok(shell, "ok_now = True")
    ok(shell, "%nbflow retry --failed")
    assert task_runs("flaky")[-1].state == "Completed"
    assert task_runs("cellfail")[-1].state == "Completed" and shell.user_ns["z"] == 3


def test_nbflow_retry_resumes_the_flow_like_the_graphs_retry(shell: Any) -> None:
    result = shell.run_cell(
        "import nbflow\nfrom nbflow.cache_policies import INPUTS, NONE\nbroken = True\nran = []\n"
        "@nbflow.task(cache_policy=NONE)\ndef load():\n    ran.append('load')\n"
        "    if broken:\n        raise ConnectionError('db down')\n    return 3\n"
        "@nbflow.task(cache_policy=NONE)\ndef report(n):\n    ran.append('report')\n    return f'total={n}'\n"
        "@nbflow.flow\ndef etl():\n    return report(load())\n"
        "state = etl(return_state=True)\n"
    )
    assert result.success and shell.user_ns["state"].is_failed()
    shell.run_cell("broken = False")
    assert shell.run_cell("%nbflow retry load").success
    assert shell.user_ns["ran"] == ["load", "load", "report"]
    from nbflow.runs import list_runs

    (run,) = [run for run in list_runs(5) if run.flow_name == "etl"]
    assert run.state == "Completed"
    assert [(t.task_name, t.state) for t in run.task_runs][-1] == ("report", "Completed")


def test_retries_option_runs_the_cell_again(shell: Any, tmp_path: Path) -> None:
    shell.user_ns["log"] = str(tmp_path / "log")
    cell = ("%%task flaky --retries 2\nopen(log, 'a').write('try ')\n"
            "if len(open(log).read().split()) < 2:\n    raise RuntimeError('first try fails')\ndone = True\n")
    ok(shell, cell)
    assert calls(tmp_path / "log") == ["try", "try"]
    assert task_runs("flaky")[-1].attempts == 2


def test_timeout_ends_timed_out(shell: Any) -> None:
    result = shell.run_cell("%%task slow --timeout 0.2\nimport time\ntime.sleep(5)\n")
    assert not result.success
    assert task_runs("slow")[-1].state == "TimedOut"


def test_an_interrupt_leaves_the_cell_cancelled_with_nothing_stored(shell: Any) -> None:
    result = shell.run_cell("%%task stop\nx = 1\nraise KeyboardInterrupt\n")
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    task_run = task_runs("stop")[-1]
    assert task_run.state == "Cancelled" and not task_run.persisted
    assert not list(runtime.get_store().records())


# -- graph ------------------------------------------------------------------------------------------


def test_cell_tasks_and_task_calls_form_one_graph(shell: Any) -> None:
    ok(shell, "import nbflow\n@nbflow.task\ndef load(n):\n    return list(range(n))\n"
              "@nbflow.task\ndef total(values):\n    return sum(values)\n")
    ok(shell, "rows = load(4)")
    ok(shell, "%%task doubled\ndoubled = [r * 2 for r in rows]\nscale = 3\n")
    ok(shell, "%%task scaled\nscaled = [d * scale for d in doubled]\n")
    ok(shell, "result = total(scaled)")
    load_run, = task_runs("load")
    doubled_run, = task_runs("doubled")
    scaled_run, = task_runs("scaled")
    total_run, = task_runs("total")
    assert doubled_run.upstream == [load_run.id]
    assert scaled_run.upstream == [doubled_run.id]  # both inputs come from `doubled` (scale by name)
    assert total_run.upstream == [scaled_run.id]
    # A cache hit binds new objects: they are still linked to the cell task run that restored them.
    ok(shell, "%%task doubled\ndoubled = [r * 2 for r in rows]\nscale = 3\n")
    ok(shell, "again = total(doubled)")
    assert task_runs("total")[-1].upstream == [task_runs("doubled")[-1].id]


# -- %nbflow ------------------------------------------------------------------------------------------


def test_status_why_runs_and_cache_commands(shell: Any, table: Path, capsys: Any) -> None:
    ok(shell, CELL)
    ok(shell, CELL)
    capsys.readouterr()
    ok(shell, "%nbflow status")
    status = capsys.readouterr().out
    assert "features" in status and "Cached" in status and "cell" in status and "saved" in status
    ok(shell, "%nbflow why features")
    assert "served from the cache" in capsys.readouterr().out
    ok(shell, "path = 'changed.csv'")
    ok(shell, CELL)
    capsys.readouterr()
    ok(shell, "%nbflow why features")
    why = capsys.readouterr().out
    assert "input 'path' changed" in why and "load_table" not in why
    ok(shell, "def load_table(p):\n    return [9]\n")
    ok(shell, CELL)
    capsys.readouterr()
    ok(shell, "%nbflow why features")
    why = capsys.readouterr().out
    assert "'load_table' (its code) changed" in why and "'path'" not in why
    ok(shell, CELL.replace("value * 2", "value * 3"))
    capsys.readouterr()
    ok(shell, "%nbflow why features")
    why = capsys.readouterr().out
    assert "the cell's own code changed" in why and "input" not in why
    ok(shell, "%nbflow runs")
    assert "session" in capsys.readouterr().out
    ok(shell, "%nbflow cache info")
    assert "features: 4" in capsys.readouterr().out
    ok(shell, "%nbflow cache clear features")
    assert "removed 4" in capsys.readouterr().out
    ok(shell, "%nbflow cache clear")
    assert "removed 0" in capsys.readouterr().out


@pytest.mark.parametrize("line", ["", "bogus", "why", "retry", "cache"])
def test_bad_nbflow_commands_give_usage(shell: Any, line: str) -> None:
    from IPython.core.error import UsageError

    result = shell.run_cell(f"%nbflow {line}")
    assert isinstance(result.error_in_exec, UsageError)


def test_the_session_graph_forgets_results_nobody_holds() -> None:
    import gc

    from nbflow.ipython.session import SessionTracker

    class Result:
        pass

    tracker = SessionTracker()
    kept, dropped = Result(), Result()
    tracker.remember_result(kept, "a")
    tracker.remember_result(dropped, "b")
    tracker.remember_result([1, 2], "c")  # not weakly referenceable: held
    del dropped
    gc.collect()
    assert {entry[1] for entry in tracker.by_id.values()} == {"a", "c"}
    assert tracker.upstream_of({"x": kept, "y": 3}) == ["a"]
    for index in range(2000):
        tracker.remember_result([index], "many")
    assert len(tracker.by_id) <= 1000


def test_the_session_graph_does_not_keep_a_loops_results_alive() -> None:
    import collections
    import gc
    import weakref

    import numpy as np

    from nbflow import context
    from nbflow.ipython.session import SessionTracker

    tracker = SessionTracker()
    frame = np.zeros(1000)
    pair = (frame, {"rows": 1000})  # `return frame, meta`: a tuple allows no weak reference; its array does
    table = {"frame": frame}
    tracker.remember_result(pair, "load")
    tracker.remember_result(table, "wrap")
    assert tracker.upstream_of({"data": pair, "other": table}) == ["load", "wrap"]
    assert tracker.upstream_of({"data": (np.zeros(1000), {"rows": 1000})}) == []  # another tuple
    grouped = collections.defaultdict(list, {"frame": frame})
    tracker.remember_result(grouped, "group")
    other = collections.defaultdict(list)
    tracker.remember_result(other, "empty")
    assert tracker.upstream_of({"g": grouped}) == ["group"] and dict(other) == {}  # matching adds no key
    probe = weakref.ref(frame)
    del frame, pair, table, grouped
    gc.collect()
    assert probe() is None  # nothing of the session kept the array alive

    small = [1, 2, 3]  # plain values: held (small), so its id is not reused while remembered
    tracker.remember_result(small, "small")
    assert tracker.upstream_of({"x": small}) == ["small"]
    numbers = [float(i) for i in range(1_000_000)]  # plain values, about 32 MB: not held, so no edge
    tracker.remember_result(numbers, "big")
    assert tracker.upstream_of({"x": numbers}) == [] and tracker.held < 1_000_000
    for _ in range(200):  # 640 kB each, or so: the oldest go once the budget is used
        tracker.remember_result([float(i) for i in range(20_000)], "medium")
    assert 0 < tracker.held <= context._HELD_BYTES


def test_nbflow_graph_shows_cell_tasks_and_task_calls_with_their_edges(shell: Any) -> None:
    import json

    ok(shell, "import nbflow\n@nbflow.task\ndef total(values):\n    return sum(values)\n")
    ok(shell, "%%task numbers\nnumbers = [1, 2, 3]\n")
    ok(shell, "s = total(numbers)")
    result = shell.run_cell("%nbflow graph")
    assert result.success
    graph = result.result
    try:
        payload = json.loads(graph.graph_json)
        by_task = {node["label"]: node for node in payload["nodes"]}
        assert {"numbers", "total"} <= set(by_task)
        assert by_task["numbers"]["state"] == "completed"
        assert {"source": by_task["numbers"]["id"], "target": by_task["total"]["id"]}.items() <= next(
            edge for edge in payload["edges"] if edge["target"] == by_task["total"]["id"]
        ).items()
        bundle = graph._repr_mimebundle_()
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        assert "<svg" in data.get("text/html", "")
    finally:
        # A session graph listens to every later task call in this process until it is closed: left open,
        # it would draw the rest of the suite.
        graph.close()


def test_a_long_kernel_keeps_a_bounded_number_of_cell_records(shell: Any, capsys: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import nbflow.runs

    # Small numbers, the rule of a kernel that runs a cached cell a million times.
    monkeypatch.setattr(nbflow.runs, "_IN_MEMORY", 20)
    for _ in range(60):
        ok(shell, "%%task\nlimit_x = 1")
    record = runtime.session_run()
    assert len(record.task_runs) <= 20 and record.task_run_count >= 60
    saved = shell._nbflow_session.saved  # what each hit saved, for %nbflow status
    assert 0 < len(saved) <= 20
    capsys.readouterr()
    ok(shell, "%nbflow status")
    assert "limit_x" in capsys.readouterr().out


def test_a_name_the_user_put_in_the_builtins_is_an_input(shell: Any) -> None:
    import builtins

    try:
        ok(shell, "import builtins; builtins.nbflow_limit = 5")
        ok(shell, "%%task\nlimit_y = nbflow_limit * 2")
        assert shell.user_ns["limit_y"] == 10
        ok(shell, "builtins.nbflow_limit = 6")
        ok(shell, "%%task\nlimit_y = nbflow_limit * 2")
        assert shell.user_ns["limit_y"] == 12
    finally:
        vars(builtins).pop("nbflow_limit", None)
