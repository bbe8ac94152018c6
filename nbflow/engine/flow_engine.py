"""The flow engine: validates parameters, opens a run, runs the body with retries and a timeout.

A flow retry re-runs the body in the *same* run: task calls that completed in an earlier attempt are
reused (matched by task and call order), so only what failed, and what comes after it, runs again.
"""

from __future__ import annotations

import inspect
import time
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nbflow import events
from nbflow._tracebacks import HIDE_FRAMES
from nbflow.context import FlowRunContext, WeakValues, _flow_run, current_flow_run
from nbflow.engine.futures import ANNOTATED, futures_in, resolve
from nbflow.engine.manual_retry import NotRetryable, remember_failed_flow
from nbflow.engine.retries import delay_for
from nbflow.engine.runtime import flush_store, frontend_hook, summarize
from nbflow.engine.task_engine import (
    _ENDS_AT_ONCE,
    _outcome,
    async_call_to_state,
    call_to_state,
    error_summary,
    failure_to_raise,
)
from nbflow.runs import RunRecord, StateEntry, history, new_id
from nbflow.states import Cancelled, Completed, Failed, State, StateType, state_name

if TYPE_CHECKING:
    from nbflow.engine.runners import TaskRunner
    from nbflow.flows import Flow

__all__ = ["run_flow", "run_flow_async"]


