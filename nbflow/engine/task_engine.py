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

import contextvars
import os
import sqlite3
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import xxhash

from nbflow import events
from nbflow._recovery import warn_once
from nbflow._tracebacks import HIDE_FRAMES, hide_internal_frames, warn_at_caller
from nbflow.cache_policies import (
    ArgumentError,
    KeyContext,
    Serializable,
    default_key_exclusions,
    fingerprint_arguments,
)
from nbflow.context import (
    CompletedCall,
    FlowRunContext,
    TaskRunContext,
    _flow_run,
    _tags,
    _task_run,
    _transaction,
    current_flow_run,
)
from nbflow.engine import randomness, runtime
from nbflow.engine.conditions import Conditional, Observation, generator_globals, is_generator, key_parts
from nbflow.engine.file_reads import current as current_recorder
from nbflow.engine.futures import ANNOTATED, TaskFuture, allowed_failures, futures_in, resolve
from nbflow.engine.manual_retry import _FailedCall, call_completed, remember_failed_task
from nbflow.engine.retries import delay_for, jittered
from nbflow.engine.runtime import flush_store, get_store, session_run, summarize
from nbflow.exceptions import (
    NbflowWarning,
    ParameterError,
    PersistError,
    SerializationError,
    StoreUnwritable,
    TaskTimeoutError,
    UnfingerprintableError,
)
from nbflow.hashing import code_identity, fingerprint
from nbflow.hashing.code import dependency_parts, may_draw
from nbflow.runs import RunRecord, StateEntry, TaskRunRecord, history, new_task_run_id
from nbflow.states import (
    Cached,
    Cancelled,
    Completed,
    Crashed,
    Failed,
    Running,
    State,
    StateType,
    TimedOut,
    UpstreamFailed,
    state_name,
)
from nbflow.store import CacheMiss

if TYPE_CHECKING:
    import concurrent.futures

    from nbflow.engine.runners import TaskRunner
    from nbflow.tasks import Task
    from nbflow.transactions import Transaction

__all__ = ["run_task", "run_task_async", "submit_task"]

Attempt = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any], "float | None", str], State]

# The result of a call that ran for less than this many seconds is saved deferred (see ResultStore.save):
# committed with others within milliseconds, at half the cost of a commit of its own. A process killed
# meanwhile loses only results that quick to compute again; slower ones are committed before the call returns.
_DEFER_BELOW = 0.05

# Values that cannot change in place (and whose methods draw no random numbers).
_PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None), range})

_state_name = state_name
_engine_names = {name: state_name(name) for name in (
    "Pending", "Running", "Retrying", "AwaitingRetry", "Completed", "Cached", "Failed", "TimedOut", "UpstreamFailed",
    "Crashed", "Cancelled", "RolledBack")}
_get_flow_run = _flow_run.get
_get_tags = _tags.get
_get_transaction = _transaction.get
_NBFLOW_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MISSING: Any = object()


def user_traceback(error: BaseException) -> str:
    """The traceback of ``error`` without nbflow's own frames at the top."""
    import traceback  # here: only a failure needs it, and importing it costs a process's first call

    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_NBFLOW_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))


def error_summary(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 500 else text[:497] + "..."


# State types of a task run that has not ended yet (a KeyboardInterrupt then ends it Cancelled).
_UNFINISHED = frozenset({"", StateType.PENDING.value, StateType.SCHEDULED.value, StateType.RUNNING.value})
# Final at once, whatever the retries: success, and an interrupt or a crash that must reach the caller.
_ENDS_AT_ONCE = frozenset({StateType.COMPLETED, StateType.CANCELLED, StateType.CRASHED})


def _store_trouble(error: BaseException) -> None:
    """One warning per kind of store failure a task call met (it then ran as if uncached)."""
    warn_once(f"reading the nbflow result store failed ({type(error).__name__}: {error}); tasks run as cache "
              "misses meanwhile", stacklevel=7)


def returned_state(state: State) -> State:
    """The final state of a run whose function returned a :class:`State` (``return Failed(message=...)``,
    ``return Completed(name="Skipped")``): that state, as Prefect does. A state that is not final
    (``Running()``, ``Pending()``) cannot end a run: the run fails, saying so."""
    if not state.is_final():
        error = TypeError(f"a task or flow returned the state {state!r}, which is not final; return a "
                          "Completed, Failed, Cancelled or Crashed state (or a plain value)")
        return Failed(error, message=error_summary(error))
    return state


def call_to_state(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], timeout_seconds: float | None,
                  label: str) -> State:
    """Call ``fn`` once under its timeout and turn the outcome into a state: ``Completed``, ``TimedOut``,
    ``Failed``, ``Cancelled`` (KeyboardInterrupt) or ``Crashed`` (any other BaseException). Task and flow
    attempts both go through here. A caught exception keeps the user's frames only (see nbflow._tracebacks)."""
    __tracebackhide__ = HIDE_FRAMES
    try:
        if timeout_seconds is None:
            result = fn(*args, **kwargs)
        else:
            # Imported here: a process whose tasks have no timeout never pays for the module (~1 ms).
            from nbflow.engine.timeouts import timeout

            with timeout(timeout_seconds, label):
                result = fn(*args, **kwargs)
    except TaskTimeoutError as error:
        return TimedOut(error, message=str(error))
    except KeyboardInterrupt as error:
        return Cancelled(error, message="interrupted (KeyboardInterrupt)")
    except Exception as error:
        return Failed(hide_internal_frames(error), message=error_summary(error))
    except BaseException as error:
        return Crashed(hide_internal_frames(error), message=error_summary(error))
    if result.__class__ is State:
        return returned_state(result)
    return Completed(result)


