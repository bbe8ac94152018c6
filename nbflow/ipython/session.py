"""The state the extension keeps per kernel: the cell tasks it ran, and who produced which value.

:class:`SessionTracker` draws the edges of one graph across cell tasks and ``@task`` calls made
outside flows: a cell task's outputs are known by variable name, a task call's result by object
identity (as a flow does for its own calls). A cell task or task call that reads such a value gets
an edge from the task run that produced it.
"""

from __future__ import annotations

import itertools
import operator
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from nbflow.context import producers_among

if TYPE_CHECKING:
    from nbflow.ipython.cells import CellSpec

__all__ = ["Session", "SessionTracker"]

# Results are recognised by identity, without keeping them alive: a loop that gets a large result per call
# must free each one once the user lets it go. So, per result (see _matcher):
# - a weak reference where its type allows one (arrays, frames, most user objects);
# - for a tuple, list or dict (which allow none): its type, length, and weak references to up to 8 of its
#   first 64 items that allow one (``return frame, meta``);
# - otherwise (a container of plain values) the value itself, if small: held, oldest dropped first, within
#   _HELD_BYTES in all, so that its id is not reused while it is remembered.
_MAX_RESULTS = 1000
_HELD_BYTES = 64 * 1024 * 1024
_HELD_ONE = 8 * 1024 * 1024  # a larger result of plain values is not held: no edge from it
_ITEMS_LOOKED_AT = 64
_ITEM_REFS = 8

Matcher = Callable[[Any], bool]  # is this candidate the remembered value?


def _matcher(value: Any, on_death: Callable[[Matcher], None] | None = None) -> tuple[Matcher | None, int]:
    """How to recognise ``value`` later, and how many bytes that holds (roughly); ``(None, 0)`` when it
    cannot be recognised without holding too much. ``on_death`` is called (with the matcher) when a
    weakly referenced value is freed."""
    try:
        ref = weakref.ref(value, None if on_death is None else (lambda _: on_death(matches)))
    except TypeError:
        pass
    else:
        def matches(candidate: Any) -> bool:
            return ref() is candidate

        return matches, 0
    kind = type(value)
    if kind is tuple or kind is list or kind is dict:
        size = len(value)
        refs: list[tuple[Any, weakref.ref[Any]]] = []
        for position, item in itertools.islice(value.items() if kind is dict else enumerate(value),
                                               _ITEMS_LOOKED_AT):
            try:
                refs.append((position, weakref.ref(item)))
            except TypeError:
                continue
            if len(refs) == _ITEM_REFS:
                break
        if refs:
            def by_items(candidate: Any) -> bool:
                if type(candidate) is not kind or len(candidate) != size:
                    return False
                for position, item_ref in refs:
                    item = item_ref()
                    try:
                        if item is None or candidate[position] is not item:
                            return False
                    except (KeyError, IndexError):
                        return False
                return True

            return by_items, 0
    held = _estimate(value)
    if held > _HELD_ONE:
        return None, 0

    def same(candidate: Any) -> bool:
        return candidate is value

    return same, held


def _estimate(value: Any) -> int:
    """Bytes ``value`` keeps alive, roughly: itself and, for a container, its items (from a sample)."""
    size = sys.getsizeof(value)
    if isinstance(value, (tuple, list, dict, set, frozenset)) and value:
        items = list(itertools.islice(value.values() if isinstance(value, dict) else value, _ITEMS_LOOKED_AT))
        size += sum(map(sys.getsizeof, items)) * len(value) // len(items)
    return size


def _trackable(value: Any) -> bool:
    # Small ints, strings and None are shared objects: an identity match would be a false edge.
    from nbflow.ipython.cells import CellResult

    return not (value is None or isinstance(value, (bool, int, float, str, bytes, CellResult)))


class SessionTracker:
    """Producer of each value of this kernel: by variable name (cell tasks) and by object (calls)."""

    def __init__(self) -> None:
        self.by_name: dict[str, tuple[Matcher, str]] = {}
        # id -> (matcher, task run id, bytes held); oldest first.
        self.by_id: OrderedDict[int, tuple[Matcher, str, int]] = OrderedDict()
        self.held = 0  # bytes of results held (see _matcher)
        # Reentrant: a weak reference's callback can run inside, when a collection happens there.
        self._lock = threading.RLock()

    def remember_result(self, value: Any, task_run_id: str) -> None:
        """Called by the engine when a task call outside a flow completes."""
        if not _trackable(value):
            return
        key = id(value)
        matcher, held = _matcher(value, lambda dead: self._forget(key, dead))
        with self._lock:
            by_id = self.by_id
            previous = by_id.pop(key, None)  # another object had this id: it is gone
            if previous is not None:
                self.held -= previous[2]
            if matcher is None:
                return
            by_id[key] = (matcher, task_run_id, held)
            self.held += held
            while by_id and (len(by_id) > _MAX_RESULTS or self.held > _HELD_BYTES):
                _, (_, _, dropped) = by_id.popitem(last=False)
                self.held -= dropped

    def _forget(self, key: int, matcher: Matcher) -> None:
        with self._lock:
            entry = self.by_id.get(key)
            if entry is not None and entry[0] is matcher:
                del self.by_id[key]
                self.held -= entry[2]

    def remember_outputs(self, values: dict[str, Any], task_run_id: str) -> None:
        """A cell task bound ``values``: later readers of these names (or objects) depend on it."""
        for name, value in values.items():
            matcher, _ = _matcher(value)
            if matcher is None:  # a large container of plain values: held while the name is (one per name)
                matcher = partial(operator.is_, value)
            self.by_name[name] = (matcher, task_run_id)
            self.remember_result(value, task_run_id)

    def upstream_of(self, arguments: dict[str, Any]) -> list[str]:
        """Task runs whose results appear among ``arguments`` (one container level deep)."""
        by_id = self.by_id
        if not by_id:
            return []

        def producer(value: Any) -> str | None:
            entry = by_id.get(id(value))
            return entry[1] if entry is not None and entry[0](value) else None

        return producers_among(arguments, producer)

    def cell_upstream(self, inputs: dict[str, Any], found: list[str]) -> list[str]:
        """``found`` plus the producers of the variables a cell task reads (if still bound to the value
        they produced: a name rebound since then no longer points at that producer)."""
        result = list(found)
        for name, value in inputs.items():
            entry = self.by_name.get(name)
            if entry is not None and entry[0](value) and entry[1] not in result:
                result.append(entry[1])
        return result


class Session:
    """Everything the extension remembers in one kernel."""

    def __init__(self) -> None:
        self.tracker = SessionTracker()
        self.cells: dict[str, CellSpec] = {}  # the latest cell run under each name, for retries
        self.saved: dict[str, float] = {}  # task run id -> seconds a cache hit saved (cell tasks)

    def remember_cell(self, spec: CellSpec) -> None:
        self.cells[spec.name] = spec
