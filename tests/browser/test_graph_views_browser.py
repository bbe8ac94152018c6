"""The graph's views in a real JupyterLab 4 and Notebook 7 (headless Chromium): a flow with a retry, a cache
hit, a map, a failure with a long name and the call it stopped; a 609-node flow.

- a big graph opens readable on its first nodes and a double-click fits it (issue 20, 7);
- the details panel keeps Retry and close in view, and the selected node stays on the narrowed canvas (8);
- JupyterLab Dark (switched with the front-end's own command): the widget takes the theme, and every
  node's text keeps a contrast of 4.5:1 on its box (9);
- the timeline, live while the flow runs, then with its retry's wait and the cache hit, and a click on
  a row selecting the node in the kernel (12).

Screenshots of each step are written to the test's tmp dir; with NBFLOW_UPDATE_DOCS=1 (or when missing) the
JupyterLab ones become docs/graph.png, docs/graph-dark.png, docs/timeline.png and docs/timeline-dark.png.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_graph_browser import open_and_run_all, write_notebook

ROOT = Path(__file__).resolve().parents[2]
DOCS = {"graph": "graph.png", "graph-dark": "graph-dark.png", "timeline": "timeline.png",
        "timeline-dark": "timeline-dark.png"}

QUARTERLY = '''
import time
import nbflow
from nbflow.cache_policies import NONE

runs = {"fetch": 0}

@nbflow.task
def load_config(region: str) -> dict:
    time.sleep(1.5)
    return {"region": region, "rows": 6}

@nbflow.task(retries=1, retry_delay_seconds=0.5, cache_policy=NONE)
def fetch_rows(config: dict) -> list[int]:
    time.sleep(0.3)
    runs["fetch"] += 1
    if runs["fetch"] % 2:
        raise ConnectionError("the warehouse is busy, try again")
    return list(range(config["rows"]))

@nbflow.task(cache_policy=NONE)
def score(row: int) -> float:
    time.sleep(0.2 + 0.1 * (row % 3))
    return row * 1.5

@nbflow.task(cache_policy=NONE)
def summarise_scores(scores: list[float]) -> list[float]:
    time.sleep(0.2)
    return [sum(scores)]

@nbflow.task(cache_policy=NONE)
def validate_customer_ids_against_the_crm_export_of_last_quarter(rows: list[int]) -> list[int]:
    time.sleep(0.4)
    raise ValueError("3 rows have no customer id")

@nbflow.task(cache_policy=NONE)
def publish(total: list[float], valid: list[int]) -> str:
    return f"{total[0]} ({len(valid)} valid)"

@nbflow.flow
def quarterly(region: str = "emea") -> str:
    config = load_config(region)
    rows = fetch_rows(config)
    checked = validate_customer_ids_against_the_crm_export_of_last_quarter.submit(rows)
    total = summarise_scores(score.map(rows).result())
    return publish.submit(total, checked).result()
'''

# Nine calls in a chain, then 300 pairs fed by the last: the chain sits alone, far down the layout's left
# (where a view opened at the top left corner showed nothing).
WIDE = '''
@nbflow.task(cache_policy=NONE, persist_result=False)
def prepare(x: list[int]) -> list[int]:
    return x + [len(x)]

@nbflow.task(cache_policy=NONE, persist_result=False)
def fetch(x: list[int], i: int) -> list[int]:
    return [i, *x]

@nbflow.task(cache_policy=NONE, persist_result=False)
def parse(row: list[int]) -> list[int]:
    return row[::-1]

@nbflow.flow
def wide(n: int = 300) -> int:
    x = [0]
    for _ in range(9):
        x = prepare(x)
    return sum(len(parse(fetch(x, i))) for i in range(n))

wide()
'''

# Contrast of each node's two lines of text on its box (WCAG relative luminance).
CONTRAST = """(root) => {
  const lum = (c) => {
    const [r, g, b] = c.match(/[\\d.]+/g).slice(0, 3).map((v) => {
      const s = Number(v) / 255; return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const out = {background: lum(getComputedStyle(root).backgroundColor), nodes: {}};
  for (const g of root.querySelectorAll('svg.nbflow-graph g.node')) {
    const box = getComputedStyle(g.querySelector('rect.box')).fill;
    out.nodes[g.dataset.state + ' ' + g.querySelector('text.label').textContent] = Math.min(
      ratio(getComputedStyle(g.querySelector('text.label')).fill, box),
      ratio(getComputedStyle(g.querySelector('text.status')).fill, box));
  }
  return out;
}"""

BOXES = """(root) => {
  const canvas = root.querySelector('.nbflow-canvas').getBoundingClientRect();
  return {canvas: [canvas.left, canvas.top, canvas.right, canvas.bottom],
          nodes: [...root.querySelectorAll('svg.nbflow-graph g.node rect.box')].map((r) => {
            const b = r.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; })};
}"""


def inside(box: list[float], canvas: list[float]) -> bool:
    return box[0] >= canvas[0] - 0.5 and box[1] >= canvas[1] - 0.5 and box[2] <= canvas[2] + 0.5 \
        and box[3] <= canvas[3] + 0.5


def save(widget: Any, tmp_path: Path, kind: str, name: str) -> None:
    widget.screenshot(path=str(tmp_path / f"{kind}-{name}.png"))
    picture = ROOT / "docs" / DOCS[name] if name in DOCS else None
    if kind == "lab" and picture is not None and (not picture.exists() or os.environ.get("NBFLOW_UPDATE_DOCS") == "1"):
        widget.screenshot(path=str(picture))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["lab", "notebook"])
def test_graph_views_in_the_front_end(kind: str, jupyter: Any, page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    server = jupyter(kind)
    write_notebook(server.root / "views.ipynb", QUARTERLY, "first = quarterly(return_state=True)",
                   "second = quarterly(return_state=True)", WIDE)
    open_and_run_all(page, server.notebook_url("views.ipynb"))
    if kind == "lab":
        page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # the width goes to the notebook
    roots = page.locator(".nbflow-root")

    # 12, live: the first run's timeline while it runs — a "now" line — then final.
    first = roots.nth(0)
    expect(first.locator("svg.nbflow-graph g.node").first).to_be_attached(timeout=90_000)
    first.locator("button.nbflow-view[data-view=timeline]").click()
    pane = first.locator(".nbflow-timeline-pane")
    expect(pane).to_have_attribute("data-live", "true", timeout=10_000)
    expect(pane.locator("line.now")).to_have_count(2)  # on the axis and across the rows
    page.screenshot(path=str(tmp_path / f"{kind}-1-timeline-live.png"))
    # (the kernel re-displays the graph when the flow ends: the new view stays on the timeline)
    expect(pane).to_have_attribute("data-live", "false", timeout=60_000)
    expect(pane.locator("line.now")).to_have_count(0)

    # The second run: load_config a cache hit, fetch_rows retried, the validation failed, publish not run.
    expect(roots).to_have_count(3, timeout=90_000)
    quarterly, wide = roots.nth(1), roots.nth(2)
    graph = quarterly.locator("svg.nbflow-graph")
    expect(quarterly.locator(".nbflow-run[data-state=Failed]")).to_be_visible(timeout=60_000)
    node = lambda state: graph.locator(f"g.node[data-state={state}]")  # noqa: E731
    expect(node("cached")).to_have_count(1)
    expect(node("failed")).to_have_count(1)
    expect(node("upstream")).to_have_count(1)
    expect(node("upstream").locator("g.retry")).to_have_count(0)
    expect(node("failed").locator("text.glyph")).to_have_text("✗")
    expect(node("cached").locator("text.status")).to_contain_text("cached")
    expect(quarterly.locator(".nbflow-legend-item[data-state=upstream]")).to_be_visible()
    # A hit's details say what it saved, not "attempts 0 / duration 0 ms".
    node("cached").click()
    panel = quarterly.locator(".nbflow-details")
    expect(panel.locator("dt", has_text="saved")).to_have_count(1, timeout=30_000)
    expect(panel.locator("dd").first).to_contain_text("1.5")  # load_config sleeps 1.5 s
    expect(panel.locator("dt", has_text="attempts")).to_have_count(0)

    # 8: select the failed node (long name): details open beside the canvas, buttons and node in view.
    failed = node("failed")
    failed.click()
    expect(panel.locator("pre.nbflow-traceback")).to_contain_text("ValueError: 3 rows have no customer id")
    expect(panel.locator(".nbflow-details-name")).to_have_text(
        "validate_customer_ids_against_the_crm_export_of_last_quarter")
    page.wait_for_timeout(300)  # the canvas narrowed: refit
    panel_box = panel.bounding_box()
    for button in ("button.nbflow-retry", "button.nbflow-close"):
        b = panel.locator(button).bounding_box()
        assert panel_box["x"] <= b["x"] and b["x"] + b["width"] <= panel_box["x"] + panel_box["width"] + 0.5, \
            (button, b, panel_box)
    seen = quarterly.evaluate(BOXES)
    b = failed.locator("rect.box").bounding_box()
    assert inside([b["x"], b["y"], b["x"] + b["width"], b["y"] + b["height"]], seen["canvas"]), (b, seen["canvas"])
    light = quarterly.evaluate(CONTRAST)
    assert light["background"] > 0.8 and min(light["nodes"].values()) >= 4.5, light
    save(quarterly, tmp_path, kind, "graph")

    # 12: the timeline of the second run; a click on a row selects its node (the kernel answers).
    quarterly.locator("button.nbflow-view[data-view=timeline]").click()
    rows = quarterly.locator("svg.nbflow-timeline g.row")
    expect(rows).to_have_count(graph.locator("g.node").count())
    expect(rows.first).to_have_attribute("data-state", "cached")  # it started first
    expect(quarterly.locator("svg.nbflow-timeline path.cached-marker")).to_have_count(1)
    fetch_row = quarterly.locator("svg.nbflow-timeline g.row", has_text="fetch_rows")
    expect(fetch_row.locator('rect.span[data-state="failed"]')).to_have_count(1)
    expect(fetch_row.locator("rect.span.wait")).to_have_count(1)
    expect(fetch_row.locator('rect.span[data-state="completed"]')).to_have_count(1)
    quarterly.locator("svg.nbflow-timeline g.row", has_text="summarise_scores").click()
    expect(panel.locator(".nbflow-details-name")).to_have_text("summarise_scores", timeout=30_000)
    save(quarterly, tmp_path, kind, "timeline")

    # 7: the 609-node flow opened readable on its first nodes; a double-click fits all of it.
    expect(wide.locator(".nbflow-run[data-state=Completed]")).to_be_visible(timeout=90_000)
    wide_graph = wide.locator("svg.nbflow-graph")
    expect(wide_graph).to_have_attribute("data-nodes", "609")
    rev = wide_graph.get_attribute("data-rev")
    expect(wide_graph).to_have_attribute("data-drawn", rev)
    wide.scroll_into_view_if_needed()
    seen = wide.evaluate(BOXES)
    assert inside(seen["nodes"][0], seen["canvas"]), seen["nodes"][:3]  # the first call: on screen
    assert seen["nodes"][0][2] - seen["nodes"][0][0] >= 0.8 * 150 - 1  # and readable
    page.screenshot(path=str(tmp_path / f"{kind}-2-wide-opened.png"))
    wide.locator(".nbflow-canvas").evaluate(
        "(c) => c.dispatchEvent(new MouseEvent('dblclick', {bubbles: true}))")
    page.wait_for_timeout(200)
    seen = wide.evaluate(BOXES)
    outside = [box for box in seen["nodes"] if not inside(box, seen["canvas"])]
    assert not outside, (len(outside), outside[:3], seen["canvas"])
    page.screenshot(path=str(tmp_path / f"{kind}-3-wide-fitted.png"))

    # 9: the front-end's dark theme, switched with its own command.
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
    page.wait_for_timeout(500)
    quarterly.locator("button.nbflow-view[data-view=graph]").click()
    quarterly.scroll_into_view_if_needed()
    dark = quarterly.evaluate(CONTRAST)
    assert dark["background"] < 0.05, dark  # the widget is not a white box on a dark page
    assert min(dark["nodes"].values()) >= 4.5, dark
    assert dark["nodes"] != light["nodes"], "the dark theme draws the same boxes"
    save(quarterly, tmp_path, kind, "graph-dark")
    quarterly.locator("button.nbflow-view[data-view=timeline]").click()
    save(quarterly, tmp_path, kind, "timeline-dark")
    page.screenshot(path=str(tmp_path / f"{kind}-4-dark.png"))
