"""notebooks/durable-agent.ipynb in real kernels (nbclient): the graph of an agent run, and a free rerun.

A cell put before the notebook's own counts the requests that reach the FunctionModel in that kernel, and
one put after prints the count: the second kernel must send none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "durable-agent.ipynb"

COUNT_REQUESTS = """
import pydantic_ai.models.function as _function_model
_requests = []
_request = _function_model.FunctionModel.request
async def _counted(self, *args, **kwargs):
    _requests.append(self.model_name)
    return await _request(self, *args, **kwargs)
_function_model.FunctionModel.request = _counted
"""


def execute(workdir: Path) -> Any:
    notebook = nbformat.read(str(NOTEBOOK), as_version=4)
    notebook.cells.insert(0, new_code_cell(COUNT_REQUESTS))
    notebook.cells.append(new_code_cell("print('requests that reached the model:', len(_requests))"))
    client = NotebookClient(notebook, kernel_name="python3", timeout=120, allow_errors=False,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env={**os.environ})  # this test's NBFLOW_HOME (conftest) goes to the kernel
    return notebook


def text(notebook: Any) -> str:
    return "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)


def results(notebook: Any) -> list[str]:
    return [o["data"]["text/plain"] for c in notebook.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "execute_result"]


def graph_html(notebook: Any) -> str:
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                return str(data.get("text/html", ""))
    raise AssertionError("no task graph among the outputs")


def test_the_notebook_draws_the_agent_run_and_a_new_kernel_reruns_it_for_free(tmp_path: Path) -> None:
    first = execute(tmp_path)
    assert "requests that reached the model: 2" in text(first)
    assert "model requests sent: 2" in text(first)
    html = graph_html(first)
    for name in ("function:answer:", "capital"):
        assert name in html  # the static fallback of the graph names every task
    assert "completed" in html

    second = execute(tmp_path)
    assert "requests that reached the model: 0" in text(second)
    assert "model requests sent: 0" in text(second)
    assert results(second) == results(first) == ["'The capital is Mexico City.'"]
    assert "cached" in graph_html(second)
