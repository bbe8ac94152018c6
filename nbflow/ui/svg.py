"""The static picture of a graph: one self-contained SVG (inline colours, no CSS, no script).

It is what a notebook shows where no widget manager runs — nbconvert, GitHub, the notebooks ``nbflow run``
writes — and uses the same layout as the live widget. The element classes and ``data-*`` attributes match
the ones ``widgets/graph.js`` draws, so the same selectors work on both.
"""

from __future__ import annotations

from html import escape

from nbflow.runs import format_duration
from nbflow.ui.layout import NODE_HEIGHT, NODE_WIDTH
from nbflow.ui.model import GraphPayload, NodeData, NodeState

__all__ = ["GLYPHS", "STALE_BADGE", "STATE_COLORS", "render_html", "render_svg", "status_text"]

# (fill, stroke, dashed): widgets/graph.css uses the same colours (a test keeps them in step).
STATE_COLORS: dict[NodeState, tuple[str, str, bool]] = {
    "pending": ("#e5e7eb", "#9ca3af", False),
    "running": ("#bfdbfe", "#2563eb", False),
    "retrying": ("#fde68a", "#d97706", False),
    "completed": ("#86efac", "#15803d", False),
    "cached": ("#ecfdf5", "#15803d", True),
    "failed": ("#fca5a5", "#b91c1c", False),
    "timedout": ("#fdba74", "#c2410c", False),
    "cancelled": ("#e4e4e7", "#52525b", True),
    "crashed": ("#f87171", "#7f1d1d", False),
    # Did not run (a call it depends on failed): pale, dashed red, never a Retry — not a failure of its own.
    "upstream": ("#f3f4f6", "#b91c1c", True),
    # Notebook cells (auto mode): "stale" is also dotted, thicker and badged, so it does not rest on colour.
    "stale": ("#fef3c7", "#b45309", True),
    "uncached": ("#ffffff", "#6b7280", False),
}
# A stale cell's badge, sticking out of the top right corner of its box (graph.js draws the same).
STALE_BADGE = (f'<g class="stale-badge" transform="translate({NODE_WIDTH - 44},-7)"><rect width="38" height="13" '
               'rx="6" fill="#b45309"/><text x="19" y="10" text-anchor="middle" fill="#ffffff" font-size="9" '
               'font-weight="bold">STALE</text></g>')
_LABEL_CHARS = 20
# Above this many nodes the static picture is a summary: a multi-megabyte SVG helps nobody on GitHub and
# costs the kernel time at the end of every huge flow.
STATIC_NODE_LIMIT = 2000


