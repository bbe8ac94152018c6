"""A notebook executed by `nbflow run -o`, opened later in JupyterLab 4 and Notebook 7 (no kernel holds the
graph's model): each flow's final graph shows, drawn from its static picture, not "model not found"."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.notebooks.test_cli_run import nbflow_cli, write_notebook
from tests.notebooks.test_static_graphs import FLOW


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["lab", "notebook"])
def test_a_reopened_executed_notebook_shows_the_final_graph(kind: str, jupyter: Any, page: Any,
                                                            tmp_path: Path) -> None:
    from playwright.sync_api import expect

    server = jupyter(kind)
    source = write_notebook(tmp_path / "etl.ipynb", FLOW, "etl()")
    run = nbflow_cli("run", str(source), "-o", str(server.root / "executed.ipynb"), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    page.goto(server.notebook_url("executed.ipynb"))
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    flow_output = page.locator(".jp-CodeCell").nth(1).locator(".jp-OutputArea")
    # The run's own output, trusted by the user's Jupyter (nbflow run signs it): its SVG is drawn.
    picture = flow_output.locator(".jp-RenderedSVG")
    expect(picture).to_be_visible(timeout=30_000)
    image = picture.locator("img")
    if image.count():  # drawn as an image
        assert image.evaluate("img => img.naturalWidth") > 100
        source = image.get_attribute("src") or ""
        head, data = source.split(",", 1)
        svg = base64.b64decode(data).decode() if "base64" in head else unquote(data)
    else:  # inline
        svg = picture.inner_html()
    assert svg.count('data-state="completed"') == 2
    expect(page.locator(".jp-Notebook")).not_to_contain_text("model not found")
    page.screenshot(path=str(tmp_path / f"{kind}-reopened.png"))
