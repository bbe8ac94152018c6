"""Tasks: ``@nbflow.task`` turns a function into a :class:`Task` whose calls are cached, retried, timed
out and recorded by the engine.
"""

from __future__ import annotations

import datetime as _dt
import functools
import inspect
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from nbflow._tracebacks import HIDE_FRAMES as _HIDE_FRAMES
from nbflow.cache_policies import DEFAULT, CacheKeyFnPolicy, CachePolicy, KeyContext, StorageKeyPolicy
from nbflow.engine.retries import RetryDelay, check_delay, exponential_backoff
from nbflow.exceptions import ConfigurationError, NbflowWarning
from nbflow.settings import MAX_SECONDS

if TYPE_CHECKING:
    from nbflow.engine.futures import TaskFutureList
    from nbflow.runs import TaskRunRecord
    from nbflow.states import State
    from nbflow.store.serializers import Serializer
    from nbflow.transactions import TransactionHook

__all__ = ["Task", "exponential_backoff", "task"]

P = ParamSpec("P")
R = TypeVar("R")

Hook = Callable[["Task[..., Any]", "TaskRunRecord", "State"], Any]
RetryCondition = Callable[["Task[..., Any]", "TaskRunRecord", "State"], bool]

_SERIALIZERS = ("pickle", "json")


def _check_number(value: object, name: str, owner: str, *, allow_none: bool = True, integer: bool = False,
                  positive: bool = False, seconds: bool = False) -> None:
    if value is None and allow_none:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise ConfigurationError(f"{owner}: {name}={value!r} must be {kind}" + (" or None" if allow_none else ""))
    if not math.isfinite(value):  # nan passes every comparison below
        raise ConfigurationError(f"{owner}: {name}={value!r} must be a finite number")
    if positive and value <= 0:
        raise ConfigurationError(f"{owner}: {name}={value!r} must be > 0")
    if value < 0:
        raise ConfigurationError(f"{owner}: {name}={value!r} must be >= 0")
    if seconds and value > MAX_SECONDS:
        raise ConfigurationError(f"{owner}: {name}={value!r} is too long: at most {MAX_SECONDS:g} seconds")


def _check_hooks(hooks: Iterable[Any], name: str, owner: str) -> tuple[Any, ...]:
    if callable(hooks):
        hooks = (hooks,)
    result = tuple(hooks)
    for hook in result:
        if not callable(hook):
            raise ConfigurationError(f"{owner}: {name} must be callables (task, task_run, state); got {hook!r}")
    return result


class HookList(list):
    """A task's or flow's hooks of one kind (``on_completion``, ``on_failure``, ``on_running``...): a list,
    and a decorator that adds one, as in Prefect::

        @my_task.on_failure
        def alert(task, task_run, state): ...
    """

    def __init__(self, hooks: Iterable[Any], name: str, owner: str) -> None:
        super().__init__(_check_hooks(hooks, name, owner))
        self.hook_name = name
        self.owner = owner

    def __call__(self, fn: Any) -> Any:
        self.append(_check_hooks([fn], self.hook_name, self.owner)[0])
        return fn


