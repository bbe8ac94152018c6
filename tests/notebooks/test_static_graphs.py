"""A notebook written by `nbflow run -o` shows each flow's final graph with no kernel: in nbconvert's HTML
(offline, no widget manager from a CDN) and in a front-end opening it later (no model to find)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from nbflow.ui.static import WIDGET_STATE, WIDGET_VIEW, keep_static_graphs
from tests.notebooks.test_cli_run import nbflow_cli, write_notebook

FLOW = '''
import nbflow
import ipywidgets

@nbflow.task
def extract(n: int) -> list[int]:
    return list(range(n))

@nbflow.task
def total(rows: list[int]) -> int:
    return sum(rows) * 1000

@nbflow.flow
def etl(n: int = 5) -> int:
    return total(extract(n))
'''


def test_the_executed_notebook_keeps_the_final_graph_as_a_picture(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "etl.ipynb", FLOW, "etl()", "ipywidgets.IntSlider(3)")
    output = tmp_path / "out.ipynb"
    run = nbflow_cli("run", str(path), "-o", str(output), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    notebook = nbformat.read(str(output), as_version=4)
    flow_cell, slider_cell = notebook.cells[1], notebook.cells[2]
    (graph,) = [o for o in flow_cell.outputs if "image/svg+xml" in o.get("data", {})]
    assert WIDGET_VIEW not in graph["data"] and "text/html" not in graph["data"]
    assert re.findall(r'data-state="(\w+)"', graph["data"]["image/svg+xml"]) == ["completed", "completed"]
    # Other widgets keep their view and saved state.
    (slider,) = [o for o in slider_cell.outputs if WIDGET_VIEW in o.get("data", {})]
    state = notebook.metadata["widgets"][WIDGET_STATE]["state"]
    assert slider["data"][WIDGET_VIEW]["model_id"] in state
    assert not any("anywidget" in str(model.get("model_name", "")).lower() or "_esm" in model.get("state", {})
                   for model in state.values())
    # nbconvert's HTML (what a shared or archived run is read as) draws the graph itself.
    body, _ = HTMLExporter().from_notebook_node(notebook)
    # The flow cell's graph and the one `nbflow run` adds at the end, both drawn; no empty widget view.
    pictures = [base64.b64decode(data).decode() for data in re.findall(r'data:image/svg\+xml;base64,([^"]+)', body)]
    graphs = [picture for picture in pictures if "nbflow-graph" in picture]
    assert [picture.count('class="node"') for picture in graphs] == [2, 2]
    assert body.count('<script type="application/vnd.jupyter.widget-view+json">') == 1  # the slider's


def test_keep_static_graphs_leaves_notebooks_without_graphs_alone() -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    notebook.cells[0].outputs = [nbformat.v4.new_output("display_data", data={
        WIDGET_VIEW: {"model_id": "abc", "version_major": 2, "version_minor": 0}, "text/plain": "slider"})]
    notebook.metadata["widgets"] = {WIDGET_STATE: {"state": {"abc": {"state": {}}}, "version_major": 2,
                                                   "version_minor": 0}}
    assert keep_static_graphs(notebook) == 0
    assert WIDGET_VIEW in notebook.cells[0].outputs[0]["data"] and "abc" in notebook.metadata["widgets"][
        WIDGET_STATE]["state"]


def test_a_run_that_stops_early_is_not_marked_trusted(tmp_path: Path) -> None:
    """A cell never reached keeps the outputs the notebook came with: nobody here produced them."""
    from nbformat.sign import NotebookNotary

    path = write_notebook(tmp_path / "early.ipynb", "1 / 0", "print('never')")
    notebook = nbformat.read(str(path), as_version=4)
    notebook.cells[1].outputs = [nbformat.v4.new_output("display_data", data={"text/html": "<b>shipped</b>"})]
    nbformat.write(notebook, str(path))
    run = nbflow_cli("run", str(path), "-o", str(tmp_path / "out.ipynb"), cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    written = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)
    assert written.cells[1].outputs and not NotebookNotary().check_signature(written)
    complete = write_notebook(tmp_path / "complete.ipynb", "print('ran')")
    assert nbflow_cli("run", str(complete), "-o", str(tmp_path / "ok.ipynb"), cwd=tmp_path).returncode == 0
    assert NotebookNotary().check_signature(nbformat.read(str(tmp_path / "ok.ipynb"), as_version=4))
