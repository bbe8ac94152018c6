"""The store interface the engine, the magics and the CLI use, and the null store for when there is none.

:class:`~nbflow.store.store.ResultStore` is the store; :class:`CacheMiss` says a key has no usable entry;
:class:`UnavailableStore` stands in for it when the
store cannot be opened at all (an unreadable secret key, a store directory that cannot be created): every
lookup is a miss and every save is refused, so tasks run, uncached, and the notebook goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from nbflow.exceptions import StoreUnwritable
from nbflow.store.record import Record

__all__ = ["CacheMiss", "Invalid", "Store", "UnavailableStore"]


class CacheMiss(Exception):
    """No usable entry for a key: never stored, expired, evicted, or failed verification.

    An internal signal for the engine (run the task), not a user-facing error. Entries that failed
    verification have already been reported with an :class:`~nbflow.exceptions.NbflowWarning`.
    """

    def __init__(self, key: str, reason: str = "not in the store") -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class Invalid(Exception):
    """An entry failed verification (the reason completes "the entry ..."): the store deletes it and warns."""


class Store(Protocol):
    """What the rest of nbflow asks of a result store."""

    read_only: bool

    def probe(self, key: str) -> Record | None: ...
    def load(self, key: str, record: Record | None = None, *, type_hint: Any = None) -> Any: ...
    def save(self, key: str, value: Any, *, task_name: str, run_id: str | None = None, serializer: Any = "pickle",
             expires: float | None = None, defer: bool = False,
             on_lost: Callable[[str], None] | None = None) -> Record: ...
    def flush(self) -> None: ...
    def flush_quietly(self) -> bool: ...
    def records(self) -> Iterator[Record]: ...
    def volume(self) -> int: ...
    def delete(self, key: str) -> bool: ...
    def prune(self) -> int: ...
    def clear(self) -> int: ...
    def close(self) -> None: ...


class UnavailableStore:
    """The null store: nothing is found and nothing is saved (see the module documentation)."""

    read_only = True

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"UnavailableStore({self.reason!r})"

    def probe(self, key: str) -> Record | None:
        return None

    def load(self, key: str, record: Record | None = None, *, type_hint: Any = None) -> Any:
        raise CacheMiss(key, f"the store is unavailable: {self.reason}")

    def save(self, key: str, value: Any, *, task_name: str, **_options: Any) -> Record:
        raise StoreUnwritable(f"the result of task {task_name!r} was not persisted: the store is unavailable "
                              f"({self.reason})")

    def flush(self) -> None:
        pass

    def flush_quietly(self) -> bool:
        return True

    def records(self) -> Iterator[Record]:
        return iter(())

    def volume(self) -> int:
        return 0

    def delete(self, key: str) -> bool:
        return False

    def prune(self) -> int:
        return 0

    def clear(self) -> int:
        return 0

    def close(self) -> None:
        pass
