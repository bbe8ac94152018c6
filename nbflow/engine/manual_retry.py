"""Retrying by hand what failed in this process: a task call with its original inputs, or a flow run
in the same run (completed tasks are reused, so only the failed ones and what follows run again).

The widget's Retry buttons and ``%nbflow retry`` use these. Failed calls are remembered in memory
only — their inputs are live Python objects — and only the latest ones (see ``_LIMIT``). The latest
failed call of each task keeps its inputs alive, and the latest failed run of each flow its parameters;
an earlier one keeps only weak references to them (and small plain values), so a loop whose calls all
fail (a database down) does not keep every chunk it was given: it can be retried while its inputs are
still in memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nbflow.context import WeakValues
from nbflow.exceptions import NbflowError

if TYPE_CHECKING:
    from nbflow.context import FlowRunContext
    from nbflow.engine.flow_engine import FlowRunEngine
    from nbflow.states import State
    from nbflow.tasks import Task

__all__ = [
    "NotRetryable",
    "failed_call_inputs",
    "failed_flow_runs",
    "failed_task_runs",
    "RetryOutcome",
    "retry_and_resume",
    "retry_flow_run",
    "retry_task_run",
]

_LIMIT = 1000


class NotRetryable(NbflowError, LookupError):
    """The task run or flow run is unknown to this process, or did not fail."""


class _FailedCall:
    """A failed call as a retry runs it again: held inputs while it is its task's latest failure, weak
    ones after (see the module documentation)."""

    __slots__ = ("_held", "_kept", "dynamic_key", "flow_context", "task")

    def __init__(self, task: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 flow_context: FlowRunContext | None, dynamic_key: tuple[str, int] | None) -> None:
        self.task = task
        self.flow_context = flow_context
        self.dynamic_key = dynamic_key
        self._held: tuple[tuple[Any, ...], dict[str, Any]] | None = (args, kwargs)
        # Once demoted: the positional arguments under their index, the keyword ones under their name.
        self._kept: tuple[int, WeakValues] | None = None

    def demote(self) -> None:
        """Stop keeping the inputs alive (a later call of the same task failed)."""
        held = self._held
        if held is not None:
            args, kwargs = held
            self._kept = (len(args), WeakValues({**dict(enumerate(args)), **kwargs}))
            self._held = None

    def inputs(self) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """The call's arguments, or None if one of them is no longer in memory."""
        if self._held is not None:
            return self._held
        assert self._kept is not None
        positional, kept = self._kept
        values = kept.get()
        if values is None:
            return None
        return (tuple(values.pop(index) for index in range(positional)), values)


_lock = threading.Lock()
_failed_tasks: OrderedDict[str, _FailedCall] = OrderedDict()
_failed_flows: OrderedDict[str, FlowRunEngine] = OrderedDict()
_latest: dict[str, str] = {}  # task key -> its latest failed task run (the one whose inputs are held)
_latest_flow: dict[str, str] = {}  # flow name -> its latest failed flow run (the one whose parameters are held)
# (flow run id, dynamic key) -> the failed task run of that call in the flow run, so that a later attempt of
# the same call that completes (the flow's own retry) makes the failure history rather than an action.
_by_call: dict[tuple[str, tuple[str, int]], str] = {}


def _call_of(call: _FailedCall) -> tuple[str, tuple[str, int]] | None:
    if call.flow_context is None or call.dynamic_key is None:
        return None
    return (call.flow_context.run.id, call.dynamic_key)


def _remember(registry: OrderedDict[str, Any], key: str, value: Any) -> None:
    with _lock:
        registry[key] = value
        registry.move_to_end(key)
        while len(registry) > _LIMIT:
            _, dropped = registry.popitem(last=False)
            if isinstance(dropped, _FailedCall):
                place = _call_of(dropped)
                if place is not None:
                    _by_call.pop(place, None)


def remember_failed_task(task_run_id: str, call: _FailedCall) -> None:
    with _lock:
        previous = _failed_tasks.get(_latest.get(call.task.task_key, ""))
        _latest[call.task.task_key] = task_run_id
        place = _call_of(call)
        if place is not None:
            superseded = _by_call.get(place)
            if superseded is not None:  # the same call failed again: the older failure is history
                _failed_tasks.pop(superseded, None)
            _by_call[place] = task_run_id
    if previous is not None:
        previous.demote()
    _remember(_failed_tasks, task_run_id, call)


def call_completed(flow_run_id: str, dynamic_key: tuple[str, int]) -> None:
    """A call of a flow run completed (a later attempt of the flow, or a retry): an earlier failure of the
    same call is no longer something to retry. Called by the engine for every completed call in a flow,
    so it returns at once while no call of any flow has failed."""
    if not _by_call:
        return
    with _lock:
        task_run_id = _by_call.pop((flow_run_id, dynamic_key), None)
        if task_run_id is not None:
            _failed_tasks.pop(task_run_id, None)


