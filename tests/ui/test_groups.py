"""Group nodes: the runs of one ``Task.map`` call drawn as one node with a progress count, and the many
calls of one task folded into one node once a graph gets big — their counts, details, static picture and
Retry (which reruns the failed calls only)."""

from __future__ import annotations

import re
from collections import deque
from typing import Any

import pytest

import nbflow
from nbflow.cache_policies import NONE
from nbflow.runs import RunRecord, TaskRunRecord, new_id
from nbflow.ui import TaskGraph
from nbflow.ui.model import GraphModel
from tests.ui.conftest import browser_command


def record(run: RunRecord, name: str, state: str = "Pending", state_type: str = "PENDING",
           **fields: Any) -> TaskRunRecord:
    task_run = TaskRunRecord(id=new_id(), run_id=run.id, task_name=name, task_key=f"m.{name}", state=state,
                             state_type=state_type, **fields)
    run.task_runs.append(task_run)
    return task_run


def finish(task_run: TaskRunRecord, state: str, state_type: str, error: str | None = None) -> None:
    task_run.state, task_run.state_type, task_run.error = state, state_type, error
    task_run.attempts = 1


def mapped_flow() -> tuple[RunRecord, TaskRunRecord, list[TaskRunRecord], TaskRunRecord]:
    """load → fetch.map(100 items) → reduce, as the engine records it."""
    run = RunRecord(id="r-map", flow_name="crawl")
    load = record(run, "load", "Completed", "COMPLETED")
    members = [record(run, "fetch", map_id="m1", map_index=i, map_size=100, upstream=[load.id], inputs={"i": str(i)})
               for i in range(100)]
    reduce = record(run, "reduce", upstream=[m.id for m in members])
    return run, load, members, reduce


def test_a_mapped_task_is_one_node_with_a_progress_count() -> None:
    run, _, members, _ = mapped_flow()
    for task_run in members[:37]:
        finish(task_run, "Completed", "COMPLETED")
    members[37].state, members[37].state_type = "Running", "RUNNING"
    graph = TaskGraph([run], live=False)
    try:
        nodes = {node["label"]: node for node in graph.graph["nodes"]}
        assert list(nodes) == ["load", "fetch", "reduce"]
        fetch = nodes["fetch"]
        assert (fetch["group"], fetch["state"], fetch["count"], fetch["total"]) == ("map", "running", 37, 100)
        assert fetch["counts"] == {"completed": 37, "running": 1, "pending": 62}
        label = {node["id"]: node["label"] for node in graph.graph["nodes"]}
        assert [(label[e["source"]], label[e["target"]]) for e in graph.graph["edges"]] == [
            ("load", "fetch"), ("fetch", "reduce")]  # 200 call edges, two drawn ones
        assert "running 37/100" in graph._repr_mimebundle_()[0]["text/html"]

        # The rest finish, three of them failing: the group is failed, 97/100, and says which.
        for i, task_run in enumerate(members[37:], start=37):
            if i in (40, 41, 99):
                finish(task_run, "Failed", "FAILED", error=f"ValueError: bad item {i}")
            else:
                finish(task_run, "Completed", "COMPLETED")
        graph.flush(final=True)
        fetch = next(node for node in graph.graph["nodes"] if node["label"] == "fetch")
        assert (fetch["state"], fetch["count"], fetch["counts"]) == ("failed", 97, {"completed": 97, "failed": 3})
        browser_command(graph, {"type": "select", "id": fetch["id"]})
        details = graph.details
        assert details["group"] == "map" and details["total"] == 100 and details["calls"] == 100
        assert [(m["index"], m["error"]) for m in details["failed_members"]] == [
            (40, "ValueError: bad item 40"), (41, "ValueError: bad item 41"), (99, "ValueError: bad item 99")]
        assert details["failed_members"][0]["inputs"] == {"i": "40"}
        html = graph._repr_mimebundle_()[0]["text/html"]
        assert re.search(r'<g class="node" data-id="map-m1" data-state="failed" data-group="map"', html)
        assert "failed 97/100 · 3 failed" in html and 'class="progress"' in html
    finally:
        graph.close()


def test_state_changes_reach_the_group_through_polling_only_the_calls_under_way() -> None:
    run, _, members, _ = mapped_flow()
    model = GraphModel()
    model.add_run(run)
    assert len(model._active) == 101  # the pending fetches and reduce; load was final when placed
    members[0].state, members[0].state_type = "Running", "RUNNING"
    assert model.poll() == {"map-m1"}
    assert model.poll() == set()  # nothing changed since
    finish(members[0], "Completed", "COMPLETED")
    model.poll()
    assert len(model._active) == 100 and model.nodes["map-m1"].counts["completed"] == 1


def test_with_many_calls_under_way_only_the_reported_ones_are_looked_at(monkeypatch: pytest.MonkeyPatch) -> None:
    import nbflow.ui.model as model_module

    monkeypatch.setattr(model_module, "POLL_LIMIT", 50)
    run, _, members, _ = mapped_flow()
    model = GraphModel()
    model.add_run(run)
    members[1].state, members[1].state_type = "Running", "RUNNING"
    members[2].state, members[2].state_type = "Running", "RUNNING"
    reported = deque([members[1]])
    assert model.poll(reported) == {"map-m1"} and not reported
    assert model.nodes["map-m1"].counts == {"pending": 99, "running": 1}  # member 2 was not reported yet
    assert model.poll(deque([members[2]])) == {"map-m1"}
    assert model.nodes["map-m1"].counts == {"pending": 98, "running": 2}


