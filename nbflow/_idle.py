"""A helper thread that writes what a burst of calls left behind once the process goes quiet.

The run history and the result store batch their writes, and the callers write a batch themselves when
it is due (in their own thread: a background thread writing meanwhile would hold the GIL while the engine
works, which measured slower). What a burst leaves unwritten when the calls stop is this thread's.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["IdleWriter"]

_writers: weakref.WeakSet[IdleWriter] = weakref.WeakSet()


class IdleWriter:
    """Calls ``flush`` once a batch has waited ``delay`` seconds and nobody wrote it.

    ``since()`` is when the oldest unwritten change was made (``time.monotonic()``), or ``None`` when there
    is none; ``flush()`` writes the batch and returns whether it could. Call :meth:`wake` on the first
    change of a batch only (setting an Event costs a lock and a notify, too much for every task call).
    ``before`` runs on every wake, before anything else (the history checkpoints its log there).

    The three are methods of one owner, held weakly: the thread ends once the owner is gone.
    """

    def __init__(self, name: str, delay: float, since: Callable[[], float | None], flush: Callable[[], bool],
                 before: Callable[[], None] | None = None) -> None:
        self.name = name
        self.delay = delay
        self._since = weakref.WeakMethod(since)
        self._flush = weakref.WeakMethod(flush)
        self._before = weakref.WeakMethod(before) if before is not None else None
        self._event = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._start_lock = threading.Lock()
        weakref.finalize(since.__self__, self.stop)  # type: ignore[attr-defined]
        _writers.add(self)

    def wake(self) -> None:
        """Look at the batch soon (starting the thread on first use)."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._stopped:
                    thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                    thread.start()
                    self._thread = thread
        self._event.set()

    def stop(self) -> None:
        """End the thread (at its next wake-up); later batches are the callers' to write."""
        self._stopped = True
        self._event.set()

    def _call(self, method: weakref.WeakMethod[Any]) -> Any:
        bound = method()
        if bound is None:  # the owner is gone
            self._stopped = True
            return None
        try:
            return bound()
        except Exception:  # a bug must not end the thread: later batches would wait for their callers
            import logging

            logging.getLogger("nbflow").exception("%s: %r failed", self.name, bound)
            return None

    def _run(self) -> None:
        while not self._stopped:
            self._event.wait()
            self._event.clear()
            if self._before is not None:
                self._call(self._before)
            if self._stopped or self._call(self._since) is None:
                continue
            time.sleep(2 * self.delay)
            since = self._call(self._since)
            if since is not None and time.monotonic() - since >= self.delay and not self._call(self._flush):
                continue  # the next change tries again (retrying here would report the failure twice a second)
            if self._call(self._since) is not None:  # changes while a batch waits do not wake this thread
                self._event.set()

    def _forget_thread(self) -> None:
        self._thread = None
        self._event = threading.Event()
        self._start_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # The child has none of the parent's threads: the next wake starts its own.
    for writer in list(_writers):
        writer._forget_thread()


os.register_at_fork(after_in_child=_after_fork_in_child)
