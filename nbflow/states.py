"""States are data: one small class with a ``type`` that drives logic and a ``name`` for display.

The constructors (:func:`Completed`, :func:`Cached`, :func:`Failed`, ...) are the only way the engine
makes states, so every name used anywhere is listed here.

``State`` is a plain slotted class rather than a pydantic model so that a cache hit in a fresh process
never imports pydantic (about a hundred milliseconds); it offers the pydantic-style ``model_dump`` /
``model_copy`` and validates as a field of pydantic models all the same.
"""

from __future__ import annotations

import datetime as _dt
import enum
import time
from typing import Any

from nbflow.exceptions import ConfigurationError, MissingResult

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
    "StateName",
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
_FAILURES = frozenset({StateType.FAILED, StateType.CANCELLED, StateType.CRASHED})


def _run_error(state: State) -> BaseException:
    """The exception a failure state without one of its own stands for (Prefect's ``FailedRun`` & co.)."""
    from nbflow.exceptions import CancelledRun, CrashedRun, FailedRun

    kind, default = {
        StateType.FAILED: (FailedRun, "Run failed."),
        StateType.CRASHED: (CrashedRun, "Run crashed."),
        StateType.CANCELLED: (CancelledRun, "Run cancelled."),
    }[state.type]
    return kind(state.message or default)


class StateName(str):
    """A run record's state: the name as a plain string (``run.state == "Cached"`` keeps working) that
    also answers what a :class:`State` does, so code written for Prefect's ``run.state.name``,
    ``run.state.type`` and ``run.state.is_failed()`` works on records too.

    Make one with :func:`state_name`, which shares one instance per (name, type).
    """

    type_value: str

    def __new__(cls, name: str, type: StateType | str = "") -> StateName:
        self = str.__new__(cls, name)
        if not type:
            type = _STATE_TYPES_BY_NAME.get(name, "PENDING")
        self.type_value = type.value if isinstance(type, StateType) else str(type)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (StateName, (str(self), self.type_value))

    @property
    def name(self) -> str:
        """The name as a plain string (what Prefect's ``state.name`` gives)."""
        return str.__str__(self)

    @property
    def type(self) -> StateType:
        """The state's :class:`StateType` (``COMPLETED``, ``FAILED``, ...)."""
        return StateType(self.type_value)

    def is_pending(self) -> bool:
        return self.type_value in ("PENDING", "SCHEDULED")

    def is_scheduled(self) -> bool:
        return self.type_value == "SCHEDULED"

    def is_running(self) -> bool:
        return self.type_value == "RUNNING"

    def is_completed(self) -> bool:
        return self.type_value == "COMPLETED"

    def is_failed(self) -> bool:
        return self.type_value == "FAILED"

    def is_crashed(self) -> bool:
        return self.type_value == "CRASHED"

    def is_cancelled(self) -> bool:
        return self.type_value == "CANCELLED"

    def is_final(self) -> bool:
        """True for COMPLETED, FAILED, CANCELLED and CRASHED."""
        return self.type_value in ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")


# The type of each state name the engine uses (a name given without its type gets it from here).
_STATE_TYPES_BY_NAME = {
    "Pending": "PENDING", "Running": "RUNNING", "Retrying": "RUNNING", "AwaitingRetry": "SCHEDULED",
    "Completed": "COMPLETED", "Cached": "COMPLETED", "Failed": "FAILED", "TimedOut": "FAILED",
    "UpstreamFailed": "FAILED", "Crashed": "CRASHED", "Cancelled": "CANCELLED", "RolledBack": "CANCELLED",
}
_state_names: dict[tuple[str, str], StateName] = {}


def state_name(name: str, type: StateType | str = "") -> StateName:
    """The shared :class:`StateName` for ``name`` (and its type, looked up for the engine's own names)."""
    type_value = type.value if isinstance(type, StateType) else type
    known = _state_names.get((name, type_value))
    if known is None:
        known = StateName(name, type_value)
        if len(_state_names) < 4096:  # names users make up are few; never grow without bound
            _state_names[(name, type_value)] = known
    return known

class _NotSet:
    """The "no result attached" marker; survives pydantic's copying of private defaults."""

    def __copy__(self) -> _NotSet:
        return self

    def __deepcopy__(self, memo: Any) -> _NotSet:
        return self

    def __repr__(self) -> str:
        return "<no result>"


_NOT_SET: Any = _NotSet()


_time = time.time


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


_FIELDS = ("type", "name", "message", "timestamp", "persisted")