def remember_failed_flow(run_id: str, engine: FlowRunEngine) -> None:
    with _lock:
        previous = _failed_flows.get(_latest_flow.get(engine.flow.name, ""))
        _latest_flow[engine.flow.name] = run_id
    if previous is not None and previous is not engine:
        previous.release_parameters()
    _remember(_failed_flows, run_id, engine)


def failed_call_inputs(task_run_id: str) -> dict[str, Any] | None:
    """The keyword inputs a failed call was made with (None if unknown): a cell task's retry binds them
    again before rerunning its cell."""
    with _lock:
        call = _failed_tasks.get(task_run_id)
    inputs = call.inputs() if call is not None else None
    return dict(inputs[1]) if inputs is not None else None


def failed_task_runs() -> list[str]:
    """Ids of the failed task runs this process can retry (their inputs still in memory), oldest first."""
    with _lock:
        calls = list(_failed_tasks.items())
    return [task_run_id for task_run_id, call in calls if call.inputs() is not None]


def failed_flow_runs() -> list[str]:
    """Ids of the failed flow runs this process can retry (their parameters still in memory), oldest first."""
    with _lock:
        engines = list(_failed_flows.items())
    return [run_id for run_id, engine in engines if engine.parameters_available()]


def retry_task_run(task_run_id: str) -> State:
    """Run a failed task call again with its original inputs; return the new run's final state.

    The new task run is recorded in the same flow run as the failed one (or this process's session run).
    A success also completes the flow's record of that call, so a later "retry failed" of the flow
    reuses it.
    """
    from nbflow.context import _flow_run
    from nbflow.engine.task_engine import TaskRunEngine

    with _lock:
        call = _failed_tasks.get(task_run_id)
    if call is None:
        raise NotRetryable(
            f"task run {task_run_id!r} cannot be retried: it did not fail in this process, or it is too old "
            f"(the latest {_LIMIT} failures are kept)"
        )
    inputs = call.inputs()
    if inputs is None:
        raise NotRetryable(
            f"task run {task_run_id!r} cannot be retried: its inputs are no longer in memory (only the latest "
            f"failed call of each task keeps them alive); call {call.task.name} again"
        )
    token = _flow_run.set(call.flow_context)
    try:
        engine = TaskRunEngine(call.task, *inputs)
        # Recorded under the failed call's place in the flow, so a later flow retry reuses the result.
        engine.forced_dynamic_key = call.dynamic_key
        if call.task.is_async:
            from nbflow.engine.task_engine import run_coroutine

            state = run_coroutine(engine.run_to_state_async())
        else:
            state = engine.run_to_state()
    finally:
        _flow_run.reset(token)
    if state.is_completed():
        with _lock:
            _failed_tasks.pop(task_run_id, None)
            place = _call_of(call)
            if place is not None and _by_call.get(place) == task_run_id:
                del _by_call[place]
    return state


def retry_flow_run(run_id: str) -> State:
    """Run a failed flow again in the same run: tasks that completed in any earlier attempt are reused,
    so only the failed ones and what depends on them run again. Returns the run's new final state."""
    with _lock:
        engine = _failed_flows.get(run_id)
    if engine is None:
        raise NotRetryable(
            f"flow run {run_id!r} cannot be retried: it did not fail in this process, or it is too old"
        )
    state = engine.resume()
    if state.is_completed():
        with _lock:
            _failed_flows.pop(run_id, None)
    return state


@dataclass
class RetryOutcome:
    """What :func:`retry_and_resume` did: each retried call's new state (in order), and the new state of each
    flow run it resumed."""

    states: list[State]
    resumed: dict[str, State] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        """Every retried call and every resumed flow run completed."""
        return all(state.is_completed() for state in [*self.states, *self.resumed.values()])


def retry_and_resume(task_run_ids: Sequence[str]) -> RetryOutcome:
    """Retry failed calls (:func:`retry_task_run`), then resume each failed flow run whose retried calls
    all completed (:func:`retry_flow_run`), so that what depends on them runs too — what the graph's Retry
    and ``%nbflow retry`` both do."""
    outcome = RetryOutcome([])
    by_run: dict[str, list[State]] = {}
    for task_run_id in task_run_ids:
        with _lock:
            call = _failed_tasks.get(task_run_id)
        state = retry_task_run(task_run_id)
        outcome.states.append(state)
        if call is not None and call.flow_context is not None:
            by_run.setdefault(call.flow_context.run.id, []).append(state)
    failed_runs = set(failed_flow_runs())
    for run_id, states in by_run.items():
        if run_id in failed_runs and all(state.is_completed() for state in states):
            # The rest of the flow never ran: carry on from here (completed calls are reused).
            outcome.resumed[run_id] = retry_flow_run(run_id)
    return outcome
