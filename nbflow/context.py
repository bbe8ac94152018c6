"""The "current" flow run and task run, held in context variables.

Context variables (not thread-locals) so that a task submitted to a worker thread or awaited in a
coroutine sees the run that submitted it when the context is copied along.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nbflow.engine.futures import TaskFuture
    from nbflow.engine.runners import TaskRunner
    from nbflow.flows import Flow
    from nbflow.runs import RunRecord, TaskRunRecord
    from nbflow.states import State
    from nbflow.tasks import Task
    from nbflow.transactions import Transaction

__all__ = [
    "FlowRunContext", "TaskRunContext", "current_flow_run", "current_task_run", "current_transaction",
    "producers_among",
]


@dataclass
class FlowRunContext:
    """What a flow body needs to know while it runs."""

    flow: Flow
    run: RunRecord
    parameters: dict[str, Any]
    attempt: int = 1
    # Task states that completed in earlier attempts of this run, by dynamic key (task key, call index):
    # a flow retry reuses them whatever the task's cache policy.
    completed: dict[tuple[str, int], State] = field(default_factory=dict)
    # Calls seen so far in this attempt, per task key, to build the dynamic keys above.
    call_counts: dict[str, int] = field(default_factory=dict)

    # Results of this run's task calls by object id, so a later call taking one as an argument gets a
    # graph edge. Strong references: ids must not be reused while the run lives.
    results: dict[int, tuple[Any, str]] = field(default_factory=dict)
    # Where this run's submitted task calls run (None: the process's shared thread pool), and the
    # futures submitted in the current attempt (the run ends only after every one of them).
    task_runner: TaskRunner | None = None
    futures: list[TaskFuture[Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_future(self, future: TaskFuture[Any]) -> None:
        with self.lock:
            self.futures.append(future)

    def take_futures(self) -> list[TaskFuture[Any]]:
        with self.lock:
            futures, self.futures = self.futures, []
        return futures

    def remember_result(self, value: Any, task_run_id: str) -> None:
        if value is None or isinstance(value, (bool, int, float, str, bytes)):
            return  # interned and shared: an id match would be a false edge
        self.results[id(value)] = (value, task_run_id)

    def upstream_of(self, arguments: dict[str, Any]) -> list[str]:
        """Ids of the task runs whose results appear among ``arguments`` (one container level deep)."""
        results = self.results
        if not results:
            return []

        def producer(value: Any) -> str | None:
            entry = results.get(id(value))
            return entry[1] if entry is not None and entry[0] is value else None

        return producers_among(arguments, producer)

    def next_dynamic_key(self, task_key: str) -> tuple[str, int]:
        with self.lock:  # tasks running in worker threads call tasks too
            index = self.call_counts.get(task_key, 0)
            self.call_counts[task_key] = index + 1
        return (task_key, index)


@dataclass
class TaskRunContext:
    """What code running inside a task can see (its task, its run record, whether prints are logged)."""

    task: Task[..., Any]
    task_run: TaskRunRecord
    log_prints: bool = False


def producers_among(arguments: dict[str, Any], producer: Callable[[Any], str | None]) -> list[str]:
    """The distinct task run ids ``producer`` finds for the argument values and, one level deep, for the
    items of list/tuple/dict arguments (at most 1,000 per container: edges, not a deep scan)."""
    found: list[str] = []

    def check(value: Any) -> None:
        task_run_id = producer(value)
        if task_run_id is not None and task_run_id not in found:
            found.append(task_run_id)

    for value in arguments.values():
        check(value)
        if isinstance(value, (list, tuple)):
            for item in value[:1000]:
                check(item)
        elif isinstance(value, dict):
            for item in list(value.values())[:1000]:
                check(item)
    return found


_flow_run: contextvars.ContextVar[FlowRunContext | None] = contextvars.ContextVar(
    "nbflow_flow_run", default=None
)
_task_run: contextvars.ContextVar[TaskRunContext | None] = contextvars.ContextVar(
    "nbflow_task_run", default=None
)


def current_flow_run() -> FlowRunContext | None:
    """The flow run this code runs in, or None outside any flow."""
    return _flow_run.get()


def current_task_run() -> TaskRunContext | None:
    """The task run this code runs in, or None outside any task."""
    return _task_run.get()


_transaction: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar(
    "nbflow_transaction", default=None
)


def current_transaction() -> Transaction | None:
    """The innermost open transaction, or None."""
    return _transaction.get()
