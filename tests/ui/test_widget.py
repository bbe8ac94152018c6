"""The task graph widget from real engine events, and the browser's commands played on it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import nbflow
from nbflow.cache_policies import NONE
from nbflow.runs import get_run
from nbflow.ui import TaskGraph, session_graph
from nbflow.ui.svg import STATE_COLORS
from tests.ui.conftest import browser_command, browser_sets

ROOT = Path(__file__).resolve().parents[2]


def states(graph: TaskGraph) -> list[tuple[str, str]]:
    return [(node["label"], node["state"]) for node in graph.graph["nodes"]]


def labels_of_edges(graph: TaskGraph) -> set[tuple[str, str]]:
    label = {node["id"]: node["label"] for node in graph.graph["nodes"]}
    return {(label[edge["source"]], label[edge["target"]]) for edge in graph.graph["edges"]}


def make_etl(broken: dict[str, bool]) -> Any:
    @nbflow.task(cache_policy=NONE)
    def extract() -> list[int]:
        return [1, 2, 3]

    @nbflow.task(cache_policy=NONE)
    def load(rows: list[int]) -> list[int]:
        if broken["load"]:
            raise ConnectionError("database down")
        return [sum(rows)]

    @nbflow.task(cache_policy=NONE)
    def report(total: list[int]) -> str:
        return f"total={total[0]}"

    @nbflow.flow
    def etl() -> str:
        return report(load(extract()))

    return etl


def test_a_flow_call_shows_its_graph_with_states_and_edges(shown: list[TaskGraph]) -> None:
    etl = make_etl({"load": True})
    assert etl(return_state=True).is_failed()
    (graph,) = shown
    assert states(graph) == [("extract", "completed"), ("load", "failed")]
    assert labels_of_edges(graph) == {("extract", "load")}
    (run,) = graph.graph["runs"]
    assert run["name"] == "etl" and run["state"] == "Failed" and run["retryable"]
    failed = graph.graph["nodes"][1]
    assert failed["retryable"] and failed["attempts"] == 1
    # The final graph was sent in one piece at the end, whatever the throttle.
    assert graph.patch == {"rev": graph.graph["rev"], "nodes": {}, "runs": {}}


def test_static_fallback_has_the_same_graph_as_svg(shown: list[TaskGraph]) -> None:
    make_etl({"load": True})(return_state=True)
    (graph,) = shown
    data, _ = graph._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data
    html = data["text/html"]
    assert '<svg class="nbflow-graph"' in html
    assert re.search(r'<g class="node" data-id="[0-9a-f]+" data-state="failed"', html)
    node = graph.graph["nodes"][1]
    assert f'transform="translate({node["x"]:.1f},{node["y"]:.1f})"' in html
    assert html.count("<path class=\"edge\"") == 1


def test_display_off_and_outside_a_kernel_nothing_is_shown(shown: list[TaskGraph]) -> None:
    nbflow.configure(display=False)
    make_etl({"load": False})()
    assert shown == []


def test_the_core_never_imports_the_ui() -> None:
    code = (
        "import sys, nbflow\n"
        "@nbflow.flow\n"
        "def f():\n    return 1\n"
        "f()\n"
        "assert 'nbflow.ui' not in sys.modules, 'nbflow.ui was imported'\n"
        "assert 'anywidget' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for path in (ROOT / "nbflow").rglob("*.py"):
        # The front doors (magics, the CLI's executed notebooks) may draw graphs; the core may not.
        if {"ui", "ipython", "cli"} & set(path.relative_to(ROOT / "nbflow").parts) or path.name == "cli.py":
            continue
        text = path.read_text()
        assert not re.search(r"^\s*(from nbflow\.ui|import nbflow\.ui)", text, re.M), path


def test_select_shows_details_with_traceback(shown: list[TaskGraph]) -> None:
    make_etl({"load": True})(return_state=True)
    (graph,) = shown
    failed = graph.graph["nodes"][1]
    browser_command(graph, {"type": "select", "id": failed["id"]})
    details = graph.details
    assert details["label"] == "load" and details["state"] == "failed"
    assert "ConnectionError: database down" in details["traceback"]
    assert "nbflow/engine" not in details["traceback"]  # the user's traceback, not the engine's frames
    assert details["inputs"] == {"rows": "list[3]"}
    assert [entry["state"] for entry in details["history"]] == ["Pending", "Running", "Failed"]
    assert details["retryable"] and details["cache"].startswith("not cached")
    # The browser's own trait change (clicking a node) does the same.
    browser_sets(graph, selected=graph.graph["nodes"][0]["id"])
    assert graph.details["label"] == "extract" and graph.details["result"] == "list[3]"


def test_retry_reruns_the_failed_node_and_continues_the_flow(shown: list[TaskGraph], executions) -> None:
    broken = {"load": True}
    make_etl(broken)(return_state=True)
    (graph,) = shown
    failed = graph.graph["nodes"][1]
    run_id = failed["run"]
    broken["load"] = False
    browser_command(graph, {"type": "retry", "id": failed["id"]})
    assert states(graph) == [("extract", "completed"), ("load", "completed"), ("report", "completed")]
    assert labels_of_edges(graph) == {("extract", "load"), ("load", "report")}
    assert graph.graph["runs"][0]["state"] == "Completed" and not graph.graph["runs"][0]["retryable"]
    assert graph.graph["nodes"][1]["attempts"] == 2  # the failed attempt and the retry, on one node
    assert graph.notice.startswith("retry: Completed") and not graph.busy
    assert executions == {"extract": 1, "load": 2, "report": 1}
    assert get_run(run_id).state == "Completed"


def test_retry_failed_on_the_flow(shown: list[TaskGraph], executions) -> None:
    broken = {"load": True}
    make_etl(broken)(return_state=True)
    (graph,) = shown
    broken["load"] = False
    browser_command(graph, {"type": "retry_flow", "run": graph.graph["runs"][0]["id"]})
    assert states(graph) == [("extract", "completed"), ("load", "completed"), ("report", "completed")]
    assert executions == {"extract": 1, "load": 2, "report": 1}


def test_a_retry_that_fails_again_stays_failed_and_says_why(shown: list[TaskGraph]) -> None:
    make_etl({"load": True})(return_state=True)
    (graph,) = shown
    node = graph.graph["nodes"][1]
    browser_command(graph, {"type": "retry", "id": node["id"]})
    assert states(graph) == [("extract", "completed"), ("load", "failed")]
    assert graph.graph["nodes"][1]["retryable"] and "Failed" in graph.notice
    browser_command(graph, {"type": "retry", "id": "no-such-node"})
    assert "NotRetryable" in graph.notice


def test_cached_is_not_computed(shown: list[TaskGraph]) -> None:
    @nbflow.task
    def square(x: int) -> list[int]:
        return [x * x]

    @nbflow.flow
    def squares(n: int) -> list[list[int]]:
        return [square(i) for i in range(n)]

    squares(2)
    squares(3)
    first, second = shown
    assert [node["state"] for node in first.graph["nodes"]] == ["completed", "completed"]
    assert [node["state"] for node in second.graph["nodes"]] == ["cached", "cached", "completed"]
    browser_command(second, {"type": "select", "id": second.graph["nodes"][2]["id"]})
    assert second.details["cache"] == "miss: changed since the previous run: input:x"
    browser_command(second, {"type": "select", "id": second.graph["nodes"][0]["id"]})
    assert second.details["cache"].startswith("hit")


def test_a_miss_is_explained_from_an_earlier_run_in_the_history(shown: list[TaskGraph]) -> None:
    @nbflow.task
    def square(x: int) -> int:
        return x * x

    @nbflow.flow
    def once(x: int) -> int:
        return square(x)

    once(1)
    once(2)  # a graph of its own, where square has no earlier call: the history has one
    second = shown[1]
    (node,) = second.graph["nodes"]
    browser_command(second, {"type": "select", "id": node["id"]})
    assert second.details["cache"] == "miss: changed since the previous run: input:x"


def test_state_colours_are_the_same_in_the_svg_and_the_css() -> None:
    css = (ROOT / "widgets" / "graph.css").read_text()
    for state, (fill, stroke, _) in STATE_COLORS.items():
        rule = re.search(rf'data-state="{state}"\] rect\.box \{{([^}}]*)\}}', css)
        assert rule, state
        assert f"fill: {fill}" in rule.group(1) and f"stroke: {stroke}" in rule.group(1), state


def test_updates_are_coalesced_for_many_quick_tasks(shown: list[TaskGraph]) -> None:
    @nbflow.task(cache_policy=NONE, persist_result=False)
    def tick(i: int) -> int:
        return i

    @nbflow.flow
    def many(n: int) -> int:
        return sum(tick(i) for i in range(n))

    started = time.monotonic()
    many(3000)
    elapsed = time.monotonic() - started
    (graph,) = shown
    # Past FOLD_AT nodes the calls of one task are one node: a column of 3,000 boxes would show nothing.
    (node,) = graph.graph["nodes"]
    assert (node["group"], node["state"], node["count"], node["total"]) == ("repeat", "completed", 3000, 3000)
    # At most MAX_RATE a second, plus the first (empty) graph and the final one.
    assert graph.messages_sent <= 10 * elapsed + 3, (graph.messages_sent, elapsed)
    assert "completed 3000/3000" in graph._repr_mimebundle_()[0]["text/html"]


def test_a_static_picture_too_big_to_draw_is_a_summary() -> None:
    from nbflow.ui.svg import STATIC_NODE_LIMIT, render_html

    nodes: list[Any] = [{"id": str(i), "label": "t", "task": "m.t", "run": "r", "state": "completed", "attempts": 1,
                         "retryable": False, "x": 0.0, "y": 0.0} for i in range(STATIC_NODE_LIMIT + 1)]
    html = render_html({"rev": 1, "nodes": nodes, "edges": [], "runs": [], "width": 10, "height": 10})
    assert f"{STATIC_NODE_LIMIT + 1:,} task runs ({STATIC_NODE_LIMIT + 1:,} completed)" in html and "<svg" not in html


def test_session_graph_shows_calls_outside_flows_and_flows() -> None:
    @nbflow.task(cache_policy=NONE)
    def alone(x: int) -> int:
        return x

    @nbflow.flow
    def small() -> int:
        return alone(1)

    alone(5)
    small()
    graph = session_graph()
    try:
        kinds = {run["kind"] for run in graph.graph["runs"]}
        assert kinds == {"session", "flow"}
        assert [node["label"] for node in graph.graph["nodes"]] == ["alone", "alone"]
        alone(6)  # live: a new call appears
        graph.flush(final=True)
        assert len(graph.graph["nodes"]) == 3
    finally:
        graph.close()


def test_a_call_under_way_is_looked_at_until_it_ends() -> None:
    # A graph hears of a task run once (its first event) and follows its record: a call that ends with no
    # event after it still shows its end, and the graph's thread ends only once nothing is under way.
    from nbflow.ui import widget as widget_module

    started, release = threading.Event(), threading.Event()

    @nbflow.task(cache_policy=NONE)
    def slow() -> int:
        started.set()
        release.wait(10)
        return 1

    graph = session_graph()
    try:
        caller = threading.Thread(target=slow)
        caller.start()
        assert started.wait(5)

        def shown() -> list[str]:
            with graph._lock:
                return [call.shown for call in graph.model.calls.values() if call.task_name == "slow"]

        deadline = time.monotonic() + 5
        while shown() != ["running"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert shown() == ["running"]
        time.sleep(widget_module.IDLE_EXIT + 0.5)  # no event meanwhile: the thread keeps looking
        assert graph._sender is not None and graph._sender.is_alive()
        release.set()
        caller.join(5)
        deadline = time.monotonic() + 5
        while shown() != ["completed"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert shown() == ["completed"]
    finally:
        release.set()
        graph.close()


def test_state_changes_are_subscribed_to_only_while_many_calls_are_under_way(
    shown: list[TaskGraph], monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbflow import events
    from nbflow.ui import model as model_module
    from nbflow.ui import widget as widget_module

    monkeypatch.setattr(model_module, "POLL_LIMIT", 5)
    gate = threading.Event()

    @nbflow.task(cache_policy=NONE)
    def wait(i: int) -> int:
        gate.wait(10)
        return i

    def reported_while_under_way(then: Any = None) -> int:
        """Map 40 waiting calls, wait for the graph to ask for reports, run ``then``; the sum of the results
        plus 1000 if the engine's state changes were still subscribed to at the end."""
        futures = wait.map(range(40))
        deadline = time.monotonic() + 5
        while widget_module._dispatcher._unsubscribe_changes is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if then is not None:
            then()
        reporting = widget_module._dispatcher.deliver_change in events._subscribers
        gate.set()
        return sum(future.result() for future in futures) + 1000 * reporting

    @nbflow.flow
    def many() -> int:
        return reported_while_under_way()

    assert many() == sum(range(40)) + 1000  # 40 calls under way, over the limit: changes were reported
    graph = shown[-1]
    assert graph.graph["nodes"][0]["state"] == "completed"
    assert widget_module._dispatcher.deliver_change not in events._subscribers  # the run ended: no more

    # A graph closed while it takes reports takes its subscription along, though its calls are still under way.
    gate.clear()

    def close_the_graph() -> None:
        shown[-1].close()
        time.sleep(0.3)  # its thread's next looks, had it gone on

    @nbflow.flow
    def closed_meanwhile() -> int:
        return reported_while_under_way(close_the_graph)

    assert closed_meanwhile() == sum(range(40))