class State:
    """The state of a task run or flow run at one moment.

    ``type`` drives logic (``COMPLETED``, ``FAILED``, ...); ``name`` is what users read (``Cached`` is a
    ``COMPLETED`` state whose result came from the store). The result, or the exception of a failed run,
    rides along privately and is returned or raised by :meth:`result`. ``persisted`` says whether the
    result was written to the store (None: not applicable).
    """

    # _stamp: the time as a float (what the engine gives, cheaply) or the datetime (once read, or as given).
    # __weakref__: a deferred save refers to its call's state without keeping the result alive.
    __slots__ = ("__weakref__", "_data", "_stamp", "message", "name", "persisted", "type")

    type: StateType
    name: str
    message: str | None
    persisted: bool | None
    _stamp: float | _dt.datetime

    def __init__(self, type: StateType | str, name: str, message: str | None = None,
                 timestamp: _dt.datetime | None = None, persisted: bool | None = None) -> None:
        try:
            self.type = type if isinstance(type, StateType) else StateType(str(type).upper())
        except ValueError:
            choices = ", ".join(member.value for member in StateType)
            raise ConfigurationError(f"State: type={type!r} is not one of {choices}") from None
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"State: name={name!r} must be a non-empty string")
        if message is not None and not isinstance(message, str):
            raise ConfigurationError(f"State: message={message!r} must be a string or None")
        if timestamp is not None and not isinstance(timestamp, _dt.datetime):
            raise ConfigurationError(f"State: timestamp={timestamp!r} must be a datetime or None")
        if persisted is not None and not isinstance(persisted, bool):
            raise ConfigurationError(f"State: persisted={persisted!r} must be True, False or None")
        self.name = name
        self.message = message
        self._stamp = timestamp if timestamp is not None else _now()
        self.persisted = persisted
        self._data = _NOT_SET

    def __repr__(self) -> str:
        message = f", message={self.message!r}" if self.message else ""
        return f"State(name={self.name!r}, type={self.type.value}{message})"

    __str__ = __repr__

    @property
    def timestamp(self) -> _dt.datetime:
        """When the state was entered (UTC)."""
        stamp = self._stamp
        if isinstance(stamp, _dt.datetime):
            return stamp
        # The engine makes a state per task call and rarely reads its time: the datetime is built here.
        self._stamp = when = _dt.datetime.fromtimestamp(stamp, _dt.timezone.utc)
        return when

    @timestamp.setter
    def timestamp(self, value: _dt.datetime) -> None:
        if not isinstance(value, _dt.datetime):
            raise ConfigurationError(f"State: timestamp={value!r} must be a datetime")
        self._stamp = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _FIELDS) and self._data is other._data

    __hash__ = None  # type: ignore[assignment]  # mutable, like the pydantic model it replaces

    # -- data ---------------------------------------------------------------------------------------
    def model_dump(self, *, mode: str = "python") -> dict[str, Any]:
        """The fields as a dict; ``mode="json"`` gives JSON-ready values (type as text, ISO timestamp)."""
        data = {name: getattr(self, name) for name in _FIELDS}
        if mode == "json":
            data["type"] = self.type.value
            data["timestamp"] = self.timestamp.isoformat()
        return data

    def model_copy(self, *, update: dict[str, Any] | None = None) -> State:
        """A copy (with ``update`` applied to its fields); the result rides along."""
        fields = {name: getattr(self, name) for name in _FIELDS}
        fields.update(update or {})
        copy = State(**fields)
        copy._data = self._data
        return copy

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        # Lets a pydantic model hold a State field (validated from a State or a dict of its fields).
        from pydantic_core import core_schema

        def validate(value: Any) -> State:
            if isinstance(value, State):
                return value
            if isinstance(value, dict):
                return State(**value)
            raise ValueError(f"expected a State or a dict of its fields, got {type(value).__name__}")

        return core_schema.no_info_plain_validator_function(
            validate, serialization=core_schema.plain_serializer_function_ser_schema(
                lambda state: state.model_dump(mode="json")
            ),
        )

    # -- kind -----------------------------------------------------------------------------------------
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

    # -- result ---------------------------------------------------------------------------------------
    def has_result(self) -> bool:
        return self._data is not _NOT_SET

    @property
    def data(self) -> Any:
        """The attached result or exception as it is (None when there is none), as Prefect's ``state.data``."""
        data = self._data
        return None if data is _NOT_SET else data

    def result(self, raise_on_failure: bool = True) -> Any:
        """The run's return value; for a failed run, its exception is raised (or returned when
        ``raise_on_failure=False``). A failed, crashed or cancelled state without an exception of its own
        (``Failed(message="...")`` returned by a task) raises :class:`~nbflow.exceptions.FailedRun` (or
        ``CrashedRun`` / ``CancelledRun``) with its message."""
        data = self._data
        if isinstance(data, BaseException) and self.type is not StateType.COMPLETED:
            if raise_on_failure:
                raise data
            return data
        if self.type in _FAILURES and not isinstance(data, BaseException):
            error = _run_error(self)
            self._data = error  # raised the same way each time it is asked for
            if raise_on_failure:
                raise error
            return error
        if data is _NOT_SET:
            raise MissingResult(f"state {self.name!r} has no result attached")
        return data

    def with_data(self, data: Any) -> State:
        """Attach a result (or exception) and return self."""
        self._data = data
        return self


