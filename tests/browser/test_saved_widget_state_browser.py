"""A notebook run interactively, saved with JupyterLab's "Save Widget State Automatically" on, and reopened
after its kernel is gone shows the flow's final graph (what docs/guide/graph.md tells users to do)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_graph_browser import open_and_run_all, write_notebook
from tests.notebooks.test_static_graphs import FLOW


@pytest.mark.timeout(300)
def test_a_graph_saved_with_its_widget_state_shows_after_the_kernel_is_gone(jupyter: Any, page: Any,
                                                                             tmp_path: Path) -> None:
    from playwright.sync_api import expect

    settings = tmp_path / "jupyter-config" / "lab" / "user-settings" / "@jupyter-widgets" / "jupyterlab-manager"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"saveState": True}))
    server = jupyter("lab")
    write_notebook(server.root / "etl.ipynb", FLOW, "etl()")
    open_and_run_all(page, server.notebook_url("etl.ipynb"))
    expect(page.locator("svg.nbflow-graph g.node[data-state=completed]")).to_have_count(2, timeout=90_000)
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    saved = server.root / "etl.ipynb"
    expect(page.locator(".jp-mod-dirty")).to_have_count(0, timeout=30_000)
    state = json.loads(saved.read_text())["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]
    assert any("_esm" in model.get("state", {}) for model in state["state"].values())
    page.evaluate("() => window.jupyterapp.commands.execute('kernelmenu:shutdown')")
    page.wait_for_timeout(2000)

    reopened = page.context.new_page()
    reopened.goto(server.notebook_url("etl.ipynb"))
    reopened.wait_for_selector(".jp-Notebook .jp-Cell")
    graph = reopened.locator(".jp-CodeCell").nth(1).locator("svg.nbflow-graph")
    expect(graph.locator("g.node[data-state=completed]")).to_have_count(2, timeout=60_000)
    expect(reopened.locator(".jp-Notebook")).not_to_contain_text("model not found")
    reopened.screenshot(path=str(tmp_path / "lab-reopened-saved-state.png"))
    reopened.close()
