"""``ProcessPoolTaskRunner``: submitted task calls whose attempts run in worker processes.

As with the Dask runner, the engine (cache key, lookup, persistence, states) stays in this process — a
cache hit never starts a worker — and only an attempt of the user's function is shipped: the function
and its arguments go over by value with ``cloudpickle`` when it is installed (functions defined in a
notebook cannot be imported by a fresh process), by reference otherwise. Timeouts are enforced in the
worker. The worker records the files an attempt reads (as a call in this process would: through ``open``,
directory listings and pyarrow's readers) and sends them back with its state, so they count for the cache
entry as any call's do. The random numbers an attempt draws in the worker are not seen here.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbflow.engine.runners import ThreadPoolTaskRunner
from nbflow.exceptions import ConfigurationError

if TYPE_CHECKING:
    from nbflow.states import State

__all__ = ["ProcessPoolTaskRunner"]


def _dumps(value: Any) -> bytes:
    try:
        import cloudpickle
    except ImportError:
        return pickle.dumps(value)
    return bytes(cloudpickle.dumps(value))


def _attempt_in_worker(payload: bytes) -> bytes:
    """In the worker process: one attempt, and what it read; its outcome as a pickled (state, reads)."""
    from nbflow.engine import file_reads
    from nbflow.engine.task_engine import call_to_state

    fn, args, kwargs, timeout_seconds, label = pickle.loads(payload)
    state, reads = file_reads.watched(call_to_state, fn, args, kwargs, timeout_seconds, label)
    try:
        return _dumps((state, reads))
    except Exception as error:
        from nbflow.states import Failed

        problem = TypeError(f"{label} returned a value that cannot be sent back from its worker process: {error}")
        return _dumps((Failed(problem, message=str(problem)), reads))


class ProcessPoolTaskRunner(ThreadPoolTaskRunner):
    """Runs the attempts of submitted task calls in a pool of ``max_workers`` processes (default: the
    number of CPUs), for pure-Python CPU work that threads cannot run in parallel. ``initializer(*initargs)``
    runs once in each worker process as it starts (as :class:`concurrent.futures.ProcessPoolExecutor`'s).

    Each call is driven from a thread here (cache lookups and writes stay in this process); its function
    and arguments must be picklable, with ``cloudpickle`` for functions defined in a notebook.
    """

    runs_attempts_here = False
    reports_reads = True  # the worker's file reads come back with each attempt

    def __init__(self, max_workers: int | None = None, *, initializer: Callable[..., Any] | None = None,
                 initargs: tuple[Any, ...] = ()) -> None:
        if initializer is not None and not callable(initializer):
            raise ConfigurationError(f"ProcessPoolTaskRunner(initializer={initializer!r}): give a callable or None")
        self.initializer = initializer
        self.initargs = tuple(initargs)
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ConfigurationError(
                f"ProcessPoolTaskRunner(max_workers={max_workers!r}): give a whole number of processes >= 1, "
                "or None for the number of CPUs"
            )
        processes = max_workers or os.cpu_count() or 1
        super().__init__(max_workers=processes)
        self.max_workers = processes
        self._processes: concurrent.futures.ProcessPoolExecutor | None = None
        self._process_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ProcessPoolTaskRunner(max_workers={self.max_workers})"

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._process_lock:
            if self._processes is None:
                # spawn: forking a kernel that runs threads can deadlock the child; cloudpickle ships
                # the notebook's functions by value, so the fresh process needs nothing of __main__.
                try:
                    import cloudpickle  # noqa: F401

                    method = "spawn"
                except ImportError:
                    method = "fork" if os.name == "posix" else "spawn"
                context = multiprocessing.get_context(method)
                self._processes = concurrent.futures.ProcessPoolExecutor(
                    self.max_workers, mp_context=context, initializer=self.initializer, initargs=self.initargs
                )
            return self._processes

    def shutdown(self) -> None:
        super().shutdown()
        with self._process_lock:
            processes, self._processes = self._processes, None
        if processes is not None:
            processes.shutdown(wait=True, cancel_futures=True)

    def call_attempt(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                     timeout_seconds: float | None, label: str) -> State:
        """Send one attempt to a worker process and wait for its state."""
        from nbflow.engine.file_reads import current as current_recorder
        from nbflow.engine.task_engine import error_summary
        from nbflow.states import Cancelled, Crashed, Failed

        try:
            payload = _dumps((fn, args, kwargs, timeout_seconds, label))
        except Exception as error:
            problem = TypeError(
                f"{label} cannot be sent to a worker process ({error_summary(error)}); its function and arguments "
                "must be picklable (pip install cloudpickle for functions defined in a notebook)"
            )
            return Failed(problem, message=str(problem))
        try:
            outcome = self._pool().submit(_attempt_in_worker, payload).result()
        except KeyboardInterrupt as error:
            return Cancelled(error, message="interrupted while waiting for the worker process")
        except concurrent.futures.process.BrokenProcessPool as error:
            with self._process_lock:
                self._processes = None  # a new pool for the next attempt
            return Crashed(error, message=f"the worker process died: {error_summary(error)}")
        except Exception as error:
            return Failed(error, message=f"in a worker process: {error_summary(error)}")
        state: State
        state, reads = pickle.loads(outcome)
        recorder = current_recorder()  # the call's: its entry depends on what the worker read
        if recorder is not None:
            recorder.take(reads)
        return state

    def duplicate(self) -> ProcessPoolTaskRunner:
        return ProcessPoolTaskRunner(self.max_workers, initializer=self.initializer, initargs=self.initargs)
