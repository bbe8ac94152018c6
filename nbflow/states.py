"""States are data: one pydantic model with a ``type`` that drives logic and a ``name`` for display.

The constructors (:func:`Completed`, :func:`Cached`, :func:`Failed`, ...) are the only way the engine
makes states, so every name used anywhere is listed here.
"""

from __future__ import annotations

import datetime as _dt
import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from nbflow.exceptions import MissingResult

__all__ = [
    "AwaitingRetry",
    "Cached",
    "Cancelled",
    "Completed",
    "Crashed",
    "Failed",
    "Pending",
    "Retrying",
    "RolledBack",
    "Running",
    "State",
    "StateType",
    "TimedOut",
    "UpstreamFailed",
]


class StateType(str, enum.Enum):
    """The kind of a state; names such as ``Cached`` or ``TimedOut`` refine a type for display."""

    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"

    def __str__(self) -> str:
        return self.value


_FINAL = frozenset({StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED})

class _NotSet:
    """The "no result attached" marker; survives pydantic's copying of private defaults."""

    def __copy__(self) -> _NotSet:
        return self

    def __deepcopy__(self, memo: Any) -> _NotSet:
        return self

    def __repr__(self) -> str:
        return "<no result>"


_NOT_SET: Any = _NotSet()


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class State(BaseModel):
    """The state of a task run or flow run at one moment.

    ``type`` drives logic (``COMPLETED``, ``FAILED``, ...); ``name`` is what users read (``Cached`` is a
    ``COMPLETED`` state whose result came from the store). The result, or the exception of a failed run,
    rides along privately and is returned or raised by :meth:`result`.
    """

    model_config = ConfigDict(frozen=False, arbitrary_types_allowed=True)

    type: StateType
    name: str
    message: str | None = None
    timestamp: _dt.datetime = Field(default_factory=_now)
    persisted: bool | None = Field(
        default=None, description="Whether the result was written to the store (None: not applicable)."
    )

    _data: Any = PrivateAttr(default=_NOT_SET)

    def __repr__(self) -> str:
        message = f", message={self.message!r}" if self.message else ""
        return f"State(name={self.name!r}, type={self.type.value}{message})"

    __str__ = __repr__

    def is_pending(self) -> bool:
        return self.type in (StateType.PENDING, StateType.SCHEDULED)

    def is_scheduled(self) -> bool:
        return self.type == StateType.SCHEDULED

    def is_running(self) -> bool:
        return self.type == StateType.RUNNING

    def is_completed(self) -> bool:
        return self.type == StateType.COMPLETED

    def is_failed(self) -> bool:
        return self.type == StateType.FAILED

    def is_crashed(self) -> bool:
        return self.type == StateType.CRASHED

    def is_cancelled(self) -> bool:
        return self.type == StateType.CANCELLED

    def is_final(self) -> bool:
        """True for COMPLETED, FAILED, CANCELLED and CRASHED."""
        return self.type in _FINAL

    def has_result(self) -> bool:
        return self._data is not _NOT_SET

    def result(self, raise_on_failure: bool = True) -> Any:
        """The run's return value; for a failed run, its exception is raised (or returned when
        ``raise_on_failure=False``)."""
        private = self.__pydantic_private__
        data = private["_data"] if private is not None else _NOT_SET
        if isinstance(data, BaseException) and self.type is not StateType.COMPLETED:
            if raise_on_failure:
                raise data
            return data
        if data is _NOT_SET:
            raise MissingResult(f"state {self.name!r} has no result attached")
        return data

    def with_data(self, data: Any) -> State:
        """Attach a result (or exception) and return self."""
        self._data = data
        return self


_FIELDS_SET = frozenset({"type", "name", "message"})
_new = object.__new__
_set = object.__setattr__


def _state(type_: StateType, name: str, message: str | None = None, data: Any = _NOT_SET,
           persisted: bool | None = None) -> State:
    # The constructors below pass trusted values, so the state is built without pydantic's validation
    # (a fifth of a cache hit's engine time otherwise); State(...) called by users still validates.
    state = _new(State)
    _set(state, "__dict__", {"type": type_, "name": name, "message": message, "timestamp": _now(),
                             "persisted": persisted})
    _set(state, "__pydantic_fields_set__", set(_FIELDS_SET))
    _set(state, "__pydantic_extra__", None)
    _set(state, "__pydantic_private__", {"_data": data})
    return state


def Pending(message: str | None = None) -> State:
    return _state(StateType.PENDING, "Pending", message)


def Running(message: str | None = None) -> State:
    return _state(StateType.RUNNING, "Running", message)


def AwaitingRetry(message: str | None = None) -> State:
    return _state(StateType.SCHEDULED, "AwaitingRetry", message)


def Retrying(message: str | None = None) -> State:
    return _state(StateType.RUNNING, "Retrying", message)


def Completed(data: Any = None, message: str | None = None, persisted: bool | None = None) -> State:
    return _state(StateType.COMPLETED, "Completed", message, data, persisted=persisted)


def Cached(data: Any = None, message: str | None = None) -> State:
    return _state(StateType.COMPLETED, "Cached", message, data, persisted=True)


def Failed(error: BaseException | None = None, message: str | None = None) -> State:
    return _state(StateType.FAILED, "Failed", message, error if error is not None else _NOT_SET)


def TimedOut(error: BaseException | None = None, message: str | None = None) -> State:
    return _state(StateType.FAILED, "TimedOut", message, error if error is not None else _NOT_SET)


def Crashed(error: BaseException | None = None, message: str | None = None) -> State:
    return _state(StateType.CRASHED, "Crashed", message, error if error is not None else _NOT_SET)


def Cancelled(error: BaseException | None = None, message: str | None = None) -> State:
    return _state(StateType.CANCELLED, "Cancelled", message, error if error is not None else _NOT_SET)


def UpstreamFailed(message: str | None = None) -> State:
    """A task that never ran because a future it was given ended without a result."""
    from nbflow.exceptions import UpstreamTaskError

    return _state(StateType.FAILED, "UpstreamFailed", message, UpstreamTaskError(message or "upstream task failed"))


def RolledBack(message: str | None = None) -> State:
    """A task whose result was staged in a transaction that rolled back: nothing was stored."""
    return _state(StateType.CANCELLED, "RolledBack", message)