def _short(text: str, limit: int = _LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_UNSUCCESSFUL = ("failed", "timedout", "cancelled", "crashed")
_FINAL = ("completed", *_UNSUCCESSFUL)  # states whose duration is the run's (a running call's still grows)
# Each state's glyph, as graph.js draws it: no state rests on colour alone (failed and completed look alike
# to many colour-blind readers).
GLYPHS: dict[str, str] = {
    "pending": "◌", "running": "▶", "retrying": "⟳", "completed": "✓", "cached": "◆", "failed": "✗",
    "timedout": "◷", "cancelled": "■", "crashed": "⚠\ufe0e", "upstream": "⊘", "stale": "△", "uncached": "○",
}


def status_text(node: NodeData) -> str:
    """The second line of a node: its state, a group's progress and failures, attempts, and how long it
    took (or what a hit saved) — as graph.js writes it — or the node's own ``status`` (a notebook cell's)."""
    if "status" in node:
        return node["status"]
    state = node["state"]
    text: str = "upstream failed" if state == "upstream" else state
    if "total" in node:
        text += f' {node.get("count", 0)}/{node["total"]}'
        failed = sum(node.get("counts", {}).get(state, 0) for state in _UNSUCCESSFUL)
        if failed:
            text += f" · {failed} failed"
    if node["attempts"] > 1:
        text += f' · {node["attempts"]} attempts'
    saved, duration = node.get("saved"), node.get("duration")
    if state == "cached" and saved is not None:
        text += f" · saved {format_duration(saved)}"
    elif state in _FINAL and duration is not None:
        text += f" · {format_duration(duration)}"
    return text


def render_svg(graph: GraphPayload) -> str:
    """The graph as an SVG document fragment (``<svg class="nbflow-graph">``)."""
    width = max(graph["width"], 200.0)
    height = max(graph["height"], 40.0)
    parts = [
        f'<svg class="nbflow-graph" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="12">',
        '<defs><marker id="nbflow-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#6b7280"/></marker></defs>',
    ]
    for edge in graph["edges"]:
        points = edge["points"]
        if len(points) < 2:
            continue
        d = "M " + " L ".join(f"{x:.1f} {y:.1f}" for x, y in points)
        parts.append(
            f'<path class="edge" data-source="{escape(edge["source"])}" data-target="{escape(edge["target"])}" '
            f'd="{d}" fill="none" stroke="#6b7280" stroke-width="1.2" marker-end="url(#nbflow-arrow)"/>'
        )
    for node in graph["nodes"]:
        fill, stroke, dashed = STATE_COLORS.get(node["state"], STATE_COLORS["pending"])
        stale = node["state"] == "stale"
        dash = f' stroke-dasharray="{"2 2" if stale else "5 3"}"' if dashed else ""
        status = status_text(node)
        group = node.get("group")
        box = (f'width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="6" fill="{fill}" stroke="{stroke}" '
               f'stroke-width="{"2.5" if stale else "1.5"}"{dash}')
        # A group is drawn as a stack of boxes, with a bar for the share of its calls done.
        stack = (f'<rect class="stack" x="4" y="-4" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="6" fill="#fff" '
                 f'stroke="#9ca3af"/>') if group else ""
        bar = ""
        if group and node.get("total"):
            done = NODE_WIDTH * min(1.0, node.get("count", 0) / node["total"])
            bar = (f'<rect class="progress" x="0" y="{NODE_HEIGHT - 4}" width="{done:.1f}" height="4" '
                   f'rx="2" fill="#15803d"/>')
        parts.append(
            f'<g class="node" data-id="{escape(node["id"])}" data-state="{node["state"]}"'
            + (f' data-group="{group}"' if group else "")
            + f' transform="translate({node["x"]:.1f},{node["y"]:.1f})">'
            f"<title>{escape(node['label'])}: {escape(status)}</title>{stack}"
            f'<rect class="box" {box}/>{bar}'
            f'<text x="8" y="15" fill="#111827">{escape(_short(node["label"]))}</text>'
            f'<text class="glyph" x="7" y="29.5" fill="{stroke}" font-size="10">{GLYPHS.get(node["state"], "")}</text>'
            f'<text class="status" x="19" y="29" fill="#1f2937" font-size="10">{escape(status)}</text>'
            + (STALE_BADGE if stale else "") + "</g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(graph: GraphPayload) -> str:
    """The static fallback put in the widget's ``text/html``: a heading with the runs and the SVG."""
    runs = ", ".join(
        f"{escape(run['name'])}: {escape(run['state'])}" for run in graph["runs"] if run["kind"] != "session"
    )
    heading = f'<div style="font:12px sans-serif;color:#374151;margin:2px 0">nbflow {runs}</div>' if runs else ""
    if len(graph["nodes"]) > STATIC_NODE_LIMIT:
        counts: dict[str, int] = {}
        for node in graph["nodes"]:
            counts[node["state"]] = counts.get(node["state"], 0) + 1
        summary = ", ".join(f"{count:,} {state}" for state, count in sorted(counts.items()))
        return (f'<div class="nbflow-graph-static">{heading}<div style="font:12px sans-serif">'
                f'{len(graph["nodes"]):,} task runs ({escape(summary)}): too many to draw here.</div></div>')
    return (f'<div class="nbflow-graph-static">{heading}'
            f'<div style="overflow:auto;max-height:600px">{render_svg(graph)}</div></div>')
