"""graph.js alone in headless Chromium with a ten-line fake model: drawing, patches, clicks — seconds,
no Jupyter. The full-stack tests are in test_graph_browser.py."""

from __future__ import annotations

import json
import os
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


@pytest.mark.timeout(60)
def test_graph_module_draws_a_group_with_progress_and_its_failed_calls(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from tests.ui.test_groups import finish, mapped_flow

    run, _, members, _ = mapped_flow()
    for task_run in members[:37]:
        finish(task_run, "Completed", "COMPLETED")
    widget = TaskGraph([run], live=False)
    state = {"graph_json": widget.graph_json, "patch": widget.patch, "details": {}, "selected": "",
             "notice": "", "busy": False}
    page = browser.new_page()
    try:
        page.set_content("<html><body></body></html>")
        page.evaluate(FAKE_MODEL, [(ROOT / "widgets" / "graph.js").read_text(),
                                   (ROOT / "widgets" / "graph.css").read_text(), state])
        group = page.locator('svg.nbflow-graph g.node[data-group="map"]')
        expect(group).to_have_attribute("data-state", "running")
        expect(group.locator("text.status")).to_have_text("running 37/100")
        expect(group.locator("rect.progress")).to_have_attribute("width", "55.5")  # 37% of 150
        expect(group.locator("rect.stack")).to_have_count(1)

        # The rest finish, three failing: a patch (as the widget sends it) updates text and bar in place.
        for i, task_run in enumerate(members[37:], start=37):
            finish(task_run, *(("Failed", "FAILED") if i in (40, 41, 99) else ("Completed", "COMPLETED")),
                   error=f"ValueError: bad item {i}" if i in (40, 41, 99) else None)
        run.state, run.state_type, run.end_time = "Failed", "FAILED", 1.0
        changed = widget.model.poll()
        retryable = {m.id for m in members}
        patch = {"rev": widget.graph["rev"], "runs": {run.id: widget.model.run_data(run, set())},
                 "nodes": {node_id: widget.model.node_patch(widget.model.nodes[node_id], retryable)
                           for node_id in changed}}
        page.evaluate(f"() => window.model.change('patch', {json.dumps(patch)})")
        expect(group).to_have_attribute("data-state", "failed")
        expect(group.locator("text.status")).to_have_text("failed 97/100 · 3 failed")
        expect(group.locator("rect.progress")).to_have_attribute("width", "145.5")

        # Its details list the failed calls (what the kernel sends back for a click).
        expect(page.locator(".nbflow-run[data-state=Failed] button.nbflow-retry-flow")).to_be_visible()
        details = widget.model.details("map-m1", retryable)
        page.evaluate(f"() => {{ window.model.set('selected', 'map-m1'); window.model.change('details', "
                      f"{json.dumps(details)}); }}")
        panel = page.locator(".nbflow-details")
        expect(panel.locator("dl.nbflow-failed-calls dt")).to_have_text(["#40", "#41", "#99"])
        expect(panel.locator("dl.nbflow-failed-calls")).to_contain_text("ValueError: bad item 41 (i=41)")
        expect(panel.locator("button.nbflow-retry")).to_have_text("Retry 3 failed")
        panel.locator("button.nbflow-retry").click()
        assert page.evaluate("() => window.sent") == [{"type": "retry", "id": "map-m1"}]
        page.screenshot(path=str(tmp_path / "module-group.png"))
        picture = ROOT / "docs" / "graph-map.png"  # the README's picture of a group: on request only
        if not picture.exists() or os.environ.get("NBFLOW_UPDATE_DOCS") == "1":
            page.locator(".nbflow-root").screenshot(path=str(picture))
    finally:
        page.close()
        widget.close()
