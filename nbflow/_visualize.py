"""``Flow.visualize()``: the static picture of a flow run's task graph — the layout and colours of the live
graph, drawn by :func:`nbflow.ui.svg.render_svg` — shown inline in a notebook.

This module sits on top (with the UI): the engine and ``nbflow.flows`` reach it by name only when
``visualize`` is called, as they reach the notebook front end.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbflow._kernel import in_kernel

if TYPE_CHECKING:
    from nbflow.flows import Flow
    from nbflow.runs import RunRecord

__all__ = ["FlowGraph", "visualize_flow"]


class FlowGraph:
    """The picture of one flow run's task graph: an SVG that notebooks show inline (``svg`` holds its text;
    :meth:`save` writes it to a file)."""

    def __init__(self, run: RunRecord) -> None:
        import importlib

        # By name, as every front door below the UI reaches it (a test keeps `from nbflow.ui` out of the core).
        model_module = importlib.import_module("nbflow.ui.model")
        svg_module = importlib.import_module("nbflow.ui.svg")
        model = model_module.GraphModel()
        model.add_run(run)
        payload = model.payload(rev=1)
        self.run = run
        small = len(payload["nodes"]) <= svg_module.STATIC_NODE_LIMIT
        self.svg: str | None = svg_module.render_svg(payload) if small else None
        self.html: str = svg_module.render_html(payload)

    def _repr_svg_(self) -> str | None:
        return self.svg

    def _repr_html_(self) -> str | None:
        return None if self.svg is not None else self.html

    def __repr__(self) -> str:
        return f"<FlowGraph of {self.run!r}>"

    def save(self, path: str | Path) -> Path:
        """Write the picture to ``path`` (SVG, or HTML for a graph too large to draw) and return the path."""
        target = Path(path)
        target.write_text(self.svg if self.svg is not None else self.html, encoding="utf-8")
        return target


def visualize_flow(flow: Flow[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> FlowGraph | None:
    """See :meth:`nbflow.Flow.visualize`."""
    if args or kwargs:
        flow(*args, return_state=True, **kwargs)
    run = flow.__dict__.get("_last_run")
    if run is None:
        from nbflow.exceptions import ConfigurationError

        raise ConfigurationError(
            f"{flow!r}.visualize(): the flow has not run in this process yet, and nbflow draws the graph of a "
            f"run that happened (it does not trace one without running its tasks, as Prefect does). Call "
            f"{flow.name}(...) first, or give its arguments: {flow.name}.visualize(...)."
        )
    graph = FlowGraph(run)
    if in_kernel():
        try:
            from IPython.display import display

            display(graph)
            return None
        except Exception:  # no display here after all: the caller gets the picture
            pass
    return graph

