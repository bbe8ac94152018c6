"""In-process publish/subscribe: the engine publishes state changes; widgets and the CLI subscribe.

Publishing with no subscriber costs one attribute check, so the engine can publish on every state
change without slowing plain calls down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from nbflow.runs import RunRecord, TaskRunRecord
    from nbflow.states import State

__all__ = ["Event", "publish", "subscribe"]

_log = logging.getLogger("nbflow.events")


@dataclass(frozen=True)
class Event:
    """One state change of a flow run (``kind="run"``) or a task run (``kind="task_run"``)."""

    kind: Literal["run", "task_run"]
    state: State
    run: RunRecord
    task_run: TaskRunRecord | None = None


Subscriber = Callable[[Event], Any]

_lock = threading.Lock()
# Replaced, never mutated, so publishers iterate a snapshot without taking the lock.
_subscribers: tuple[Subscriber, ...] = ()


def subscribe(callback: Subscriber) -> Callable[[], None]:
    """Call ``callback(event)`` on every state change in this process; returns an unsubscribe function.

    Callbacks run synchronously in the thread that changed the state: keep them short (queue work
    elsewhere). An exception in a callback is logged and never reaches the task.
    """
    global _subscribers
    with _lock:
        _subscribers = (*_subscribers, callback)

    def unsubscribe() -> None:
        global _subscribers
        with _lock:
            _subscribers = tuple(sub for sub in _subscribers if sub is not callback)

    return unsubscribe


def publish(event: Event) -> None:
    """Deliver ``event`` to every subscriber."""
    for callback in _subscribers:
        try:
            callback(event)
        except Exception:
            _log.exception("nbflow event subscriber %r failed", callback)


def has_subscribers() -> bool:
    return bool(_subscribers)
