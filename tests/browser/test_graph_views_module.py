"""graph.js alone in headless Chromium (the fake model of fake_graphs.py), on made-up graphs: a big graph
opens readable and Fit fits, the details panel keeps its buttons and the selected node in view, the
legend, glyphs, durations, tooltips and keyboard, the upstream state, the timeline, and the time every
interaction takes at a thousand nodes. The real JupyterLab / Notebook 7 checks are in
test_graph_views_browser.py."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from tests.browser import fake_graphs
from tests.browser.fake_graphs import T0, big, load, showcase, state_of

# The time from an action to the frame after it (the browser has drawn the change).
NEXT_FRAME = "() => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)))"

BOXES = """(ids) => {
  const canvas = document.querySelector('.nbflow-canvas').getBoundingClientRect();
  const boxes = {};
  for (const id of ids) {
    const g = document.querySelector(`g.node[data-id="${id}"] rect.box`);
    const b = g.getBoundingClientRect();
    boxes[id] = {left: b.left - canvas.left, top: b.top - canvas.top, right: b.right - canvas.left,
                 bottom: b.bottom - canvas.top, width: b.width};
  }
  return {canvas: {width: canvas.width, height: canvas.height}, boxes};
}"""


def inside(box: dict[str, float], canvas: dict[str, float]) -> bool:
    return box["left"] >= -0.5 and box["top"] >= -0.5 and box["right"] <= canvas["width"] + 0.5 \
        and box["bottom"] <= canvas["height"] + 0.5


def patch(page: Any, graph: dict[str, Any], nodes: dict[str, Any], runs: dict[str, Any] | None = None) -> None:
    message = {"rev": graph["rev"], "nodes": nodes, "runs": runs or {}}
    page.evaluate(f"() => window.model.change('patch', {json.dumps(message)})")


@pytest.mark.timeout(60)
def test_a_big_graph_opens_readable_on_its_first_nodes_and_fit_fits(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    graph = big()  # 961 nodes; the first ones sit alone, far down the layout's left
    ids = [n["id"] for n in graph["nodes"]]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        load(page, state_of(graph))
        expect(page.locator("svg.nbflow-graph")).to_have_attribute("data-drawn", str(graph["rev"]))
        seen = page.evaluate(BOXES, ids[:3])
        # Opened on the first calls, and readable: a node at least 80% of its size.
        for node_id in ids[:3]:
            assert inside(seen["boxes"][node_id], seen["canvas"]), seen
            assert seen["boxes"][node_id]["width"] >= 0.8 * 150 - 1, seen
        page.screenshot(path=str(tmp_path / "big-opened.png"))

        # Wander off (zoom out, drag away), then double-click the background: the whole graph fits.
        canvas = page.locator(".nbflow-canvas")
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + 40, box["y"] + 40)
        for _ in range(5):
            page.mouse.wheel(0, 400)
            page.wait_for_timeout(30)
        page.mouse.down()
        page.mouse.move(box["x"] + 400, box["y"] + 300, steps=4)
        page.mouse.up()
        page.evaluate("""() => {
            const c = document.querySelector('.nbflow-canvas');
            c.dispatchEvent(new MouseEvent('dblclick', {bubbles: true, clientX: 5, clientY: 5}));
        }""")
        page.evaluate(NEXT_FRAME)
        every = page.evaluate(BOXES, ids)
        assert all(inside(b, every["canvas"]) for b in every["boxes"].values()), \
            [i for i, b in every["boxes"].items() if not inside(b, every["canvas"])][:5]
        page.screenshot(path=str(tmp_path / "big-fitted.png"))

        # The Fit button does the same after a zoom.
        page.mouse.move(box["x"] + 100, box["y"] + 100)
        page.mouse.wheel(0, -1500)
        page.evaluate(NEXT_FRAME)
        page.locator("button.nbflow-fit").click()
        page.evaluate(NEXT_FRAME)
        again = page.evaluate(BOXES, [ids[0], ids[-1]])
        assert all(inside(b, again["canvas"]) for b in again["boxes"].values()), again
    finally:
        page.close()


@pytest.mark.timeout(60)
def test_a_graph_drawn_before_it_has_a_width_opens_fitted_once_shown(browser: Any) -> None:
    """A notebook renders the output before it is on the page (no width yet): the view is fitted when the
    canvas gets its width, not left where a zero width put it."""
    graph = showcase()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.set_content("<html><body></body></html>")
        page.evaluate(fake_graphs.FAKE_MODEL.replace(
            "document.body.appendChild(el);", "el.style.display = 'none'; document.body.appendChild(el);"),
            [(fake_graphs.ROOT / "widgets" / "graph.js").read_text(),
             (fake_graphs.ROOT / "widgets" / "graph.css").read_text(), state_of(graph), 900])
        page.wait_for_timeout(100)
        page.evaluate("() => { window.widgetElement.style.display = 'block'; }")
        page.evaluate(NEXT_FRAME)
        seen = page.evaluate(BOXES, [n["id"] for n in graph["nodes"]])
        assert all(inside(b, seen["canvas"]) for b in seen["boxes"].values()), seen
    finally:
        page.close()


@pytest.mark.timeout(60)
def test_a_view_opened_on_a_selected_node_draws_it_selected_and_in_view(browser: Any) -> None:
    """The kernel re-displays a graph when its flow ends: the new view opens with the node still selected,
    highlighted and on screen, even far from the first nodes of a big graph."""
    from playwright.sync_api import expect

    graph = big()
    last = graph["nodes"][-1]["id"]
    details = {"id": last, "label": graph["nodes"][-1]["label"], "state": "completed", "state_name": "Completed",
               "retryable": False, "attempts": 1, "calls": 1, "duration": 0.3, "inputs": {}, "history": []}
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        load(page, state_of(graph, selected=last, details=details))
        expect(page.locator("svg.nbflow-graph")).to_have_attribute("data-drawn", str(graph["rev"]))
        expect(page.locator(f'g.node[data-id="{last}"]')).to_have_class("node selected")
        page.evaluate(NEXT_FRAME)
        seen = page.evaluate(BOXES, [last])
        assert inside(seen["boxes"][last], seen["canvas"]), seen
    finally:
        page.close()


@pytest.mark.timeout(60)
def test_details_keep_retry_close_and_the_selected_node_in_view(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    graph = showcase(long_name=True)
    name = next(n["label"] for n in graph["nodes"] if n["id"] == "extract")
    page = browser.new_page(viewport={"width": 900, "height": 700})
    try:
        load(page, state_of(graph), width=820)
        # The rightmost node: the details panel opening beside the canvas would cover it.
        page.locator('g.node[data-id="publish"]').click()
        details = {"id": "publish", "label": name, "state": "failed", "state_name": "Failed", "retryable": True,
                   "attempts": 1, "calls": 1, "duration": 0.5, "inputs": {"n": "10"},
                   "history": [{"state": "Running", "time": T0 + i, "message": None} for i in range(60)],
                   "traceback": "\n".join(f"  line {i}" for i in range(200)) + "\nValueError: no"}
        page.evaluate(f"() => window.model.change('details', {json.dumps(details)})")
        panel = page.locator(".nbflow-details")
        expect(panel).to_be_visible()
        page.wait_for_timeout(100)  # the canvas narrows; the ResizeObserver refits
        page.evaluate(NEXT_FRAME)
        panel_box = panel.bounding_box()
        for button in ("button.nbflow-retry", "button.nbflow-close"):
            b = panel.locator(button).bounding_box()
            assert b["x"] >= panel_box["x"] and b["x"] + b["width"] <= panel_box["x"] + panel_box["width"] + 0.5, \
                (button, b, panel_box)
            assert b["x"] + b["width"] <= 820 + 8 + 0.5, (button, b)
        seen = page.evaluate(BOXES, ["publish"])
        assert inside(seen["boxes"]["publish"], seen["canvas"]), seen
        page.screenshot(path=str(tmp_path / "details-long-name.png"))
        # A new revision of the graph (a live flow grows): the selection is kept, drawn, and in view.
        grown = showcase(long_name=True)
        grown["rev"] = 2
        grown["nodes"] = [n for n in grown["nodes"] if n["id"] != "publish"] + [
            fake_graphs.node(f"more-{i}", f"more_{i}", "pending") for i in range(12)] + [
            next(n for n in graph["nodes"] if n["id"] == "publish")]
        grown = fake_graphs.payload(grown["nodes"], [(e["source"], e["target"]) for e in graph["edges"]], rev=2)
        page.evaluate(f"() => window.model.change('graph_json', {json.dumps(json.dumps(grown))})")
        expect(page.locator('g.node[data-id="publish"]')).to_have_class("node selected")
        page.evaluate(NEXT_FRAME)
        seen = page.evaluate(BOXES, ["publish"])
        assert inside(seen["boxes"]["publish"], seen["canvas"]), seen
        # A long traceback scrolled to its end: the heading, with Retry and close, stays on screen.
        assert panel.evaluate("(el) => el.scrollHeight > el.clientHeight + 400")
        panel.evaluate("(el) => { el.scrollTop = el.scrollHeight; }")
        panel_box = panel.bounding_box()
        close = panel.locator("button.nbflow-close").bounding_box()
        assert panel_box["y"] <= close["y"] <= panel_box["y"] + 40, (close, panel_box)
        panel.locator("button.nbflow-close").click()
        expect(panel).to_be_hidden()
    finally:
        page.close()


@pytest.mark.timeout(60)
def test_legend_glyphs_durations_tooltips_keyboard_and_upstream(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    graph = showcase(long_name=True)
    for n in graph["nodes"]:
        if n["id"] == "report":
            n["retryable"] = True  # even if the kernel said so, an upstream failure offers no Retry
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        load(page, state_of(graph), width=1200)
        svg = page.locator("svg.nbflow-graph")
        node = lambda i: svg.locator(f'g.node[data-id="{i}"]')  # noqa: E731
        # A legend of the states on screen, each with its glyph.
        expect(page.locator(".nbflow-legend-item")).to_have_count(6)
        assert page.locator(".nbflow-legend-item").evaluate_all("els => els.map(e => e.dataset.state)") == [
            "pending", "completed", "cached", "failed", "timedout", "upstream"]
        # Failed and completed differ by more than red and green: their glyphs.
        expect(node("clean").locator("text.glyph")).to_have_text("✗")
        expect(node("extract").locator("text.glyph")).to_have_text("✓")
        expect(node("config").locator("text.glyph")).to_have_text("◆")
        # Durations on the second line; a hit says what it saved.
        expect(node("extract").locator("text.status")).to_have_text("completed · 1.20 s")
        expect(node("clean").locator("text.status")).to_have_text("failed · 400 ms")
        expect(node("config").locator("text.status")).to_have_text("cached · saved 2.50 s")
        # A name cut at 20 characters has its full name (and status) as a tooltip.
        expect(node("extract").locator("text.label")).to_have_text("extract_customer_re…")
        expect(node("extract").locator("title")).to_have_text(
            "extract_customer_records_from_the_warehouse_" * 3 + ": completed · 1.20 s")
        # Upstream: its own look, no Retry, unlike a real failure.
        expect(node("report")).to_have_attribute("data-state", "upstream")
        expect(node("report")).to_have_attribute("data-retryable", "false")
        expect(node("report").locator("g.retry")).to_have_count(0)
        expect(node("report").locator("text.status")).to_have_text("upstream failed")
        expect(node("clean").locator("g.retry")).to_have_count(1)
        report_dash, clean_dash = (page.evaluate(f"""() => getComputedStyle(
            document.querySelector('g.node[data-id="{i}"] rect.box')).strokeDasharray""") for i in ("report", "clean"))
        assert report_dash != "none" and clean_dash == "none", (report_dash, clean_dash)

        # Keyboard: one tab stop into the graph, arrows move between nodes, Enter / Space select.
        page.locator("button.nbflow-legend-toggle").focus()
        page.keyboard.press("Tab")
        assert page.evaluate("() => document.activeElement.getAttribute('data-id')") == "config"
        expect(svg.locator("g.node rect.focus")).to_have_count(1)  # a focus ring, on the focused node
        page.keyboard.press("Enter")
        page.keyboard.press("ArrowRight")
        assert page.evaluate("() => document.activeElement.getAttribute('data-id')") == "extract"
        page.keyboard.press("Space")
        assert page.evaluate("() => window.sent") == [{"type": "select", "id": "config"},
                                                       {"type": "select", "id": "extract"}]
        assert page.evaluate("() => document.querySelectorAll('g.node[tabindex=\"0\"]').length") == 1
        page.screenshot(path=str(tmp_path / "legend-glyphs.png"))

        # A cached call's details: what it saved, not "attempts 0 / duration 0 ms".
        details = {"id": "config", "label": "load_config", "state": "cached", "state_name": "Cached",
                   "retryable": False, "attempts": 0, "calls": 1, "duration": 0.0, "saved": 2.5, "inputs": {},
                   "history": [], "cache": "loaded from the cache"}
        page.evaluate(f"() => {{ window.model.set('selected', 'config'); "
                      f"window.model.change('details', {json.dumps(details)}); }}")
        panel = page.locator(".nbflow-details")
        expect(panel.locator("dt")).to_contain_text(["saved"])
        expect(panel.locator("dd").first).to_have_text("2.50 s (its computed run)")
        expect(panel.locator("dt", has_text="attempts")).to_have_count(0)
        expect(panel.locator("dt", has_text="duration")).to_have_count(0)
        # An upstream call's details: no Retry either.
        details = {"id": "report", "label": "report", "state": "upstream", "state_name": "UpstreamFailed",
                   "retryable": True, "attempts": 0, "calls": 1, "duration": None, "inputs": {}, "history": []}
        page.evaluate(f"() => {{ window.model.set('selected', 'report'); "
                      f"window.model.change('details', {json.dumps(details)}); }}")
        expect(panel.locator(".nbflow-upstream-note")).to_be_visible()
        expect(panel.locator("button.nbflow-retry")).to_have_count(0)
    finally:
        page.close()


@pytest.mark.timeout(60)
def test_timeline_bars_waits_cached_markers_live_and_selection(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    graph = showcase(running=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        load(page, state_of(graph), width=1000)
        page.locator("button.nbflow-view[data-view=timeline]").click()
        timeline = page.locator("svg.nbflow-timeline")
        rows = timeline.locator("g.row")
        expect(page.locator(".nbflow-timeline-pane")).to_be_visible()  # over the graph, which it hides
        expect(page.locator("svg.nbflow-graph")).to_have_attribute("aria-hidden", "true")
        # One row per call, by start; the calls not started yet last, in call order.
        expect(rows).to_have_count(8)
        assert rows.evaluate_all("els => els.map(e => e.dataset.id)") == [
            "config", "extract", "load", "slow", "clean", "report", "score", "publish"]
        expect(timeline.locator('g.row[data-id="config"] path.cached-marker')).to_have_count(1)
        load_row = timeline.locator('g.row[data-id="load"]')
        expect(load_row.locator("rect.span")).to_have_count(2)
        expect(load_row.locator('rect.span[data-state="failed"]')).to_have_count(1)
        expect(load_row.locator("rect.span.wait")).to_have_count(1)
        assert "url(" in load_row.locator("rect.span.wait").evaluate("el => getComputedStyle(el).fill")
        # Live: a "now" line, and open bars reach it.
        expect(page.locator(".nbflow-timeline-pane")).to_have_attribute("data-live", "true")
        expect(timeline.locator("line.now")).to_have_count(1)
        expect(page.locator("svg.nbflow-tl-axis text.tick-label").first).to_have_text("0 s")
        page.screenshot(path=str(tmp_path / "timeline-live.png"))

        # Patches redraw it: load's retry runs and completes, the run ends.
        t = T0
        patch(page, graph, {
            "load": {"state": "completed", "attempts": 2, "retryable": False, "duration": 0.7, "end": t + 3.6,
                     "spans": [[t + 1.3, t + 1.9, "failed"], [t + 1.9, t + 2.9, "waiting"],
                               [t + 2.9, t + 3.6, "completed"]]},
            "slow": {"state": "completed", "attempts": 1, "retryable": False, "duration": 2.0, "end": t + 3.3,
                     "spans": [[t + 1.3, t + 3.3, "completed"]]},
        }, {"r1": {**graph["runs"][0], "state": "Completed", "end": t + 3.6}})
        expect(load_row.locator('rect.span[data-state="completed"]')).to_have_count(1)
        expect(page.locator(".nbflow-timeline-pane")).to_have_attribute("data-live", "false")
        expect(timeline.locator("line.now")).to_have_count(0)
        page.wait_for_timeout(600)  # (past the live redraws' period: what follows is drawn by the patch alone)
        # A retry of a call after the run ended: its row gains the new run.
        patch(page, graph, {"clean": {"state": "completed", "attempts": 1, "retryable": False, "duration": 0.3,
                                      "end": t + 9.3, "spans": [[t + 9.0, t + 9.3, "completed"]]}})
        expect(timeline.locator('g.row[data-id="clean"] rect.span[data-state="completed"]')).to_have_count(1)
        # Click a row: the node is selected as a click in the graph would.
        timeline.locator('g.row[data-id="slow"]').click()
        assert page.evaluate("() => window.sent") == [{"type": "select", "id": "slow"}]
        expect(timeline.locator('g.row[data-id="slow"]')).to_have_class("row selected")
        expect(page.locator('.nbflow-legend-item[data-state="waiting"]')).to_have_count(1)
        # The keyboard: arrows in the timeline move the selection row by row.
        page.locator(".nbflow-tl-scroll").focus()
        page.keyboard.press("ArrowDown")
        assert page.evaluate("() => window.sent.at(-1)") == {"type": "select", "id": "clean"}
        page.keyboard.press("ArrowUp")
        assert page.evaluate("() => window.sent.at(-1)") == {"type": "select", "id": "slow"}
        page.locator("button.nbflow-view[data-view=graph]").click()
        expect(page.locator('svg.nbflow-graph g.node[data-id="slow"]')).to_have_class("node selected")
    finally:
        page.close()


@pytest.mark.timeout(90)
def test_a_thousand_nodes_answer_every_interaction_within_100_ms(browser: Any, tmp_path: Path) -> None:
    """Each interaction is timed from the action to the frame after it (the change drawn), several times;
    long tasks are recorded too. Timings are written to timings.json."""
    from playwright.sync_api import expect

    graph = big(running=30)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.set_content("<html><body></body></html>")
        page.evaluate("""() => { window.longtasks = []; new PerformanceObserver((list) => {
            for (const e of list.getEntries()) window.longtasks.push(Math.round(e.duration)); })
            .observe({entryTypes: ['longtask']}); }""")
        load(page, state_of(graph))
        expect(page.locator("svg.nbflow-graph")).to_have_attribute("data-drawn", str(graph["rev"]))
        drawing = page.evaluate("() => window.longtasks.splice(0)")
        running = [n["id"] for n in graph["nodes"] if n["state"] == "running"]
        timings = page.evaluate(
            """async ([running, rev]) => {
            const frame = () => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
            const time = async (action) => { const t0 = performance.now(); await action(); await frame();
                                              return performance.now() - t0; };
            const canvas = document.querySelector('.nbflow-canvas');
            const box = canvas.getBoundingClientRect();
            const at = {clientX: box.left + 300, clientY: box.top + 200, bubbles: true, cancelable: true};
            const out = {wheel: [], pan: [], select: [], patch: [], fit: [], timeline: [], scroll: [], graph: []};
            for (let i = 0; i < 12; i++) out.wheel.push(await time(() => canvas.dispatchEvent(
                new WheelEvent('wheel', {...at, deltaY: i % 6 < 3 ? 120 : -120}))));
            canvas.dispatchEvent(new PointerEvent('pointerdown', {...at, pointerId: 1}));
            for (let i = 0; i < 10; i++) out.pan.push(await time(() => canvas.dispatchEvent(
                new PointerEvent('pointermove', {...at, clientX: at.clientX - 20 * i, pointerId: 1}))));
            canvas.dispatchEvent(new PointerEvent('pointerup', {...at, pointerId: 1}));
            const fit = document.querySelector('button.nbflow-fit');
            for (let i = 0; i < 5; i++) out.fit.push(await time(() => fit.click()));
            const ids = [...document.querySelectorAll('svg.nbflow-graph g.node')].map((g) => g.dataset.id);
            for (let i = 0; i < 8; i++) out.select.push(await time(() =>
                document.querySelector(`g.node[data-id="${ids[i * 97]}"] rect.box`).dispatchEvent(
                    new MouseEvent('click', {bubbles: true}))));
            for (let i = 0; i < 5; i++) {
                const nodes = {};
                for (const id of running) nodes[id] = {state: i % 2 ? 'running' : 'completed', attempts: 1,
                                                       retryable: false, duration: i % 2 ? null : 0.5};
                out.patch.push(await time(() => window.model.change('patch', {rev, nodes, runs: {}})));
            }
            const [graphButton, timelineButton] = document.querySelectorAll('button.nbflow-view');
            for (let i = 0; i < 4; i++) {
                out.timeline.push(await time(() => timelineButton.click()));
                const scroll = document.querySelector('.nbflow-tl-scroll');
                for (let j = 1; j <= 3; j++) out.scroll.push(await time(async () => {
                    scroll.scrollTop = j * 5000; await new Promise((r) => requestAnimationFrame(r)); }));
                out.graph.push(await time(() => graphButton.click()));
            }
            return out;
        }""", [running, graph["rev"]])
        interactions = page.evaluate("() => window.longtasks.splice(0)")
        # At most ~60 timeline rows exist at any time, however many calls there are.
        page.locator("button.nbflow-view[data-view=timeline]").click()
        assert page.locator("svg.nbflow-timeline g.row").count() <= 60
        # Every sample but the slowest of each kind (one outlier is the shared machine's, not the widget's).
        summary = {kind: {"median": round(statistics.median(values), 1), "max": round(max(values), 1),
                          "all_but_slowest": round(sorted(values)[-2], 1)} for kind, values in timings.items()}
        (tmp_path / "timings.json").write_text(json.dumps(
            {"interactions": summary, "long_tasks_while_drawing": drawing,
             "long_tasks_while_interacting": interactions}, indent=1))
        print(json.dumps(summary), "long tasks:", drawing, interactions)
        slow = {kind: s for kind, s in summary.items() if s["all_but_slowest"] >= 100}
        assert not slow, summary
        assert max(drawing, default=0) < 250, drawing  # drawn in batches, never one long task
    finally:
        page.close()


CONTRAST = """() => {
  const lum = (c) => {
    const [r, g, b] = c.match(/[\\d.]+/g).slice(0, 3).map((v) => {
      const s = Number(v) / 255; return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const root = document.querySelector('.nbflow-root');
  const nodes = {};
  for (const g of root.querySelectorAll('svg.nbflow-graph g.node')) {
    const box = getComputedStyle(g.querySelector('rect.box')).fill;
    nodes[g.dataset.state] = Math.min(ratio(getComputedStyle(g.querySelector('text.label')).fill, box),
                                      ratio(getComputedStyle(g.querySelector('text.status')).fill, box));
  }
  return {background: lum(getComputedStyle(root).backgroundColor), nodes};
}"""


@pytest.mark.parametrize("front_end", ["plain", "vscode-dark", "unknown-dark"])
@pytest.mark.timeout(60)
def test_theme_outside_jupyterlab(front_end: str, browser: Any, tmp_path: Path) -> None:
    """Plain HTML gets the light defaults; VS Code's dark theme (body.vscode-dark, --vscode-* variables) and
    a front-end that only makes the background dark get the dark palette — text legible on every state."""
    graph = showcase()
    graph["nodes"].append(fake_graphs.node("crash", "crash", "crashed"))
    graph["nodes"].append(fake_graphs.node("cancel", "cancel", "cancelled"))
    graph["nodes"].append(fake_graphs.node("run", "run", "running"))
    graph["nodes"].append(fake_graphs.node("again", "again", "retrying"))
    graph = fake_graphs.payload(graph["nodes"], [(e["source"], e["target"]) for e in graph["edges"]])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        load(page, state_of(graph), width=1200)
        if front_end == "vscode-dark":
            page.evaluate("""() => { document.body.classList.add('vscode-dark');
                document.body.style.setProperty('--vscode-editor-background', '#1e1e1e');
                document.body.style.setProperty('--vscode-editor-foreground', '#d4d4d4'); }""")
        elif front_end == "unknown-dark":
            # Its own theme variables, under JupyterLab's names, but no marker on <body>.
            page.evaluate("""() => { document.body.style.setProperty('--jp-layout-color0', '#202124');
                document.body.style.setProperty('--jp-ui-font-color0', '#e8eaed');
                document.body.setAttribute('data-theme', 'dark'); }""")
        page.evaluate(NEXT_FRAME)
        seen = page.evaluate(CONTRAST)
        page.screenshot(path=str(tmp_path / f"theme-{front_end}.png"))
        assert len(seen["nodes"]) == 10  # every state of a task call
        assert min(seen["nodes"].values()) >= 4.5, seen
        if front_end == "plain":
            assert seen["background"] > 0.95, seen
        else:
            assert seen["background"] < 0.05, seen
            fill = page.evaluate("""() => getComputedStyle(
                document.querySelector('g.node[data-state="completed"] rect.box')).fill""")
            assert fill == "rgb(20, 83, 45)", fill  # the dark completed fill, not the light one
    finally:
        page.close()
