"""The task engine: the one place that drives a task call from arguments to final state.

The order of the steps matters and is written down here:

1. **begin** — bind the arguments to the signature (a bad call fails here, before anything runs) and
   open a task run record in the current flow run (or the process's session run).
2. **reuse** — inside a flow retry, a task that completed in an earlier attempt of the same run is
   reused whatever its cache policy.
3. **key** — the cache policy computes the key. A value that cannot be fingerprinted gives a warning
   naming the argument and the task runs uncached.
4. **probe** — the store looks the key up on metadata only; a hit loads the payload (authenticated
   first) and ends ``Cached``.
5. **call** — ``Running``; the function runs under its timeout; an exception goes through the retry
   rules (``AwaitingRetry`` → ``Retrying``) and ends ``Failed`` / ``TimedOut``; ``KeyboardInterrupt``
   ends ``Cancelled`` and propagates; any other ``BaseException`` ends ``Crashed`` and propagates.
6. **persist** — on success, the result is written (payload, then metadata); a write failure warns and
   the state says ``persisted=False``.
7. **finish** — hooks run once for the final state, the run record is updated, and every state change
   has been published on :mod:`nbflow.events`.
"""

from __future__ import annotations

import os
import time
import traceback
import warnings
from typing import TYPE_CHECKING, Any

import xxhash

from nbflow import events
from nbflow.cache_policies import ArgumentError, KeyContext
from nbflow.context import FlowRunContext, TaskRunContext, _task_run, current_flow_run
from nbflow.engine import runtime
from nbflow.engine.manual_retry import _FailedCall, remember_failed_task
from nbflow.engine.retries import delay_for, jittered
from nbflow.engine.runtime import get_store, session_run, summarize
from nbflow.engine.timeouts import timeout
from nbflow.exceptions import (
    NbflowWarning,
    ParameterError,
    PersistError,
    SerializationError,
    TaskTimeoutError,
    UnfingerprintableError,
)
from nbflow.runs import RunRecord, StateEntry, TaskRunRecord, history, new_id
from nbflow.states import (
    Cached,
    Cancelled,
    Completed,
    Crashed,
    Failed,
    State,
    StateType,
    TimedOut,
)
from nbflow.store import CacheMiss

if TYPE_CHECKING:
    from nbflow.tasks import Task

__all__ = ["run_task"]

_NBFLOW_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MISSING: Any = object()