def test_the_layout_of_a_graph_with_groups_is_deterministic() -> None:
    payloads = []
    for _ in range(2):
        run, *_ = mapped_flow()
        model = GraphModel()
        model.add_run(run)
        payloads.append([(n["label"], n["x"], n["y"]) for n in model.payload(1)["nodes"]])
    assert payloads[0] == payloads[1]


@pytest.fixture
def fold_at_10(monkeypatch: pytest.MonkeyPatch) -> None:
    import nbflow.ui.model as model

    monkeypatch.setattr(model, "FOLD_AT", 10)


def test_a_task_called_often_is_folded_into_one_node(shown: list[TaskGraph], fold_at_10: None) -> None:
    # Lists, not ints: data dependencies are tracked by the identity of results (small ints are shared).
    @nbflow.task(cache_policy=NONE)
    def setup() -> list[int]:
        return [1]

    @nbflow.task(cache_policy=NONE)
    def step(base: list[int], i: int) -> list[int]:
        return [base[0] + i]

    @nbflow.task(cache_policy=NONE)
    def total(values: list[list[int]]) -> int:
        return sum(value[0] for value in values)

    @nbflow.flow
    def steps(n: int) -> int:
        base = setup()
        return total([step(base, i) for i in range(n)])

    steps(30)
    (graph,) = shown
    nodes = graph.graph["nodes"]
    assert [(node["label"], node.get("group"), node.get("total")) for node in nodes] == [
        ("setup", None, None), ("step", "repeat", 30), ("total", None, None)]
    assert [node["state"] for node in nodes] == ["completed"] * 3 and nodes[1]["count"] == 30
    assert len(graph.graph["edges"]) == 2


def test_retry_on_a_group_reruns_only_its_failed_calls_then_the_flow(
    shown: list[TaskGraph], fold_at_10: None, executions: dict[str, int]
) -> None:
    broken = {3, 15}  # one failed call before the fold, one after

    @nbflow.task(cache_policy=NONE)
    def fragile(i: int) -> int:
        if i in broken:
            raise ConnectionError(f"item {i} not ready")
        return i

    @nbflow.task(cache_policy=NONE)
    def summed(values: list[int]) -> int:
        return sum(values)

    @nbflow.flow
    def batch(n: int) -> int:
        states = [fragile(i, return_state=True) for i in range(n)]
        return summed([state.result() for state in states])

    assert batch(20, return_state=True).is_failed()
    (graph,) = shown
    (group,) = graph.graph["nodes"]
    assert (group["label"], group["state"], group["count"], group["total"]) == ("fragile", "failed", 18, 20)
    assert group["retryable"] and group["counts"] == {"completed": 18, "failed": 2}
    browser_command(graph, {"type": "select", "id": group["id"]})
    assert [m["index"] for m in graph.details["failed_members"]] == [3, 15]
    assert "ConnectionError: item 3 not ready" in graph.details["traceback"]

    broken.clear()
    browser_command(graph, {"type": "retry", "id": group["id"]})
    assert executions == {"fragile": 22, "summed": 1}  # the two failed calls again, then the rest of the flow
    group, summed_node = graph.graph["nodes"]
    assert (group["state"], group["count"], group["total"], group["retryable"]) == ("completed", 20, 20, False)
    assert summed_node["state"] == "completed"
    assert graph.graph["runs"][0]["state"] == "Completed"
    assert graph.details["failed_members"] == [] and graph.details["state"] == "completed"


@pytest.mark.parametrize("poll_limit", [256, 0], ids=["polled", "reported"])
def test_a_real_task_map_is_one_node_and_retry_reruns_its_failed_calls(
    shown: list[TaskGraph], executions: dict[str, int], poll_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbflow.ui.model as model

    # Few calls under way are polled; many (here: any) are read from the engine's reports of changes.
    monkeypatch.setattr(model, "POLL_LIMIT", poll_limit)
    broken = {5, 17}

    @nbflow.task(cache_policy=NONE)
    def fetch(i: int) -> list[int]:
        if i in broken:
            raise TimeoutError(f"item {i}: no answer")
        return [i]

    @nbflow.task(cache_policy=NONE)
    def combine(rows: list[list[int]]) -> int:
        return sum(row[0] for row in rows)

    @nbflow.flow
    def crawl(n: int) -> int:
        futures = fetch.map(range(n))
        return combine([future.result() for future in futures])

    assert crawl(40, return_state=True).is_failed()
    (graph,) = shown
    (node,) = graph.graph["nodes"]
    assert (node["group"], node["label"], node["state"], node["count"], node["total"]) == (
        "map", "fetch", "failed", 38, 40)
    assert node["counts"] == {"completed": 38, "failed": 2} and node["retryable"]
    browser_command(graph, {"type": "select", "id": node["id"]})
    assert [(m["index"], m["error"]) for m in graph.details["failed_members"]] == [
        (5, "TimeoutError: item 5: no answer"), (17, "TimeoutError: item 17: no answer")]

    broken.clear()
    browser_command(graph, {"type": "retry", "id": node["id"]})
    assert executions == {"fetch": 42, "combine": 1}
    mapped, combined = graph.graph["nodes"]
    assert (mapped["state"], mapped["count"], mapped["total"], mapped["retryable"]) == ("completed", 40, 40, False)
    assert combined["state"] == "completed" and graph.graph["runs"][0]["state"] == "Completed"
    label = {n["id"]: n["label"] for n in graph.graph["nodes"]}
    assert [(label[e["source"]], label[e["target"]]) for e in graph.graph["edges"]] == [("fetch", "combine")]
