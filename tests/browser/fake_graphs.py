"""Graph payloads made up for the module tests of graph.js (test_graph_module.py's fake model), laid out by
nbflow's own layout: big graphs, every state, timings and spans, without running a thousand tasks."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from nbflow.ui.layout import layered_layout

ROOT = Path(__file__).resolve().parents[2]
# A run's start, in epoch seconds: a few seconds ago, so that a running one's "now" is where it would be.
T0 = float(int(time.time()) - 5)

# The ten-line fake model of test_graph_module.py, with the element's width as a fourth argument.
FAKE_MODEL = """
async (args) => {
  const [source, css, state, width] = args;
  const style = document.createElement('style'); style.textContent = css; document.head.appendChild(style);
  const handlers = {};
  window.sent = [];
  window.model = {
    state, get: (k) => state[k], set: (k, v) => { state[k] = v; },
    on: (e, f) => { (handlers[e] = handlers[e] || []).push(f); }, off: () => {},
    send: (m) => window.sent.push(m), save_changes: () => {},
    change: (k, v) => { state[k] = v; (handlers['change:' + k] || []).forEach((f) => f()); },
  };
  const url = URL.createObjectURL(new Blob([source], { type: 'text/javascript' }));
  const module = await import(url);
  const el = document.createElement('div'); el.style.width = (width || 900) + 'px'; document.body.appendChild(el);
  window.widgetElement = el;
  window.cleanup = module.default.render({ model: window.model, el });
}
"""


def node(node_id: str, label: str, state: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"id": node_id, "label": label, "task": f"m.{label}", "run": "r1", "state": state,
                            "attempts": 1, "retryable": state in ("failed", "timedout", "crashed", "cancelled"),
                            "x": 0.0, "y": 0.0}
    data.update(extra)
    return data


def payload(nodes: list[dict[str, Any]], edges: list[tuple[str, str]], *, run_state: str = "Completed",
            start: float | None = T0, end: float | None = T0 + 10, rev: int = 1) -> dict[str, Any]:
    layout = layered_layout([n["id"] for n in nodes], edges)
    for n in nodes:
        n["x"], n["y"] = layout.positions[n["id"]]
    return {
        "rev": rev,
        "nodes": nodes,
        "edges": [{"source": s, "target": t, "points": [list(p) for p in points]}
                  for (s, t), points in zip(edges, layout.edge_points)],
        "runs": [{"id": "r1", "name": "pipeline", "kind": "flow", "state": run_state, "retryable": False,
                  "parent": None, "start": start, "end": end}],
        "width": layout.width,
        "height": layout.height,
    }


def big(tasks: int = 30, calls: int = 50, folded: int = 11, *, running: int = 0) -> dict[str, Any]:
    """The flow of issue 20 that opened on a blank canvas: ``tasks`` steps applied in turn to ``calls``
    items (1,500 calls), the first ``folded`` steps folded into one node each (past FOLD_AT) — 961 nodes in
    30 layers. Each folded node sits alone in its layer, centred far down a tall layout, so the top left
    corner, where the view used to open, is empty. The last ``running`` calls of the first unfolded step
    are running, everything else completed."""
    nodes: list[dict[str, Any]] = []
    edges: list[tuple[str, str]] = []
    for step in range(tasks):
        name = f"step_{step:02d}_transform"
        begin = T0 + step * 0.5
        if step < folded:
            nodes.append(node(f"s{step}", name, "completed", group="repeat", count=calls, total=calls,
                              counts={"completed": calls}, attempts=0, duration=None, start=begin, end=begin + 0.5))
            if step:
                edges.append((f"s{step - 1}", f"s{step}"))
            continue
        for i in range(calls):
            state = "running" if step == folded and i >= calls - running else "completed"
            start = begin + i * 0.01
            nodes.append(node(f"s{step}-{i}", name, state, start=start,
                              end=None if state == "running" else start + 0.3,
                              duration=None if state == "running" else 0.3,
                              spans=[[start, None if state == "running" else start + 0.3, state]]))
            edges.append((f"s{step - 1}" if step == folded else f"s{step - 1}-{i}", f"s{step}-{i}"))
    return payload(nodes, edges, end=T0 + tasks * 0.5 + 1)


def state_of(graph: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"graph_json": json.dumps(graph), "patch": {"rev": graph["rev"], "nodes": {}, "runs": {}},
            "details": {}, "selected": "", "notice": "", "busy": False, **extra}


def load(page: Any, state: dict[str, Any], width: int = 900) -> None:
    """Draw graph.js into a blank page with the fake model (``window.model``)."""
    page.set_content("<html><body style='margin:8px'></body></html>")
    page.evaluate(FAKE_MODEL, [(ROOT / "widgets" / "graph.js").read_text(),
                               (ROOT / "widgets" / "graph.css").read_text(), state, width])


def showcase(*, long_name: bool = False, running: bool = False) -> dict[str, Any]:
    """Every state of a task call in one small flow, with timings: a retried load, a cached config, a
    failure and the call that did not run because of it, a timeout, a map group — what the legend, the
    glyphs, the durations and the timeline are tested on. ``running``: the run is still going, with a
    call running and one waiting to retry."""
    t = T0
    extract_name = "extract_customer_records_from_the_warehouse_" * 3 if long_name else "extract"
    nodes = [
        node("config", "load_config", "cached", saved=2.5, start=t, end=t, spans=[[t, t, "cached"]]),
        node("extract", extract_name, "completed", duration=1.2, start=t + 0.1, end=t + 1.3,
             spans=[[t + 0.1, t + 1.3, "completed"]]),
        node("load", "load", "completed", attempts=3, duration=0.8, start=t + 1.3, end=t + 5.6,
             spans=[[t + 1.3, t + 1.9, "failed"], [t + 1.9, t + 2.9, "waiting"], [t + 2.9, t + 3.4, "failed"],
                    [t + 3.4, t + 4.4, "waiting"], [t + 4.4, t + 5.6, "completed"]]),
        node("clean", "clean", "failed", duration=0.4, start=t + 5.6, end=t + 6.0,
             spans=[[t + 5.6, t + 6.0, "failed"]]),
        node("report", "report", "upstream", retryable=False, start=None, end=t + 6.0),
        node("slow", "slow_api", "timedout", duration=3.0, start=t + 1.3, end=t + 4.3,
             spans=[[t + 1.3, t + 4.3, "timedout"]]),
        node("score", "score", "completed", group="map", count=8, total=8, counts={"completed": 8}, attempts=0,
             duration=None, start=t + 5.6, end=t + 7.5),
        node("publish", "publish", "pending", retryable=False),
    ]
    edges = [("config", "extract"), ("extract", "load"), ("load", "clean"), ("clean", "report"),
             ("extract", "slow"), ("load", "score"), ("score", "publish")]
    if running:
        nodes[2].update(state="retrying", duration=None, end=None, retryable=False,
                        spans=[[t + 1.3, t + 1.9, "failed"], [t + 1.9, None, "waiting"]])
        nodes[5].update(state="running", duration=None, end=None, retryable=False, spans=[[t + 1.3, None, "running"]])
        for later in nodes[3:5] + nodes[6:]:
            later.update(state="pending", duration=None, start=None, end=None, spans=[], retryable=False)
            later.pop("group", None), later.pop("count", None), later.pop("total", None), later.pop("counts", None)
        return payload(nodes, edges, run_state="Running", end=None)
    return payload(nodes, edges, run_state="Failed", end=t + 7.5)