def user_traceback(error: BaseException) -> str:
    """The traceback of ``error`` without nbflow's own frames at the top."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_NBFLOW_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))


def error_summary(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 500 else text[:497] + "..."


# Final at once, whatever the retries: success, and an interrupt or a crash that must reach the caller.
_ENDS_AT_ONCE = frozenset({StateType.COMPLETED, StateType.CANCELLED, StateType.CRASHED})


def call_to_state(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], timeout_seconds: float | None,
                  label: str) -> State:
    """Call ``fn`` once under its timeout and turn the outcome into a state: ``Completed``, ``TimedOut``,
    ``Failed``, ``Cancelled`` (KeyboardInterrupt) or ``Crashed`` (any other BaseException). Task and flow
    attempts both go through here."""
    try:
        with timeout(timeout_seconds, label):
            result = fn(*args, **kwargs)
    except TaskTimeoutError as error:
        return TimedOut(error, message=str(error))
    except KeyboardInterrupt as error:
        return Cancelled(error, message="interrupted (KeyboardInterrupt)")
    except Exception as error:
        return Failed(error, message=error_summary(error))
    except BaseException as error:
        return Crashed(error, message=error_summary(error))
    return Completed(result)


class TaskRunEngine:
    """Drives one call of one task. See the module docstring for the order of the steps."""

    def __init__(self, task: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.task = task
        self.args = args
        self.kwargs = kwargs
        self.flow_context: FlowRunContext | None = current_flow_run()
        self.run: RunRecord = self.flow_context.run if self.flow_context else session_run()
        self.parameters: dict[str, Any] = {}
        self.key: str | None = None
        self.dynamic_key: tuple[str, int] | None = None
        self.task_run: TaskRunRecord = _MISSING
        self.forced_dynamic_key: tuple[str, int] | None = None  # set by a manual retry

    # -- state bookkeeping ----------------------------------------------------------------------
    def set_state(self, state_type: StateType, name: str, message: str | None = None,
                  state: State | None = None) -> None:
        task_run = self.task_run
        now = time.time()
        task_run.state = name
        task_run.state_type = state_type.value
        task_run.history.append(StateEntry(name, state_type.value, now, message))
        if events.has_subscribers():
            events.publish(events.Event("task_run", state, self.run, task_run, name=name, type=state_type,
                                        message=message))

    # -- 1. begin ---------------------------------------------------------------------------------
    def begin(self) -> None:
        task = self.task
        try:
            bound = task.signature.bind(*self.args, **self.kwargs)
        except TypeError as error:
            raise ParameterError(f"task {task.name!r}: {error} (signature: {task.name}{task.signature})") from None
        bound.apply_defaults()
        self.parameters = bound.arguments
        run = self.run
        name = task.name
        if task.task_run_name is not None:
            name = self._render_run_name(task.task_run_name) or name
        self.task_run = task_run = TaskRunRecord(
            id=new_id(), run_id=run.id, task_name=name, task_key=task.task_key,
            tags=list(task.tags),
        )
        task_run.inputs = {key: summarize(value) for key, value in self.parameters.items()}
        if self.flow_context is not None:
            task_run.upstream = self.flow_context.upstream_of(self.parameters)
        elif runtime.session_tracker is not None:
            task_run.upstream = runtime.session_tracker.upstream_of(self.parameters)
        run.add_task_run(task_run)
        self.set_state(StateType.PENDING, "Pending")

    def _render_run_name(self, template: Any) -> str | None:
        try:
            if callable(template):
                return str(template())
            return str(template).format(**self.parameters)
        except Exception as error:
            warnings.warn(
                f"task {self.task.name!r}: task_run_name {template!r} could not be rendered ({error}); "
                "using the task name",
                NbflowWarning,
                stacklevel=5,
            )
            return None

    # -- 2. reuse within a flow retry -------------------------------------------------------------
    def reuse(self) -> State | None:
        context = self.flow_context
        if context is None:
            return None
        if self.forced_dynamic_key is not None:
            self.dynamic_key = self.forced_dynamic_key
            return None
        self.dynamic_key = context.next_dynamic_key(self.task.task_key)
        previous = context.completed.get(self.dynamic_key)
        if previous is None:
            return None
        state = Cached(previous.result(), message="reused from an earlier attempt of this flow run")
        self.task_run.cache_hit = True
        return state

    # -- 3. key -----------------------------------------------------------------------------------
    def compute_key(self) -> None:
        task = self.task
        if not task.persist_result:
            return
        flow_parameters = self.flow_context.parameters if self.flow_context else None
        context = KeyContext(task=task, run_id=self.run.id, flow_parameters=flow_parameters)
        try:
            key = task.cache_policy.compute_key(context, self.parameters)
        except ArgumentError as error:
            warnings.warn(
                f"task {task.name!r} runs uncached: argument {error.argument!r} cannot be fingerprinted "
                f"({error.__cause__}). Leave it out of the key with "
                f"cache_policy=INPUTS - {error.argument!r} (+ TASK_SOURCE), or register a fingerprint "
                "with nbflow.hashing.register(type, fn).",
                NbflowWarning,
                stacklevel=5,
            )
            return
        except UnfingerprintableError as error:
            warnings.warn(
                f"task {task.name!r} runs uncached: its cache key could not be computed ({error})",
                NbflowWarning,
                stacklevel=5,
            )
            return
        self.task_run.key_parts = context.parts
        if key is None:
            return
        if task.cache_key_fn is None:
            # Namespaced by task so two tasks with equal inputs never share an entry; a cache_key_fn
            # key is used as given, so tasks can share entries on purpose.
            key = f"{task.name}|{key}"
        self.key = xxhash.xxh3_128_hexdigest(key.encode())
        self.task_run.cache_key = self.key

    # -- 4. probe ---------------------------------------------------------------------------------
    def probe(self) -> State | None:
        if self.key is None or self.task.refresh_cache:
            return None
        store = get_store()
        record = store.probe(self.key)
        if record is None:
            return None
        type_hint = self.task.return_type_hint() if record.serializer == "json" else None
        try:
            value = store.load(self.key, record, type_hint=type_hint)
        except CacheMiss:
            return None
        self.task_run.cache_hit = True
        self.task_run.persisted = True
        return Cached(value)

    # -- 5. call with retries and timeout ---------------------------------------------------------
    def call(self) -> State:
        task = self.task
        task_run = self.task_run
        log_prints = task.log_prints or bool(self.flow_context and self.flow_context.flow.log_prints)
        context = TaskRunContext(task=task, task_run=task_run, log_prints=log_prints)
        if log_prints:
            from nbflow.engine.logs import install_print_capture

            install_print_capture()
        token = _task_run.set(context)
        try:
            while True:
                task_run.attempts += 1
                if task_run.attempts == 1:
                    task_run.start_time = time.time()
                    self.set_state(StateType.RUNNING, "Running")
                else:
                    self.set_state(StateType.RUNNING, "Retrying", f"attempt {task_run.attempts}")
                state = call_to_state(task.fn, self.args, self.kwargs, task.timeout_seconds, f"task {task.name!r}")
                if state.type in _ENDS_AT_ONCE or not self.should_retry(state):
                    return state
                retry_number = task_run.attempts
                delay = jittered(delay_for(task.retry_delay_seconds, retry_number), task.retry_jitter_factor)
                self.set_state(
                    StateType.SCHEDULED, "AwaitingRetry",
                    f"{state.message}; retry {retry_number} of {task.retries} in {delay:.3g} s",
                )
                try:
                    if delay > 0:
                        time.sleep(delay)
                except KeyboardInterrupt as error:
                    return Cancelled(error, message="interrupted while waiting to retry")
        finally:
            _task_run.reset(token)

    def should_retry(self, state: State) -> bool:
        task = self.task
        if self.task_run.attempts > task.retries:
            return False
        condition = task.retry_condition_fn
        if condition is None:
            return True
        try:
            return bool(condition(task, self.task_run, state))
        except Exception as error:
            warnings.warn(
                f"task {task.name!r}: retry_condition_fn raised {error_summary(error)}; not retrying",
                NbflowWarning,
                stacklevel=6,
            )
            return False

    # -- 6. persist ---------------------------------------------------------------------------------
    def persist(self, state: State) -> State:
        task = self.task
        if self.key is None:
            state.persisted = False
            self.task_run.persisted = False
            return state
        expires = None
        if task.cache_expiration is not None:
            expires = time.time() + task.cache_expiration.total_seconds()
        try:
            get_store().save(
                self.key, state.result(), task_name=task.name, run_id=self.run.id,
                serializer=task.result_serializer, expires=expires,
            )
        except (SerializationError, PersistError) as error:
            warnings.warn(f"{error} — the task's result was returned but not persisted.", NbflowWarning,
                          stacklevel=5)
            state.persisted = False
            state.message = f"not persisted: {error}"
        else:
            state.persisted = True
        self.task_run.persisted = state.persisted
        return state

    # -- 7. finish --------------------------------------------------------------------------------
    def finish(self, state: State) -> State:
        task_run = self.task_run
        task = self.task
        task_run.end_time = time.time()
        if task_run.start_time is None:
            task_run.start_time = task_run.end_time
        if state.is_completed():
            task_run.result = summarize(state.result())
            if self.flow_context is not None:
                if self.dynamic_key is not None:
                    self.flow_context.completed[self.dynamic_key] = state
                self.flow_context.remember_result(state.result(), task_run.id)
            elif runtime.session_tracker is not None:
                runtime.session_tracker.remember_result(state.result(), task_run.id)
        else:
            error = state.result(raise_on_failure=False)
            if isinstance(error, BaseException):
                task_run.error = error_summary(error)
                task_run.traceback = user_traceback(error)
            if state.is_final():
                self.run.failed_task_runs += 1
                remember_failed_task(
                    task_run.id,
                    _FailedCall(task, self.args, self.kwargs, self.flow_context, self.dynamic_key),
                )
        self.set_state(state.type, state.name, state.message, state)
        hooks = task.on_completion if state.is_completed() else task.on_failure if state.is_final() else ()
        for hook in hooks:
            try:
                hook(task, task_run, state)
            except Exception:
                import logging

                logging.getLogger("nbflow").exception(
                    "hook %r of task %r raised; the task's state is unchanged", hook, task.name
                )
        history().mark(self.run, task_run)
        return state

    def run_to_state(self) -> State:
        self.begin()
        state = self.reuse() or None
        if state is None:
            self.compute_key()
            state = self.probe()
        if state is None:
            state = self.call()
            if state.is_completed():
                state = self.persist(state)
        return self.finish(state)


def run_task(task: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
             return_state: bool = False) -> Any:
    """Run one call of ``task`` and return its result (or its final state with ``return_state``)."""
    engine = TaskRunEngine(task, args, kwargs)
    state = engine.run_to_state()
    if return_state:
        if state.type in (StateType.CANCELLED, StateType.CRASHED):
            # An interrupt or a crash still stops the caller; the state is in the run history.
            raise state.result(raise_on_failure=False)
        return state
    return state.result()