def test_a_session_graph_keeps_the_newest_calls_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import nbflow.runs
    import nbflow.ui.widget as widget_module
    from nbflow.engine import runtime

    # A kernel's session run keeps its newest calls in memory; a session graph follows it rather than hold
    # every record of the session for as long as it is displayed. Small numbers, same rules.
    monkeypatch.setattr(widget_module, "SESSION_CALLS", 100)
    monkeypatch.setattr(nbflow.runs, "_IN_MEMORY", 100)

    @nbflow.task(cache_policy=NONE)
    def quick(i: int) -> int:
        return i

    @nbflow.flow
    def earlier() -> list[int]:
        return [quick(i) for i in range(80)]

    @nbflow.flow
    def big() -> list[int]:
        return [quick(i) for i in range(150)]

    big()
    earlier()
    quick(-1)
    graph = session_graph()
    try:
        first = runtime.session_run().task_runs[0].id
        # Opened with the newest runs that fit: the session's call, then `earlier`; `big` is not even read.
        assert first in graph.model.alias
        assert sorted(run.flow_name for run in graph.model.runs.values()) == ["earlier", "session"]
        assert len(graph.model.calls) == 81
        most = 0
        for i in range(1000):
            quick(i)
            if i % 50 == 49:
                graph.flush()
                most = max(most, len(graph.model.calls))
        graph.flush(final=True)
        assert most <= 200  # never more than twice the calls kept
        kept = runtime.session_run().task_runs
        assert 50 <= len(kept) <= 100
        assert first not in graph.model.alias and kept[-1].id in graph.model.alias
        # The flow run did not fit next to the session's newest calls: it left the graph with its calls.
        assert [run["kind"] for run in graph.graph["runs"]] == ["session"]
        # Under FOLD_AT nodes each call is drawn on its own: the picture is the calls kept, no more.
        assert len(graph.graph["nodes"]) == len(graph.model.calls) >= len(kept)
        quick(5000)  # still live
        graph.flush(final=True)
        assert runtime.session_run().task_runs[-1].id in graph.model.alias
    finally:
        graph.close()