class Task(Generic[P, R]):
    """A function whose calls nbflow runs as task runs: cached, retried, timed out and recorded.

    Make one with :func:`task`. Calling it returns the function's result (or raises its final
    exception); ``task(..., return_state=True)`` returns the final :class:`~nbflow.State` instead.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        retries: int = 0,
        retry_delay_seconds: RetryDelay = 0,
        retry_jitter_factor: float | None = None,
        retry_condition_fn: RetryCondition | None = None,
        timeout_seconds: float | None = None,
        cache_policy: CachePolicy = DEFAULT,
        cache_key_fn: Callable[[KeyContext, dict[str, Any]], str | None] | None = None,
        cache_expiration: _dt.timedelta | float | None = None,
        refresh_cache: bool = False,
        persist_result: bool = True,
        result_serializer: str | Serializer = "pickle",
        tags: Iterable[str] = (),
        log_prints: bool = False,
        on_completion: Iterable[Hook] = (),
        on_failure: Iterable[Hook] = (),
        task_run_name: str | Callable[[], str] | None = None,
        on_commit: Iterable[TransactionHook] = (),
        on_rollback: Iterable[TransactionHook] = (),
        files: Iterable[str | os.PathLike[str]] = (),
        description: str | None = None,
        version: str | None = None,
        on_running: Iterable[Hook] = (),
        result_storage_key: str | None = None,
        cache_result_in_memory: bool = True,
        viz_return_value: Any = None,
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(f"@task decorates a function; got {fn!r}")
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise ConfigurationError(
                f"@task {getattr(fn, '__name__', fn)!r}: a generator function cannot be a task (its result "
                "would be an unfinished generator); return a list instead"
            )
        owner = f"@task {getattr(fn, '__qualname__', repr(fn))!r}"
        _check_number(retries, "retries", owner, allow_none=False, integer=True)
        check_delay(retry_delay_seconds, owner)
        _check_number(retry_jitter_factor, "retry_jitter_factor", owner)
        _check_number(timeout_seconds, "timeout_seconds", owner, positive=True, seconds=True)
        if retry_condition_fn is not None and not callable(retry_condition_fn):
            raise ConfigurationError(f"{owner}: retry_condition_fn must be callable(task, task_run, state)")
        if not isinstance(cache_policy, CachePolicy):
            raise ConfigurationError(
                f"{owner}: cache_policy={cache_policy!r} is not a cache policy; use one from "
                "nbflow.cache_policies, e.g. INPUTS + TASK_SOURCE"
            )
        if cache_key_fn is None and cache_policy is not DEFAULT:
            _warn_if_code_left_out(fn, cache_policy, owner)
        if cache_key_fn is not None and not callable(cache_key_fn):
            raise ConfigurationError(f"{owner}: cache_key_fn must be callable(context, parameters) -> str | None")
        if isinstance(cache_expiration, (int, float)) and not isinstance(cache_expiration, bool):
            cache_expiration = _dt.timedelta(seconds=cache_expiration)
        if cache_expiration is not None and not isinstance(cache_expiration, _dt.timedelta):
            raise ConfigurationError(f"{owner}: cache_expiration must be a datetime.timedelta or seconds")
        if isinstance(result_serializer, str) and result_serializer not in _SERIALIZERS:
            raise ConfigurationError(
                f"{owner}: result_serializer={result_serializer!r} is unknown; use one of {list(_SERIALIZERS)} "
                "or a serializer object"
            )
        if isinstance(tags, str):
            tags = (tags,)
        files = _check_files(files, owner)
        if task_run_name is not None and not (isinstance(task_run_name, str) or callable(task_run_name)):
            raise ConfigurationError(f"{owner}: task_run_name must be a string template or a callable")
        for text, label in ((description, "description"), (version, "version")):
            if text is not None and not isinstance(text, str):
                raise ConfigurationError(f"{owner}: {label}={text!r} must be a string or None")
        if result_storage_key is not None:
            if not isinstance(result_storage_key, str) or not result_storage_key:
                raise ConfigurationError(
                    f"{owner}: result_storage_key={result_storage_key!r} must be a non-empty string template, "
                    "e.g. 'report-{parameters[day]}'"
                )
            if cache_key_fn is not None:
                raise ConfigurationError(f"{owner}: give result_storage_key or cache_key_fn, not both")
        if not isinstance(cache_result_in_memory, bool):
            raise ConfigurationError(
                f"{owner}: cache_result_in_memory={cache_result_in_memory!r} must be True or False"
            )

        self.fn = fn
        self.name: str = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.task_key: str = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', self.name)}"
        self.retries = retries
        self.retry_delay_seconds = retry_delay_seconds
        self.retry_jitter_factor = retry_jitter_factor
        self.retry_condition_fn = retry_condition_fn
        self.timeout_seconds = timeout_seconds
        if result_storage_key is not None:
            # The rendered template is the key, used as given like a cache_key_fn's (shared, not namespaced).
            cache_key_fn = StorageKeyPolicy(result_storage_key).compute_key
        self.cache_policy: CachePolicy = (
            CacheKeyFnPolicy(cache_key_fn) if cache_key_fn is not None else cache_policy
        )
        self.cache_key_fn = cache_key_fn
        self.result_storage_key = result_storage_key
        self.cache_result_in_memory = cache_result_in_memory
        self.description: str | None = description if description is not None else inspect.getdoc(fn)
        self.version = version
        self.viz_return_value = viz_return_value
        self.on_running: HookList = HookList(on_running, "on_running", owner)
        self.cache_expiration: _dt.timedelta | None = cache_expiration
        self.refresh_cache = bool(refresh_cache)
        self.persist_result = bool(persist_result)
        self.result_serializer = result_serializer
        self.tags: tuple[str, ...] = tuple(tags)
        self.log_prints = bool(log_prints)
        self.on_completion: HookList = HookList(on_completion, "on_completion", owner)
        self.on_failure: HookList = HookList(on_failure, "on_failure", owner)
        self.task_run_name = task_run_name
        self.on_commit_hooks: list[TransactionHook] = list(_check_hooks(on_commit, "on_commit", owner))
        self.on_rollback_hooks: list[TransactionHook] = list(_check_hooks(on_rollback, "on_rollback", owner))
        self.is_async: bool = inspect.iscoroutinefunction(fn)
        # Files and directories read in ways the audit hook cannot see (inside C libraries): recorded
        # with every computed call as if it had read them.
        self.files: tuple[str, ...] = files
        self._options: dict[str, Any] = {
            "name": name, "retries": retries, "retry_delay_seconds": retry_delay_seconds,
            "retry_jitter_factor": retry_jitter_factor, "retry_condition_fn": retry_condition_fn,
            "timeout_seconds": timeout_seconds, "cache_policy": cache_policy,
            "cache_key_fn": None if result_storage_key is not None else cache_key_fn,
            "cache_expiration": cache_expiration, "refresh_cache": refresh_cache,
            "persist_result": persist_result, "result_serializer": result_serializer, "tags": tuple(tags),
            "log_prints": log_prints, "on_completion": self.on_completion, "on_failure": self.on_failure,
            "task_run_name": task_run_name, "on_commit": self.on_commit_hooks,
            "on_rollback": self.on_rollback_hooks, "files": files, "description": description,
            "version": version, "on_running": self.on_running, "result_storage_key": result_storage_key,
            "cache_result_in_memory": cache_result_in_memory, "viz_return_value": viz_return_value,
        }
        self._signature: inspect.Signature | None = None
        # How calls bind to parameters without inspect.Signature.bind (see bind_arguments): the
        # parameter names and the trailing defaults, or False when the signature needs the general
        # binder (keyword-only or variadic parameters). None until the first call.
        self._bind_plan: tuple[tuple[str, ...], tuple[Any, ...]] | bool | None = None
        self._return_hint: Any = None
        self._return_hint_known = False
        functools.update_wrapper(self, fn)

    @property
    def signature(self) -> inspect.Signature:
        if self._signature is None:
            try:  # resolved annotations read better in error messages than their strings
                self._signature = inspect.signature(self.fn, eval_str=True)
            except Exception:
                self._signature = inspect.signature(self.fn)
        return self._signature

    def bind_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by parameter name, defaults included, in signature order.

        Raises :class:`TypeError` (from :meth:`inspect.Signature.bind`) when they do not fit.
        """
        plan = self._bind_plan
        if plan is None:
            plan = self._bind_plan = _bind_plan(self.signature)
        if plan is not False and not kwargs:
            # The common call, all positional: what Signature.bind + apply_defaults give, at a tenth of
            # the cost (this runs on every task call, cache hits included).
            names, defaults = plan  # type: ignore[misc]
            given = len(args)
            missing = len(names) - given
            if missing == 0:
                return dict(zip(names, args))
            if 0 < missing <= len(defaults):
                arguments = dict(zip(names, args))
                for name, value in zip(names[given:], defaults[len(defaults) - missing :]):
                    arguments[name] = value
                return arguments
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    def return_type_hint(self) -> Any:
        """The function's return annotation, resolved once (None when absent or unresolvable)."""
        if not self._return_hint_known:
            try:
                import typing

                self._return_hint = typing.get_type_hints(self.fn).get("return")
            except Exception:
                self._return_hint = None
            self._return_hint_known = True
        return self._return_hint

    def __repr__(self) -> str:
        return f"Task({self.name!r})"

    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    @overload
    def __call__(self, *args: Any, return_state: bool = ..., **kwargs: Any) -> Any: ...

    def __call__(self, *args: Any, return_state: bool = False, wait_for: Any = None,  # type: ignore[misc]
                 **kwargs: Any) -> Any:
        """Run the task now (or take its result from the cache) and return its result.

        With ``return_state=True`` the final :class:`~nbflow.State` is returned and a failure does not
        raise. ``wait_for=[future, ...]`` waits for those submitted calls first (without passing their
        results); if one failed, this call ends ``UpstreamFailed`` unless it is wrapped in
        :class:`nbflow.allow_failure`. For an ``async def`` task the call returns an awaitable:
        ``await my_task(...)``.
        """
        # Hidden from the tracebacks of task failures (IPython, pytest): see nbflow._tracebacks.
        __tracebackhide__ = _HIDE_FRAMES
        if self.is_async:
            from nbflow.engine.task_engine import run_task_async

            return run_task_async(self, args, kwargs, return_state=return_state, wait_for=wait_for)
        if wait_for is not None:
            from nbflow.engine.task_engine import run_task

            return run_task(self, args, kwargs, return_state=return_state, wait_for=wait_for)
        # The engine is imported on the first call (importing nbflow stays light); an import statement
        # on every call would cost half a microsecond each time.
        global _run_task
        run = _run_task
        if run is None:
            from nbflow.engine.task_engine import run_task

            run = _run_task = run_task
        return run(self, args, kwargs, return_state=return_state)

    def submit(self, *args: Any, wait_for: Any = None, return_state: bool = False, **kwargs: Any) -> Any:
        """Start a call on the task runner and return its :class:`~nbflow.TaskFuture` at once.

        Calls run concurrently (the flow's ``task_runner``, else a shared bounded thread pool); caching,
        retries and timeouts are those of a plain call. Futures among the arguments, and those in
        ``wait_for=[...]``, are waited for (arguments are replaced by their results; both are drawn as
        graph edges); if one failed, this call ends ``UpstreamFailed`` without running, unless it is
        wrapped in :class:`nbflow.allow_failure`. ``return_state=True`` waits and returns the final state.
        """
        from nbflow.engine.task_engine import submit_task

        future = submit_task(self, args, kwargs, wait_for=wait_for)
        if return_state:
            future.wait()
            return future.state
        return future

    def map(self, *args: Any, wait_for: Any = None, return_state: bool = False, **kwargs: Any) -> Any:
        """Submit one call per element of the iterable arguments; return their futures in order.

        Every list, tuple, range, set, generator or other iterable argument is mapped (all must have the
        same length); strings, bytes and dicts are passed whole, and so is anything wrapped in
        :class:`nbflow.unmapped`, e.g. ``score.map(tables, model=nbflow.unmapped(model))``. A future of a
        whole list is not mapped (give the list itself). ``wait_for`` and ``return_state`` are those of
        :meth:`submit`, for every call.
        """
        from nbflow.engine.futures import TaskFutureList, unmapped
        from nbflow.engine.task_engine import submit_task
        from nbflow.runs import new_id

        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as error:
            from nbflow.exceptions import ParameterError

            raise ParameterError(f"task {self.name!r}.map: {error} (signature: {self.name}{self.signature})") from None
        arguments = dict(bound.arguments)
        mapped: dict[str, list[Any]] = {}
        for name, value in arguments.items():
            kind = self.signature.parameters[name].kind
            if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                from nbflow.exceptions import ParameterError

                raise ParameterError(
                    f"task {self.name!r}.map: *args/**kwargs parameters cannot be mapped; give named arguments"
                )
            if isinstance(value, unmapped):
                arguments[name] = value.value
            elif _mappable(value):
                mapped[name] = list(value)
        if not mapped:
            from nbflow.exceptions import ParameterError

            raise ParameterError(
                f"task {self.name!r}.map needs at least one iterable argument to map over (a list, tuple, "
                "range...); for a single call use .submit()"
            )
        sizes = {name: len(values) for name, values in mapped.items()}
        if len(set(sizes.values())) > 1:
            from nbflow.exceptions import ParameterError

            detail = ", ".join(f"{name} has {size}" for name, size in sizes.items())
            raise ParameterError(
                f"task {self.name!r}.map: the mapped arguments differ in length ({detail}); wrap an "
                "argument that every call should get whole in nbflow.unmapped(...)"
            )
        size = next(iter(sizes.values()))
        map_id = new_id()
        futures: TaskFutureList[R] = TaskFutureList()
        for index in range(size):
            call = {name: (mapped[name][index] if name in mapped else value) for name, value in arguments.items()}
            bound_call = inspect.BoundArguments(self.signature, call)  # type: ignore[arg-type,unused-ignore]
            futures.append(submit_task(self, bound_call.args, bound_call.kwargs, map_info=(map_id, index, size),
                                       wait_for=wait_for))
        if return_state:
            futures.wait()
            return [future.state for future in futures]
        return futures

    def on_commit(self, fn: TransactionHook) -> TransactionHook:
        """Decorator: ``fn(transaction)`` runs when a transaction this task completed in commits."""
        self.on_commit_hooks.append(_check_hooks([fn], "on_commit", f"{self!r}.on_commit")[0])
        return fn

    def on_rollback(self, fn: TransactionHook) -> TransactionHook:
        """Decorator: ``fn(transaction)`` runs when a transaction this task completed in rolls back
        (newest task first) — undo the task's side effects there."""
        self.on_rollback_hooks.append(_check_hooks([fn], "on_rollback", f"{self!r}.on_rollback")[0])
        return fn

    def with_options(self, **overrides: Any) -> Task[P, R]:
        """A copy of this task with some options changed, e.g. ``load.with_options(retries=5)``."""
        unknown = set(overrides) - set(self._options)
        if unknown:
            raise ConfigurationError(
                f"{self!r}.with_options: unknown option(s) {sorted(unknown)}; known: {sorted(self._options)}"
            )
        options = {**self._options, **overrides}
        if "name" not in overrides and options["name"] is None:
            options["name"] = self.name
        return Task(self.fn, **options)

    def __get__(self, instance: Any, owner: Any) -> Any:
        # A task defined as a method binds like a function would.
        if instance is None:
            return self
        return functools.partial(self.__call__, instance)


