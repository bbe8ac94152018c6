"""The graph in a real kernel (nbclient, no browser): the saved widget state holds the final graph."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

SETUP = """
import nbflow
from nbflow.cache_policies import NONE

@nbflow.task(cache_policy=NONE)
def extract():
    return [1, 2, 3]

@nbflow.task(cache_policy=NONE)
def load(rows):
    raise ConnectionError("database down")

@nbflow.task
def double(rows):
    return [2 * r for r in rows]

@nbflow.flow
def etl():
    rows = extract()
    double(rows)
    return load(rows)
"""


def run_notebook(tmp_path: Path, *sources: str) -> Any:
    notebook = new_notebook(cells=[new_code_cell(source) for source in sources])
    client = NotebookClient(notebook, timeout=120, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return notebook


def graph_states(notebook: Any) -> list[dict[str, Any]]:
    saved = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    return [{**model["state"], "graph": json.loads(model["state"]["graph_json"])} for model in saved.values()
            if model["state"].get("_anywidget_id") == "nbflow.ui.widget.TaskGraph"]


@pytest.mark.timeout(180)
def test_saved_widget_state_holds_the_final_graph(tmp_path: Path) -> None:
    notebook = run_notebook(tmp_path, SETUP, "state = etl(return_state=True)\nstate.name",
                            "nbflow.configure(display=False)\netl(return_state=True).name")
    (graph,) = graph_states(notebook)  # the third call, with display off, shows nothing
    nodes = {node["label"]: node["state"] for node in graph["graph"]["nodes"]}
    assert nodes == {"extract": "completed", "double": "completed", "load": "failed"}
    assert len(graph["graph"]["edges"]) == 2
    (run,) = graph["graph"]["runs"]
    assert run["state"] == "Failed" and run["retryable"]
    # The cell's output: the widget view plus the static SVG of the same final graph.
    outputs = [out for out in notebook.cells[1].outputs if "data" in out]
    html = next(out["data"]["text/html"] for out in outputs if "text/html" in out["data"])
    assert 'data-state="failed"' in html and html.count('<g class="node"') == 3
    assert any("application/vnd.jupyter.widget-view+json" in out["data"] for out in outputs)
    assert not any("text/html" in out.get("data", {}) for out in notebook.cells[2].outputs)


MAPPED = """
import nbflow
from nbflow.cache_policies import NONE

@nbflow.task(cache_policy=NONE)
def square(x):
    if x == 7:
        raise ValueError("seven is not allowed")
    return x * x

@nbflow.flow
def squares(n):
    futures = square.map(range(n))
    futures.wait()
    return futures.result()

squares(20, return_state=True).name
"""


@pytest.mark.timeout(180)
def test_saved_widget_state_holds_a_mapped_task_as_one_node(tmp_path: Path) -> None:
    notebook = run_notebook(tmp_path, MAPPED)
    (graph,) = graph_states(notebook)
    (node,) = graph["graph"]["nodes"]
    assert (node["group"], node["label"], node["state"], node["count"], node["total"]) == (
        "map", "square", "failed", 19, 20)
    assert node["counts"] == {"completed": 19, "failed": 1} and node["retryable"]
    html = next(out["data"]["text/html"] for out in notebook.cells[0].outputs if "text/html" in out.get("data", {}))
    assert 'data-group="map"' in html and "failed 19/20 · 1 failed" in html


@pytest.mark.timeout(180)
def test_running_a_cell_again_closes_the_graphs_it_showed(tmp_path: Path) -> None:
    import os

    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3", cwd=str(tmp_path), env={**os.environ})

    def run_cell(code: str, cell: str | None, expression: str = "open_graphs()") -> dict[str, Any]:
        """An execute request as JupyterLab sends it: the cell's id in the metadata."""
        content = {"code": code, "silent": False, "store_history": True, "allow_stdin": False,
                   "stop_on_error": True, "user_expressions": {"open": expression}}
        message = client.session.msg("execute_request", content, metadata={"cellId": cell} if cell else {})
        client.shell_channel.send(message)
        reply = client.get_shell_msg(timeout=60)
        while reply["parent_header"].get("msg_id") != message["header"]["msg_id"]:
            reply = client.get_shell_msg(timeout=60)
        assert reply["content"]["status"] == "ok", reply["content"]
        return reply["content"]

    def graphs_open(code: str, cell: str | None, expression: str = "open_graphs()") -> int:
        result = run_cell(code, cell, expression)["user_expressions"]["open"]
        return int(result["data"]["text/plain"])

    try:
        setup = (SETUP.replace("raise ConnectionError(\"database down\")", "return rows") +
                 "\nimport ipywidgets.widgets.widget as _w\n"
                 "def open_graphs():\n"
                 "    return sum(type(w).__name__ == 'TaskGraph' for w in list(_w._instances.values()))\n")
        assert graphs_open(setup, "setup") == 0
        assert graphs_open("etl()", "a") == 1
        assert graphs_open("etl()", "a") == 1  # the first run's graph was closed: its output is gone
        assert graphs_open("etl()\netl()", "b") == 3
        assert graphs_open("etl()", "a") == 3
        assert graphs_open("1 + 1", "b") == 1  # b ran again and showed nothing: both its graphs closed
        assert graphs_open("etl()", None) == 2  # a front-end that sends no cell id: nothing is closed
        assert graphs_open("etl()", None) == 3
        # The session graph of `%nbflow graph` listens to every call: running its cell again replaces it.
        assert graphs_open("%load_ext nbflow", "ext") == 3
        assert graphs_open("%nbflow graph", "g") == 4
        assert graphs_open("%nbflow graph", "g") == 4
        listening = "len(__import__('nbflow.ui.widget').ui.widget._dispatcher._everything)"
        assert graphs_open("etl()", "c", listening) == 1
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
