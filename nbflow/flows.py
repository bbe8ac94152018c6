"""Flows: ``@nbflow.flow`` groups task calls into one recorded run with validated parameters, retries and
a timeout. Flows nest: a flow called inside another is a subflow with its own run.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from nbflow._tracebacks import HIDE_FRAMES as _HIDE_FRAMES
from nbflow.engine.retries import RetryDelay, check_delay
from nbflow.exceptions import ConfigurationError, ParameterError, ParameterTypeError
from nbflow.tasks import HookList, _check_number

if TYPE_CHECKING:
    from nbflow.engine.runners import TaskRunner
    from nbflow.runs import RunRecord
    from nbflow.states import State

__all__ = ["Flow", "flow"]

P = ParamSpec("P")
R = TypeVar("R")

FlowHook = Callable[["Flow[..., Any]", "RunRecord", "State"], Any]


class Flow(Generic[P, R]):
    """A function whose calls are flow runs: parameters validated, tasks inside recorded as one run.

    Make one with :func:`flow`. Calling it returns the function's result (or raises its final
    exception); ``flow(..., return_state=True)`` returns the final :class:`~nbflow.State` instead.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        retries: int = 0,
        retry_delay_seconds: RetryDelay = 0,
        timeout_seconds: float | None = None,
        validate_parameters: bool = True,
        log_prints: bool = False,
        on_completion: Iterable[FlowHook] = (),
        on_failure: Iterable[FlowHook] = (),
        task_runner: TaskRunner | None = None,
        description: str | None = None,
        version: str | None = None,
        flow_run_name: str | Callable[[], str] | None = None,
        on_running: Iterable[FlowHook] = (),
        on_crashed: Iterable[FlowHook] = (),
        on_cancellation: Iterable[FlowHook] = (),
        persist_result: bool | None = None,
        cache_result_in_memory: bool = True,
    ) -> None:
        # @flow above @classmethod/@staticmethod: the function it wraps, bound as that kind (see __get__).
        self._method_kind: str | None = None
        if isinstance(fn, (classmethod, staticmethod)):
            self._method_kind = type(fn).__name__
            fn = fn.__func__
        if not callable(fn):
            raise ConfigurationError(f"@flow decorates a function; got {fn!r}")
        owner = f"@flow {getattr(fn, '__qualname__', repr(fn))!r}"
        if flow_run_name is not None and not (isinstance(flow_run_name, str) or callable(flow_run_name)):
            raise ConfigurationError(
                f"{owner}: flow_run_name must be a string template (e.g. 'report-{{day}}') or a callable"
            )
        for text, label in ((description, "description"), (version, "version")):
            if text is not None and not isinstance(text, str):
                raise ConfigurationError(f"{owner}: {label}={text!r} must be a string or None")
        for flag, label in ((persist_result, "persist_result"), (cache_result_in_memory, "cache_result_in_memory")):
            if flag is not None and not isinstance(flag, bool):
                raise ConfigurationError(f"{owner}: {label}={flag!r} must be True or False")
        if task_runner is not None:
            from nbflow.engine.runners import TaskRunner

            if isinstance(task_runner, type) and issubclass(task_runner, TaskRunner):
                task_runner = task_runner()
            if not isinstance(task_runner, TaskRunner):
                raise ConfigurationError(
                    f"{owner}: task_runner={task_runner!r} is not a task runner; use e.g. "
                    "nbflow.ThreadPoolTaskRunner(max_workers=4) or "
                    "nbflow.integrations.dask.DaskTaskRunner()"
                )
        _check_number(retries, "retries", owner, allow_none=False, integer=True)
        check_delay(retry_delay_seconds, owner)
        _check_number(timeout_seconds, "timeout_seconds", owner, positive=True, seconds=True)
        self.fn = fn
        self.name: str = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.retries = retries
        self.retry_delay_seconds = retry_delay_seconds
        self.timeout_seconds = timeout_seconds
        self.validate_parameters = bool(validate_parameters)
        self.log_prints = bool(log_prints)
        self.on_completion = HookList(on_completion, "on_completion", owner)
        self.on_failure = HookList(on_failure, "on_failure", owner)
        self.task_runner: TaskRunner | None = task_runner
        self.description: str | None = description if description is not None else inspect.getdoc(fn)
        self.version = version
        self.flow_run_name = flow_run_name
        self.on_running = HookList(on_running, "on_running", owner)
        self.on_crashed = HookList(on_crashed, "on_crashed", owner)
        self.on_cancellation = HookList(on_cancellation, "on_cancellation", owner)
        # Accepted for Prefect code: a flow's return value is never stored (its tasks' results are).
        self.persist_result = persist_result
        self.cache_result_in_memory = cache_result_in_memory
        self.is_async: bool = inspect.iscoroutinefunction(fn)
        self._options: dict[str, Any] = {
            "name": name, "retries": retries, "retry_delay_seconds": retry_delay_seconds,
            "timeout_seconds": timeout_seconds, "validate_parameters": validate_parameters,
            "log_prints": log_prints, "on_completion": self.on_completion, "on_failure": self.on_failure,
            "task_runner": task_runner, "description": description, "version": version,
            "flow_run_name": flow_run_name, "on_running": self.on_running, "on_crashed": self.on_crashed,
            "on_cancellation": self.on_cancellation, "persist_result": persist_result,
            "cache_result_in_memory": cache_result_in_memory,
        }
        self.signature = inspect.signature(fn)
        self._validators: dict[str, Any] | None = None
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"Flow({self.name!r})"

    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    @overload
    def __call__(self, *args: Any, return_state: bool = ..., **kwargs: Any) -> Any: ...

    def __call__(self, *args: Any, return_state: bool = False, **kwargs: Any) -> Any:  # type: ignore[misc]
        """Run the flow and return its result; ``return_state=True`` returns the final state.
        For an ``async def`` flow the call returns an awaitable: ``await my_flow(...)``."""
        __tracebackhide__ = _HIDE_FRAMES  # hidden from the tracebacks of failures: see nbflow._tracebacks
        if self.is_async:
            from nbflow.engine.flow_engine import run_flow_async

            return run_flow_async(self, args, kwargs, return_state=return_state)
        from nbflow.engine.flow_engine import run_flow

        return run_flow(self, args, kwargs, return_state=return_state)

    def __get__(self, instance: Any, owner: Any) -> Any:
        # A flow defined in a class binds as the method it decorates would: to the instance, to the class
        # (``@flow @classmethod``), or to nothing (``@flow @staticmethod``).
        if self._method_kind == "staticmethod":
            return self
        if self._method_kind == "classmethod":
            return functools.partial(self.__call__, owner)
        if instance is None:
            return self
        return functools.partial(self.__call__, instance)

    def visualize(self, *args: Any, **kwargs: Any) -> Any:
        """Draw the graph of this flow's latest run — the static picture nbflow's live graph shows — inline
        in a notebook (an SVG); elsewhere it is returned (write it to a file, or open it in a browser).

        Unlike Prefect, which traces a call without running its tasks, nbflow draws what happened: call
        the flow first. Given arguments, the flow is called with them first and its run drawn. Returns a
        :class:`nbflow._visualize.FlowGraph` (``.svg``, ``.save(path)``) outside a notebook, None in one.
        """
        import importlib

        # By name: the picture belongs to the UI layer, which builds on this one (see nbflow._visualize).
        return importlib.import_module("nbflow._visualize").visualize_flow(self, args, kwargs)

    def with_options(self, **overrides: Any) -> Flow[P, R]:
        """A copy of this flow with some options changed."""
        unknown = set(overrides) - set(self._options)
        if unknown:
            raise ConfigurationError(
                f"{self!r}.with_options: unknown option(s) {sorted(unknown)}; known: {sorted(self._options)}"
            )
        options = {**self._options, **overrides}
        if options["name"] is None:
            options["name"] = self.name
        return Flow(self.fn, **options)

    def bind_parameters(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Bind a call's arguments and validate them against the type hints (before anything runs).

        Values are coerced the way pydantic does in lax mode (``"3"`` for an ``int`` becomes ``3``);
        parameters without a hint, or with a hint that cannot be resolved, are passed through.
        """
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as error:
            raise ParameterError(f"flow {self.name!r}: {error} (signature: {self.name}{self.signature})") from None
        bound.apply_defaults()
        parameters = dict(bound.arguments)
        if not self.validate_parameters:
            return parameters
        validators = self._get_validators()
        problems: list[str] = []
        for name, adapter in validators.items():
            if name not in parameters:
                continue
            kind = self.signature.parameters[name].kind
            if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            try:
                parameters[name] = adapter.validate_python(parameters[name])
            except Exception as error:
                detail = _first_error(error)
                problems.append(f"{name}={_short(parameters[name])}: {detail}")
        if problems:
            raise ParameterTypeError(
                f"flow {self.name!r} got invalid parameters — " + "; ".join(problems)
            )
        return parameters

    def _get_validators(self) -> dict[str, Any]:
        if self._validators is None:
            from pydantic import ConfigDict, TypeAdapter

            hints = _resolve_hints(self.fn)
            validators: dict[str, Any] = {}
            for name in self.signature.parameters:
                hint = hints.get(name)
                if hint is None or hint is Any:
                    continue
                try:
                    validators[name] = TypeAdapter(hint, config=ConfigDict(arbitrary_types_allowed=True))
                except Exception:
                    try:
                        validators[name] = TypeAdapter(hint)
                    except Exception:
                        continue  # a hint pydantic cannot check is documentation only
            self._validators = validators
        return self._validators


def _resolve_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    import typing

    try:
        return typing.get_type_hints(fn)
    except Exception:
        pass
    # Some hints do not resolve (e.g. "pd.DataFrame" without pandas imported): keep the ones that do.
    hints: dict[str, Any] = {}
    namespace = getattr(fn, "__globals__", {})
    for name, annotation in getattr(fn, "__annotations__", {}).items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, dict(namespace))
            except Exception:
                continue
        hints[name] = annotation
    return hints


def _first_error(error: Exception) -> str:
    errors = getattr(error, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            return str(first.get("msg", error))
        except Exception:
            pass
    return str(error)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@overload
def flow(fn: Callable[P, R]) -> Flow[P, R]: ...


@overload
def flow(
    fn: None = None,
    *,
    name: str | None = None,
    retries: int = 0,
    retry_delay_seconds: RetryDelay = 0,
    timeout_seconds: float | None = None,
    validate_parameters: bool = True,
    log_prints: bool = False,
    on_completion: Iterable[FlowHook] = (),
    on_failure: Iterable[FlowHook] = (),
    task_runner: TaskRunner | None = None,
    description: str | None = None,
    version: str | None = None,
    flow_run_name: str | Callable[[], str] | None = None,
    on_running: Iterable[FlowHook] = (),
    on_crashed: Iterable[FlowHook] = (),
    on_cancellation: Iterable[FlowHook] = (),
    persist_result: bool | None = None,
    cache_result_in_memory: bool = True,
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Turn a function into a :class:`Flow`; use bare (``@nbflow.flow``) or with options.

    Options: ``name``; ``retries`` / ``retry_delay_seconds`` (a retry re-runs the body in the same run,
    reusing every task that completed in an earlier attempt); ``timeout_seconds``;
    ``validate_parameters`` (pydantic, against the type hints, before any task runs); ``log_prints``
    (prints of tasks inside are kept in their logs); hooks ``on_completion`` / ``on_failure`` called
    ``(flow, run, state)``; ``task_runner`` (where ``Task.submit``/``map`` calls inside run: a
    :class:`~nbflow.ThreadPoolTaskRunner`, the default, or a Dask runner); ``flow_run_name`` (a template
    formatted with the parameters, ``"report-{day}"``, or a callable, which may read
    :mod:`nbflow.runtime`); ``description`` (default: the docstring), ``version``; hooks ``on_running``,
    ``on_crashed`` and ``on_cancellation`` ``(flow, run, state)`` (``on_failure`` runs for every final
    state but Completed); ``persist_result`` and ``cache_result_in_memory`` are accepted for Prefect code (a
    flow's own return value is never stored; its tasks' results are). ``async def`` flows are awaited.
    """
    if fn is None:
        return lambda function: Flow(function, **options)
    if options:
        raise ConfigurationError("use @flow(...) with keyword options only, e.g. @nbflow.flow(retries=1)")
    return Flow(fn)