class FlowRunEngine:
    """Drives one call of one flow."""

    def __init__(self, flow: Flow[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.flow = flow
        self.args = args
        self.kwargs = kwargs
        self.parent = current_flow_run()
        self.run: RunRecord | None = None
        self.context: FlowRunContext | None = None
        self.max_attempts = 1 + flow.retries
        self.runner: TaskRunner | None = None
        # Set once a later run of this flow failed too: the parameters, kept only while something else
        # keeps them (see manual_retry), in place of the context's.
        self._kept: WeakValues | None = None

    def set_state(self, state: State) -> None:
        run = self.run
        assert run is not None
        run.state = state_name(state.name, state.type)
        run.state_type = state.type.value
        run.history.append(StateEntry(state.name, state.type.value, time.time(), state.message))
        history().mark(run)
        if events.has_subscribers():
            events.publish(events.Event("run", state, run))

    def begin(self) -> None:
        # Validation first: a wrong parameter is an error before any run exists or any task runs.
        parameters = self.flow.bind_parameters(self.args, self.kwargs)
        self.args, self.kwargs = (), {}  # the parameters are the context's from here on
        parent_run_id = self.parent.run.id if self.parent else None
        self.run = RunRecord(
            id=new_id(), flow_name=self.flow.name, kind="flow", parent_run_id=parent_run_id,
            parameters={name: summarize(value) for name, value in parameters.items()},
        )
        self.context = FlowRunContext(flow=self.flow, run=self.run, parameters=parameters)
        self.flow.__dict__["_last_run"] = self.run  # what flow.visualize() draws
        if self.flow.log_prints:  # the body's own prints are kept in the flow run's logs
            from nbflow.engine.logs import install_print_capture

            install_print_capture()
        if self.flow.flow_run_name is not None:
            self.run.run_name = self.render_run_name(self.flow.flow_run_name)
        self.start_runner()
        if self.parent is None:
            frontend_hook(self.run)  # a live graph in the notebook cell (subflows are drawn in their parent's)
        self.set_state(State(type=StateType.PENDING, name="Pending"))

    def render_run_name(self, template: Any) -> str | None:
        """The flow run's name from ``flow_run_name``: a template formatted with the parameters, or a
        callable called inside the run (so that ``nbflow.runtime.flow_run.parameters`` answers)."""
        context = self.context
        assert context is not None
        try:
            if callable(template):
                token = _flow_run.set(context)
                try:
                    name = template()
                finally:
                    _flow_run.reset(token)
            else:
                name = str(template).format(**context.parameters)
        except Exception as error:
            from nbflow._tracebacks import warn_at_caller
            from nbflow.exceptions import NbflowWarning

            warn_at_caller(f"flow {self.flow.name!r}: flow_run_name {template!r} could not be rendered "
                           f"({type(error).__name__}: {error}); using the flow's name", NbflowWarning)
            return None
        if not isinstance(name, str) or not name:
            from nbflow._tracebacks import warn_at_caller
            from nbflow.exceptions import NbflowWarning

            warn_at_caller(f"flow {self.flow.name!r}: flow_run_name gave {name!r}, not a non-empty string; "
                           "using the flow's name", NbflowWarning)
            return None
        return name

    def call_hooks(self, hooks: Sequence[Any], state: State) -> None:
        run = self.run
        for hook in hooks:
            try:
                hook(self.flow, run, state)
            except Exception:
                import logging

                logging.getLogger("nbflow").exception(
                    "hook %r of flow %r raised; the flow's state is unchanged", hook, self.flow.name
                )

    def call_body(self) -> State:
        flow = self.flow
        context = self.context
        run = self.run
        assert context is not None and run is not None
        while True:
            self.start_attempt()
            args, kwargs = _call_arguments(flow, context.parameters)
            token = _flow_run.set(context)
            try:
                state = call_to_state(flow.fn, args, kwargs, flow.timeout_seconds, f"flow {flow.name!r}")
            finally:
                _flow_run.reset(token)
            try:
                _wait_all(context.take_futures())
            except KeyboardInterrupt as error:
                return Cancelled(error, message="interrupted while waiting for submitted tasks")
            state = _resolve_returned(state, flow)
            delay = self.retry_delay(state)
            if delay is None:
                return state
            try:
                if delay > 0:
                    time.sleep(delay)
            except KeyboardInterrupt as error:
                return Cancelled(error, message="interrupted while waiting to retry")

    async def call_body_async(self) -> State:
        """:meth:`call_body` for an ``async def`` flow."""
        import asyncio

        flow = self.flow
        context = self.context
        assert context is not None
        while True:
            self.start_attempt()
            args, kwargs = _call_arguments(flow, context.parameters)
            token = _flow_run.set(context)
            try:
                state = await async_call_to_state(flow.fn, args, kwargs, flow.timeout_seconds, f"flow {flow.name!r}")
            finally:
                _flow_run.reset(token)
            pending = [asyncio.wrap_future(future._future) for future in context.take_futures()]
            if pending:
                await asyncio.wait(pending)
            state = _resolve_returned(state, flow)
            delay = self.retry_delay(state)
            if delay is None:
                return state
            if delay > 0:
                await asyncio.sleep(delay)

    def start_attempt(self) -> None:
        run = self.run
        context = self.context
        assert run is not None and context is not None
        run.attempts += 1
        context.attempt = run.attempts
        context.call_counts = {}
        name = "Running" if run.attempts == 1 else "Retrying"
        message = None if run.attempts == 1 else f"attempt {run.attempts}"
        state = State(type=StateType.RUNNING, name=name, message=message)
        self.set_state(state)
        if run.attempts == 1 and self.flow.on_running:
            self.call_hooks(self.flow.on_running, state)

    def retry_delay(self, state: State) -> float | None:
        """None when ``state`` ends the run, else the seconds before the next attempt (AwaitingRetry)."""
        run = self.run
        assert run is not None
        if state.type in _ENDS_AT_ONCE or run.attempts >= self.max_attempts:
            return None
        self.set_state(State(type=StateType.SCHEDULED, name="AwaitingRetry",
                             message=f"{state.message}; retry {run.attempts} of {self.flow.retries}"))
        return delay_for(self.flow.retry_delay_seconds, run.attempts)

    def start_runner(self) -> None:
        if self.flow.task_runner is not None and self.context is not None:
            self.runner = self.flow.task_runner.duplicate()
            self.runner.start()
            self.context.task_runner = self.runner

    def stop_runner(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            try:
                runner.shutdown()
            except Exception:
                import logging

                logging.getLogger("nbflow").exception("task runner %r did not shut down cleanly", runner)

    def finish(self, state: State) -> State:
        run = self.run
        assert run is not None
        self.stop_runner()
        run.end_time = time.time()
        if not state.is_completed():
            error = state.result(raise_on_failure=False)
            if isinstance(error, BaseException):
                run.error = error_summary(error)
        self.set_state(state)
        flow = self.flow
        self.call_hooks(flow.on_completion if state.is_completed() else flow.on_failure, state)
        if state.is_crashed() and flow.on_crashed:
            self.call_hooks(flow.on_crashed, state)
        elif state.is_cancelled() and flow.on_cancellation:
            self.call_hooks(flow.on_cancellation, state)
        if self.context is not None:
            self.context.results.clear()  # release references held for graph edges
        if not state.is_completed():
            remember_failed_flow(run.id, self)
        if self.parent is None:  # a flow's results are all committed once it ends
            flush_store()
            history().flush()
        return state

    def run_to_state(self) -> State:
        self.begin()
        return self.finish(self.call_body())

    def release_parameters(self) -> None:
        """Stop keeping the parameters alive (a later run of this flow failed too): a "retry failed" of
        this run stays possible while something else keeps them."""
        context = self.context
        if context is not None and self._kept is None:
            self._kept = WeakValues(context.parameters)
            context.parameters = {}

    def parameters_available(self) -> bool:
        """Whether :meth:`resume` has the parameters it needs."""
        return self._kept is None or not self._kept.gone()

    def resume(self) -> State:
        """Run the body again in the same run (a manual "retry failed"), with the flow's retries."""
        run = self.run
        assert run is not None
        if self._kept is not None:
            parameters = self._kept.get()
            if parameters is None:
                gone = self._kept.gone()
                raise NotRetryable(
                    f"flow run {run.id!r} cannot be retried: its parameter {gone[0]!r} is no longer in memory "
                    f"(only the latest failed run of each flow keeps them alive); call {self.flow.name} again"
                )
            assert self.context is not None
            self.context.parameters = parameters
            self._kept = None
        run.end_time = None
        run.error = None
        self.max_attempts = run.attempts + 1 + self.flow.retries
        self.start_runner()
        if self.flow.is_async:
            from nbflow.engine.task_engine import run_coroutine

            return self.finish(run_coroutine(self.call_body_async()))
        return self.finish(self.call_body())


def _call_arguments(flow: Flow[..., Any], parameters: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments for the body from validated parameters (``*args`` included)."""
    import inspect

    bound = inspect.BoundArguments(flow.signature, dict(parameters))
    return bound.args, bound.kwargs


def _wait_all(futures: list[Any]) -> None:
    if futures:
        import concurrent.futures

        concurrent.futures.wait([future._future for future in futures])


def _resolve_returned(state: State, flow: Flow[..., Any] | None = None) -> State:
    """A body that returned futures (``return [fit.submit(p) for p in params]``) returns their results;
    a failed one fails the flow. A generator it returned is consumed into a list, as Prefect does (a
    generator *flow*, whose body yields, returns its generator as it is)."""
    if not state.is_completed():
        return state
    value = state.result()
    if isinstance(value, types.GeneratorType) and not (flow is not None and inspect.isgeneratorfunction(flow.fn)):
        try:
            value = list(value)
        except Exception as error:
            return Failed(error, message=error_summary(error))
        state = Completed(value, message=state.message)
    if isinstance(value, (list, tuple, set)) and value and all(isinstance(item, State) for item in value):
        return _state_of_states(value, state)
    futures = [future for future in futures_in(value) if future is not ANNOTATED]
    if not futures:
        return state
    # Prefect returns the futures' states here; nbflow their results (what the body would get from
    # .result()). A failure fails the flow alike: the first failure's exception, Prefect's message.
    failed = [future for future in futures if not future.state.is_completed()]
    if failed:
        first = failed[0].state.result(raise_on_failure=False)
        if not isinstance(first, BaseException):
            first = RuntimeError(f"task {failed[0].task_name!r} ended {failed[0].state.name}")
        return Failed(first, message=f"{len(failed)}/{len(futures)} states failed.")
    try:
        return Completed(resolve(value), message=state.message)
    except Exception as error:
        return Failed(error, message=error_summary(error))


def _state_of_states(states: Any, state: State) -> State:
    """A body that returned states (``return [a(return_state=True), b(return_state=True)]``) ends as Prefect
    ends it: ``Failed`` when one of them failed or crashed, ``Cancelled`` when one was cancelled, else
    ``Completed``; the states themselves are the result."""
    items = list(states)
    failed = [item for item in items if item.is_failed() or item.is_crashed()]
    cancelled = [item for item in items if item.is_cancelled()]
    # The first failure's exception is what the flow's caller gets, as in Prefect.
    if failed:
        return Failed(failed[0].result(raise_on_failure=False), message=f"{len(failed)}/{len(items)} states failed.")
    if cancelled:
        return Cancelled(cancelled[0].result(raise_on_failure=False),
                         message=f"{len(cancelled)}/{len(items)} states cancelled.")
    return Completed(states, message=state.message)


def run_flow(flow: Flow[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
             return_state: bool = False) -> Any:
    """Run one call of ``flow``; return its result, or its final state with ``return_state``."""
    __tracebackhide__ = HIDE_FRAMES
    engine = FlowRunEngine(flow, args, kwargs)
    state = engine.run_to_state()
    if not return_state:
        error = failure_to_raise(state)  # raised here: a frame fewer in the user's traceback
        if error is not None:
            raise error
    return _outcome(state, return_state)


async def run_flow_async(flow: Flow[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
                         return_state: bool = False) -> Any:
    """Run one call of an ``async def`` flow (awaited)."""
    __tracebackhide__ = HIDE_FRAMES
    engine = FlowRunEngine(flow, args, kwargs)
    engine.begin()
    try:
        state = await engine.call_body_async()
    except BaseException:
        engine.stop_runner()
        raise
    return _outcome(engine.finish(state), return_state)
