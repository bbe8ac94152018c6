"""The "current" flow run and task run, held in context variables.

Context variables (not thread-locals) so that a task submitted to a worker thread or awaited in a
coroutine sees the run that submitted it when the context is copied along.
"""

from __future__ import annotations

import contextvars
import itertools
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nbflow.engine.futures import TaskFuture
    from nbflow.engine.runners import TaskRunner
    from nbflow.flows import Flow
    from nbflow.runs import RunRecord, TaskRunRecord
    from nbflow.tasks import Task
    from nbflow.transactions import Transaction

__all__ = [
    "CompletedCall", "FlowRunContext", "ResultIdentities", "TaskRunContext", "WeakValues", "current_flow_run",
    "current_task_run", "current_transaction", "estimated_size", "get_run_context", "identity_matcher",
    "producers_among", "with_context",
]

# Results are recognised by identity (a later call that takes one gets a graph edge from the call that made
# it) without keeping them alive: a loop that makes a large result per call must free each one once its
# code lets it go. Per result (see identity_matcher):
# - a weak reference where its type allows one (arrays, frames, most user objects);
# - for a tuple, list or dict (which allow none): its type, length, and weak references to up to 8 of its
#   first 64 items that allow one (``return frame, meta``);
# - otherwise (a container of plain values) the value itself, if small: held, oldest dropped first, within
#   _HELD_BYTES per flow run or session, so that its id is not reused while it is remembered.
_HELD_BYTES = 64 * 1024 * 1024
_HELD_ONE = 8 * 1024 * 1024  # a larger result of plain values is not held: no edge from it
_ITEMS_LOOKED_AT = 64
_ITEM_REFS = 8
# Plain values told apart by identity while held (see ResultIdentities.remember); a task returning one of
# those CPython shares (small ints, one-character strings, True/False/None) gets no edge: any other use of
# the same value would be the same object, a false edge (Prefect draws none from them either).
_SCALARS = frozenset({int, float, complex, str, bytes})
_SCALARS_KEPT = 4096  # the newest scalar results kept for edges (each holds its value: a few dozen bytes)
_SCALAR_LENGTH = 4096  # a longer str/bytes result is held with the other results' byte budget
_TINY = frozenset({bool, int, float, complex, type(None)})  # held as they are: smaller than a reference
_NO_WEAKREF = frozenset({str, bytes, tuple, list, dict, set, frozenset})

Matcher = Callable[[Any], bool]  # is this candidate the remembered value?


def identity_matcher(value: Any, on_death: Callable[[Matcher], None] | None = None) -> tuple[Matcher | None, int]:
    """How to recognise ``value`` later, and how many bytes that holds (roughly); ``(None, 0)`` when it
    cannot be recognised without holding too much. ``on_death`` is called (with the matcher) when a
    weakly referenced value is freed."""
    try:
        ref = weakref.ref(value, None if on_death is None else (lambda _: on_death(matches)))
    except TypeError:
        pass
    else:
        def matches(candidate: Any) -> bool:
            return ref() is candidate

        return matches, 0
    kind = type(value)
    if isinstance(value, (tuple, list, dict)):
        size = len(value)
        mapping = isinstance(value, dict)
        refs: list[tuple[Any, weakref.ref[Any]]] = []
        pairs: Iterable[tuple[Any, Any]] = value.items() if isinstance(value, dict) else enumerate(value)
        for position, item in itertools.islice(pairs, _ITEMS_LOOKED_AT):
            try:
                refs.append((position, weakref.ref(item)))
            except TypeError:
                continue
            if len(refs) == _ITEM_REFS:
                break
        if refs:
            def by_items(candidate: Any) -> bool:
                if type(candidate) is not kind or len(candidate) != size:
                    return False
                for position, item_ref in refs:
                    item = item_ref()
                    # .get for a mapping: indexing a defaultdict would add the key.
                    current = candidate.get(position) if mapping else candidate[position]
                    if item is None or current is not item:
                        return False
                return True

            return by_items, 0
    held = estimated_size(value)
    if held > _HELD_ONE:
        return None, 0

    def same(candidate: Any) -> bool:
        return candidate is value

    return same, held


def estimated_size(value: Any) -> int:
    """Bytes ``value`` keeps alive, roughly: itself and, for a container, its items (from a sample)."""
    size = sys.getsizeof(value)
    if isinstance(value, (tuple, list, dict, set, frozenset)) and value:
        items = list(itertools.islice(value.values() if isinstance(value, dict) else value, _ITEMS_LOOKED_AT))
        size += sum(map(sys.getsizeof, items)) * len(value) // len(items)
    return size


