"""The state the extension keeps per kernel: the cell tasks it ran, and who produced which value.

:class:`SessionTracker` draws the edges of one graph across cell tasks and ``@task`` calls made
outside flows: a cell task's outputs are known by variable name, a task call's result by object
identity (as a flow does for its own calls). A cell task or task call that reads such a value gets
an edge from the task run that produced it.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbflow.context import producers_among

if TYPE_CHECKING:
    from nbflow.ipython.cells import CellSpec

__all__ = ["Session", "SessionTracker"]

# Results kept for identity edges. Weak references where the type allows (arrays, frames, most user
# objects): a result nobody holds any more is forgotten with it. Lists, dicts and the like cannot be
# weakly referenced; they are held (so their ids are not reused while remembered), the oldest dropped
# first, so a kernel making many calls does not grow without bound.
_MAX_RESULTS = 1000


def _reference(value: Any, on_death: Callable[[Any], None] | None = None) -> Callable[[], Any]:
    try:
        return weakref.ref(value, on_death)
    except TypeError:
        return lambda: value


def _trackable(value: Any) -> bool:
    # Small ints, strings and None are shared objects: an identity match would be a false edge.
    from nbflow.ipython.cells import CellResult

    return not (value is None or isinstance(value, (bool, int, float, str, bytes, CellResult)))


class SessionTracker:
    """Producer of each value of this kernel: by variable name (cell tasks) and by object (calls)."""

    def __init__(self) -> None:
        self.by_name: dict[str, tuple[Callable[[], Any], str]] = {}
        self.by_id: OrderedDict[int, tuple[Callable[[], Any], str]] = OrderedDict()

    def remember_result(self, value: Any, task_run_id: str) -> None:
        """Called by the engine when a task call outside a flow completes."""
        if not _trackable(value):
            return
        key = id(value)
        by_id = self.by_id

        def forget(ref: Any) -> None:
            entry = by_id.get(key)
            if entry is not None and entry[0] is ref:
                del by_id[key]

        by_id[key] = (_reference(value, forget), task_run_id)
        by_id.move_to_end(key)
        while len(by_id) > _MAX_RESULTS:
            by_id.popitem(last=False)

    def remember_outputs(self, values: dict[str, Any], task_run_id: str) -> None:
        """A cell task bound ``values``: later readers of these names (or objects) depend on it."""
        for name, value in values.items():
            self.by_name[name] = (_reference(value), task_run_id)
            self.remember_result(value, task_run_id)

    def upstream_of(self, arguments: dict[str, Any]) -> list[str]:
        """Task runs whose results appear among ``arguments`` (one container level deep)."""
        by_id = self.by_id
        if not by_id:
            return []

        def producer(value: Any) -> str | None:
            entry = by_id.get(id(value))
            return entry[1] if entry is not None and entry[0]() is value else None

        return producers_among(arguments, producer)

    def cell_upstream(self, inputs: dict[str, Any], found: list[str]) -> list[str]:
        """``found`` plus the producers of the variables a cell task reads (if still bound to the value
        they produced: a name rebound since then no longer points at that producer)."""
        result = list(found)
        for name, value in inputs.items():
            entry = self.by_name.get(name)
            if entry is not None and entry[0]() is value and entry[1] not in result:
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
