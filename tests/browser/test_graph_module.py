"""graph.js alone in headless Chromium with a ten-line fake model: drawing, patches, clicks — seconds,
no Jupyter. The full-stack tests are in test_graph_browser.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import nbflow
from nbflow.cache_policies import NONE
from nbflow.ui import TaskGraph

ROOT = Path(__file__).resolve().parents[2]

FAKE_MODEL = """
async (args) => {
  const [source, css, state] = args;
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
  const el = document.createElement('div'); el.style.width = '900px'; document.body.appendChild(el);
  module.default.render({ model: window.model, el });
}
"""


@pytest.mark.timeout(60)
def test_graph_module_draws_patches_and_sends_commands(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    @nbflow.task(cache_policy=NONE)
    def first() -> list[int]:
        return [1]

    @nbflow.task(cache_policy=NONE)
    def second(x: list[int]) -> list[int]:
        raise ValueError("no")

    @nbflow.flow
    def pair() -> list[int]:
        return second(first())

    pair(return_state=True)
    run = nbflow.runs.list_runs(limit=1)[0]
    widget = TaskGraph([run], live=False)
    state = {"graph_json": widget.graph_json, "patch": widget.patch, "details": {}, "selected": "",
             "notice": "", "busy": False}
    first_id, second_id = (node["id"] for node in widget.graph["nodes"])

    page = browser.new_page()
    try:
        page.set_content("<html><body></body></html>")
        page.evaluate(FAKE_MODEL, [(ROOT / "widgets" / "graph.js").read_text(),
                                   (ROOT / "widgets" / "graph.css").read_text(), state])
        svg = page.locator("svg.nbflow-graph")
        expect(svg.locator("g.node")).to_have_count(2)
        expect(svg.locator(f'g.node[data-id="{second_id}"]')).to_have_attribute("data-state", "failed")
        expect(svg.locator("path.edge")).to_have_count(1)
        fill = page.evaluate(
            f"""() => getComputedStyle(document.querySelector('g.node[data-id="{second_id}"] rect.box')).fill"""
        )
        assert fill == "rgb(252, 165, 165)"  # the failed colour from graph.css
        # A patch recolours in place.
        patch = {"rev": widget.graph["rev"], "nodes": {second_id: {"state": "running", "attempts": 2,
                                                                     "retryable": False}}, "runs": {}}
        page.evaluate(f"() => window.model.change('patch', {json.dumps(patch)})")
        expect(svg.locator(f'g.node[data-id="{second_id}"]')).to_have_attribute("data-state", "running")
        expect(svg.locator(f'g.node[data-id="{second_id}"] text.status')).to_have_text("running · 2 attempts")
        # Clicks become commands.
        svg.locator(f'g.node[data-id="{first_id}"]').click()
        patch["nodes"][second_id] = {"state": "failed", "attempts": 2, "retryable": True}
        page.evaluate(f"() => window.model.change('patch', {json.dumps(patch)})")
        svg.locator(f'g.node[data-id="{second_id}"] g.retry').click()
        page.locator("button.nbflow-retry-flow").click()
        sent = page.evaluate("() => window.sent")
        assert sent == [{"type": "select", "id": first_id}, {"type": "retry", "id": second_id},
                        {"type": "retry_flow", "run": run.id}]
        page.screenshot(path=str(tmp_path / "module.png"))
    finally:
        page.close()
        widget.close()