async def async_call_to_state(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                              timeout_seconds: float | None, label: str) -> State:
    """:func:`call_to_state` for a coroutine function: awaited under its timeout, which cancels it."""
    __tracebackhide__ = HIDE_FRAMES
    import asyncio  # here, not at the top: plain calls never pay for importing asyncio

    try:
        if timeout_seconds is None:
            result = await fn(*args, **kwargs)
        else:
            # A task of its own (not asyncio.wait_for) so that a TimeoutError the user's code raises is
            # a failure like any other, and only the deadline means TimedOut.
            inner = asyncio.ensure_future(fn(*args, **kwargs))
            done, _ = await asyncio.wait({inner}, timeout=timeout_seconds)
            if not done:
                inner.cancel()
                try:
                    await inner
                except BaseException:
                    pass
                error = TaskTimeoutError(f"{label} timed out after {timeout_seconds:g} s")
                return TimedOut(error, message=str(error))
            result = inner.result()
    except TaskTimeoutError as error:
        return TimedOut(error, message=str(error))
    except (KeyboardInterrupt, asyncio.CancelledError) as error:
        return Cancelled(error, message=f"interrupted ({type(error).__name__})")
    except Exception as error:
        return Failed(hide_internal_frames(error), message=error_summary(error))
    except BaseException as error:
        return Crashed(hide_internal_frames(error), message=error_summary(error))
    if result.__class__ is State:
        return returned_state(result)
    return Completed(result)


