"""Automatic display: a flow called in a notebook cell shows its live graph in that cell's output.

The engine reaches this module through :func:`nbflow.engine.runtime.frontend_hook` by a dynamic import,
only inside a Jupyter kernel with ``display`` on — the core never imports the UI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nbflow.runs import RunRecord

__all__ = ["in_notebook", "on_flow_start"]


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where a display reaches a front-end), False in a terminal IPython or
    a plain script."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def on_flow_start(run: RunRecord) -> None:
    """Show a live :class:`~nbflow.ui.TaskGraph` of ``run`` in the current cell's output."""
    if not in_notebook():
        return
    from IPython.display import display

    from nbflow.ui.widget import TaskGraph

    graph = TaskGraph([run])
    graph._display_handle = display(graph, display_id=True)
