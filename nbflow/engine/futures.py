"""Futures of submitted task calls, and the helpers that wait on them.

``Task.submit`` returns a :class:`TaskFuture` at once; the call runs on a task runner. A future passed as
an argument to another ``submit`` (or ``map``) is resolved to its result before that task runs — and
draws a graph edge — so chains of submissions need no explicit waiting; if the upstream call ended
without a result, the downstream call ends ``UpstreamFailed`` instead of running.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

if TYPE_CHECKING:
    import concurrent.futures

    from nbflow.runs import TaskRunRecord
    from nbflow.states import State

__all__ = ["DoneAndNotDone", "TaskFuture", "TaskFutureList", "allow_failure", "as_completed", "opaque", "quote",
           "unmapped", "wait"]

R = TypeVar("R")


class TaskFuture(Generic[R]):
    """The pending result of a submitted task call.

    ``result()`` waits and returns the task's result (or raises its exception); ``wait()`` only waits;
    ``state`` is the call's current state; ``done()`` says whether it is final.
    """

    __slots__ = ("_future", "task_name", "task_run")

    def __init__(self, task_run: TaskRunRecord, future: concurrent.futures.Future[State]) -> None:
        self.task_run = task_run
        self.task_name = task_run.task_name
        self._future = future

    @property
    def task_run_id(self) -> str:
        """The id of the task run in the run history."""
        return self.task_run.id

    def done(self) -> bool:
        """Whether the call has reached a final state."""
        return self._future.done()

    @property
    def state(self) -> State:
        """The call's state now: its final state once done, else Pending, Running, AwaitingRetry..."""
        if self._future.done():
            return self._future.result()
        from nbflow.states import State, StateType

        task_run = self.task_run
        return State(type=StateType(task_run.state_type), name=task_run.state)

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the call is final, or ``timeout`` seconds have passed (then it returns all the same)."""
        import concurrent.futures

        concurrent.futures.wait([self._future], timeout=timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """Wait for the call and return its result; a failed call raises its exception (or, with
        ``raise_on_failure=False``, returns it). Raises ``TimeoutError`` if ``timeout`` seconds pass first."""
        import concurrent.futures

        from nbflow._tracebacks import HIDE_FRAMES, hide_internal_frames

        __tracebackhide__ = HIDE_FRAMES
        try:
            state = self._future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"task {self.task_name!r} did not finish within {timeout:g} s (it is still "
                f"{self.task_run.state}); wait longer or call .wait() first"
            ) from None
        data = state.result(raise_on_failure=False)
        if raise_on_failure and isinstance(data, BaseException) and not state.is_completed():
            raise hide_internal_frames(data)  # the user's frames only (see nbflow._tracebacks)
        return data  # type: ignore[no-any-return,unused-ignore]

    def add_done_callback(self, fn: Callable[[TaskFuture[R]], Any]) -> None:
        """Call ``fn(future)`` once the call is final (at once if it already is)."""
        self._future.add_done_callback(lambda _: fn(self))

    def __repr__(self) -> str:
        return f"TaskFuture({self.task_name!r}, state={self.task_run.state!r})"


class TaskFutureList(list[TaskFuture[R]]):
    """The futures of one ``Task.map`` call, in the order of the mapped inputs."""

    def wait(self, timeout: float | None = None) -> None:
        """Wait until every call is final (or ``timeout`` seconds pass)."""
        import concurrent.futures

        concurrent.futures.wait([future._future for future in self], timeout=timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list[R]:
        """The results, in order; the first failed call raises its exception."""
        from nbflow._tracebacks import HIDE_FRAMES

        __tracebackhide__ = HIDE_FRAMES
        self.wait(timeout)
        return [future.result(timeout=0 if timeout is not None else None, raise_on_failure=raise_on_failure)
                for future in self]


class unmapped(Generic[R]):
    """Marks an argument of ``Task.map`` that every call receives whole, e.g.
    ``score.map(tables, model=nbflow.unmapped(model))``."""

    __slots__ = ("value",)

    def __init__(self, value: R) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"unmapped({self.value!r})"


class allow_failure(Generic[R]):
    """Wraps a future (or a value holding futures) given to a task, or listed in ``wait_for``: the call
    runs even if that upstream call failed, and receives its exception in place of its result, e.g.
    ``cleanup.submit(nbflow.allow_failure(load_future))``."""

    __slots__ = ("value",)

    def __init__(self, value: R) -> None:
        self.value = value

    def unwrap(self) -> R:
        """The wrapped value."""
        return self.value

    def __repr__(self) -> str:
        return f"allow_failure({self.value!r})"


class quote(Generic[R]):
    """Wraps an argument that nbflow passes to the task as it is: not searched for futures (a large list
    of values is then not walked) and, if it holds futures, they are not waited for."""

    __slots__ = ("value",)

    def __init__(self, value: R) -> None:
        self.value = value

    def unquote(self) -> R:
        """The wrapped value."""
        return self.value

    unwrap = unquote

    def __repr__(self) -> str:
        return f"quote({self.value!r})"


class opaque(quote[R]):
    """Wraps an argument whose future is waited for and replaced by its result, but whose result is not
    searched for further futures (Prefect's ``opaque``); a plain value is passed as it is."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"opaque({self.value!r})"


# Marks, in what futures_in finds, an argument wrapped in quote/allow_failure that must be unwrapped.
ANNOTATED: Any = object()


class DoneAndNotDone(NamedTuple):
    """What :func:`wait` returns: the futures that are final, and those that are not."""

    done: set[TaskFuture[Any]]
    not_done: set[TaskFuture[Any]]


def _check_futures(futures: Iterable[Any], caller: str) -> list[TaskFuture[Any]]:
    if isinstance(futures, TaskFuture):
        futures = [futures]
    result = list(futures)
    for item in result:
        if not isinstance(item, TaskFuture):
            raise TypeError(
                f"nbflow.{caller}() takes futures from Task.submit or Task.map; got {type(item).__name__} "
                f"({item!r:.60})"
            )
    return result


def wait(futures: Iterable[TaskFuture[Any]], timeout: float | None = None) -> DoneAndNotDone:
    """Wait until every future is final, or ``timeout`` seconds have passed; say which are done."""
    import concurrent.futures

    items = _check_futures(futures, "wait")
    by_inner = {future._future: future for future in items}
    done, not_done = concurrent.futures.wait(list(by_inner), timeout=timeout)
    return DoneAndNotDone({by_inner[f] for f in done}, {by_inner[f] for f in not_done})


def as_completed(futures: Iterable[TaskFuture[Any]], timeout: float | None = None) -> Iterator[TaskFuture[Any]]:
    """Yield the futures as their calls end (fastest first). Raises ``TimeoutError`` if ``timeout``
    seconds pass before all have ended."""
    import concurrent.futures

    items = _check_futures(futures, "as_completed")
    by_inner = {future._future: future for future in items}
    try:
        for inner in concurrent.futures.as_completed(list(by_inner), timeout=timeout):
            yield by_inner[inner]
    except concurrent.futures.TimeoutError:
        left = sum(1 for f in by_inner if not f.done())
        raise TimeoutError(f"nbflow.as_completed: {left} task(s) still running after {timeout:g} s") from None


# -- resolving futures inside arguments ---------------------------------------------------------

_CONTAINERS = (list, tuple, set, frozenset, dict)
_FUTURE_OR_CONTAINER = (TaskFuture, *_CONTAINERS, allow_failure, quote)


def futures_in(value: Any, found: list[TaskFuture[Any]] | None = None, depth: int = 0) -> list[TaskFuture[Any]]:
    """The futures in ``value`` and, recursively, inside its lists, tuples, sets and dicts. An argument
    wrapped in :class:`quote` is not searched, one in :class:`allow_failure` is; either adds the marker
    ``ANNOTATED`` to the list (the caller unwraps them with :func:`resolve`)."""
    if found is None:
        found = []
    if isinstance(value, TaskFuture):
        if value not in found:
            found.append(value)
    elif isinstance(value, (allow_failure, quote)):
        if ANNOTATED not in found:
            found.append(ANNOTATED)
        if isinstance(value, allow_failure):
            futures_in(value.value, found, depth + 1)
        elif isinstance(value, opaque) and isinstance(value.value, TaskFuture) and value.value not in found:
            found.append(value.value)
    elif depth < 8 and isinstance(value, _CONTAINERS):
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            if isinstance(item, _FUTURE_OR_CONTAINER):
                futures_in(item, found, depth + 1)
    return found


def allowed_failures(value: Any, found: list[TaskFuture[Any]] | None = None, depth: int = 0,
                     inside: bool = False) -> list[TaskFuture[Any]]:
    """The futures in ``value`` that are wrapped in :class:`allow_failure` (may fail upstream)."""
    if found is None:
        found = []
    if isinstance(value, TaskFuture):
        if inside:
            found.append(value)
    elif isinstance(value, allow_failure):
        allowed_failures(value.value, found, depth + 1, True)
    elif depth < 8 and isinstance(value, _CONTAINERS):
        for item in value.values() if isinstance(value, dict) else value:
            allowed_failures(item, found, depth + 1, inside)
    return found


def resolve(value: Any, depth: int = 0) -> Any:
    """``value`` with every future replaced by its result (containers rebuilt only where one was found),
    :class:`quote` and :class:`allow_failure` unwrapped (a failed future in the latter gives its
    exception). Call only when every future in it is done, and completed unless failure is allowed."""
    if isinstance(value, TaskFuture):
        return value.result()
    if isinstance(value, quote):
        inner = value.value
        if isinstance(value, opaque) and isinstance(inner, TaskFuture):
            return inner.result()
        return inner
    if isinstance(value, allow_failure):
        inner = value.value
        if isinstance(inner, TaskFuture):
            return inner.result(raise_on_failure=False)
        return resolve(inner, depth + 1)
    if depth < 8 and isinstance(value, _CONTAINERS):
        if isinstance(value, dict):
            resolved = {key: resolve(item, depth + 1) for key, item in value.items()}
            if any(resolved[key] is not value[key] for key in value):
                return type(value)(resolved) if type(value) is not dict else resolved
            return value
        items = [resolve(item, depth + 1) for item in value]
        if any(new is not old for new, old in zip(items, value)):
            if isinstance(value, tuple) and hasattr(value, "_fields"):
                return type(value)(*items)  # a named tuple
            return type(value)(items)
        return value
    return value
