"""graph.js drawing auto mode's cell graph (``%nbflow graph`` in auto mode) in headless Chromium with the fake
model of test_graph_module.py: the stale badge and the stale reasons in the details panel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nbflow.ui.cells import CellGraph
from tests.browser.test_graph_module import FAKE_MODEL
from tests.ui.conftest import browser_command

ROOT = Path(__file__).resolve().parents[2]

CELLS = [
    {"key": "load", "label": "[4] a = 5", "number": 4, "state": "computed", "stale": [], "upstream": [],
     "duration": 0.2, "saved": 0.0, "reason": "", "task_run_id": "", "task": "a"},
    {"key": "double", "label": "[2] b = a * 2", "number": 2, "state": "cached", "stale": ["`a` changed in cell [4]"],
     "upstream": ["load"], "duration": 0.1, "saved": 1.5, "reason": "", "task_run_id": "", "task": "b"},
    {"key": "shell", "label": "[3] !ls", "number": 3, "state": "uncached", "stale": [], "upstream": [],
     "duration": 0.1, "saved": 0.0, "reason": "it runs a shell command (!)", "task_run_id": "", "task": ""},
]


@pytest.mark.timeout(60)
def test_graph_module_draws_stale_cells_with_a_badge_and_their_reasons(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    widget = CellGraph(lambda: CELLS)
    browser_command(widget, {"type": "select", "id": "double"})
    state = {"graph_json": widget.graph_json, "patch": widget.patch, "details": widget.details,
             "selected": "double", "notice": "", "busy": False}
    page = browser.new_page()
    try:
        page.set_content("<html><body></body></html>")
        page.evaluate(FAKE_MODEL, [(ROOT / "widgets" / "graph.js").read_text(),
                                   (ROOT / "widgets" / "graph.css").read_text(), state])
        svg = page.locator("svg.nbflow-graph")
        stale = svg.locator('g.node[data-id="double"]')
        expect(stale).to_have_attribute("data-state", "stale")
        expect(stale.locator("g.stale-badge text")).to_have_text("STALE")
        expect(stale.locator("text.status")).to_have_text("stale · was cached")
        dash = page.evaluate("""() => getComputedStyle(
            document.querySelector('g.node[data-id="double"] rect.box')).strokeDasharray""")
        assert dash.replace("px", "") == "2, 2"
        expect(svg.locator("g.stale-badge")).to_have_count(1)  # only on the stale cell
        expect(svg.locator('g.node[data-id="shell"] text.status')).to_have_text("not cached")
        expect(svg.locator('path.edge[data-source="load"][data-target="double"]')).to_have_count(1)
        panel = page.locator(".nbflow-details")
        expect(panel.locator("ul.nbflow-stale-reasons li")).to_have_text(["`a` changed in cell [4]"])
        expect(panel.locator(".nbflow-badge")).to_have_text("Stale")
        page.screenshot(path=str(tmp_path / "cells.png"))
    finally:
        page.close()
        widget.close()
