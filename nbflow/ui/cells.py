"""The cell graph: what ``%nbflow graph`` shows in auto mode — the notebook's cells, not its task calls.

One node per cell, in notebook order, labelled with its number and first line (``[5] df = pd.read_csv(…``);
one edge from the cell that bound a value to each cell that read it. A node's colour and second line say
what auto mode did with the cell: cached (restored), computed (and stored), not cached (and why: in its
details), or failed. A stale cell — one that read a value an earlier cell has changed since — is amber,
dotted, thicker and carries a STALE badge, and its details list why it is stale (colour is never the only
cue).

The payload is :class:`~nbflow.ui.model.GraphPayload`, laid out by the same :func:`layered_layout`, so the
same ``widgets/graph.js`` draws it and the same :func:`~nbflow.ui.svg.render_svg` makes its static picture.
:class:`CellGraph` redraws whenever :func:`cells_changed` is called with its auto mode (auto mode calls it
after each cell it records); cells are few, so it simply sends the whole graph again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from html import escape
from typing import Any, cast

import anywidget
import traitlets
from pydantic_core import to_json

from nbflow.runs import format_duration
from nbflow.ui.layout import layered_layout
from nbflow.ui.model import Command, DetailsData, EdgeData, GraphPayload, HistoryEntry, NodeData, NodeState, RunData
from nbflow.ui.svg import STATIC_NODE_LIMIT, render_svg
from nbflow.ui.widget import TaskGraph

__all__ = ["CellGraph", "cell_details", "cell_graph", "cell_payload", "cells_changed", "render_cells_html"]

_log = logging.getLogger("nbflow.ui")

# auto mode's state of a cell -> (the node's display state, the words on its second line)
_STATES: dict[str, tuple[NodeState, str]] = {
    "cached": ("cached", "cached"),
    "computed": ("completed", "computed"),
    "quick": ("uncached", "quick, not stored"),
    "uncached": ("uncached", "not cached"),
    "failed": ("failed", "failed"),
}
_BADGES = {"cached": "Cached", "computed": "Computed", "quick": "Quick", "uncached": "Not cached",
           "failed": "Failed"}
CELLS_RUN = "cells"  # the id of the header entry that sums the cells up


def _display(cell: dict[str, Any]) -> tuple[NodeState, str]:
    """The node's state and second line: stale first (whatever the cell's last run did), then its state."""
    state, words = _STATES.get(cell.get("state") or "", ("pending", cell.get("state") or "not run"))
    if cell.get("state") == "cached" and cell.get("saved"):
        words += f" · saved {format_duration(cell['saved'])}"
    elif cell.get("state") == "computed" and cell.get("duration") is not None:
        words += f" · {format_duration(cell['duration'])}"
    if cell.get("stale"):
        return "stale", "stale · was " + _STATES.get(cell.get("state") or "", ("pending", "not run"))[1]
    return state, words


def _summary(cells: list[dict[str, Any]]) -> str:
    stale = sum(bool(cell.get("stale")) for cell in cells)
    text = f"{len(cells)} cell" + ("s" if len(cells) != 1 else "")
    return text + (f" · {stale} stale" if stale else "")


def cell_payload(cells: list[dict[str, Any]], rev: int = 1) -> GraphPayload:
    """The cells (``AutoMode.graph_cells()``) as a laid-out graph: a node per cell, an edge per producer ->
    reader (an edge back to an earlier cell, from cells run out of order, is drawn as a back edge)."""
    keys = [cell["key"] for cell in cells]
    known = set(keys)
    edges = list(dict.fromkeys((source, cell["key"]) for cell in cells for source in cell.get("upstream", ())
                               if source in known and source != cell["key"]))
    layout = layered_layout(keys, edges)
    nodes: list[NodeData] = []
    for cell in cells:
        x, y = layout.positions[cell["key"]]
        state, status = _display(cell)
        nodes.append({"id": cell["key"], "label": cell["label"], "task": cell.get("task") or "", "run": CELLS_RUN,
                      "state": state, "attempts": 1, "retryable": False, "x": x, "y": y, "status": status})
    drawn: list[EdgeData] = [
        {"source": source, "target": target, "points": [[round(x, 1), round(y, 1)] for x, y in points]}
        for (source, target), points in zip(edges, layout.edge_points)
    ]
    header: RunData = {"id": CELLS_RUN, "name": "notebook cells", "kind": "cells", "state": _summary(cells),
                       "retryable": False, "parent": None}
    return {"rev": rev, "nodes": nodes, "edges": drawn, "runs": [header], "width": layout.width,
            "height": layout.height}


def _cache_words(cell: dict[str, Any]) -> str:
    """Why the cell was (not) cached, as the details panel's "cache" row says it."""
    state, reason = cell.get("state"), cell.get("reason") or ""
    if state == "cached":
        return f"restored from the cache (saved {format_duration(cell.get('saved') or 0.0)})"
    if state == "computed":
        return "computed and stored: the next run with the same code and inputs is restored"
    if state == "quick":
        return "not stored: " + (reason or "quicker to run than to restore")
    if state == "failed":
        return "not stored: " + (reason or "it raised an error")
    return "not cached: " + (reason or "unknown")


