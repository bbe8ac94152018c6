"""The graph model: task run records in, a JSON-ready payload out. Pure Python, no widgets.

One *call* is one task call in a flow run. A call can have several task run records — the failed
first run, a manual retry, the reuse in a "retry failed" of the flow — and they all land on the same
call, so the graph keeps its shape while a retry runs and the node changes colour in place:

- inside a running flow attempt, a call is identified the way the engine reuses results: task key plus
  call index within the attempt (so attempt 2's third ``load`` call is attempt 1's third ``load`` node);
- a call recorded while its flow run is already final (``retry_task_run``), or in a session run, lands on
  the latest failed call of the same task with the same inputs.

A call is drawn as a node of its own, or as a member of a *group* node: the calls of one ``Task.map``
(records sharing a ``map_id``), and, once the graph passes ``FOLD_AT`` nodes, all calls of the task
called most often in a run. A group shows its progress (``37/100``) and its calls by state; it keeps
those counts up to date call by call, so a group of 10,000 calls costs no more per update than one.

State changes are not pushed call by call: :meth:`GraphModel.poll` looks at the calls still under way
(one comparison each), which is what keeps a live graph cheap next to a flow of quick tasks.

The message shapes sent to the browser are the TypedDicts below.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
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
    "GroupKind",
    "MemberData",
    "NodeData",
    "NodePatch",
    "RunData",
    "StatePatch",
    "css_state",
]

NodeState = Literal[
    "pending", "running", "retrying", "completed", "cached", "failed", "timedout", "cancelled", "crashed",
    "upstream",  # did not run: a call it depends on failed (never retried by itself)
    "stale", "uncached",  # a notebook cell's (auto mode's cell graph, nbflow.ui.cells)
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
    "UpstreamFailed": "upstream",
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
_FAILED_STATES: frozenset[str] = frozenset({"failed", "timedout", "cancelled", "crashed"})
_REUSED = "reused from an earlier attempt"
# Above this many drawn nodes, the calls of the most-called task of a run are drawn as one node.
FOLD_AT = 1000
MEMBERS_SHOWN = 50  # failed calls of a group listed in its details
POLL_LIMIT = 256  # calls under way above which state changes are read from the engine's reports


def css_state(name: str, state_type: str) -> NodeState:
    """The display state (a CSS class / ``data-state``) of an engine state name and type."""
    return _BY_NAME.get(name) or _BY_TYPE.get(state_type, "pending")


# -- message shapes ---------------------------------------------------------------------------------
GroupKind = Literal["map", "repeat"]


class NodeData(TypedDict):
    """One node as drawn: a task call, or a group of calls (``group``: a ``Task.map`` call, or the many
    calls of one task) with its progress (``count`` of ``total`` done) and its calls by state."""

    id: str
    label: str
    task: str
    run: str
    state: NodeState
    attempts: int
    retryable: bool
    x: float
    y: float
    group: NotRequired[GroupKind]
    count: NotRequired[int]
    total: NotRequired[int]
    counts: NotRequired[dict[str, int]]
    status: NotRequired[str]  # the second line, in place of the one made from the state (a cell's)
    duration: NotRequired[float | None]  # seconds the call's computed run took (None: running, cached, group)
    saved: NotRequired[float | None]  # a cached call: seconds its original run took, when this graph knows
    start: NotRequired[float | None]  # epoch seconds: the call's first Running (a group's earliest)
    end: NotRequired[float | None]  # epoch seconds: its final state (a group's latest; None while under way)
    spans: NotRequired[list[Span]]  # a call's timeline (see _spans)


# One bar of a call's timeline: [start, end (None while open), state] — an attempt's run ending in the state
# it ended in ("running" while open), a wait before a retry ("waiting"), a cache hit (a zero-length "cached").
Span = list[float | str | None]


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
    start: NotRequired[float]
    end: NotRequired[float | None]


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
    group: NotRequired[GroupKind]
    count: NotRequired[int]
    total: NotRequired[int]
    counts: NotRequired[dict[str, int]]
    duration: NotRequired[float | None]
    saved: NotRequired[float | None]
    start: NotRequired[float | None]
    end: NotRequired[float | None]
    spans: NotRequired[list[Span]]


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


class MemberData(TypedDict):
    """A failed call of a group, as its details panel lists it."""

    id: str
    index: int
    state: NodeState
    error: str | None
    inputs: dict[str, str]
    retryable: bool


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
    group: NotRequired[GroupKind]
    counts: NotRequired[dict[str, int]]
    total: NotRequired[int]
    failed_members: NotRequired[list[MemberData]]
    stale: NotRequired[list[str]]  # why a notebook cell is stale (auto mode's cell graph)
    saved: NotRequired[float | None]  # a cached call: seconds its original run took, when known


class Command(TypedDict, total=False):
    """A command from the browser (``model.send``): select a node, retry a node, retry a flow run."""

    type: Literal["select", "retry", "retry_flow"]
    id: str
    run: str


# -- the model --------------------------------------------------------------------------------------
class _Node:
    """A task call (``members is None``) or a group of calls drawn as one node (a ``Task.map`` call, or
    a task called many times in one run). Hand-written slots: one is made per task call, and a flow of
    quick tasks must not pay for default factories it does not need."""

    __slots__ = ("counts", "earlier", "failed", "group", "id", "kind", "last", "light", "members", "run_id",
                 "seen", "seen_record", "shown", "task_key", "task_name", "total")

    def __init__(self, node_id: str, run_id: str, task_run: TaskRunRecord) -> None:
        self.id = node_id
        self.run_id = run_id
        self.task_key = task_run.task_key
        self.task_name = task_run.task_name
        # The call's latest task run, and the ones before it (a retry, a reuse): most calls have one, and
        # a list per call would be one more object for the garbage collector to walk, thousands of times.
        self.last = task_run
        self.earlier: list[TaskRunRecord] | None = None
        # A call: the group that draws it, the state it was last counted in, its last record and state name.
        self.group: _Node | None = None
        self.shown: NodeState | None = None
        self.seen = ""
        self.seen_record: TaskRunRecord | None = None
        # A group: its calls, how many it will have (a map's size), calls by state, the unsuccessful ones.
        self.kind: GroupKind | None = None
        self.members: list[_Node] | None = None
        # A group's calls that had completed when first seen: just their task runs (see add_task_run).
        self.light: list[TaskRunRecord] = _NO_RECORDS
        self.total: int | None = None
        self.counts: dict[str, int] = _NO_COUNTS
        self.failed: dict[str, _Node] = _NO_FAILED

    @property
    def records(self) -> list[TaskRunRecord]:
        """The call's task runs, oldest first."""
        return [*self.earlier, self.last] if self.earlier else [self.last]

    def add(self, task_run: TaskRunRecord) -> None:
        if self.earlier is None:
            self.earlier = []
        self.earlier.append(self.last)
        self.last = task_run


