"""Automatic display: a flow called in a notebook cell shows its live graph in that cell's output.

The engine reaches this module through :func:`nbflow.engine.runtime.frontend_hook` by a dynamic import,
only inside a Jupyter kernel with ``display`` on — the core never imports the UI.

Running a cell again closes the graphs its previous run showed (a flow's, or ``%nbflow graph``'s): the
front-end has cleared that output, and a graph left open would keep its flow run's records (a few kB per
task call) for the kernel's life, or, for a session graph, go on drawing every call the kernel makes.
Cells are told apart by the id front-ends send with each execution (JupyterLab and Notebook 7 do);
without one, graphs stay open as before.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from nbflow._kernel import in_kernel

if TYPE_CHECKING:
    from nbflow.runs import RunRecord
    from nbflow.ui.cells import CellGraph
    from nbflow.ui.widget import TaskGraph

__all__ = ["in_notebook", "on_flow_start", "remember_shown"]

_shown: dict[str, list[TaskGraph | CellGraph]] = {}  # cell id -> the graphs its latest run showed
_watching: Any = None  # the shell whose cell runs close graphs (the hook is registered once)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where a display reaches a front-end), False in a terminal IPython or
    a plain script (:func:`nbflow._kernel.in_kernel`)."""
    return in_kernel()


def on_flow_start(run: RunRecord) -> None:
    """Show a live :class:`~nbflow.ui.TaskGraph` of ``run`` in the current cell's output."""
    if not in_notebook():
        return
    from IPython.display import display

    from nbflow.ui.widget import TaskGraph

    graph = TaskGraph([run])
    graph._display_handle = display(graph, display_id=True)
    remember_shown(graph)


def remember_shown(graph: TaskGraph | CellGraph) -> None:
    """Note ``graph`` as shown by the cell running now, so that running that cell again closes it."""
    global _watching
    from IPython import get_ipython

    shell = get_ipython()
    try:
        parent = shell.kernel.get_parent()
        cell = ((parent or {}).get("metadata") or {}).get("cellId")
    except Exception:
        return
    if not isinstance(cell, str) or not cell:
        return
    if _watching is not shell:
        shell.events.register("pre_run_cell", _before_cell)
        _watching = shell
    _shown.setdefault(cell, []).append(graph)


def _before_cell(info: Any) -> None:
    """IPython's ``pre_run_cell``: close the graphs the previous run of this cell showed."""
    cell = getattr(info, "cell_id", None)
    for graph in _shown.pop(cell, ()) if cell else ():
        try:
            graph.close()
        except Exception:  # closing a view must never stop a cell from running
            logging.getLogger("nbflow.ui").debug("could not close a task graph", exc_info=True)