_run_task: Callable[..., Any] | None = None


def _bind_plan(signature: inspect.Signature) -> tuple[tuple[str, ...], tuple[Any, ...]] | bool:
    """Parameter names and trailing default values of a signature of positional parameters only;
    False for any other signature."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = list(signature.parameters.values())
    if any(parameter.kind not in positional for parameter in parameters):
        return False
    defaults = tuple(p.default for p in parameters if p.default is not inspect.Parameter.empty)
    return tuple(p.name for p in parameters), defaults


@overload
def task(fn: Callable[P, R]) -> Task[P, R]: ...


@overload
def task(
    fn: None = None,
    *,
    name: str | None = None,
    retries: int = 0,
    retry_delay_seconds: RetryDelay = 0,
    retry_jitter_factor: float | None = None,
    retry_condition_fn: RetryCondition | None = None,
    timeout_seconds: float | None = None,
    cache_policy: CachePolicy = DEFAULT,
    cache_key_fn: Callable[[KeyContext, dict[str, Any]], str | None] | None = None,
    cache_expiration: _dt.timedelta | float | None = None,
    refresh_cache: bool = False,
    persist_result: bool = True,
    result_serializer: str | Serializer = "pickle",
    tags: Sequence[str] = (),
    log_prints: bool = False,
    on_completion: Iterable[Hook] = (),
    on_failure: Iterable[Hook] = (),
    task_run_name: str | Callable[[], str] | None = None,
    on_commit: Iterable[TransactionHook] = (),
    on_rollback: Iterable[TransactionHook] = (),
    files: Iterable[str | os.PathLike[str]] = (),
    description: str | None = None,
    version: str | None = None,
    on_running: Iterable[Hook] = (),
    result_storage_key: str | None = None,
    cache_result_in_memory: bool = True,
    viz_return_value: Any = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Turn a function into a :class:`Task`; use bare (``@nbflow.task``) or with options.

    Options (all keyword-only): ``name``; ``retries`` and ``retry_delay_seconds`` (a number, a list whose
    last value repeats, or a callable of the retry number such as :func:`nbflow.exponential_backoff`),
    ``retry_jitter_factor`` (each delay moves randomly by up to this fraction), ``retry_condition_fn(task,
    task_run, state) -> bool``; ``timeout_seconds``; ``cache_policy`` (default ``INPUTS + TASK_SOURCE``:
    same code and inputs hit, across restarts), ``cache_key_fn(context, parameters)``,
    ``cache_expiration``, ``refresh_cache``; ``persist_result`` (False: never stored, so never cached);
    ``result_serializer`` ("pickle" or "json"); ``tags``; ``log_prints``; hooks ``on_completion`` and
    ``on_failure`` called ``(task, task_run, state)``; ``task_run_name`` (a template formatted with the
    call's arguments, or a callable); transaction hooks ``on_commit`` / ``on_rollback`` called
    ``(transaction)`` (also as decorators: ``@my_task.on_rollback``); ``files``: paths of files or
    directories the task reads in ways nbflow cannot see (inside C libraries such as pyarrow), checked
    for changes like the files it opens through Python. ``description`` (default: the docstring) and
    ``version`` are kept on the task; ``on_running`` hooks ``(task, task_run, state)`` run when a call
    starts running; ``result_storage_key`` (a template such as ``"report-{parameters[day]}"``, formatted
    with ``parameters``, ``task_run`` and ``flow_run``) names the stored result and replaces the cache key,
    as in Prefect: any call that renders the same key gets that result; ``cache_result_in_memory`` is
    accepted for Prefect code (nbflow never keeps results in memory beyond what the caller holds).
    ``async def`` functions make tasks that are awaited.
    """
    if fn is None:
        return lambda function: Task(function, **options)
    if options:
        raise ConfigurationError("use @task(...) with keyword options only, e.g. @nbflow.task(retries=2)")
    return Task(fn)