def _attempt_at(marks: list[tuple[float, str, str]], task_run: TaskRunRecord) -> tuple[int, bool]:
    """The attempt of its flow run a recorded task run was made in, and whether the run had ended then (a
    manual retry of a call): what a live graph captures as each task run is first seen, read back from the
    run's history, so that a graph built from the history (``%nbflow graph``) places a flow retry's calls
    on the calls they retried."""
    began = task_run.history[0].timestamp if task_run.history else task_run.start_time
    attempt, final = 0, False
    for timestamp, name, state_type in marks:
        if began is not None and timestamp > began:
            break
        if name in ("Running", "Retrying"):
            attempt, final = attempt + 1, False
        elif state_type in _FINAL_TYPES:
            final = True
    return max(attempt, 1), final


_NO_COUNTS: dict[str, int] = {}  # shared by calls, never written (only groups count)
_NO_RECORDS: list[TaskRunRecord] = []
_NO_FAILED: dict[str, _Node] = {}


class GraphModel:
    """Task runs of some flow runs, grouped into nodes and edges, with a cached layout.

    ``calls`` are every task call; ``nodes`` are what is drawn: calls on their own, and groups — one
    per ``Task.map`` call, and one per task that was called so often in one run that the graph would
    have more than ``FOLD_AT`` nodes. Not thread-safe by itself: the widget calls it under its lock.
    """

    def __init__(self) -> None:
        self.runs: dict[str, RunRecord] = {}
        self.calls: dict[str, _Node] = {}
        self.nodes: dict[str, _Node] = {}  # drawn, in first-seen order (the layout's tie-breaker)
        self.edges: dict[tuple[str, str], None] = {}  # drawn edges (an ordered set)
        self._call_edges: dict[tuple[str, str], None] = {}
        self.alias: dict[str, str] = {}  # task run id -> call id
        # (run id, task key) -> its call ids by call index; one list per task, not one key per call (every
        # object kept per call is one more for the garbage collector to walk).
        self._by_call: dict[tuple[str, str], list[str]] = {}
        self._calls: dict[tuple[str, int, str], int] = {}  # (run id, attempt, task key) -> calls seen
        # Calls drawn on their own, and repeat groups, per (run id, task key, task name): tasks made by one
        # factory share a function (and task key) but are different tasks, folded apart.
        self._own: dict[tuple[str, str, str], list[_Node]] = {}
        self._folds: dict[tuple[str, str, str], _Node] = {}
        self._maps: dict[str, _Node] = {}  # map id -> its group
        self._unsuccessful: dict[tuple[str, str], dict[str, _Node]] = {}  # (run, task) -> failed calls
        self._active: dict[str, _Node] = {}  # calls whose last record was not final when last looked at
        self._next_fold_check = FOLD_AT
        # Cache key -> seconds the run that computed it took, from the computed calls this graph saw: what a
        # later hit of the key saved.
        self._computed: dict[str, float] = {}
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
        marks = [(entry.timestamp, entry.name, entry.type) for entry in list(run.history)]
        # A long flow keeps only its newest task runs in memory: the graph of its whole run reads the rest
        # (a session's graph shows its newest calls: its history may hold millions).
        records = list(run.task_runs) if run.kind == "session" else run.all_task_runs()
        for task_run in records:
            attempt, final = _attempt_at(marks, task_run)
            self.add_task_run(run, task_run, attempt, run_final=final)
        return True

    def add_task_run(self, run: RunRecord, task_run: TaskRunRecord, attempt: int, run_final: bool) -> str:
        """Place ``task_run`` on its call (creating it if needed); returns the id of the node that draws it.

        ``attempt`` and ``run_final`` are the flow run's attempt and finality when the task run was
        first seen (captured in the engine's thread, since the run moves on).
        """
        call_id = self.alias.get(task_run.id)
        if call_id is not None:
            placed = self.calls[call_id]
            if placed.members is not None:  # a light call of a group: completed, nothing to update
                return placed.id
            if placed.last.id == task_run.id:
                placed.last = task_run
            elif placed.earlier:
                placed.earlier = [task_run if known.id == task_run.id else known for known in placed.earlier]
            self.observe(placed)
            return (placed.group or placed).id
        if run.id not in self.runs:
            self.runs[run.id] = run
            self.structure_rev += 1
        call: _Node | None = None
        if run_final or run.kind == "session":
            call = self._failed_call_for(run.id, task_run)
        else:
            key = (run.id, attempt, task_run.task_key)
            index = self._calls.get(key, 0)
            self._calls[key] = index + 1
            known = self._by_call.get((run.id, task_run.task_key))
            if known is None:
                known = self._by_call[(run.id, task_run.task_key)] = []
            if index < len(known):
                call = self.calls[known[index]]
                if call.members is not None:
                    # A light call (completed when first seen) called again in a later attempt: the
                    # engine reuses its result, so its group's counts stay as they are.
                    self.alias[task_run.id] = known[index]
                    return call.id
            else:
                group = self._group_of(run.id, task_run) if task_run.state_type == "COMPLETED" else None
                if group is not None:
                    known.append(task_run.id)
                    return self._add_light(group, task_run)
                call = self._new_call(run.id, task_run)
                known.append(call.id)
        if call is None:
            call = self._new_call(run.id, task_run)
        elif call.last is not task_run:
            call.add(task_run)
        self.alias[task_run.id] = call.id
        for upstream in task_run.upstream:
            source = self.alias.get(upstream)
            if source is not None and source != call.id and (source, call.id) not in self._call_edges:
                self._call_edges[(source, call.id)] = None
                self._add_edge((self.calls[source].group or self.calls[source]).id, (call.group or call).id)
        self.observe(call)
        if len(self.nodes) > self._next_fold_check:
            self._fold()
        return (call.group or call).id

    def _group_of(self, run_id: str, task_run: TaskRunRecord) -> _Node | None:
        """The group an existing map or fold has for a new call of ``task_run``'s task, if any."""
        if task_run.map_id is not None:
            return self._maps.get(task_run.map_id)
        return self._folds.get((run_id, task_run.task_key, task_run.task_name))

    def _add_light(self, group: _Node, task_run: TaskRunRecord) -> str:
        """A new call of a group that has already completed: counted, its task run kept, no node of its own.
        This is the hot path of a long loop of quick tasks (they are done before the graph looks), and it
        makes no object per call: the call id stands for the group in ``calls``."""
        state = _BY_NAME.get(task_run.state) or "completed"
        counts = group.counts
        counts[state] = counts.get(state, 0) + 1
        group.light.append(task_run)
        call_id = task_run.id
        self.calls[call_id] = group
        self.alias[call_id] = call_id
        for upstream in task_run.upstream:
            source = self.alias.get(upstream)
            if source is not None and (source, call_id) not in self._call_edges:
                self._call_edges[(source, call_id)] = None
                self._add_edge(_drawn(self.calls[source]).id, group.id)
        return group.id

    def _new_call(self, run_id: str, task_run: TaskRunRecord) -> _Node:
        call = _Node(task_run.id, run_id, task_run)
        self.calls[call.id] = call
        key = (run_id, task_run.task_key, task_run.task_name)
        if task_run.map_id is not None:
            group = self._maps.get(task_run.map_id)
            if group is None:
                group = self._maps[task_run.map_id] = self._new_group(
                    "map-" + task_run.map_id, "map", call, task_run.map_size)
                self.nodes[group.id] = group
                self.structure_rev += 1
            _join(group, call)
            return call
        fold = self._folds.get(key)
        if fold is not None:
            _join(fold, call)
            return call
        self.nodes[call.id] = call
        self._own.setdefault(key, []).append(call)
        self.structure_rev += 1
        return call

    def _failed_call_for(self, run_id: str, task_run: TaskRunRecord) -> _Node | None:
        # Newest first: a retry replaces the latest failed call of this task with these inputs.
        for call in reversed(self._unsuccessful.get((run_id, task_run.task_key), {}).values()):
            last = call.last
            if last.state_type in _UNSUCCESSFUL and last.inputs == task_run.inputs:
                return call
        return None

    @staticmethod
    def _new_group(node_id: str, kind: GroupKind, first: _Node, total: int | None) -> _Node:
        group = _Node(node_id, first.run_id, first.last)
        group.kind = kind
        group.members = []
        group.total = total
        group.counts = {}
        group.failed = {}
        group.light = []
        return group

    def _add_edge(self, source: str, target: str) -> None:
        if source != target and (source, target) not in self.edges:
            self.edges[(source, target)] = None
            self.structure_rev += 1

    def _fold(self) -> None:
        """Too many nodes: draw the calls of the most-called tasks as one node each, until there are at most
        ``FOLD_AT`` nodes (a column of thousands of boxes shows nothing, and costs layout and JSON)."""
        while len(self.nodes) > FOLD_AT:
            key, calls = max(self._own.items(), key=lambda item: len(item[1]), default=(None, []))
            if key is None or len(calls) < 2:
                break
            del self._own[key]
            group = self._folds[key] = self._new_group("calls-" + calls[0].id, "repeat", calls[0], None)
            folded = {call.id for call in calls}
            nodes: dict[str, _Node] = {}
            for node_id, node in self.nodes.items():  # the group takes its first call's place in the order
                if node_id == calls[0].id:
                    nodes[group.id] = group
                elif node_id not in folded:
                    nodes[node_id] = node
            self.nodes = nodes
            for call in calls:
                _join(group, call)
            self.edges = {}
            for source, target in self._call_edges:
                self._add_edge(_drawn(self.calls[source]).id, _drawn(self.calls[target]).id)
            self.structure_rev += 1
        # Nothing (more) to fold: look again only after a tenth more nodes, not on every call.
        self._next_fold_check = max(FOLD_AT, len(self.nodes) + FOLD_AT // 10 if len(self.nodes) > FOLD_AT else 0)

    # -- state changes --------------------------------------------------------------------------------
    def observe(self, call: _Node) -> bool:
        """Take in the current state of ``call`` (its group's counts follow). True if it changed since the
        last look."""
        last = call.last
        name = last.state
        if name == call.seen and last is call.seen_record:
            return False
        call.seen = name
        call.seen_record = last
        if last.state_type in _FINAL_TYPES:
            self._active.pop(call.id, None)
            if not last.cache_hit and last.cache_key is not None and last.state_type == "COMPLETED":
                duration = last.duration
                if duration is not None:
                    self._computed[last.cache_key] = duration
        else:
            self._active[call.id] = call
        if call.earlier is None:  # the common case, inline: one task run, its own state
            state: NodeState = _BY_NAME.get(name) or _BY_TYPE.get(last.state_type, "pending")
        else:
            state, _ = self.node_state(call)
        old = call.shown
        if state != old:
            call.shown = state
            if state in _FAILED_STATES:
                self._unsuccessful.setdefault((call.run_id, call.task_key), {})[call.id] = call
            elif old in _FAILED_STATES:
                self._unsuccessful.get((call.run_id, call.task_key), {}).pop(call.id, None)
            group = call.group
            if group is not None:
                counts = group.counts
                if old is not None:
                    counts[old] -= 1
                counts[state] = counts.get(state, 0) + 1
                if state in _FAILED_STATES:
                    group.failed[call.id] = call
                elif old in _FAILED_STATES:
                    group.failed.pop(call.id, None)
        return True

    def poll(self, changed: deque[TaskRunRecord] | None = None) -> set[str]:
        """Look at the calls under way; returns the ids of the drawn nodes whose state changed.

        With few calls under way (a loop of tasks), each is compared with its last look — one comparison a
        call. With many (a big ``Task.map`` waiting in the pool), only the task runs in ``changed`` (those
        the engine reported since the last look) are looked at. Either way ``changed`` is emptied: a change
        it reported is one of a call under way, which the comparison sees anyway.
        """
        found: set[str] = set()
        active = self._active
        if changed is not None and len(active) > POLL_LIMIT:
            calls = self.calls
            alias = self.alias
            while changed:
                call_id = alias.get(changed.popleft().id)
                call = calls.get(call_id) if call_id is not None else None
                if call is not None and call.members is None and self.observe(call):
                    found.add((call.group or call).id)
            return found
        if changed is not None:
            changed.clear()
        for call in list(active.values()):
            if call.last.state != call.seen and self.observe(call):
                found.add((call.group or call).id)
        return found

    # -- node views ---------------------------------------------------------------------------------
    def node_state(self, node: _Node) -> tuple[NodeState, TaskRunRecord | None]:
        """The state to draw, and the record it comes from (None for a group). A reuse in a flow retry keeps
        the colour of the call it reuses (it was computed, not loaded from the store)."""
        if node.members is not None:
            return _group_state(node), None
        last = node.last
        if not node.earlier:
            return _BY_NAME.get(last.state) or _BY_TYPE.get(last.state_type, "pending"), last
        if last.state == "Cached" and _is_reuse(last):
            for earlier in reversed(node.earlier):
                if earlier.state_type == "COMPLETED":
                    return css_state(earlier.state, earlier.state_type), earlier
        return css_state(last.state, last.state_type), last

    def retryable(self, node: _Node, retryable_ids: set[str]) -> bool:
        """A failed call this process can retry, or a group with at least one."""
        if node.members is not None:
            return any(call.last.id in retryable_ids for call in node.failed.values())
        return node.last.id in retryable_ids

    def retry_targets(self, node_id: str) -> list[str]:
        """The task run ids a Retry on ``node_id`` reruns: the node's last run, or a group's failed calls'."""
        node = self.nodes.get(node_id) or self.calls.get(node_id)
        if node is None:
            return []
        if node.members is not None:
            return [call.last.id for call in node.failed.values()]
        return [node.last.id]

    def node_patch(self, node: _Node, retryable_ids: set[str]) -> NodePatch:
        state, _ = self.node_state(node)
        patch: NodePatch = {
            "state": state,
            "attempts": _attempts(node),
            "retryable": self.retryable(node, retryable_ids),
        }
        if node.members is not None:
            _group_fields(node, patch)
        self._timing(node, patch)
        return patch

    def _timing(self, node: _Node, data: NodeData | NodePatch) -> None:
        """Times of a node: a call's duration (or what a hit saved), start, end and timeline spans; a group's
        start and end."""
        if node.members is not None:
            runs = [r for call in node.members for r in call.records] + node.light
            starts = [r.start_time for r in runs if r.start_time is not None]
            ends = [r.end_time for r in runs if r.end_time is not None]
            data["start"] = min(starts) if starts else None
            data["end"] = max(ends) if ends and not self._group_running(node) else None
            return
        _, shown = self.node_state(node)
        record = shown or node.last
        records = node.records
        hit = record.cache_hit
        data["duration"] = None if hit or record.end_time is None else record.duration
        data["saved"] = self._computed.get(record.cache_key) if hit and record.cache_key else None
        data["start"] = next((r.start_time for r in records if r.start_time is not None), None)
        data["end"] = node.last.end_time
        data["spans"] = _spans(records)

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
            "start": run.start_time,
            "end": run.end_time,
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
            data: NodeData = {
                "id": node.id, "label": node.task_name, "task": node.task_key, "run": node.run_id,
                "state": state,
                "attempts": _attempts(node),
                "retryable": self.retryable(node, ids), "x": x, "y": y,
            }
            if node.members is not None:
                _group_fields(node, data)
            self._timing(node, data)
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
        node = self.nodes.get(node_id) or self.calls.get(node_id)
        if node is None:
            return None
        ids = set(retryable_ids)
        if node.members is not None:
            return self._group_details(node, ids)
        state, shown = self.node_state(node)
        assert shown is not None
        last = node.last
        computed = [r for r in node.records if not _is_reuse(r)]
        keyed = computed[-1] if computed else last
        known = [r for n in self.calls.values() if n.members is None for r in n.records]
        known += [r for n in self.nodes.values() for r in n.light]
        previous = _previous_run(keyed, known, earlier)
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
            "retryable": last.id in ids,
            "saved": _saved(keyed, known, earlier) if keyed.cache_hit else None,
        }

    def _group_details(self, group: _Node, ids: set[str]) -> DetailsData:
        """A group's panel: counts by state, and its failed calls with their errors (the first
        ``MEMBERS_SHOWN``); the first failure's traceback."""
        members = group.members or []
        state = _group_state(group)
        failed: list[MemberData] = []
        position: dict[str, int] | None = None  # call order, for a fold's calls (a map's carry their index)

        def index(call: _Node) -> int:
            nonlocal position
            if call.last.map_index is not None:
                return call.last.map_index
            if position is None:
                order = self._by_call.get((group.run_id, group.task_key)) or [c.id for c in members]
                position = {call_id: i for i, call_id in enumerate(order)}
            return position.get(call.id, -1)

        # In call order, whatever order they failed in (calls on a pool finish in any order).
        ordered = sorted(((index(call), call) for call in group.failed.values()), key=lambda pair: pair[0])
        for at, call in ordered[:MEMBERS_SHOWN]:
            last = call.last
            failed.append({
                "id": call.id,
                "index": at,
                "state": call.shown or "failed",
                "error": last.error,
                "inputs": dict(last.inputs),
                "retryable": last.id in ids,
            })
        first = next((call.last for _, call in ordered if call.last.traceback), None)
        runs = [r for call in members for r in call.records] + group.light
        starts = [r.start_time for r in runs if r.start_time is not None]
        ends = [r.end_time for r in runs if r.end_time is not None]
        size = _size(group)
        counts = {name: count for name, count in group.counts.items() if count}
        cached = counts.get("cached", 0)
        return {
            "id": group.id,
            "task": group.task_key,
            "label": group.task_name,
            "run": group.run_id,
            "state": state,
            "state_name": state.capitalize(),
            "attempts": sum(r.attempts for r in runs),
            "calls": size,
            "duration": max(ends) - min(starts) if starts and ends and not self._group_running(group) else None,
            "cache_key": None,
            "cache": f"{cached:,} of {size:,} calls loaded from the cache" if cached else "",
            "key_changes": [],
            "inputs": {},
            "result": None,
            "error": first.error if first is not None else None,
            "traceback": first.traceback if first is not None else None,
            "logs": [],
            "history": [],
            "retryable": self.retryable(group, ids),
            "group": group.kind or "repeat",
            "counts": counts,
            "total": max(group.total or 0, size),
            "failed_members": failed,
        }

    @staticmethod
    def _group_running(group: _Node) -> bool:
        return _group_state(group) in ("running", "retrying", "pending")


