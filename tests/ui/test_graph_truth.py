"""What the graph says is what happened: superseded failures offer no Retry, `%nbflow retry` resumes the
flow as the graph's Retry does, plain values get edges, folding keeps tasks apart, a call that never ran
is not drawn as a failure, and nodes carry their times."""

from __future__ import annotations

import time
from typing import Any

import pytest

import nbflow
from nbflow.cache_policies import INPUTS, NONE
from nbflow.engine import manual_retry
from nbflow.runs import get_run
from nbflow.ui import TaskGraph, session_graph
from nbflow.ui.model import FOLD_AT
from tests.ui.conftest import browser_sets


def by_label(graph: TaskGraph) -> dict[str, dict[str, Any]]:
    return {node["label"]: node for node in graph.graph["nodes"]}


def edges_by_label(graph: TaskGraph) -> set[tuple[str, str]]:
    label = {node["id"]: node["label"] for node in graph.graph["nodes"]}
    return {(label[edge["source"]], label[edge["target"]]) for edge in graph.graph["edges"]}


def test_a_failure_the_flows_own_retry_fixed_offers_no_retry(shown: list[TaskGraph]) -> None:
    sent: list[int] = []

    @nbflow.task(cache_policy=NONE)
    def send_email(n: int) -> int:
        sent.append(n)
        if len(sent) == 1:
            raise ConnectionError("smtp down")
        return n

    @nbflow.flow(retries=1)
    def notify() -> int:
        return send_email(7)

    assert notify() == 7 and sent == [7, 7]
    (live,) = shown
    assert by_label(live)["send_email"]["state"] == "completed"
    assert not by_label(live)["send_email"]["retryable"]
    (run,) = [get_run(r["id"]) for r in live.graph["runs"]]
    failed_first = run.task_runs[0]
    assert failed_first.state == "Failed"
    assert failed_first.id not in manual_retry.failed_task_runs()  # the first attempt's failure is history
    # `%nbflow graph` builds its graph from the run history: the retry lands on the call it retried.
    graph = session_graph()
    try:
        nodes = [node for node in graph.graph["nodes"] if node["label"] == "send_email"]
        assert [(node["state"], node["retryable"]) for node in nodes] == [("completed", False)]
        assert nodes[0]["attempts"] == 2
    finally:
        graph.close()


def test_a_call_that_failed_twice_offers_only_its_latest_failure(shown: list[TaskGraph]) -> None:
    @nbflow.task(cache_policy=NONE)
    def fetch() -> int:
        raise ConnectionError("down")

    @nbflow.flow(retries=1)
    def pipeline() -> int:
        return fetch()

    assert pipeline(return_state=True).is_failed()
    run = get_run(shown[0].graph["runs"][0]["id"])
    first, second = [task_run.id for task_run in run.task_runs]
    retryable = manual_retry.failed_task_runs()
    assert second in retryable and first not in retryable


@pytest.mark.parametrize("value", [1000, 2.5, "total=6", b"raw bytes", 10**30])
def test_numbers_strings_and_bytes_get_edges(shown: list[TaskGraph], value: Any) -> None:
    @nbflow.task(cache_policy=NONE)
    def total(x: list[int]) -> Any:
        return value if not isinstance(value, (int, float)) else type(value)(value + sum(x) - sum(x))

    @nbflow.task(cache_policy=NONE)
    def publish(day: str, amount: Any) -> str:
        return f"{day}: {amount!r}"

    @nbflow.flow
    def daily() -> str:
        return publish("monday", total([1, 2, 3]))

    daily()
    (graph,) = shown
    assert edges_by_label(graph) == {("total", "publish")}


def test_a_value_python_shares_gets_no_false_edge(shown: list[TaskGraph]) -> None:
    @nbflow.task(cache_policy=NONE)
    def flag() -> bool:
        return True

    @nbflow.task(cache_policy=NONE)
    def six() -> int:
        return 6

    @nbflow.task(cache_policy=NONE)
    def use(a: Any, b: Any) -> str:
        return f"{a}{b}"

    @nbflow.flow
    def shared() -> str:
        flag()
        six()
        return use(True, 6)  # the same objects as the results above, but not their data

    shared()
    (graph,) = shown
    assert edges_by_label(graph) == set()


def test_folding_keeps_tasks_made_by_one_factory_apart(shown: list[TaskGraph]) -> None:
    def make(i: int) -> Any:
        @nbflow.task(name=f"step_{i:02d}", cache_policy=NONE, persist_result=False)
        def transform(x: int) -> int:
            return x

        return transform

    steps = [make(i) for i in range(30)]
    per_task = FOLD_AT // 20  # 30 tasks x 50 calls: past FOLD_AT nodes

    @nbflow.flow
    def factory() -> None:
        for step in steps:
            for j in range(per_task):
                step(j)

    factory()
    (graph,) = shown
    groups = [node for node in graph.graph["nodes"] if node.get("group")]
    assert groups, "the graph folded nothing"
    assert len(graph.graph["nodes"]) <= FOLD_AT
    for group in groups:
        assert group["total"] == per_task, group  # one task's calls, not every task sharing the function
    folded = {group["label"] for group in groups}
    assert len(folded) == len(groups)


def test_a_call_that_never_ran_is_not_drawn_as_a_failure(shown: list[TaskGraph]) -> None:
    @nbflow.task(cache_policy=NONE)
    def extract() -> int:
        raise ConnectionError("source down")

    @nbflow.task(cache_policy=NONE)
    def load(x: int) -> int:
        return x

    @nbflow.flow
    def etl() -> int:
        return load.submit(extract.submit()).result()

    assert etl(return_state=True).is_failed()
    (graph,) = shown
    nodes = by_label(graph)
    assert (nodes["extract"]["state"], nodes["extract"]["retryable"]) == ("failed", True)
    assert (nodes["load"]["state"], nodes["load"]["retryable"]) == ("upstream", False)


def test_nodes_carry_durations_spans_and_what_a_hit_saved(shown: list[TaskGraph]) -> None:
    attempts: list[int] = []

    # Keyed by the inputs only: ``attempts``, which the task reads and changes, would make each call a miss.
    @nbflow.task(retries=1, retry_delay_seconds=0.2, cache_policy=INPUTS)
    def slow(x: int) -> int:
        attempts.append(x)
        time.sleep(0.1)
        if len(attempts) == 1:
            raise ConnectionError("once")
        return x

    @nbflow.flow
    def twice() -> int:
        return slow(1) + slow(1)

    twice()
    (graph,) = shown
    computed, hit = graph.graph["nodes"]
    assert computed["state"] == "completed" and 0.1 <= computed["duration"] < 1
    assert [span[2] for span in computed["spans"]] == ["failed", "waiting", "completed"]
    started, waited, ended = computed["spans"]
    assert started[1] <= waited[0] and waited[1] - waited[0] >= 0.15 and ended[0] >= waited[1]
    assert computed["start"] == pytest.approx(started[0], abs=0.01)
    assert computed["end"] == pytest.approx(ended[1], abs=0.01)
    assert hit["state"] == "cached" and hit["duration"] is None
    assert hit["saved"] == pytest.approx(ended[1] - started[0], abs=0.05)
    assert [span[2] for span in hit["spans"]] == ["cached"]
    (run,) = graph.graph["runs"]
    assert run["start"] <= computed["start"] and run["end"] >= hit["end"]
    browser_sets(graph, selected=hit["id"])
    assert graph.details["saved"] == hit["saved"]
