"""A failing flow and a warned-about call in a real kernel: the user's frames and lines, not nbflow's."""

from __future__ import annotations

import os
import re
from pathlib import Path

from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

CELLS = [
    "import nbflow\n\n@nbflow.task\ndef boom(x):\n    return 1 / x\n\n@nbflow.flow\ndef pipeline():\n"
    "    return boom(0)\n\nclass Opaque:\n    def __reduce__(self):\n        raise TypeError('no pickling')\n\n"
    "@nbflow.task\ndef take(value):\n    return 1\n",
    "pipeline()",
    "x = 1\ntake(Opaque())",
]


def test_a_flow_failure_and_a_warning_in_a_kernel(tmp_path: Path) -> None:
    notebook = new_notebook(cells=[new_code_cell(source) for source in CELLS])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(notebook, kernel_name="python3", timeout=120, allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env={**os.environ, "NBFLOW_DISPLAY": "0"})  # this test's NBFLOW_HOME (conftest)

    [error] = [output for output in notebook.cells[1].outputs if output.output_type == "error"]
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error.traceback))
    headers = [line for line in text.splitlines() if line.startswith("Cell In") or "skipping hidden" in line]
    assert [re.sub(r"^Cell In\[\d+\]", "Cell", line.strip()) for line in headers] == [
        "Cell, line 1", "[... skipping hidden 2 frame]", "Cell, line 9, in pipeline()", "Cell, line 5, in boom(x)",
    ], text
    assert "nbflow" + os.sep not in text  # no file of nbflow's is shown

    warned = "".join(output.get("text", "") for output in notebook.cells[2].outputs if output.get("name") == "stderr")
    assert "NbflowWarning: task 'take' runs uncached" in warned, notebook.cells[2].outputs
    # Attributed to the cell's line 2 (the kernel names the cell like a file), not to a line of nbflow.
    assert re.search(r"ipykernel_\d+/\d+\.py:2: NbflowWarning", warned), warned
    assert "take(Opaque())" in warned
