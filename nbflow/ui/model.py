"""The graph model: task run records in, a JSON-ready payload out. Pure Python, no widgets.

One *node* is one task call in a flow run. A call can have several task run records — the failed
first run, a manual retry, the reuse in a "retry failed" of the flow — and they all land on the same
node, so the graph keeps its shape while a retry runs and the node changes colour in place:

- inside a running flow attempt, a call is identified the way the engine reuses results: task key plus
  call index within the attempt (so attempt 2's third ``load`` call is attempt 1's third ``load`` node);
- a call recorded while its flow run is already final (``retry_task_run``), or in a session run, lands on
  the latest failed node of the same task with the same inputs.

The message shapes sent to the browser are the TypedDicts below.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypedDict

from typing_extensions import NotRequired

from nbflow.ui.layout import Layout, layered_layout

if TYPE_CHECKING:
    from nbflow.runs import RunRecord, TaskRunRecord

__all__ = [
    "Command",
    "DetailsData",
    "EdgeData",
    "GraphModel",
    "GraphPayload",
    "NodeData",
    "NodePatch",
    "RunData",
    "StatePatch",
    "css_state",
]

NodeState = Literal[
    "pending", "running", "retrying", "completed", "cached", "failed", "timedout", "cancelled", "crashed"
]

_BY_NAME: dict[str, NodeState] = {
    "Pending": "pending",
    "Scheduled": "pending",
    "Running": "running",
    "Retrying": "retrying",
    "AwaitingRetry": "retrying",
    "Completed": "completed",
    "Cached": "cached",
    "Failed": "failed",
    "TimedOut": "timedout",
    "Cancelled": "cancelled",
    "Crashed": "crashed",
}
_BY_TYPE: dict[str, NodeState] = {
    "PENDING": "pending",
    "SCHEDULED": "pending",
    "RUNNING": "running",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
    "CRASHED": "crashed",
}
_FINAL_TYPES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})
_UNSUCCESSFUL = frozenset({"FAILED", "CANCELLED", "CRASHED"})
_REUSED = "reused from an earlier attempt"


def css_state(name: str, state_type: str) -> NodeState:
    """The display state (a CSS class / ``data-state``) of an engine state name and type."""
    return _BY_NAME.get(name) or _BY_TYPE.get(state_type, "pending")


# -- message shapes ---------------------------------------------------------------------------------
class NodeData(TypedDict):
    """One node as drawn: a task call. ``count``/``total`` are for mapped tasks (progress)."""

    id: str
    label: str
    task: str
    run: str
    state: NodeState
    attempts: int
    retryable: bool
    x: float
    y: float
    count: NotRequired[int]
    total: NotRequired[int]


class EdgeData(TypedDict):
    """A data dependency, drawn as a polyline from the source's right side to the target's left side."""

    source: str
    target: str
    points: list[list[float]]


class RunData(TypedDict):
    """A flow run (or the session run) shown in the graph's header, with its "Retry failed" state."""

    id: str
    name: str
    kind: str
    state: str
    retryable: bool
    parent: str | None


class GraphPayload(TypedDict):
    """The whole graph, laid out (the ``graph`` trait). ``rev`` increases on every full send."""

    rev: int
    nodes: list[NodeData]
    edges: list[EdgeData]
    runs: list[RunData]
    width: float
    height: float


class NodePatch(TypedDict):
    """What can change on a node without changing the layout."""

    state: NodeState
    attempts: int
    retryable: bool
    count: NotRequired[int]
    total: NotRequired[int]


class StatePatch(TypedDict):
    """Changes since the graph with revision ``rev`` (the ``patch`` trait), accumulated until the next
    full graph, so a view opened late is still exact."""

    rev: int
    nodes: dict[str, NodePatch]
    runs: dict[str, RunData]


class HistoryEntry(TypedDict):
    state: str
    time: float
    message: str | None


