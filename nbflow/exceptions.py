"""Every error an nbflow user can see, under one root class.

Where the meaning matches a builtin, the error also inherits it, so ``except TypeError`` or
``except TimeoutError`` keeps working in user code that does not know about nbflow.
"""

from __future__ import annotations

__all__ = [
    "UpstreamTaskError",
    "ConfigurationError",
    "MissingResult",
    "NbflowError",
    "NbflowWarning",
    "NotebookError",
    "ParameterError",
    "PersistError",
    "SerializationError",
    "TaskTimeoutError",
    "UnfingerprintableError",
]


class NbflowError(Exception):
    """The root of every error raised by nbflow itself."""


class ParameterError(NbflowError, TypeError):
    """A task or flow was called with arguments that do not fit its signature or type hints."""


class ConfigurationError(NbflowError, ValueError):
    """An option given to a decorator, ``configure`` or a setting is invalid."""


class UnfingerprintableError(NbflowError, TypeError):
    """A value cannot be fingerprinted for a cache key.

    The engine turns this into a warning and runs the task uncached; it is raised to callers of
    :func:`nbflow.hashing.fingerprint` directly.
    """


class SerializationError(NbflowError):
    """A result cannot be serialized (or deserialized) by the chosen serializer."""


class PersistError(NbflowError, OSError):
    """Writing a result to the store failed (disk full, permissions, ...). Nothing partial is kept."""


class StoreUnwritable(PersistError):
    """The store cannot be written at all (opened read-only, or unavailable): said once, when it opened."""


class TaskTimeoutError(NbflowError, TimeoutError):
    """A task or flow ran past its ``timeout_seconds``."""


class UpstreamTaskError(NbflowError):
    """A submitted task did not run because a future among its arguments ended without a result."""


class MissingResult(NbflowError):
    """A state has no result to return (it was never computed, or was not persisted)."""


class FailedRun(NbflowError):
    """A run ended in a failed state that carries no exception of its own (e.g. the function returned
    ``Failed(message=...)``): raised by ``state.result()`` and by the call, with the state's message."""


class CrashedRun(NbflowError):
    """A run ended ``Crashed`` without an exception of its own (see :class:`FailedRun`)."""


class CancelledRun(NbflowError):
    """A run ended ``Cancelled`` without an exception of its own (see :class:`FailedRun`)."""


class ParameterTypeError(ParameterError):
    """A flow's parameter does not validate against its type hint (Prefect's name for it)."""


class ConcurrencyTimeout(NbflowError, TimeoutError):
    """A concurrency or rate limit could not be acquired within its ``timeout_seconds``."""


class ConcurrencySlotAcquisitionError(NbflowError):
    """``strict=True`` was asked of a concurrency or rate limit that is not set."""


class NotebookError(NbflowError):
    """A notebook could not be read or executed by ``nbflow run``."""


class NbflowWarning(UserWarning):
    """Something went wrong that nbflow worked around (a task ran uncached, a result was not persisted,
    a cache entry failed verification and was treated as a miss, ...)."""