def cell_details(cell: dict[str, Any], task_run: Any = None) -> DetailsData:
    """The details panel of a cell: its stale reasons, why it was (not) cached, and what its cell task's run
    record says (cache key, inputs, history, logs, error) when ``task_run`` is given."""
    state, _ = _display(cell)
    history: list[HistoryEntry] = []
    details: DetailsData = {
        "id": cell["key"], "task": cell.get("task") or "", "label": cell["label"], "run": CELLS_RUN,
        "state": state,
        "state_name": "Stale" if cell.get("stale") else _BADGES.get(cell.get("state") or "", "Not run"),
        "attempts": 1, "calls": 1, "duration": cell.get("duration"), "cache_key": None,
        "cache": _cache_words(cell), "key_changes": [], "inputs": {}, "result": None, "error": None,
        "traceback": None, "logs": [], "history": history, "retryable": False,
        "stale": list(cell.get("stale") or []),
    }
    if task_run is not None:
        history.extend({"state": entry.name, "time": entry.timestamp, "message": entry.message}
                       for entry in task_run.history)
        details["attempts"] = task_run.attempts or 1
        details["cache_key"] = task_run.cache_key
        details["inputs"] = dict(task_run.inputs)
        details["logs"] = list(task_run.logs)
        if cell.get("state") == "failed":
            details["error"], details["traceback"] = task_run.error, task_run.traceback
    return details


def render_cells_html(graph: GraphPayload, cells: list[dict[str, Any]]) -> str:
    """The static picture (for places without widgets): a heading, the SVG, and the stale cells in words."""
    heading = (f'<div style="font:12px sans-serif;color:#374151;margin:2px 0">nbflow notebook cells: '
               f'{escape(_summary(cells))}</div>')
    stale = [cell for cell in cells if cell.get("stale")]
    listing = ""
    if stale:
        items = "".join(f"<li><b>{escape(cell['label'])}</b>: {escape('; '.join(cell['stale']))}</li>"
                        for cell in stale)
        listing = (f'<div class="nbflow-stale-list" style="font:12px sans-serif;color:#92400e">Stale cells '
                   f'(%nbflow run-stale runs them again):<ul style="margin:2px 0">{items}</ul></div>')
    if len(graph["nodes"]) > STATIC_NODE_LIMIT:
        picture = f'<div style="font:12px sans-serif">{len(cells):,} cells: too many to draw here.</div>'
    else:
        picture = f'<div style="overflow:auto;max-height:600px">{render_svg(graph)}</div>'
    return f'<div class="nbflow-graph-static nbflow-cell-graph">{heading}{picture}{listing}</div>'


def plain_cells_summary(cells: list[dict[str, Any]]) -> str:
    """One line for text-only front-ends."""
    stale = [f"[{cell['number']}]" for cell in cells if cell.get("stale")]
    return f"<cell graph: {_summary(cells)}" + (f" ({', '.join(stale)})" if stale else "") + ">"