class DetailsData(TypedDict):
    """What the details panel of a selected node shows (the ``details`` trait)."""

    id: str
    task: str
    label: str
    run: str
    state: NodeState
    state_name: str
    attempts: int
    calls: int
    duration: float | None
    cache_key: str | None
    cache: str
    key_changes: list[str]
    inputs: dict[str, str]
    result: str | None
    error: str | None
    traceback: str | None
    logs: list[str]
    history: list[HistoryEntry]
    retryable: bool


class Command(TypedDict, total=False):
    """A command from the browser (``model.send``): select a node, retry a node, retry a flow run."""

    type: Literal["select", "retry", "retry_flow"]
    id: str
    run: str


# -- the model --------------------------------------------------------------------------------------
@dataclass(slots=True)  # one per task call; thousands in a big flow
class _Node:
    id: str
    run_id: str
    task_key: str
    task_name: str
    records: list[TaskRunRecord] = field(default_factory=list)
    count: int | None = None
    total: int | None = None


class GraphModel:
    """Task runs of some flow runs, grouped into nodes and edges, with a cached layout.

    Not thread-safe by itself: the widget calls it under its lock.
    """

    def __init__(self) -> None:
        self.runs: dict[str, RunRecord] = {}
        self.nodes: dict[str, _Node] = {}
        self.edges: dict[tuple[str, str], None] = {}  # ordered set
        self.alias: dict[str, str] = {}  # task run id -> node id
        self._by_call: dict[tuple[str, str, int], str] = {}  # (run id, task key, call index) -> node id
        self._calls: dict[tuple[str, int, str], int] = {}  # (run id, attempt, task key) -> calls seen
        self.structure_rev = 0
        self._layout: Layout[str] | None = None
        self._layout_rev = -1
        self.layout_seconds = 0.0

    # -- input ------------------------------------------------------------------------------------
    def add_run(self, run: RunRecord) -> bool:
        """Track ``run`` (and take in the task runs it already has). True if it was new."""
        if run.id in self.runs:
            self.runs[run.id] = run  # a live record replaces a copy read from history
            return False
        self.runs[run.id] = run
        self.structure_rev += 1
        attempt = 1
        for task_run in list(run.task_runs):
            self.add_task_run(run, task_run, attempt, run_final=False)
        return True

    def add_task_run(self, run: RunRecord, task_run: TaskRunRecord, attempt: int, run_final: bool) -> str:
        """Place ``task_run`` on its node (creating it if needed); returns the node id.

        ``attempt`` and ``run_final`` are the flow run's attempt and finality when the task run was
        first seen (captured in the engine's thread, since the run moves on).
        """
        node_id = self.alias.get(task_run.id)
        if node_id is not None:
            records = self.nodes[node_id].records
            for i, known in enumerate(records):
                if known.id == task_run.id and known is not task_run:
                    records[i] = task_run
            return node_id
        if run.id not in self.runs:
            self.runs[run.id] = run
            self.structure_rev += 1
        node: _Node | None = None
        if run_final or run.kind == "session":
            node = self._failed_node_for(run.id, task_run)
        else:
            key = (run.id, attempt, task_run.task_key)
            index = self._calls.get(key, 0)
            self._calls[key] = index + 1
            found = self._by_call.get((run.id, task_run.task_key, index))
            if found is not None:
                node = self.nodes[found]
            else:
                node = self._new_node(run.id, task_run)
                self._by_call[(run.id, task_run.task_key, index)] = node.id
        if node is None:
            node = self._new_node(run.id, task_run)
        node.records.append(task_run)
        self.alias[task_run.id] = node.id
        for upstream in task_run.upstream:
            source = self.alias.get(upstream)
            if source is not None and source != node.id and (source, node.id) not in self.edges:
                self.edges[(source, node.id)] = None
                self.structure_rev += 1
        return node.id

    def _new_node(self, run_id: str, task_run: TaskRunRecord) -> _Node:
        node = _Node(task_run.id, run_id, task_run.task_key, task_run.task_name)
        self.nodes[node.id] = node
        self.structure_rev += 1
        return node

    def _failed_node_for(self, run_id: str, task_run: TaskRunRecord) -> _Node | None:
        # Newest first: a retry replaces the latest failed call of this task with these inputs.
        for node in reversed(self.nodes.values()):
            if node.run_id != run_id or node.task_key != task_run.task_key:
                continue
            last = node.records[-1]
            if last.state_type in _UNSUCCESSFUL and last.inputs == task_run.inputs:
                return node
        return None

    # -- node views ---------------------------------------------------------------------------------
    def node_state(self, node: _Node) -> tuple[NodeState, TaskRunRecord]:
        """The state to draw, and the record it comes from. A reuse in a flow retry keeps the colour of
        the call it reuses (it was computed, not loaded from the store)."""
        records = node.records
        last = records[-1]
        if len(records) == 1:
            return _BY_NAME.get(last.state) or _BY_TYPE.get(last.state_type, "pending"), last
        if len(records) > 1 and last.state == "Cached" and _is_reuse(last):
            for earlier in reversed(records[:-1]):
                if earlier.state_type == "COMPLETED":
                    return css_state(earlier.state, earlier.state_type), earlier
        return css_state(last.state, last.state_type), last

    def node_patch(self, node: _Node, retryable_ids: set[str]) -> NodePatch:
        state, _ = self.node_state(node)
        patch: NodePatch = {
            "state": state,
            "attempts": sum(record.attempts for record in node.records),
            "retryable": node.records[-1].id in retryable_ids,
        }
        if node.total is not None:
            patch["count"] = node.count or 0
            patch["total"] = node.total
        return patch

    def run_data(self, run: RunRecord, retryable_runs: set[str]) -> RunData:
        return {
            "id": run.id,
            "name": run.flow_name,
            "kind": run.kind,
            "state": run.state,
            # A flow run that ended unsuccessfully is remembered for "Retry failed" just after its final
            # event is published, so the final state itself says so.
            "retryable": run.id in retryable_runs or (
                run.kind == "flow" and run.end_time is not None and run.state_type in _UNSUCCESSFUL
            ),
            "parent": run.parent_run_id,
        }

    # -- layout and payload -------------------------------------------------------------------------
    def layout(self) -> Layout[str]:
        """The layout of the current structure (recomputed only when nodes or edges were added)."""
        if self._layout is None or self._layout_rev != self.structure_rev:
            started = time.perf_counter()
            self._layout = layered_layout(list(self.nodes), list(self.edges))
            self.layout_seconds = time.perf_counter() - started
            self._layout_rev = self.structure_rev
        return self._layout

    def payload(self, rev: int, retryable_ids: Iterable[str] = (), retryable_runs: Iterable[str] = ()) -> GraphPayload:
        """The whole graph as sent to the browser (and drawn as static SVG)."""
        ids = set(retryable_ids)
        flows = set(retryable_runs)
        layout = self.layout()
        nodes: list[NodeData] = []
        positions = layout.positions
        for node in self.nodes.values():
            x, y = positions[node.id]
            state, _ = self.node_state(node)
            records = node.records
            data: NodeData = {
                "id": node.id, "label": node.task_name, "task": node.task_key, "run": node.run_id,
                "state": state,
                "attempts": records[0].attempts if len(records) == 1 else sum(r.attempts for r in records),
                "retryable": records[-1].id in ids, "x": x, "y": y,
            }
            if node.total is not None:
                data["count"] = node.count or 0
                data["total"] = node.total
            nodes.append(data)
        edges: list[EdgeData] = [
            {"source": source, "target": target, "points": [[round(x, 1), round(y, 1)] for x, y in points]}
            for (source, target), points in zip(self.edges, layout.edge_points)
        ]
        return {
            "rev": rev,
            "nodes": nodes,
            "edges": edges,
            "runs": [self.run_data(run, flows) for run in self.runs.values()],
            "width": layout.width,
            "height": layout.height,
        }

    # -- details ----------------------------------------------------------------------------------
    def details(self, node_id: str, retryable_ids: Iterable[str] = (),
                earlier: Iterable[TaskRunRecord] = ()) -> DetailsData | None:
        """Everything the details panel shows for one node; ``earlier`` are task runs from the run history
        to explain a cache miss when this session has no earlier run of the task."""
        node = self.nodes.get(node_id)
        if node is None:
            return None
        state, shown = self.node_state(node)
        last = node.records[-1]
        computed = [r for r in node.records if not _is_reuse(r)]
        keyed = computed[-1] if computed else last
        previous = _previous_run(keyed, [r for n in self.nodes.values() for r in n.records], earlier)
        cache, changes = explain_cache(keyed, previous)
        failed = next((r for r in reversed(node.records) if r.traceback), None)
        history: list[HistoryEntry] = [
            {"state": entry.name, "time": entry.timestamp, "message": entry.message}
            for record in node.records for entry in record.history
        ]
        logs = [line for record in node.records for line in record.logs]
        return {
            "id": node.id,
            "task": node.task_key,
            "label": node.task_name,
            "run": node.run_id,
            "state": state,
            "state_name": shown.state,
            "attempts": sum(record.attempts for record in node.records),
            "calls": len(node.records),
            "duration": keyed.duration,
            "cache_key": keyed.cache_key,
            "cache": cache,
            "key_changes": changes,
            "inputs": dict(keyed.inputs),
            "result": shown.result,
            "error": failed.error if failed and state not in ("completed", "cached") else None,
            "traceback": failed.traceback if failed else None,
            "logs": logs,
            "history": history,
            "retryable": last.id in set(retryable_ids),
        }


