"""nbflow's notebook UI: the live task graph widget.

``TaskGraph`` is shown automatically when a flow is called in a notebook cell (turn it off with
``nbflow.configure(display=False)``); :func:`session_graph` is the graph of everything this process ran
(what ``%nbflow graph`` shows). The browser side lives in ``widgets/graph.js``.
"""

from __future__ import annotations

from nbflow.ui.layout import Layout, count_crossings, layered_layout
from nbflow.ui.model import GraphModel, GraphPayload
from nbflow.ui.svg import render_svg
from nbflow.ui.widget import TaskGraph, session_graph

__all__ = [
    # widgets
    "TaskGraph",
    "session_graph",
    # pure pieces (no Jupyter needed)
    "GraphModel",
    "GraphPayload",
    "Layout",
    "count_crossings",
    "layered_layout",
    "render_svg",
]