def _attempts(node: _Node) -> int:
    """A call's attempts over all its task runs (0 for a group: its panel sums them on demand)."""
    if node.members is not None:
        return 0
    attempts = node.last.attempts
    return attempts + sum(r.attempts for r in node.earlier) if node.earlier else attempts


def _size(group: _Node) -> int:
    """How many calls a group has seen: its calls with a node of their own, and its light ones."""
    return len(group.members or ()) + len(group.light)


def _drawn(call: _Node) -> _Node:
    """The node that draws ``call``: its group, or itself."""
    group = call.group
    return call if group is None else group


def _join(group: _Node, call: _Node) -> None:
    call.group = group
    assert group.members is not None
    group.members.append(call)
    if call.shown is not None:
        group.counts[call.shown] = group.counts.get(call.shown, 0) + 1
        if call.shown in _FAILED_STATES:
            group.failed[call.id] = call


def _group_state(group: _Node) -> NodeState:
    """A group is running while any call runs or is still to come; then it takes the worst outcome of its
    calls, and is "cached" only if every call was loaded from the cache."""
    counts = group.counts
    if counts.get("running"):
        return "running"
    if counts.get("retrying"):
        return "retrying"
    members = _size(group)
    total = max(group.total or 0, members)
    waiting = counts.get("pending", 0) + total - members
    if waiting:
        return "running" if waiting < total else "pending"
    worst: tuple[NodeState, ...] = ("crashed", "failed", "timedout", "cancelled", "upstream")
    for state in worst:
        if counts.get(state):
            return state
    if total and counts.get("cached", 0) == total:
        return "cached"
    return "completed"


