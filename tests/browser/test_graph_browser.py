"""The task graph in a real browser: JupyterLab 4 and Notebook 7, headless Chromium.

Few and focused (each starts a server): a failed node is drawn failed, Retry reruns it in the live
kernel and the flow carries on; a 500-node flow renders and recolours live.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parents[2]

FAILS_ONCE = '''
import nbflow
from nbflow.cache_policies import NONE

calls = {"load": 0}

@nbflow.task
def extract(n: int) -> list[int]:
    return list(range(n))

@nbflow.task(cache_policy=NONE)
def load(rows: list[int]) -> list[int]:
    calls["load"] += 1
    if calls["load"] == 1:
        raise ConnectionError("database not ready yet")
    return [sum(rows)]

@nbflow.task
def report(total: list[int]) -> dict:
    return {"total": total[0]}

@nbflow.flow
def etl(n: int = 10) -> dict:
    rows = extract(n)
    return report(load(rows))
'''

LIVE_500 = '''
import time
import nbflow
from nbflow.cache_policies import NONE

@nbflow.task(cache_policy=NONE)
def fetch(i: int) -> list[int]:
    time.sleep(0.015)
    return [i]

@nbflow.task(cache_policy=NONE)
def parse(row: list[int]) -> list[int]:
    time.sleep(0.015)
    return [row[0] * 2]

@nbflow.flow
def big(n: int = 250) -> int:
    return sum(parse(fetch(i))[0] for i in range(n))

big()
'''


def write_notebook(path: Path, *sources: str) -> None:
    notebook = new_notebook(cells=[new_code_cell(source) for source in sources])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, str(path))


def open_and_run_all(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    # The toolbar says "idle" before the kernel is really there; running then opens a kernel dialog.
    page.wait_for_function(
        """() => {
            const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
            const s = w && w.sessionContext;
            return !!(s && s.session && s.session.kernel && s.kernelDisplayStatus === 'idle');
        }""",
        timeout=90_000,
    )
    # Not awaited: the command's promise resolves only when every cell has run.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["lab", "notebook"])
def test_failed_node_retry_from_the_browser(kind: str, jupyter: Any, page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    server = jupyter(kind)
    write_notebook(server.root / "etl.ipynb", FAILS_ONCE, "etl()")
    open_and_run_all(page, server.notebook_url("etl.ipynb"))

    graph = page.locator("svg.nbflow-graph").first
    failed = graph.locator("g.node[data-state=failed]")
    expect(failed).to_have_count(1, timeout=90_000)
    expect(graph.locator("g.node[data-state=completed]")).to_have_count(1)  # extract
    expect(graph.locator("path.edge")).to_have_count(1)
    expect(page.locator(".nbflow-run button.nbflow-retry-flow")).to_be_visible()
    page.screenshot(path=str(tmp_path / f"{kind}-1-failed.png"))

    failed.click()
    details = page.locator(".nbflow-details")
    expect(details).to_be_visible()
    expect(details.locator("pre.nbflow-traceback")).to_contain_text("ConnectionError: database not ready yet")
    page.screenshot(path=str(tmp_path / f"{kind}-2-details.png"))

    load_id = failed.get_attribute("data-id")
    details.locator("button.nbflow-retry").click()
    load = graph.locator(f'g.node[data-id="{load_id}"]')
    expect(load).to_have_attribute("data-state", "completed", timeout=30_000)
    expect(graph.locator("g.node")).to_have_count(3)  # report ran after the retry
    expect(graph.locator("g.node[data-state=completed]")).to_have_count(3)
    expect(graph.locator("path.edge")).to_have_count(2)
    expect(page.locator(".nbflow-run[data-state=Completed]")).to_be_visible()
    expect(details.locator("dl.nbflow-history")).to_contain_text("Failed")  # the history keeps both runs
    page.screenshot(path=str(tmp_path / f"{kind}-3-retried.png"))
    page.locator(".nbflow-root").first.screenshot(path=str(tmp_path / f"{kind}-widget.png"))

    # Running the cell again: its new graph replaces the old one, which the kernel closes (its output is
    # gone), without an error in the page.
    cell = page.locator(".jp-NotebookPanel:visible .jp-CodeCell").nth(1)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+Enter")
    expect(page.locator("svg.nbflow-graph")).to_have_count(1)
    again = page.locator("svg.nbflow-graph").first
    expect(again.locator("g.node[data-state=cached]")).to_have_count(2, timeout=60_000)  # extract, report
    expect(again.locator("g.node[data-state=completed]")).to_have_count(1)  # load: cache_policy=NONE
    expect(cell.locator(".jp-OutputArea")).not_to_contain_text("Error")
    page.screenshot(path=str(tmp_path / f"{kind}-4-ran-again.png"))
    # (docs/graph.png, the README's picture, comes from test_graph_views_browser.py)


@pytest.mark.timeout(240)
def test_a_500_node_flow_renders_and_recolours_live(jupyter: Any, page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    server = jupyter("lab")
    write_notebook(server.root / "big.ipynb", LIVE_500)
    open_and_run_all(page, server.notebook_url("big.ipynb"))
    graph = page.locator("svg.nbflow-graph").first
    expect(graph.locator("g.node").first).to_be_attached(timeout=90_000)
    # Sample the drawn states while the flow runs: they must change in place, not only at the end.
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = page.evaluate(
            """() => {
                const svg = document.querySelector('svg.nbflow-graph');
                return [svg.querySelectorAll('g.node').length,
                        svg.querySelectorAll('g.node[data-state=completed]').length];
            }"""
        )
        seen.append((counts[0], counts[1]))
        if counts == [500, 500]:
            break
        time.sleep(0.1)
    assert seen[-1] == (500, 500), seen[-10:]
    partial = [completed for total, completed in seen if 0 < completed < total or 0 < total < 500]
    assert partial, f"never saw the graph mid-run: {seen[:10]}"
    expect(graph.locator("path.edge")).to_have_count(250)
    page.screenshot(path=str(tmp_path / "lab-500.png"))