_GONE: Any = object()
_KEPT_ONE = 1024 * 1024  # a value that allows no weak reference is kept by WeakValues up to this size


def _keep_weakly(value: Any) -> Callable[[], Any]:
    """A getter for ``value`` that does not keep it alive if it allows a weak reference: it returns
    ``_GONE`` once the value is freed (and always, for a value over 1 MB that allows none; smaller ones
    are held)."""
    try:
        ref = weakref.ref(value)
    except TypeError:
        if estimated_size(value) > _KEPT_ONE:
            return lambda: _GONE
        return lambda: value
    return lambda: _GONE if (alive := ref()) is None else alive


class WeakValues:
    """Values by key (a failed call's arguments, a failed flow run's parameters), kept without keeping
    them alive where they allow a weak reference, and given back all together while all are in memory."""

    __slots__ = ("_getters",)

    def __init__(self, values: dict[Any, Any]) -> None:
        self._getters = {key: _keep_weakly(value) for key, value in values.items()}

    def gone(self) -> list[Any]:
        """The keys whose value is no longer in memory."""
        return [key for key, get in self._getters.items() if get() is _GONE]

    def get(self) -> dict[Any, Any] | None:
        """The values, or None if one of them is no longer in memory."""
        values = {key: get() for key, get in self._getters.items()}
        return None if any(value is _GONE for value in values.values()) else values


