"""In-process publish/subscribe: the engine publishes state changes; widgets and the CLI subscribe.

Publishing with no subscriber costs one attribute check, so the engine can publish on every state
change without slowing plain calls down.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from nbflow.runs import RunRecord, TaskRunRecord
    from nbflow.states import State, StateType

__all__ = ["Event", "publish", "subscribe"]


class Event:
    """One state change of a flow run (``kind="run"``) or a task run (``kind="task_run"``).

    ``name``, ``type`` and ``message`` describe the new state; ``state`` is the full
    :class:`~nbflow.State`, built only when a subscriber asks for it (most read the record), so
    subscribing does not add a model construction to every task call.
    """

    __slots__ = ("_state", "kind", "message", "name", "run", "task_run", "type")

    def __init__(self, kind: Literal["run", "task_run"], state: State | None, run: RunRecord,
                 task_run: TaskRunRecord | None = None, *, name: str | None = None,
                 type: StateType | None = None, message: str | None = None) -> None:
        if state is None and (name is None or type is None):
            raise ValueError("an Event needs a state, or its name and type")
        self.kind = kind
        self.run = run
        self.task_run = task_run
        self._state = state
        self.name: str = state.name if state is not None else name  # type: ignore[assignment]
        self.type: StateType = state.type if state is not None else type  # type: ignore[assignment]
        self.message = state.message if state is not None else message

    @property
    def state(self) -> State:
        if self._state is None:
            from nbflow.states import State

            self._state = State(type=self.type, name=self.name, message=self.message)
        return self._state

    def __repr__(self) -> str:
        return f"Event({self.kind!r}, {self.name!r})"


Subscriber = Callable[[Event], Any]

_lock = threading.Lock()
# Replaced, never mutated, so publishers iterate a snapshot without taking the lock. _subscribers get every
# event; _first_only the events of runs and the first event of each task run (see subscribe).
_subscribers: tuple[Subscriber, ...] = ()
_first_only: tuple[Subscriber, ...] = ()


def subscribe(callback: Subscriber, *, state_changes: bool = True) -> Callable[[], None]:
    """Call ``callback(event)`` on every state change in this process; returns an unsubscribe function.

    Callbacks run synchronously in the thread that changed the state: keep them short (queue work
    elsewhere). An exception in a callback is logged and never reaches the task.

    With ``state_changes=False`` the callback gets the events of flow runs and only the first event of each
    task run (``Pending``), for a subscriber that then follows the task run's record itself: a task call
    publishes three events or more, and delivering them is a few percent of a quick call's time.
    """
    global _subscribers, _first_only
    with _lock:
        if state_changes:
            _subscribers = (*_subscribers, callback)
        else:
            _first_only = (*_first_only, callback)

    def unsubscribe() -> None:
        global _subscribers, _first_only
        with _lock:
            _subscribers = tuple(sub for sub in _subscribers if sub is not callback)
            _first_only = tuple(sub for sub in _first_only if sub is not callback)

    return unsubscribe


def publish(event: Event, *, first: bool = False) -> None:
    """Deliver ``event`` to every subscriber; ``first`` marks the first event of a task run (which the
    subscribers of first events only get too, as they get every event of a run)."""
    for callback in _subscribers:
        _deliver(callback, event)
    if _first_only and (first or event.kind == "run"):
        for callback in _first_only:
            _deliver(callback, event)


def _deliver(callback: Subscriber, event: Event) -> None:
    try:
        callback(event)
    except Exception:
        import logging  # here: importing it costs a process's first task call ~5 ms

        logging.getLogger("nbflow.events").exception("nbflow event subscriber %r failed", callback)


def has_subscribers() -> bool:
    """Whether anything subscribed, to any events."""
    return bool(_subscribers or _first_only)
