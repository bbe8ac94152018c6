"""Retrying by hand what failed in this process: a task call with its original inputs, or a flow run
in the same run (completed tasks are reused, so only the failed ones and what follows run again).

The widget's Retry buttons and ``%nbflow retry`` use these. Failed calls are remembered in memory
only — their inputs are live Python objects — and only the latest ones (see ``_LIMIT``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
    "retry_flow_run",
    "retry_task_run",
]

_LIMIT = 1000


class NotRetryable(NbflowError, LookupError):
    """The task run or flow run is unknown to this process, or did not fail."""


@dataclass
class _FailedCall:
    task: Task[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    flow_context: FlowRunContext | None
    dynamic_key: tuple[str, int] | None


_lock = threading.Lock()
_failed_tasks: OrderedDict[str, _FailedCall] = OrderedDict()
_failed_flows: OrderedDict[str, FlowRunEngine] = OrderedDict()


def _remember(registry: OrderedDict[str, Any], key: str, value: Any) -> None:
    with _lock:
        registry[key] = value
        registry.move_to_end(key)
        while len(registry) > _LIMIT:
            registry.popitem(last=False)


def remember_failed_task(task_run_id: str, call: _FailedCall) -> None:
    _remember(_failed_tasks, task_run_id, call)


def remember_failed_flow(run_id: str, engine: FlowRunEngine) -> None:
    _remember(_failed_flows, run_id, engine)


def failed_call_inputs(task_run_id: str) -> dict[str, Any] | None:
    """The keyword inputs a failed call was made with (None if unknown): a cell task's retry binds them
    again before rerunning its cell."""
    with _lock:
        call = _failed_tasks.get(task_run_id)
    return dict(call.kwargs) if call is not None else None


def failed_task_runs() -> list[str]:
    """Ids of the failed task runs this process can retry, oldest first."""
    with _lock:
        return list(_failed_tasks)


def failed_flow_runs() -> list[str]:
    """Ids of the failed flow runs this process can retry, oldest first."""
    with _lock:
        return list(_failed_flows)


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
    token = _flow_run.set(call.flow_context)
    try:
        engine = TaskRunEngine(call.task, call.args, call.kwargs)
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