class CellGraph(anywidget.AnyWidget):
    """The live graph of a notebook's cells in auto mode, drawn by the same front-end as :class:`TaskGraph`
    (the same traits). Clicking a cell shows why it is stale and why it was (not) cached."""

    _esm = TaskGraph._esm
    _css = TaskGraph._css

    graph_json = traitlets.Unicode("{}").tag(sync=True)
    patch = traitlets.Dict().tag(sync=True)
    details = traitlets.Dict().tag(sync=True)
    selected = traitlets.Unicode("").tag(sync=True)
    notice = traitlets.Unicode("").tag(sync=True)
    busy = traitlets.Bool(False).tag(sync=True)

    def __init__(self, source: Callable[[], list[dict[str, Any]]], *, owner: Any = None, **kwargs: Any) -> None:
        """``source`` gives the cells (``AutoMode.graph_cells``); ``owner`` is the auto mode whose
        :func:`cells_changed` redraws this graph."""
        super().__init__(**kwargs)
        self._source = source
        self._owner = owner
        self._cells: list[dict[str, Any]] = []
        self._rev = 0
        self._payload: GraphPayload = {"rev": 0, "nodes": [], "edges": [], "runs": [], "width": 0, "height": 0}
        self.on_msg(self._on_custom)
        self.observe(self._on_selected, names="selected")
        self.refresh()
        _open.append(self)

    def refresh(self) -> None:
        """Read the cells again and send the graph if it changed (and the selected cell's details)."""
        cells = self._source()
        if cells == self._cells and self._rev:
            return
        self._cells = cells
        self._rev += 1
        self._payload = cell_payload(cells, self._rev)
        with self.hold_sync():
            self.graph_json = to_json(self._payload).decode()
            self.patch = {"rev": self._rev, "nodes": {}, "runs": {}}
            if self.selected:
                self._refresh_details()

    @property
    def graph(self) -> GraphPayload:
        """The graph as last sent to the browser."""
        return self._payload

    @property
    def cells(self) -> list[dict[str, Any]]:
        """The cells the graph was last drawn from."""
        return self._cells

    # -- browser side ---------------------------------------------------------------------------------
    def _on_selected(self, change: dict[str, Any]) -> None:
        self._refresh_details()

    def _refresh_details(self) -> None:
        cell = next((cell for cell in self._cells if cell["key"] == self.selected), None)
        self.details = cast(dict, cell_details(cell, _task_run(cell.get("task_run_id")))) if cell else {}

    def _on_custom(self, _widget: Any, content: Any, buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        command = cast(Command, content)
        if command.get("type") == "select":
            self.selected = command.get("id", "")
        else:  # a cell runs from the notebook: no retry here
            self.notice = "run the cell again (or %nbflow run-stale)"

    # -- static fallback ----------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
        data = {**data, "text/html": render_cells_html(self._payload, self._cells),
                "text/plain": plain_cells_summary(self._cells)}
        return data, metadata

    def __repr__(self) -> str:
        return plain_cells_summary(self._cells)

    def close(self) -> None:
        """Stop redrawing and close the widget."""
        if self in _open:
            _open.remove(self)
        super().close()


_open: list[CellGraph] = []  # the cell graphs shown and not closed, redrawn by cells_changed


def _task_run(task_run_id: str | None) -> Any:
    """The cell task's run record, if this kernel's session run still holds it (read on a click only)."""
    if not task_run_id:
        return None
    from nbflow.engine import runtime

    session = runtime._session
    if session is None:
        return None
    return next((t for t in reversed(session.task_runs) if t.id == task_run_id), None)


def cell_graph(mode: Any) -> CellGraph:
    """A live graph of the cells of ``mode`` (an :class:`~nbflow.ipython.auto.AutoMode`): ``%nbflow graph`` in
    auto mode."""
    return CellGraph(mode.graph_cells, owner=mode)


def cells_changed(mode: Any) -> None:
    """Auto mode's hook, called after it recorded a cell: redraw the cell graphs of ``mode`` that are open.
    Never raises (a graph must not fail a cell)."""
    for graph in list(_open):
        if graph._owner is mode:
            try:
                graph.refresh()
            except Exception:
                _log.exception("could not redraw the cell graph")