def test_saved_state_is_json() -> None:
    graph = TaskGraph(live=False)
    json.dumps(graph.get_state())


@pytest.mark.timeout(120)
def test_the_wheel_ships_the_widget_files(tmp_path: Path) -> None:
    from hatchling.builders.wheel import WheelBuilder

    wheel = next(iter(WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"])))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "nbflow/_widgets/graph.js" in names and "nbflow/_widgets/graph.css" in names
    assert "nbflow/ui/widget.py" in names


def test_a_subflow_is_drawn_in_its_parents_graph(shown: list[TaskGraph]) -> None:
    @nbflow.task(cache_policy=NONE)
    def part(x: int) -> list[int]:
        return [x]

    @nbflow.flow
    def inner(x: int) -> list[int]:
        return part(x)

    @nbflow.flow
    def outer() -> list[list[int]]:
        return [inner(1), inner(2), part(3)]

    outer()
    (graph,) = shown  # one graph: subflows are not displayed on their own
    assert [node["label"] for node in graph.graph["nodes"]] == ["part", "part", "part"]
    assert [run["name"] for run in graph.graph["runs"]] == ["outer", "inner", "inner"]
    assert {run["state"] for run in graph.graph["runs"]} == {"Completed"}


def test_sender_threads_end_when_idle(shown: list[TaskGraph], monkeypatch: pytest.MonkeyPatch) -> None:
    import nbflow.ui.widget as widget_module

    monkeypatch.setattr(widget_module, "IDLE_EXIT", 0.2)

    @nbflow.task(cache_policy=NONE)
    def step(i: int) -> int:
        time.sleep(0.01)
        return i

    @nbflow.flow
    def steps(n: int) -> int:
        return sum(step(i) for i in range(n))

    senders: set[threading.Thread] = set()
    for _ in range(3):
        steps(20)
        senders.update(graph._sender for graph in shown if graph._sender is not None)
    assert senders, "the graphs updated without a sender thread"
    # This test's own graphs' threads: a graph some other test left open is not what is measured here.
    deadline = time.monotonic() + 5
    while any(thread.is_alive() for thread in senders) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(thread.is_alive() for thread in senders)
    assert all(graph._sender is None for graph in shown)
    assert all(len(graph.graph["nodes"]) == 20 for graph in shown)


def test_text_only_front_ends_get_a_one_line_summary() -> None:
    import nbflow
    from nbflow.runs import list_runs
    from nbflow.ui import TaskGraph

    @nbflow.task
    def square(x: int) -> int:
        return x * x

    @nbflow.task
    def broken(x: int) -> int:
        raise ValueError(x)

    @nbflow.flow
    def summary_flow() -> int:
        square.map(range(3)).wait()
        broken.submit(1).wait()
        return 1

    summary_flow()
    (run,) = [run for run in list_runs() if run.flow_name == "summary_flow"]
    graph = TaskGraph([run], live=False)
    expected = "<task graph: summary_flow (Completed); 3 completed, 1 failed>"
    assert repr(graph) == expected
    assert graph._repr_mimebundle_()[0]["text/plain"] == expected
