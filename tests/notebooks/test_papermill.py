"""Cell tasks under papermill: a parameterized, headless run works unchanged and a second run replays."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import papermill
from nbformat.v4 import new_code_cell, new_notebook


def test_papermill_runs_cell_tasks_and_the_second_run_is_served_from_the_cache(tmp_path: Path) -> None:
    parameters = new_code_cell("n = 3")
    parameters.metadata["tags"] = ["parameters"]
    notebook = new_notebook(cells=[
        new_code_cell("%load_ext nbflow"),
        parameters,
        new_code_cell("%%task squares\nopen('calls.log', 'a').write('run ')\nsquares = [i * i for i in range(n)]\n"
                      "print('squares', squares)"),
        new_code_cell("print('total', sum(squares))"),
    ])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source = tmp_path / "params.ipynb"
    nbformat.write(notebook, str(source))

    def run(output: str, n: int) -> str:
        papermill.execute_notebook(
            str(source), str(tmp_path / output), parameters={"n": n}, kernel_name="python3",
            cwd=str(tmp_path), progress_bar=False, log_output=False,
        )
        executed = nbformat.read(str(tmp_path / output), as_version=4)
        return "".join(
            out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
            for cell in executed.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
        )

    assert os.environ["NBFLOW_HOME"]  # the kernel inherits this test's store
    first = run("first.ipynb", 5)
    second = run("second.ipynb", 5)
    third = run("third.ipynb", 6)
    calls = (tmp_path / "calls.log").read_text().split()
    assert calls == ["run", "run"]  # n=5 computed once, replayed once; n=6 computed
    assert "squares [0, 1, 4, 9, 16]" in first and "total 30" in first
    assert "squares [0, 1, 4, 9, 16]" in second and "total 30" in second
    assert "restored from the cache" in second
    assert "total 55" in third