def _check_files(files: Any, owner: str) -> tuple[str, ...]:
    if isinstance(files, (str, os.PathLike)):
        files = (files,)
    try:
        paths = tuple(os.fspath(path) for path in files)
    except TypeError:
        raise ConfigurationError(
            f"{owner}: files must be paths (str or pathlib.Path) or a list of them, got {files!r}"
        ) from None
    if not all(isinstance(path, str) and path for path in paths):
        raise ConfigurationError(f"{owner}: files must be non-empty text paths, got {files!r}")
    return paths


_warned_policies: set[tuple[str, str]] = set()


def _warn_if_code_left_out(fn: Any, policy: CachePolicy, owner: str) -> None:
    """Warn (once per function and policy) when an explicit policy of a notebook or project task leaves
    the task's code out of the key: editing the function would then return the old result. ``INPUTS -
    "verbose"`` is the usual slip; ``DEFAULT - "verbose"`` keeps the code."""
    from nbflow.cache_policies import NoCache, Serializable, TaskSource

    parts = policy.policy.parts() if isinstance(policy, Serializable) else policy.parts()
    if any(isinstance(part, (TaskSource, NoCache, CacheKeyFnPolicy)) for part in parts):
        return
    from nbflow.hashing.code import is_user_function

    if not is_user_function(fn):
        return
    seen = (getattr(fn, "__module__", "") + "." + getattr(fn, "__qualname__", ""), repr(policy))
    if seen in _warned_policies:
        return
    _warned_policies.add(seen)
    suggestion = repr(policy).replace("INPUTS", "DEFAULT", 1) if "INPUTS" in repr(policy) else "DEFAULT"
    warnings.warn(
        f"{owner}: cache_policy={policy!r} leaves the task's code out of its cache key, so after an edit "
        f"of the function a call returns the result the old code computed. Use cache_policy={suggestion} "
        "(DEFAULT is INPUTS + TASK_SOURCE), or add + TASK_SOURCE.",
        NbflowWarning,
        stacklevel=_caller_level(),
    )


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside nbflow (the user's decorator or call)."""
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(here):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _mappable(value: Any) -> bool:
    """Whether ``Task.map`` maps over ``value`` (an iterable other than a string, bytes or a mapping)."""
    from collections.abc import Iterable as _Iterable
    from collections.abc import Mapping

    from nbflow.engine.futures import TaskFuture

    if isinstance(value, (str, bytes, bytearray, memoryview, Mapping, TaskFuture)):
        return False
    return isinstance(value, _Iterable)