def _group_fields(group: _Node, data: NodeData | NodePatch) -> None:
    counts = group.counts
    data["group"] = group.kind or "repeat"
    data["count"] = counts.get("completed", 0) + counts.get("cached", 0)
    data["total"] = max(group.total or 0, _size(group))
    data["counts"] = {name: count for name, count in counts.items() if count}


def _spans(records: list[TaskRunRecord]) -> list[Span]:
    """A call's timeline from its task runs' histories: each attempt's run ``[start, end, state it ended
    in]`` (end None and "running" while it runs), each wait before a retry ``[start, end, "waiting"]``, a
    cache hit (or a reuse) as ``[t, t, "cached"]``, a call that never ran (upstream failed) as ``[t, t,
    state]``."""
    spans: list[Span] = []
    for record in records:
        running: float | None = None
        waiting: float | None = None
        for entry in record.history:
            at = entry.timestamp
            if entry.type == "RUNNING":
                if waiting is not None:
                    spans.append([waiting, at, "waiting"])
                    waiting = None
                if running is None:
                    running = at
            elif entry.name == "AwaitingRetry":
                if running is not None:
                    spans.append([running, at, "failed"])
                    running = None
                waiting = at
            elif entry.type in _FINAL_TYPES:
                state = css_state(entry.name, entry.type)
                if running is not None:
                    spans.append([running, at, state])
                elif waiting is not None:
                    spans.append([waiting, at, "waiting"])
                else:
                    spans.append([at, at, state])
                running = waiting = None
        if running is not None:
            spans.append([running, None, "running"])
        elif waiting is not None:
            spans.append([waiting, None, "waiting"])
    return spans


def _saved(record: TaskRunRecord, known: list[TaskRunRecord], earlier: Iterable[TaskRunRecord]) -> float | None:
    """What a cache hit saved: the duration of the latest computed run of the same key that is known."""
    best: TaskRunRecord | None = None
    for candidate in (*known, *earlier):
        if (candidate.cache_key == record.cache_key and not candidate.cache_hit and candidate.end_time is not None
                and candidate.state_type == "COMPLETED"
                and (best is None or (best.end_time or 0) < candidate.end_time)):
            best = candidate
    return best.duration if best is not None else None


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