class TaskRunEngine:
    """Drives one call of one task. See the module docstring for the order of the steps."""

    # One engine per task call, cache hits included: slots make it cheaper to build and to use.
    mutated_inputs_are_outputs = False  # cell tasks: an input changed in place is an output
    __slots__ = ("allowed", "args", "attempt", "dynamic_key", "flow_context", "forced_dynamic_key", "key",
                 "kwargs", "map_info", "observation", "parameters", "run", "task", "task_run", "transaction",
                 "upstream_futures", "wait_for")

    def __init__(self, task: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
                 map_info: tuple[str, int, int] | None = None) -> None:
        self.task = task
        self.args = args
        self.kwargs = kwargs
        # The context variables are read directly: this runs on every call, cache hits included.
        self.flow_context: FlowRunContext | None = _get_flow_run()
        self.run: RunRecord = self.flow_context.run if self.flow_context else session_run()
        self.parameters: dict[str, Any] = {}
        self.key: str | None = None
        self.dynamic_key: tuple[str, int] | None = None
        self.task_run: TaskRunRecord = _MISSING
        self.forced_dynamic_key: tuple[str, int] | None = None  # set by a manual retry
        self.map_info = map_info
        # Where one attempt of the function runs: here, or on a runner's workers (e.g. a Dask cluster).
        self.attempt: Attempt = call_to_state
        self.upstream_futures: list[TaskFuture[Any]] = []
        # Set by the caller when given: futures to wait for before running (not arguments), and the
        # upstream futures wrapped in allow_failure (found in begin).
        self.wait_for: Any = None
        self.allowed: list[TaskFuture[Any]] | tuple[()] = ()
        self.transaction: Transaction | None = _get_transaction()
        self.observation: Observation | None = None  # the files and generators a computed call used

    # -- state bookkeeping ----------------------------------------------------------------------
    def set_state(self, state_type: StateType, name: str, message: str | None = None,
                  state: State | None = None, timestamp: float | None = None) -> None:
        task_run = self.task_run
        type_value = state_type._value_  # the plain attribute: .value is a descriptor call
        # The shared StateName of the engine's own names, looked up by name alone (this runs per state change).
        shared = _engine_names.get(name)
        task_run.state = shared if shared is not None and shared.type_value == type_value else _state_name(
            name, type_value)
        task_run.state_type = type_value
        task_run.history.append(StateEntry(name, type_value, time.time() if timestamp is None else timestamp, message))
        if events._subscribers:
            events.publish(events.Event("task_run", state, self.run, task_run, name=name, type=state_type,
                                        message=message))

    # -- 1. begin ---------------------------------------------------------------------------------
    def begin(self) -> None:
        task = self.task
        try:
            self.parameters = parameters = task.bind_arguments(self.args, self.kwargs)
        except TypeError as error:
            raise ParameterError(f"task {task.name!r}: {error} (signature: {task.name}{task.signature})") from None
        run = self.run
        extra_tags = _get_tags()  # from enclosing `with nbflow.tags(...)` blocks
        # Built in one call, already Pending (set_state's work, which would follow at once).
        self.task_run = task_run = TaskRunRecord(
            id=new_task_run_id(), run_id=run.id, task_name=task.name, task_key=task.task_key,
            tags=list(task.tags) if not extra_tags else list(dict.fromkeys((*task.tags, *extra_tags))),
            inputs={key: summarize(value) for key, value in parameters.items()},
            history=[StateEntry("Pending", "PENDING", time.time(), None)],
        )
        if task.task_run_name is not None:
            task_run.task_name = self._render_run_name(task.task_run_name) or task.name
        if self.map_info is not None:
            task_run.map_id, task_run.map_index, task_run.map_size = self.map_info
        upstream: list[str] = []
        futures = futures_in(parameters)
        wait_for = self.wait_for
        if wait_for is not None:
            futures = futures_in(wait_for, futures)
        if futures and ANNOTATED in futures:  # quote / allow_failure among the arguments (rare: looked at apart)
            futures = [future for future in futures if future is not ANNOTATED]
            self.allowed = allowed_failures(parameters) + allowed_failures(wait_for)
            if not futures:  # nothing to wait for: unwrapped now
                self.args, self.kwargs = resolve(self.args), resolve(self.kwargs)
                self.parameters = {name: resolve(value) for name, value in parameters.items()}
                task_run.inputs = {key: summarize(value) for key, value in self.parameters.items()}
        if futures:
            self.upstream_futures = futures
            upstream = [future.task_run_id for future in futures]
        if self.flow_context is not None:
            upstream += self.flow_context.upstream_of(parameters)
            # Claimed here, in the caller's order, so that a flow retry matches submitted calls too.
            if self.forced_dynamic_key is None:
                self.dynamic_key = self.flow_context.next_dynamic_key(task.task_key)
        elif runtime.session_tracker is not None:
            upstream += runtime.session_tracker.upstream_of(parameters)
        if upstream:
            task_run.upstream = list(dict.fromkeys(upstream))
        run.add_task_run(task_run)
        if events._subscribers or events._first_only:
            events.publish(events.Event("task_run", None, run, task_run, name="Pending", type=StateType.PENDING,
                                        message=None), first=True)

    def _render_run_name(self, template: Any) -> str | None:
        try:
            if callable(template):
                # Called as the run's own code would be: nbflow.runtime.task_run.parameters answers.
                token = _task_run.set(TaskRunContext(task=self.task, task_run=self.task_run,
                                                     parameters=self.parameters))
                try:
                    return str(template())
                finally:
                    _task_run.reset(token)
            return str(template).format(**self.parameters)
        except Exception as error:
            warn_at_caller(
                f"task {self.task.name!r}: task_run_name {template!r} could not be rendered ({error}); "
                "using the task name",
                NbflowWarning,
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
        if self.dynamic_key is None:
            return None
        previous = context.completed.get(self.dynamic_key)
        if previous is None:
            return None
        value = previous.value(_MISSING)
        if value is _MISSING and previous.key is not None:
            # Not held (the store has it) and no longer alive: read back from the store. Gone from the
            # store as well (cleared, evicted), the call runs again.
            try:
                value = get_store().load(previous.key, type_hint=self._type_hint())
            except CacheMiss:
                return None
            except (OSError, sqlite3.Error) as error:
                _store_trouble(error)
                return None
        if type(value) is Conditional:
            value = value.decoded(self._type_hint())
        state = Cached(value, message="reused from an earlier attempt of this flow run")
        self.task_run.cache_hit = True
        if previous.key is not None:  # still the store's: a later attempt can read it back again
            self.key = self.task_run.cache_key = previous.key
            self.task_run.persisted = True
        return state

    # -- 3. key -----------------------------------------------------------------------------------
    def compute_key(self) -> None:
        task = self.task
        if not task.persist_result:
            return
        parts: dict[str, str]
        try:
            exclude = _default_key_exclusions(task)
            if exclude is not None:
                # INPUTS + TASK_SOURCE, computed directly: the same key the policies would give.
                parameters = self.parameters
                if exclude:
                    parameters = {name: value for name, value in parameters.items() if name not in exclude}
                parts = {}
                inputs = fingerprint_arguments(parameters, parts)
                parts["code"] = code = code_identity(task.fn)
                key: str | None = f"{inputs}|{code}"
            else:
                flow_parameters = self.flow_context.parameters if self.flow_context else None
                context = KeyContext(task=task, run_id=self.run.id, flow_parameters=flow_parameters)
                key = task.cache_policy.compute_key(context, self.parameters)
                parts = context.parts
        except ArgumentError as error:
            warn_at_caller(
                f"task {task.name!r} runs uncached: argument {error.argument!r} cannot be fingerprinted "
                f"({error.__cause__}). Leave it out of the key with "
                f"cache_policy=INPUTS - {error.argument!r} (+ TASK_SOURCE), or register a fingerprint "
                "with nbflow.hashing.register(type, fn).",
                NbflowWarning,
            )
            return
        except UnfingerprintableError as error:
            warn_at_caller(
                f"task {task.name!r} runs uncached: its cache key could not be computed ({error})",
                NbflowWarning,
            )
            return
        self.task_run.key_parts = parts
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
        if self.transaction is not None:
            staged = self.transaction.staged_value(self.key)
            if staged is not None:
                self.task_run.cache_hit = True
                value = staged[0]
                return Cached(value.apply(self.parameters) if type(value) is Conditional else value,
                              message="staged earlier in this transaction")
        try:
            # One read of record and payload together (a probe, then a load, would be two).
            value = get_store().load(self.key, type_hint=self._type_hint())
        except CacheMiss:
            return None
        except (OSError, sqlite3.Error) as error:
            # The store's own trouble (the store deals with what it can, and says so): never the call's.
            _store_trouble(error)
            return None
        if type(value) is Conditional:
            # Read files or drew random numbers: still a hit only if those are as the computed call found them.
            value = self.still_valid(value)
            if value is None:
                return None
            value = value.apply(self.parameters, getattr(self.task.fn, "__globals__", None), self._type_hint())
        self.task_run.cache_hit = True
        self.task_run.persisted = True
        return Cached(value)

    def still_valid(self, value: Conditional) -> Conditional | None:
        """``value`` if the files it read and the generators it drew from are as they were; else the entry
        stored for the generators' present states, if there is one and it holds; else None (a miss)."""
        if value.files_changed() is not None:
            return None
        if value.generators_moved() is None:
            return value
        assert self.key is not None
        variant = value.variant_key(self.key)
        if variant is None:
            return None
        try:
            other = get_store().load(variant, type_hint=self._type_hint())
        except CacheMiss:
            return None
        except (OSError, sqlite3.Error) as error:
            _store_trouble(error)
            return None
        if type(other) is not Conditional or other.stale() is not None:
            return None
        return other

    def _type_hint(self) -> Any:
        """What a stored result is loaded into (the JSON serializer validates into the return type)."""
        task = self.task
        return task.return_type_hint() if task.result_serializer == "json" else None

    # -- 5. call with retries and timeout ---------------------------------------------------------
    def call(self) -> State:
        task = self.task
        self.observe()
        token = self._enter_task_context()
        try:
            while True:
                self.start_attempt()
                state = self.attempt(task.fn, self.args, self.kwargs, task.timeout_seconds, f"task {task.name!r}")
                delay = self.retry_delay(state)
                if delay is None:
                    return state
                try:
                    if delay > 0:
                        time.sleep(delay)
                except KeyboardInterrupt as error:
                    return Cancelled(error, message="interrupted while waiting to retry")
        finally:
            _task_run.reset(token)
            if self.observation is not None:
                self.observation.stop()

    async def call_async(self) -> State:
        """:meth:`call` for an ``async def`` task: attempts are awaited, retry delays too."""
        import asyncio

        task = self.task
        self.observe()
        token = self._enter_task_context()
        try:
            while True:
                self.start_attempt()
                state = await async_call_to_state(task.fn, self.args, self.kwargs, task.timeout_seconds,
                                                  f"task {task.name!r}")
                delay = self.retry_delay(state)
                if delay is None:
                    return state
                try:
                    if delay > 0:
                        await asyncio.sleep(delay)
                except (KeyboardInterrupt, asyncio.CancelledError) as error:
                    return Cancelled(error, message="interrupted while waiting to retry")
        finally:
            _task_run.reset(token)
            if self.observation is not None:
                self.observation.stop()

    def observe(self) -> None:
        """Before the first attempt of a call that may be cached (or runs inside one that may): the parts
        its code identity is made of, so that ``%nbflow why`` and the graph can name what changed
        (``code:clean``, ``global:FACTOR``) at the next miss; then note the files it reads and, when it may
        draw from them, the states of the global random generators."""
        task = self.task
        if not task.files and _self_contained(task) and self._plain_arguments() and current_recorder() is None:
            return  # it can read no file, draw no number and change no argument: nothing to note
        parts = self.task_run.key_parts
        if parts and "code" in parts:
            dependencies = dependency_parts(task.fn)
            if dependencies:
                parts.update(dependencies)
        if self.key is None and not task.files and current_recorder() is None:
            return
        runner = getattr(self.attempt, "__self__", None)
        if runner is not None and not getattr(runner, "runs_attempts_here", True):
            # Attempts run elsewhere: a runner that sends their file reads back records them in this call's
            # recorder (current while it waits); the random numbers drawn there are not seen.
            self.observation = Observation(task.files, random_generators=False,
                                           watch=getattr(runner, "reports_reads", False))
            return
        self.observation = Observation(task.files, self.key is not None and self.may_draw())

    def may_draw(self) -> bool:
        """Whether the call may draw from the global random generators: its code reaches ``random`` or a
        library, or an argument is more than a plain value. Pure Python on plain values never does, and
        such calls (the quickest ones) skip the states' copies."""
        if not self._plain_arguments():
            return True
        try:
            return may_draw(self.task.fn, self.task_run.key_parts.get("code"))
        except Exception:
            return True

    def _plain_arguments(self) -> bool:
        """Whether every argument is a plain value (a number, a string...): nothing to change in place."""
        for value in self.parameters.values():  # noqa: SIM110 (a loop: no generator object per call)
            if type(value) not in _PLAIN:
                return False
        return True

    def _enter_task_context(self) -> Any:
        """Make this task run the current one (capturing prints when it logs them); returns the token."""
        log_prints = self.task.log_prints or bool(self.flow_context and self.flow_context.flow.log_prints)
        if log_prints:
            from nbflow.engine.logs import install_print_capture

            install_print_capture()
        return _task_run.set(TaskRunContext(task=self.task, task_run=self.task_run, log_prints=log_prints,
                                            parameters=self.parameters))

    def start_attempt(self) -> None:
        task_run = self.task_run
        task_run.attempts += 1
        if task_run.attempts == 1:
            task_run.start_time = time.time()
            self.set_state(StateType.RUNNING, "Running")
            if self.task.on_running:
                self.run_hooks(self.task.on_running, Running())
        else:
            self.set_state(StateType.RUNNING, "Retrying", f"attempt {task_run.attempts}")

    def retry_delay(self, state: State) -> float | None:
        """After an attempt: None when ``state`` is final, else the seconds to wait before the next
        attempt (the run is then ``AwaitingRetry``)."""
        if state.type in _ENDS_AT_ONCE or not self.should_retry(state):
            return None
        task = self.task
        retry_number = self.task_run.attempts
        delay = jittered(delay_for(task.retry_delay_seconds, retry_number), task.retry_jitter_factor)
        self.set_state(
            StateType.SCHEDULED, "AwaitingRetry",
            f"{state.message}; retry {retry_number} of {task.retries} in {delay:.3g} s",
        )
        return delay

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
            warn_at_caller(
                f"task {task.name!r}: retry_condition_fn raised {error_summary(error)}; not retrying",
                NbflowWarning,
            )
            return False

    # -- 6. persist ---------------------------------------------------------------------------------
    def persist(self, state: State) -> State:
        task = self.task
        key = self.key
        value = _MISSING if key is None else self.conditioned(state)
        if key is None or value is _MISSING:
            state.persisted = False
            self.task_run.persisted = False
            return state
        serializer = task.result_serializer
        if type(value) is Conditional and not (serializer == "pickle" or getattr(serializer, "name", "") == "pickle"):
            try:
                value, serializer = value.encoded(serializer, task.name), "pickle"
            except SerializationError as error:
                warn_at_caller(f"{error} — the task's result was returned but not persisted.", NbflowWarning)
                state.persisted = self.task_run.persisted = False
                state.message = f"not persisted: {error}"
                return state
        expires = None
        if task.cache_expiration is not None:
            expires = time.time() + task.cache_expiration.total_seconds()
        transaction = self.transaction
        if transaction is not None and transaction.stages_results:
            # Visible in the store only when the outermost transaction commits (then persisted=True).
            transaction.stage_result(
                key, value, self.task_run, self.run, state, task_name=task.name, run_id=self.run.id,
                serializer=serializer, expires=expires,
            )
            state.persisted = False
            self.task_run.persisted = False
            return state
        task_run = self.task_run
        quick = task_run.start_time is not None and time.time() - task_run.start_time < _DEFER_BELOW
        store = get_store()
        try:
            variant = randomness.variant(key, value.drawn) if type(value) is Conditional else None
            if variant is not None:  # the entry for the states its seeded generators started from
                store.save(variant, value, task_name=task.name, run_id=self.run.id,
                           serializer=serializer, expires=expires, defer=quick)
            store.save(
                key, value, task_name=task.name, run_id=self.run.id,
                serializer=serializer, expires=expires, defer=quick,
                on_lost=self._on_lost(state) if quick else None,
            )
        except (SerializationError, PersistError) as error:
            if not isinstance(error, StoreUnwritable):  # that one was said once, when the store opened
                warn_at_caller(f"{error} — the task's result was returned but not persisted.", NbflowWarning)
            state.persisted = False
            state.message = f"not persisted: {error}"
        else:
            state.persisted = True
        self.task_run.persisted = state.persisted
        return state

    def conditioned(self, state: State) -> Any:
        """What to store for a completed call: its result, wrapped with the files it read and the random
        generators it drew from when there are any; ``_MISSING`` when the call must not be cached (it
        changed an argument in place, or a file it read changed while it ran)."""
        result = state.result()
        if self.observation is None and not self.mutated_inputs_are_outputs and self._plain_arguments() and (
                _self_contained(self.task)):
            return result  # nothing it could have read, drawn or changed (see observe)
        mutated = self.mutated_arguments()
        generators: dict[str, Any] = {}
        if mutated and not self.mutated_inputs_are_outputs:
            # A generator passed in is there to be drawn from: its state after the call is stored, and a
            # hit leaves the caller's generator in it.
            generators = {name: self.parameters[name] for name in mutated if is_generator(self.parameters[name])}
            mutated = [name for name in mutated if name not in generators]
        if not self.mutated_inputs_are_outputs:
            generators.update((f"global:{name}", value) for name, value in generator_globals(self.task.fn).items())
        if mutated and not self.keep_mutated(mutated, state):
            return _MISSING
        observation = self.observation
        if observation is None:
            return Conditional(result, [], [], generators) if generators else result
        files, moved, drawn = observation.outcome()
        if moved:
            names = ", ".join(repr(name) for name in moved)
            warn_at_caller(
                f"task {self.task.name!r} is not cached: file(s) {names} changed while it ran, so what it read "
                "cannot be told apart from what it wrote. It runs again next time.",
                NbflowWarning,
            )
            state.message = f"not persisted: {names} changed while it ran"
            return _MISSING
        if not files and not drawn and not generators:
            return result
        self.task_run.key_parts.update(key_parts(files, drawn))
        return Conditional(result, files, drawn, generators)

    def mutated_arguments(self) -> list[str]:
        """The arguments whose fingerprint changed while the call ran (changed in place)."""
        parts = self.task_run.key_parts
        if not parts or self._plain_arguments():
            return []
        task = self.task
        if _default_key_exclusions(task) is None and not task.cache_policy.fingerprints_inputs:
            return []  # the policy's input parts are its own digests (an agent's messages), not fingerprints
        changed = []
        for name, value in self.parameters.items():
            before = parts.get("input:" + name)
            if before is None or type(value) in _PLAIN:
                continue
            try:
                now = fingerprint(value)
            except Exception:
                now = None
            if now != before:
                changed.append(name)
        return changed

    def keep_mutated(self, names: list[str], state: State) -> bool:
        """A task changed arguments in place: a hit would return the result without that change, so the
        call is not cached (True would store it anyway; cell tasks store such inputs as outputs)."""
        listed = ", ".join(repr(name) for name in names)
        warn_at_caller(
            f"task {self.task.name!r} changed its argument(s) {listed} in place; a cached call would not repeat "
            "that, so this call is not cached. Return the changed value instead (or change a copy).",
            NbflowWarning,
        )
        state.message = f"not persisted: changed argument(s) {listed} in place"
        return False

    def _on_lost(self, state: State) -> Callable[[str], None]:
        """What a deferred save calls if its batch could not be written: the call's state and record say so."""
        task_run, run = self.task_run, self.run
        state_ref = weakref.ref(state)  # the state holds the result, which the save must not keep alive

        def lost(reason: str) -> None:
            task_run.persisted = False
            current = state_ref()
            if current is not None:
                current.persisted = False
                current.message = f"not persisted: {reason}"
            history().mark(run, task_run)

        return lost

    # -- 7. finish --------------------------------------------------------------------------------
    def finish(self, state: State) -> State:
        task_run = self.task_run
        task = self.task
        task_run.end_time = end = time.time()
        if task_run.start_time is None:
            task_run.start_time = end
        completed = state.type is StateType.COMPLETED
        if completed:
            result = state.result()
            task_run.result = summarize(result)
            if not task_run.cache_hit:
                if self.transaction is not None:
                    self.transaction.add_task_run(task, task_run, self.run)
                elif task.on_commit_hooks:  # a call's own transaction commits (see commit_alone)
                    from nbflow.transactions import commit_alone

                    commit_alone(task, self.key)
            if self.flow_context is not None:
                if self.dynamic_key is not None:
                    # Not held when the store has it (see CompletedCall): a flow keeps no result alive.
                    stored = self.key if task_run.persisted else None
                    self.flow_context.completed[self.dynamic_key] = CompletedCall(result, stored)
                    call_completed(self.flow_context.run.id, self.dynamic_key)
                self.flow_context.remember_result(result, task_run.id)
            elif runtime.session_tracker is not None:
                runtime.session_tracker.remember_result(result, task_run.id)
        else:
            error = state.result(raise_on_failure=False)
            if isinstance(error, BaseException):
                task_run.error = error_summary(error)
                task_run.traceback = user_traceback(error)
            if state.is_final():
                self.run.failed_task_runs += 1
            # A call that never ran (its upstream failed) is not retried by itself: retrying the failure
            # upstream and resuming the flow runs it.
            if state.is_final() and state.name != "UpstreamFailed":
                remember_failed_task(
                    task_run.id,
                    _FailedCall(task, self.args, self.kwargs, self.flow_context, self.dynamic_key),
                )
        self.set_state(state.type, state.name, state.message, state, end)
        hooks = task.on_completion if completed else task.on_failure if state.is_final() else ()
        if hooks:
            self.run_hooks(hooks, state)
        history().mark(self.run, task_run)
        return state

    def run_hooks(self, hooks: Sequence[Any], state: State) -> None:
        """Call each hook ``(task, task_run, state)``; one that raises is logged, the state stays."""
        task = self.task
        for hook in hooks:
            try:
                hook(task, self.task_run, state)
            except Exception:
                import logging

                logging.getLogger("nbflow").exception(
                    "hook %r of task %r raised; the task's state is unchanged", hook, task.name
                )

    def run_to_state(self) -> State:
        try:
            self.begin()
            if self.upstream_futures:  # a plain call given futures waits for them, like a submission
                from nbflow.engine.flow_engine import _wait_all

                _wait_all(self.upstream_futures)
                failed = self.resolve_upstream()
                if failed is not None:
                    return self.finish(failed)
            return self.run_begun()
        except KeyboardInterrupt as error:
            if self.task_run is _MISSING or self.task_run.state_type not in _UNFINISHED:
                raise  # nothing recorded yet, or the final state already is
            return self.finish(self.interrupted(error))

    def run_begun(self) -> State:
        """Every step after :meth:`begin` (which a submission runs in the caller's thread)."""
        try:
            state = self.lookup()
            if state is None:
                if self.key is not None and type(self.task.cache_policy) is Serializable:
                    return self.finish(self.call_serialized())
                state = self.call()
                if state.is_completed():
                    state = self.persist(state)
        except KeyboardInterrupt as error:
            state = self.interrupted(error)
        return self.finish(state)

    def lookup(self) -> State | None:
        """Steps 2 to 4: the state of a call that need not run (reused in a flow retry, or a cache hit), else
        None. Sync and async calls share it; only running the function differs between them."""
        state = self.reuse() if self.flow_context is not None else None
        if state is None:
            self.compute_key()
            state = self.probe()
        return state

    def call_serialized(self) -> State:
        """A miss of a ``SERIALIZABLE`` policy: under the key's lock, look again (another thread or process may
        have computed it meanwhile), else compute and store, then let the next waiter in."""
        from nbflow.transactions import lock_key, unlock_key

        assert self.key is not None
        lock = lock_key(f"cache:{self.key}", None, f"task {self.task.name!r}")
        try:
            state = self.probe()
            if state is None:
                state = self.call()
                if state.is_completed():
                    state = self.persist(state)
                    flush_store()  # a deferred save would not be visible to the next holder yet
            return state
        finally:
            unlock_key(lock)

    def interrupted(self, error: KeyboardInterrupt) -> State:
        """An interrupt while hashing, loading or persisting (one during the call is already a state):
        ``Cancelled``. The store is left as it was, since a save commits entirely or not at all."""
        self.task_run.persisted = False
        return Cancelled(error, message="interrupted (KeyboardInterrupt)")

    async def run_to_state_async(self) -> State:
        try:
            self.begin()
            if self.upstream_futures:
                import asyncio

                await asyncio.wait([asyncio.wrap_future(future._future) for future in self.upstream_futures])
                failed = self.resolve_upstream()
                if failed is not None:
                    return self.finish(failed)
            return await self.run_begun_async()
        except KeyboardInterrupt as error:
            if self.task_run is _MISSING or self.task_run.state_type not in _UNFINISHED:
                raise  # nothing recorded yet, or the final state already is
            return self.finish(self.interrupted(error))

    async def run_begun_async(self) -> State:
        try:
            state = self.lookup()
            if state is None:
                state = await self.call_async()
                if state.is_completed():
                    state = self.persist(state)
        except KeyboardInterrupt as error:
            state = self.interrupted(error)
        return self.finish(state)

    def resolve_upstream(self) -> State | None:
        """Replace the futures among the arguments by their results (they are all done by now).
        A future that ended without a result ends this call ``UpstreamFailed`` instead."""
        for future in self.upstream_futures:
            upstream = future.state
            if not upstream.is_completed() and future not in self.allowed:
                return UpstreamFailed(
                    f"upstream task {future.task_name!r} ended {upstream.name}"
                    + (f": {future.task_run.error}" if future.task_run.error else "")
                )
        self.args = resolve(self.args)
        self.kwargs = resolve(self.kwargs)
        self.parameters = {name: resolve(value) for name, value in self.parameters.items()}
        self.task_run.inputs = {key: summarize(value) for key, value in self.parameters.items()}
        return None

    def run_submitted(self) -> State:
        """The work item of a submission: resolve upstream futures, then run (or end UpstreamFailed)."""
        failed = self.resolve_upstream()
        if failed is not None:
            return self.finish(failed)
        if self.task.is_async:
            return run_coroutine(self.run_begun_async())
        return self.run_begun()


# Builtins that reach outside the call's own values (files, the namespace, arbitrary code): a function using
# any of them is not self-contained.
_REACHING = frozenset({"open", "eval", "exec", "compile", "__import__", "getattr", "setattr", "delattr", "globals",
                       "locals", "vars", "input", "breakpoint", "help", "memoryview"})
_SAFE_NAMES = frozenset(name for name in dir(__import__("builtins")) if name not in _REACHING)


def _self_contained(task: Task[..., Any]) -> bool:
    """Whether the task's function uses nothing but its arguments and harmless builtins (``x + 1``,
    ``len(rows)``): no global, no closure, no attribute, no import. Given plain arguments such a call
    reads no file and draws no random number, so a miss skips noting them (the quickest calls, whose
    bookkeeping would be a tenth of their cost). Remembered on the task per code object."""
    fn = task.fn
    code = getattr(fn, "__code__", None)
    known = task.__dict__.get("_self_contained")
    if known is not None and known[0] is code:
        return bool(known[1])
    answer = False
    if code is not None and not getattr(fn, "__closure__", None) and type(fn).__name__ == "function":
        answer = True
        todo = [code]
        while todo and answer:
            current = todo.pop()
            answer = all(name in _SAFE_NAMES for name in current.co_names) and not current.co_freevars
            todo += [const for const in current.co_consts if hasattr(const, "co_names")]
    task.__dict__["_self_contained"] = (code, answer)
    return answer


def _default_key_exclusions(task: Task[..., Any]) -> frozenset[str] | None:
    """:func:`~nbflow.cache_policies.default_key_exclusions` of the task's policy, remembered on the task
    (for as long as the task keeps that policy)."""
    policy = task.cache_policy
    known = task.__dict__.get("_default_key")
    if known is None or known[0] is not policy:
        known = task.__dict__["_default_key"] = (
            policy, None if task.cache_key_fn is not None else default_key_exclusions(policy)
        )
    exclusions: frozenset[str] | None = known[1]
    return exclusions


def run_coroutine(coroutine: Any) -> Any:
    """Run ``coroutine`` to the end from synchronous code and return its result — also from a thread
    whose event loop is running (a Jupyter kernel handling a widget's retry), via a helper thread."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    import threading

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as error:
            outcome["error"] = error

    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(run,), name="nbflow-coroutine", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def failure_to_raise(state: State) -> BaseException | None:
    """The exception a failed ``state`` raises to its caller, its traceback down to the user's frames only
    (see nbflow._tracebacks); None for a state with a result. Callers raise it themselves, rather than
    through ``state.result()``: a frame fewer between the user's call and their function."""
    data = state.result(raise_on_failure=False)
    if isinstance(data, BaseException) and state.type is not StateType.COMPLETED:
        return hide_internal_frames(data)
    return None


def _outcome(state: State, return_state: bool) -> Any:
    __tracebackhide__ = HIDE_FRAMES
    if return_state:
        if state.type in (StateType.CANCELLED, StateType.CRASHED) and state.name != "RolledBack":
            # An interrupt or a crash still stops the caller; the state is in the run history.
            raise hide_internal_frames(state.result(raise_on_failure=False))
        return state
    error = failure_to_raise(state)
    if error is not None:
        raise error
    return state.result()


def run_task(task: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
             return_state: bool = False, wait_for: Any = None) -> Any:
    """Run one call of ``task`` and return its result (or its final state with ``return_state``); first
    wait for the futures in ``wait_for``."""
    __tracebackhide__ = HIDE_FRAMES
    engine = TaskRunEngine(task, args, kwargs)
    if wait_for is not None:
        engine.wait_for = wait_for
    state = engine.run_to_state()
    if not return_state:
        error = failure_to_raise(state)
        if error is not None:
            raise error
        return state.result()
    return _outcome(state, return_state)


async def run_task_async(task: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
                         return_state: bool = False, wait_for: Any = None) -> Any:
    """Run one call of an ``async def`` task (awaited); the result, or the final state."""
    __tracebackhide__ = HIDE_FRAMES
    engine = TaskRunEngine(task, args, kwargs)
    engine.wait_for = wait_for
    return _outcome(await engine.run_to_state_async(), return_state)


def submit_task(task: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
                map_info: tuple[str, int, int] | None = None, wait_for: Any = None) -> TaskFuture[Any]:
    """Start one call of ``task`` on the current task runner and return its future at once.

    Binding and the ``Pending`` record happen here, in the caller (a bad call fails at once, and calls
    are numbered in the order they were submitted); the rest runs on the runner once every future among
    the arguments is done.
    """
    import concurrent.futures

    from nbflow.engine.runners import default_runner

    flow_context = current_flow_run()
    runner: TaskRunner = (flow_context.task_runner if flow_context is not None else None) or default_runner()
    engine = TaskRunEngine(task, args, kwargs, map_info=map_info)
    engine.wait_for = wait_for
    engine.attempt = runner.call_attempt
    engine.begin()
    future: concurrent.futures.Future[State] = concurrent.futures.Future()
    result: TaskFuture[Any] = TaskFuture(engine.task_run, future)
    if flow_context is not None:
        flow_context.add_future(result)
    if engine.transaction is not None:
        engine.transaction.add_future(result)
    context = contextvars.copy_context()

    def work() -> State:
        return context.run(engine.run_submitted)

    if runner.in_worker():
        # A task submitting from inside one of the pool's own workers runs the call inline: with a
        # bounded pool, workers that wait on queued work could otherwise wait forever.
        _settle(future, work)
        return result

    def launch() -> None:
        try:
            inner = runner.submit_work(work)
        except BaseException as error:  # e.g. a runner that was shut down
            future.set_exception(error)
            return
        inner.add_done_callback(lambda done: _copy_outcome(done, future))

    pending = [f for f in engine.upstream_futures if not f.done()]
    if not pending:
        launch()
    else:
        _when_all_done(pending, launch)
    return result


def _settle(future: concurrent.futures.Future[State], work: Callable[[], State]) -> None:
    try:
        future.set_result(work())
    except BaseException as error:
        future.set_exception(error)


def _copy_outcome(source: concurrent.futures.Future[State], target: concurrent.futures.Future[State]) -> None:
    error = source.exception()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


def _when_all_done(futures: list[TaskFuture[Any]], callback: Callable[[], None]) -> None:
    """Call ``callback`` once, when the last of ``futures`` is done (in the thread that finished it)."""
    import threading

    lock = threading.Lock()
    left = [len(futures)]

    def one_done(_: Any) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            callback()

    for future in futures:
        future._future.add_done_callback(one_done)
