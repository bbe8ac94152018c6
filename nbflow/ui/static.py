"""Graphs that show without a kernel: an executed notebook written by ``nbflow run -o`` keeps each graph's
static picture (the SVG the widget puts beside its view, in ``text/html``) as ``image/svg+xml``, and drops
the widget view.

A widget view needs its model: nbconvert's HTML draws it only with a widget manager fetched from a CDN (a
blank space offline), and JupyterLab or Notebook 7 opening the notebook later, with no kernel holding the
model, say "Error displaying widget: model not found". The run is over, so nothing is lost by keeping the
picture: it is the final graph. It goes out as ``image/svg+xml``, not HTML: a notebook someone else ran is
untrusted, and front-ends strip the SVG out of untrusted HTML but draw an SVG image.
"""

from __future__ import annotations

from typing import Any

__all__ = ["keep_static_graphs"]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
STATIC_MARK = 'class="nbflow-graph-static"'  # render_html's outer element


def keep_static_graphs(notebook: Any) -> int:
    """Drop the widget view (and its saved state) of every nbflow graph output in ``notebook`` that has a
    static picture beside it; returns how many were dropped. Other widgets are left as they are."""
    dropped: set[str] = set()
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data") or {}
            view = data.get(WIDGET_VIEW)
            html = _text(data.get("text/html"))
            if view is None or STATIC_MARK not in html:
                continue
            del data[WIDGET_VIEW]
            start, end = html.find("<svg"), html.rfind("</svg>")
            if start >= 0 and end > start:  # else a summary of a graph too big to draw: plain HTML text
                data["image/svg+xml"] = html[start:end + len("</svg>")]
                del data["text/html"]
            if isinstance(view, dict) and isinstance(view.get("model_id"), str):
                dropped.add(view["model_id"])
    widgets = notebook.get("metadata", {}).get("widgets")
    state = (widgets or {}).get(WIDGET_STATE, {}).get("state")
    if isinstance(state, dict) and dropped:
        for model_id in dropped:
            model = state.pop(model_id, None)
            # Its layout model too, unless another widget uses it.
            layout = ((model or {}).get("state") or {}).get("layout", "")
            if isinstance(layout, str) and layout.startswith("IPY_MODEL_"):
                layout_id = layout.removeprefix("IPY_MODEL_")
                if not any(layout in str((other.get("state") or {}).values()) for other in state.values()):
                    state.pop(layout_id, None)
        if not state:
            del notebook["metadata"]["widgets"]
    return len(dropped)


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else value if isinstance(value, str) else ""