_new = object.__new__


def _state(type_: StateType, name: str, message: str | None = None, data: Any = _NOT_SET,
           persisted: bool | None = None) -> State:
    # The constructors below pass trusted values, so the state is built without checks;
    # State(...) called by users still checks its arguments.
    state = _new(State)
    state.type = type_
    state.name = name
    state.message = message
    state._stamp = _time()
    state.persisted = persisted
    state._data = data
    return state


def _named(name: str | None, default: str) -> str:
    if name is None:
        return default
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{default}(name={name!r}): the name must be a non-empty string")
    return name


def Pending(message: str | None = None, *, name: str | None = None) -> State:
    """A run that has not started."""
    return _state(StateType.PENDING, _named(name, "Pending"), message)


def Running(message: str | None = None, *, name: str | None = None) -> State:
    """A run whose function is running."""
    return _state(StateType.RUNNING, _named(name, "Running"), message)


def AwaitingRetry(message: str | None = None, *, name: str | None = None) -> State:
    """A failed attempt waiting for its retry (type ``SCHEDULED``)."""
    return _state(StateType.SCHEDULED, _named(name, "AwaitingRetry"), message)


def Retrying(message: str | None = None, *, name: str | None = None) -> State:
    """A run's second or later attempt (type ``RUNNING``)."""
    return _state(StateType.RUNNING, _named(name, "Retrying"), message)


def Completed(data: Any = None, message: str | None = None, persisted: bool | None = None, *,
              name: str | None = None) -> State:
    """A run that finished with ``data`` as its result; a task or flow may return one (e.g.
    ``Completed(message="nothing to do", name="Skipped")``) to end in it."""
    return _state(StateType.COMPLETED, _named(name, "Completed"), message, data, persisted=persisted)


def Cached(data: Any = None, message: str | None = None) -> State:
    """A completed run whose result came from the store."""
    return _state(StateType.COMPLETED, "Cached", message, data, persisted=True)


def _error_data(error: Any, data: Any) -> Any:
    if error is not None and data is not None:
        raise ConfigurationError("give a failure state error= or data=, not both")
    value = error if error is not None else data
    return value if value is not None else _NOT_SET


def Failed(error: BaseException | None = None, message: str | None = None, *, name: str | None = None,
           data: Any = None) -> State:
    """A run that failed; a task or flow may return ``Failed(message="...")`` to end failed without
    raising (its caller then gets :class:`~nbflow.exceptions.FailedRun` with that message)."""
    return _state(StateType.FAILED, _named(name, "Failed"), message, _error_data(error, data))


def TimedOut(error: BaseException | None = None, message: str | None = None) -> State:
    """A run that failed by running past its ``timeout_seconds``."""
    return _state(StateType.FAILED, "TimedOut", message, error if error is not None else _NOT_SET)


def Crashed(error: BaseException | None = None, message: str | None = None, *, name: str | None = None,
            data: Any = None) -> State:
    """A run stopped by something other than an exception of its code (``SystemExit``, a lost worker)."""
    return _state(StateType.CRASHED, _named(name, "Crashed"), message, _error_data(error, data))


def Cancelled(error: BaseException | None = None, message: str | None = None, *, name: str | None = None,
              data: Any = None) -> State:
    """A run interrupted (``KeyboardInterrupt``) or cancelled."""
    return _state(StateType.CANCELLED, _named(name, "Cancelled"), message, _error_data(error, data))


def UpstreamFailed(message: str | None = None) -> State:
    """A task that never ran because a future it was given ended without a result."""
    from nbflow.exceptions import UpstreamTaskError

    return _state(StateType.FAILED, "UpstreamFailed", message, UpstreamTaskError(message or "upstream task failed"))


def RolledBack(message: str | None = None) -> State:
    """A task whose result was staged in a transaction that rolled back: nothing was stored."""
    return _state(StateType.CANCELLED, "RolledBack", message)