class ResultIdentities:
    """Task results by object id, recognised without being kept alive (see :func:`identity_matcher`), for
    the graph edges of a flow run or of a kernel's calls outside flows. Thread-safe."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit  # results remembered at most (oldest dropped); None: no limit but the bytes held
        # id -> (matcher, task run id, bytes held); oldest first.
        self.by_id: OrderedDict[int, tuple[Matcher, str, int]] = OrderedDict()
        self.held = 0
        # Scalar results (numbers, short strings): id -> (the value, held so that its id stays its own, task
        # run id); the newest _SCALARS_KEPT only.
        self.scalars: OrderedDict[int, tuple[Any, str]] = OrderedDict()
        # Reentrant: a weak reference's callback can run inside, when a collection happens there.
        self._lock = threading.RLock()

    def remember(self, value: Any, task_run_id: str) -> None:
        """``value`` was produced by task run ``task_run_id``."""
        kind = type(value)
        if kind in _SCALARS:
            if kind is int:
                if -5 <= value <= 256:
                    return  # shared by CPython
            elif (kind is str or kind is bytes) and len(value) <= 1:
                return  # shared by CPython
            # A long str/bytes is held within the byte budget below, with the other results.
            if not (kind is str or kind is bytes) or len(value) <= _SCALAR_LENGTH:
                with self._lock:
                    scalars = self.scalars
                    scalars[id(value)] = (value, task_run_id)
                    scalars.move_to_end(id(value))
                    if len(scalars) > _SCALARS_KEPT:
                        scalars.popitem(last=False)
                return
        elif value is None or kind is bool:
            return
        key = id(value)
        matcher, held = identity_matcher(value, lambda dead: self._forget(key, dead))
        with self._lock:
            by_id = self.by_id
            previous = by_id.pop(key, None)  # another object had this id: it is gone
            if previous is not None:
                self.held -= previous[2]
            if matcher is None:
                return
            by_id[key] = (matcher, task_run_id, held)
            self.held += held
            limit = self.limit
            while by_id and ((limit is not None and len(by_id) > limit) or self.held > _HELD_BYTES):
                _, (_, _, dropped) = by_id.popitem(last=False)
                self.held -= dropped

    def clear(self) -> None:
        """Forget every result."""
        with self._lock:
            self.by_id.clear()
            self.scalars.clear()
            self.held = 0

    def _forget(self, key: int, matcher: Matcher) -> None:
        with self._lock:
            entry = self.by_id.get(key)
            if entry is not None and entry[0] is matcher:
                del self.by_id[key]
                self.held -= entry[2]

    def producer(self, value: Any) -> str | None:
        """The task run that produced ``value``, if remembered."""
        entry = self.by_id.get(id(value))
        if entry is not None and entry[0](value):
            return entry[1]
        scalar = self.scalars.get(id(value))
        return scalar[1] if scalar is not None and scalar[0] is value else None

    def upstream_of(self, arguments: dict[str, Any]) -> list[str]:
        """Task runs whose results appear among ``arguments`` (one container level deep)."""
        if not self.by_id and not self.scalars:
            return []
        return producers_among(arguments, self.producer)


class CompletedCall:
    """A task call that completed in an attempt of a flow run, as a later attempt (a flow retry) reuses it.

    A result the store has is not held: it is found again by a weak reference while something else keeps
    it alive, else loaded from the store by its ``key`` (see the task engine's ``reuse``), so a flow that
    makes large results one after another does not keep them all until it ends. Any other result is
    held, since nothing else could give it back.
    """

    __slots__ = ("_held", "_ref", "key")

    def __init__(self, value: Any, key: str | None) -> None:
        self.key = key  # the store entry of the result, or None: held
        self._held: tuple[Any] | None = None
        self._ref: weakref.ref[Any] | None = None
        kind = type(value)
        if key is None or kind in _TINY:
            self._held = (value,)
        elif kind not in _NO_WEAKREF:  # those are read back from the store, without an exception here
            try:
                self._ref = weakref.ref(value)
            except TypeError:
                pass  # read back from the store when reused

    def value(self, missing: Any = None) -> Any:
        """The result if it is held or still alive, else ``missing``."""
        if self._held is not None:
            return self._held[0]
        value = self._ref() if self._ref is not None else None
        return missing if value is None else value


@dataclass
class FlowRunContext:
    """What a flow body needs to know while it runs."""

    flow: Flow
    run: RunRecord
    parameters: dict[str, Any]
    attempt: int = 1
    # Task calls that completed in earlier attempts of this run, by dynamic key (task key, call index): a
    # flow retry reuses them whatever the task's cache policy.
    completed: dict[tuple[str, int], CompletedCall] = field(default_factory=dict)
    # Calls seen so far in this attempt, per task key, to build the dynamic keys above.
    call_counts: dict[str, int] = field(default_factory=dict)

    # Results of this run's task calls by object id, so a later call taking one as an argument gets a
    # graph edge (without keeping them alive).
    results: ResultIdentities = field(default_factory=ResultIdentities)
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
        self.results.remember(value, task_run_id)

    def upstream_of(self, arguments: dict[str, Any]) -> list[str]:
        """Ids of the task runs whose results appear among ``arguments`` (one container level deep)."""
        return self.results.upstream_of(arguments)

    @classmethod
    def get(cls) -> FlowRunContext | None:
        """The current flow run's context, or None (Prefect's ``FlowRunContext.get()``)."""
        return _flow_run.get()

    def next_dynamic_key(self, task_key: str) -> tuple[str, int]:
        with self.lock:  # tasks running in worker threads call tasks too
            index = self.call_counts.get(task_key, 0)
            self.call_counts[task_key] = index + 1
        return (task_key, index)


# Tags added by enclosing ``with nbflow.tags(...)`` blocks, outermost first.
_tags: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("nbflow_tags", default=())


@dataclass
class TaskRunContext:
    """What code running inside a task can see (its task, its run record, whether prints are logged)."""

    task: Task[..., Any]
    task_run: TaskRunRecord
    log_prints: bool = False
    parameters: dict[str, Any] | None = None  # the call's bound arguments (nbflow.runtime.task_run.parameters)

    @classmethod
    def get(cls) -> TaskRunContext | None:
        """The current task run's context, or None (Prefect's ``TaskRunContext.get()``)."""
        return _task_run.get()


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


def get_run_context() -> TaskRunContext | FlowRunContext:
    """The current task run's context, else the current flow run's (Prefect's ``get_run_context``); raises
    :class:`~nbflow.exceptions.NbflowError` outside any run."""
    context: TaskRunContext | FlowRunContext | None = _task_run.get() or _flow_run.get()
    if context is None:
        from nbflow.exceptions import NbflowError

        raise NbflowError("get_run_context(): no flow run or task run is running here")
    return context


class _WithContext:
    """A function carrying the context it was wrapped in (see :func:`with_context`)."""

    def __init__(self, fn: Callable[..., Any], context: contextvars.Context | None) -> None:
        self.fn = fn
        self.context = context

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.context is None:
            return self.fn(*args, **kwargs)
        return self.context.copy().run(self.fn, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {"fn": self.fn, "context": None}  # a context cannot cross to another process


def with_context(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` wrapped to run in the calling code's context — its flow run, task run and tags — wherever it is
    called in this process (a thread pool of your own). Sent to another process (``multiprocessing``) it runs
    there without them: ``get_run_logger()`` then prints its records and keeps them in no run."""
    return _WithContext(fn, contextvars.copy_context())
