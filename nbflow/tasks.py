"""Tasks: ``@nbflow.task`` turns a function into a :class:`Task` whose calls are cached, retried, timed
out and recorded by the engine.
"""

from __future__ import annotations

import datetime as _dt
import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from nbflow.cache_policies import DEFAULT, CacheKeyFnPolicy, CachePolicy, KeyContext
from nbflow.engine.retries import RetryDelay, check_delay
from nbflow.exceptions import ConfigurationError

if TYPE_CHECKING:
    from nbflow.runs import TaskRunRecord
    from nbflow.states import State
    from nbflow.store.serializers import Serializer

__all__ = ["Task", "task"]

P = ParamSpec("P")
R = TypeVar("R")

Hook = Callable[["Task[..., Any]", "TaskRunRecord", "State"], Any]
RetryCondition = Callable[["Task[..., Any]", "TaskRunRecord", "State"], bool]

_SERIALIZERS = ("pickle", "json")


def _check_number(value: object, name: str, owner: str, *, allow_none: bool = True, integer: bool = False,
                  positive: bool = False) -> None:
    if value is None and allow_none:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise ConfigurationError(f"{owner}: {name}={value!r} must be {kind}" + (" or None" if allow_none else ""))
    if positive and value <= 0:
        raise ConfigurationError(f"{owner}: {name}={value!r} must be > 0")
    if value < 0:
        raise ConfigurationError(f"{owner}: {name}={value!r} must be >= 0")


def _check_hooks(hooks: Iterable[Any], name: str, owner: str) -> tuple[Any, ...]:
    if callable(hooks):
        hooks = (hooks,)
    result = tuple(hooks)
    for hook in result:
        if not callable(hook):
            raise ConfigurationError(f"{owner}: {name} must be callables (task, task_run, state); got {hook!r}")
    return result


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
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(f"@task decorates a function; got {fn!r}")
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            raise ConfigurationError(
                f"@task {getattr(fn, '__name__', fn)!r}: async functions are not supported as tasks yet; "
                "wrap the call in a sync function (e.g. with asyncio.run) for now"
            )
        owner = f"@task {getattr(fn, '__qualname__', repr(fn))!r}"
        _check_number(retries, "retries", owner, allow_none=False, integer=True)
        check_delay(retry_delay_seconds, owner)
        _check_number(retry_jitter_factor, "retry_jitter_factor", owner)
        _check_number(timeout_seconds, "timeout_seconds", owner, positive=True)
        if retry_condition_fn is not None and not callable(retry_condition_fn):
            raise ConfigurationError(f"{owner}: retry_condition_fn must be callable(task, task_run, state)")
        if not isinstance(cache_policy, CachePolicy):
            raise ConfigurationError(
                f"{owner}: cache_policy={cache_policy!r} is not a cache policy; use one from "
                "nbflow.cache_policies, e.g. INPUTS + TASK_SOURCE"
            )
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
        if task_run_name is not None and not (isinstance(task_run_name, str) or callable(task_run_name)):
            raise ConfigurationError(f"{owner}: task_run_name must be a string template or a callable")

        self.fn = fn
        self.name: str = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.task_key: str = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', self.name)}"
        self.retries = retries
        self.retry_delay_seconds = retry_delay_seconds
        self.retry_jitter_factor = retry_jitter_factor
        self.retry_condition_fn = retry_condition_fn
        self.timeout_seconds = timeout_seconds
        self.cache_policy: CachePolicy = (
            CacheKeyFnPolicy(cache_key_fn) if cache_key_fn is not None else cache_policy
        )
        self.cache_key_fn = cache_key_fn
        self.cache_expiration: _dt.timedelta | None = cache_expiration
        self.refresh_cache = bool(refresh_cache)
        self.persist_result = bool(persist_result)
        self.result_serializer = result_serializer
        self.tags: tuple[str, ...] = tuple(tags)
        self.log_prints = bool(log_prints)
        self.on_completion: tuple[Hook, ...] = _check_hooks(on_completion, "on_completion", owner)
        self.on_failure: tuple[Hook, ...] = _check_hooks(on_failure, "on_failure", owner)
        self.task_run_name = task_run_name
        self._options: dict[str, Any] = {
            "name": name, "retries": retries, "retry_delay_seconds": retry_delay_seconds,
            "retry_jitter_factor": retry_jitter_factor, "retry_condition_fn": retry_condition_fn,
            "timeout_seconds": timeout_seconds, "cache_policy": cache_policy, "cache_key_fn": cache_key_fn,
            "cache_expiration": cache_expiration, "refresh_cache": refresh_cache,
            "persist_result": persist_result, "result_serializer": result_serializer, "tags": tuple(tags),
            "log_prints": log_prints, "on_completion": self.on_completion, "on_failure": self.on_failure,
            "task_run_name": task_run_name,
        }
        self._signature: inspect.Signature | None = None
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

    def __call__(self, *args: Any, return_state: bool = False, **kwargs: Any) -> Any:  # type: ignore[misc]
        """Run the task now (or take its result from the cache) and return its result.

        With ``return_state=True`` the final :class:`~nbflow.State` is returned and a failure does not
        raise.
        """
        from nbflow.engine.task_engine import run_task

        return run_task(self, args, kwargs, return_state=return_state)

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
    call's arguments, or a callable).
    """
    if fn is None:
        return lambda function: Task(function, **options)
    if options:
        raise ConfigurationError("use @task(...) with keyword options only, e.g. @nbflow.task(retries=2)")
    return Task(fn)
