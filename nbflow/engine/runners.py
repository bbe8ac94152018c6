"""Task runners: where submitted task calls run.

A task runner executes *work items*: a callable that drives one task call through the engine and returns
its final state. The engine itself (cache key, probe, persistence, state changes) always runs in this
process; a runner decides which thread runs that driver and where a single *attempt* of the user's
function runs (:meth:`TaskRunner.call_attempt`). The thread pool runs attempts in its worker threads;
the Dask runner (``nbflow.integrations.dask``) keeps the driver in a thread here and ships each attempt
to the cluster, so only cache misses ever leave the kernel.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbflow.exceptions import ConfigurationError

if TYPE_CHECKING:
    from nbflow.states import State

__all__ = ["TaskRunner", "ThreadPoolTaskRunner", "default_runner"]


class TaskRunner:
    """The interface the engine uses to run submitted task calls; subclass it for another back end.

    A runner is started before its first submission and shut down after its last; a flow with
    ``task_runner=...`` works on its own :meth:`duplicate` of the runner, started when the flow run
    begins and shut down (after every submitted call ended) when it ends.
    """

    # Attempts run in this process (threads): the files they read and the random numbers they draw are
    # seen here. A runner that ships them elsewhere sets False; only declared files count for its calls.
    runs_attempts_here = True

    def start(self) -> None:
        """Acquire what the runner needs (threads, a cluster client). Idempotent."""

    def shutdown(self) -> None:
        """Release it again, after every submitted work item has finished."""

    def submit_work(self, work: Callable[[], State]) -> concurrent.futures.Future[State]:
        """Run ``work`` (a task call's driver) concurrently; its future ends with the final state."""
        raise NotImplementedError

    def call_attempt(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                     timeout_seconds: float | None, label: str) -> State:
        """Run one attempt of a task's function and turn the outcome into a state (here: in this thread)."""
        from nbflow.engine.task_engine import call_to_state

        return call_to_state(fn, args, kwargs, timeout_seconds, label)

    def in_worker(self) -> bool:
        """Whether the calling thread is one of this runner's workers."""
        return False

    def duplicate(self) -> TaskRunner:
        """A fresh, unstarted runner with the same settings (one per flow run)."""
        return type(self)()

    def __enter__(self) -> TaskRunner:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


_worker = threading.local()


class ThreadPoolTaskRunner(TaskRunner):
    """Runs submitted task calls in a bounded pool of threads (the default for ``submit`` and ``map``).

    ``max_workers`` defaults to ``min(32, cpu count + 4)``, as :class:`concurrent.futures.ThreadPoolExecutor`
    does: enough to overlap I/O, never unbounded. Threads help tasks that wait (I/O, sleeping, C code that
    releases the GIL, such as numpy); pure-Python CPU work needs processes — the Dask runner.
    """

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ConfigurationError(
                f"ThreadPoolTaskRunner(max_workers={max_workers!r}): give a whole number of threads >= 1, "
                "or None for the default"
            )
        self.max_workers: int = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ThreadPoolTaskRunner(max_workers={self.max_workers})"

    def start(self) -> None:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.max_workers, thread_name_prefix="nbflow-task",
                    initializer=self._mark_worker,
                )

    def _mark_worker(self) -> None:
        _worker.runner = self

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def submit_work(self, work: Callable[[], State]) -> concurrent.futures.Future[State]:
        executor = self._executor
        if executor is None:
            self.start()
            executor = self._executor
        assert executor is not None
        return executor.submit(work)

    def in_worker(self) -> bool:
        return getattr(_worker, "runner", None) is self

    def duplicate(self) -> ThreadPoolTaskRunner:
        return ThreadPoolTaskRunner(self.max_workers)


_default: ThreadPoolTaskRunner | None = None
_default_lock = threading.Lock()


def default_runner() -> ThreadPoolTaskRunner:
    """The process's shared thread pool, used by ``submit``/``map`` outside a flow with its own runner."""
    global _default
    runner = _default
    if runner is None:
        with _default_lock:
            if _default is None:
                _default = ThreadPoolTaskRunner()
            runner = _default
    return runner


def _reset_after_fork() -> None:
    # A forked child inherits the pool object but none of its threads.
    global _default
    _default = None


os.register_at_fork(after_in_child=_reset_after_fork)