def _is_reuse(record: TaskRunRecord) -> bool:
    return any((entry.message or "").startswith(_REUSED) for entry in record.history[-1:])


def _previous_run(record: TaskRunRecord, known: list[TaskRunRecord],
                  earlier: Iterable[TaskRunRecord]) -> TaskRunRecord | None:
    """The latest run of the same task that started before ``record`` and has key parts."""
    started = record.start_time if record.start_time is not None else float("inf")
    best: TaskRunRecord | None = None
    for candidate in (*known, *earlier):
        if candidate.id == record.id or candidate.task_key != record.task_key or not candidate.key_parts:
            continue
        when = candidate.start_time
        if when is None or when > started:
            continue
        if best is None or (best.start_time or 0) < when:
            best = candidate
    return best


def explain_cache(record: TaskRunRecord, previous: TaskRunRecord | None) -> tuple[str, list[str]]:
    """Why ``record`` hit or missed the cache, compared with the previous run of the same task, and
    which parts of the key changed (``"code"``, ``"input:x"``, ...)."""
    if _is_reuse(record):
        return "reused from an earlier attempt of this flow run", []
    if record.cache_key is None:
        return "not cached: the task's cache policy gives no key (or it does not persist results)", []
    changes: list[str] = []
    if previous is not None:
        names = sorted(set(record.key_parts) | set(previous.key_parts))
        changes = [name for name in names if record.key_parts.get(name) != previous.key_parts.get(name)]
    if record.cache_hit:
        return "hit: a stored result with this key (same code and inputs) was loaded", changes
    if previous is None:
        return "miss: no earlier run of this task is known with this key", changes
    if changes:
        return "miss: changed since the previous run: " + ", ".join(changes), changes
    if previous.state_type in _FINAL_TYPES and previous.state_type != "COMPLETED":
        return "miss: same key as the previous run, which did not complete (nothing was stored)", changes
    return ("miss: same key as the previous run, but no stored result (not persisted, expired, evicted "
            "or refresh_cache)"), changes
