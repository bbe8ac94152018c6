"""Every state a task run goes through reaches the browser: the messages the widget sends are recorded,
played the way graph.js applies them, and the drawn state sequence of each task is checked against its
run record's history."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import nbflow
from nbflow.cache_policies import NONE
from nbflow.runs import TaskRunRecord
from nbflow.ui import TaskGraph
from nbflow.ui.model import css_state

STEP = 0.4  # seconds each task sleeps: four looks of the sender at its rate of ten a second
LAG = 0.5  # how late a drawn state may be


class Front:
    """What graph.js keeps: the last full graph and the patches for its revision, applied in order."""

    def __init__(self) -> None:
        self.rev = -1
        self.nodes: dict[str, str] = {}
        self.drawn: dict[str, list[tuple[float, str]]] = {}  # node id -> (time, state) as drawn

    def receive(self, at: float, state: dict[str, Any]) -> None:
        if "graph_json" in state:
            graph = json.loads(state["graph_json"])
            if graph.get("nodes") is not None:
                self.rev = graph["rev"]
                self.nodes = {node["id"]: node["state"] for node in graph["nodes"]}
        patch = state.get("patch")
        if patch and patch.get("rev") == self.rev:
            for node_id, change in patch["nodes"].items():
                if node_id in self.nodes:
                    self.nodes[node_id] = change["state"]
        for node_id, drawn in self.nodes.items():
            seen = self.drawn.setdefault(node_id, [])
            if not seen or seen[-1][1] != drawn:
                seen.append((at, drawn))


@pytest.fixture
def front(shown: list[TaskGraph], monkeypatch: pytest.MonkeyPatch) -> Front:
    """Records every message a graph sends to the browser, as the browser applies them."""
    front = Front()
    original = TaskGraph._send

    def send(self: TaskGraph, msg: dict[str, Any], buffers: Any = None) -> None:
        if msg.get("method") == "update":
            front.receive(time.time(), msg["state"])
        original(self, msg, buffers)

    monkeypatch.setattr(TaskGraph, "_send", send)
    return front


def recorded_states(task_run: TaskRunRecord) -> list[tuple[float, float, str]]:
    """(from, until, drawn state) for each step of the record's history (until = the next step's time)."""
    steps = [(entry.timestamp, css_state(entry.name, entry.type)) for entry in task_run.history]
    merged: list[tuple[float, str]] = []
    for at, state in steps:
        if not merged or merged[-1][1] != state:
            merged.append((at, state))
    ends = [at for at, _ in merged[1:]] + [float("inf")]
    return [(at, end, state) for (at, state), end in zip(merged, ends, strict=True)]


def eight_task_flow() -> Any:
    @nbflow.task(cache_policy=NONE)
    def step(i: int, steps: int = 1) -> int:
        time.sleep(STEP * steps)
        return i

    @nbflow.task(cache_policy=NONE)
    def combine(values: list[int]) -> int:
        time.sleep(STEP)
        return sum(values)

    @nbflow.flow
    def eight() -> int:
        first = step(0)
        second = step(first + 1)
        # Three at once, in the flow's thread pool, ending one after another: their states change while
        # no call starts (no new node), so only the patches carry them.
        parallel = [step.submit(second + i, steps=2 * i + 1) for i in range(3)]
        values = [future.result() for future in parallel]
        third = step(sum(values))
        fourth = step(third)
        return combine([fourth])

    return eight


def test_every_state_of_every_task_is_drawn_in_time(front: Front, shown: list[TaskGraph]) -> None:
    flow = eight_task_flow()
    state = flow(return_state=True)
    assert state.is_completed()
    (graph,) = shown
    run = graph.model.runs[next(iter(graph.model.runs))]
    assert len(run.task_runs) == 8
    problems = []
    for task_run in run.task_runs:
        drawn = front.drawn.get(task_run.id, [])
        for start, end, expected in recorded_states(task_run):
            if end - start < STEP / 2 and end != float("inf"):
                continue  # a state shorter than a look may pass unseen (Pending before Running)
            late = [at for at, state in drawn if state == expected and start - 0.05 <= at <= start + LAG]
            if not late:
                problems.append(f"{task_run.task_name} {task_run.id[-6:]}: {expected} from "
                                f"{start - run.start_time:.2f} s never drawn within {LAG} s; drawn "
                                f"{[(round(at - run.start_time, 2), s) for at, s in drawn]}")
    assert not problems, "\n".join(problems)
