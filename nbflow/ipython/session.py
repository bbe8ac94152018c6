"""The state the extension keeps per kernel: the cell tasks it ran, and who produced which value.

:class:`SessionTracker` draws the edges of one graph across cell tasks and ``@task`` calls made
outside flows: a cell task's outputs are known by variable name, a task call's result by object
identity (as a flow does for its own calls). A cell task or task call that reads such a value gets
an edge from the task run that produced it.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from functools import partial
from typing import TYPE_CHECKING, Any

from nbflow.context import Matcher, ResultIdentities, identity_matcher

if TYPE_CHECKING:
    from nbflow.ipython.auto import AutoMode
    from nbflow.ipython.cells import CellSpec

__all__ = ["Session", "SessionTracker"]

_MAX_RESULTS = 1000  # results of calls outside flows remembered for edges (see ResultIdentities)


def _trackable(value: Any) -> bool:
    # A cell task's own result object is not an input of anything (ResultIdentities skips shared scalars).
    from nbflow.ipython.cells import CellResult

    return not isinstance(value, CellResult)


class SessionTracker:
    """Producer of each value of this kernel: by variable name (cell tasks) and by object (calls)."""

    def __init__(self) -> None:
        self.by_name: dict[str, tuple[Matcher, str]] = {}
        self.results = ResultIdentities(limit=_MAX_RESULTS)

    @property
    def by_id(self) -> OrderedDict[int, tuple[Matcher, str, int]]:
        """Remembered results by id: (matcher, task run id, bytes held), oldest first."""
        return self.results.by_id

    @property
    def held(self) -> int:
        """Bytes of results held (see :func:`~nbflow.context.identity_matcher`)."""
        return self.results.held

    def remember_result(self, value: Any, task_run_id: str) -> None:
        """Called by the engine when a task call outside a flow completes."""
        if _trackable(value):
            self.results.remember(value, task_run_id)

    def remember_outputs(self, values: dict[str, Any], task_run_id: str) -> None:
        """A cell task bound ``values``: later readers of these names (or objects) depend on it."""
        for name, value in values.items():
            matcher, _ = identity_matcher(value)
            if matcher is None:  # a large container of plain values: held while the name is (one per name)
                matcher = partial(operator.is_, value)
            self.by_name[name] = (matcher, task_run_id)
            self.remember_result(value, task_run_id)

    def upstream_of(self, arguments: dict[str, Any]) -> list[str]:
        """Task runs whose results appear among ``arguments`` (one container level deep)."""
        return self.results.upstream_of(arguments)

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
        self.auto: AutoMode | None = None  # auto mode (every cell a cell task), once it has been turned on

    def note_saved(self, task_run_id: str, seconds: float) -> None:
        """What a cell's hit saved, for ``%nbflow status``: kept for as many task runs as the session run keeps
        in memory (the status looks only at those), so a long kernel does not grow."""
        from nbflow.runs import _IN_MEMORY

        saved = self.saved
        saved[task_run_id] = seconds
        if len(saved) > _IN_MEMORY:
            for old in list(saved)[: len(saved) - _IN_MEMORY // 2]:
                del saved[old]

    def remember_cell(self, spec: CellSpec) -> None:
        self.cells[spec.name] = spec
