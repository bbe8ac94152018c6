"""Timeouts that interrupt a running task.

- On the main thread (a notebook cell, a script) a ``SIGALRM`` interval timer interrupts the task, even
  inside ``time.sleep`` or a blocking read, by raising :class:`~nbflow.exceptions.TaskTimeoutError`.
  Nested timeouts (a task inside a flow with its own timeout) share the one timer: it is always armed
  for the earliest deadline.
- On other threads no signal can be delivered, so a watchdog raises the exception asynchronously in the
  task's thread. That interrupts Python code between bytecodes, but not a call blocked inside C (a long
  ``time.sleep``, a socket read): such a task runs to the end of that call, then stops. Either way the
  state ends ``TimedOut``.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from nbflow.exceptions import TaskTimeoutError

__all__ = ["timeout"]


@dataclass(order=True)
class _Deadline:
    at: float
    token: int = field(compare=False)
    label: str = field(compare=False)
    seconds: float = field(compare=False)
    fired: bool = field(default=False, compare=False)


_stack: list[_Deadline] = []
_counter = 0
_previous_handler: object = None


def _arm() -> None:
    pending = [d for d in _stack if not d.fired]
    if not pending:
        signal.setitimer(signal.ITIMER_REAL, 0)
        return
    soonest = min(pending)
    signal.setitimer(signal.ITIMER_REAL, max(soonest.at - time.monotonic(), 1e-4))


def _on_alarm(signum: int, frame: object) -> None:
    now = time.monotonic()
    due = [d for d in _stack if not d.fired and d.at <= now + 1e-4]
    if not due:
        _arm()
        return
    # The outermost expired deadline wins: its block is the one that must stop.
    deadline = min(due, key=_stack.index)
    deadline.fired = True
    _arm()
    raise TaskTimeoutError(f"{deadline.label} timed out after {deadline.seconds:g} s")


@contextmanager
def _main_thread_timeout(seconds: float, label: str) -> Iterator[None]:
    global _counter, _previous_handler
    if not _stack:
        _previous_handler = signal.signal(signal.SIGALRM, _on_alarm)
    _counter += 1
    deadline = _Deadline(time.monotonic() + seconds, _counter, label, seconds)
    _stack.append(deadline)
    _arm()
    try:
        yield
    except TaskTimeoutError as error:
        # A deadline of an outer block fired while we ran: let it pass through to its block.
        if not deadline.fired:
            raise
        raise TaskTimeoutError(f"{label} timed out after {seconds:g} s") from error.__cause__
    finally:
        _stack.remove(deadline)
        if _stack:
            _arm()
        else:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, _previous_handler)  # type: ignore[arg-type]


def _async_exception_setter() -> Callable[[int, type[BaseException] | None], None]:
    """``PyThreadState_SetAsyncExc``. ctypes is imported when a worker thread's timeout is armed, not when
    it fires, and not at all in a process that arms none (it costs a process's first task call ~2 ms)."""
    import ctypes

    def set_exception(thread_id: int, kind: type[BaseException] | None) -> None:
        # A NULL exception cancels one that was scheduled but not yet delivered.
        exception = None if kind is None else ctypes.py_object(kind)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exception)

    return set_exception


@contextmanager
def _worker_thread_timeout(seconds: float, label: str) -> Iterator[None]:
    thread_id = threading.get_ident()
    set_exception = _async_exception_setter()
    state = {"done": False, "fired": False}
    lock = threading.Lock()

    def fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                set_exception(thread_id, TaskTimeoutError)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except TaskTimeoutError as error:
        if state["fired"]:
            raise TaskTimeoutError(f"{label} timed out after {seconds:g} s") from None
        raise error
    finally:
        with lock:
            state["done"] = True
            if state["fired"]:
                set_exception(thread_id, None)
        timer.cancel()
    if state["fired"]:
        # The asynchronous exception arrived after the block ended (a C call finished just then):
        # the deadline still passed, so the block counts as timed out.
        raise TaskTimeoutError(f"{label} timed out after {seconds:g} s")


@contextmanager
def timeout(seconds: float | None, label: str) -> Iterator[None]:
    """Raise :class:`TaskTimeoutError` in this thread if the block runs longer than ``seconds``."""
    if seconds is None:
        yield
        return
    if threading.current_thread() is threading.main_thread():
        with _main_thread_timeout(seconds, label):
            yield
    else:
        with _worker_thread_timeout(seconds, label):
            yield
