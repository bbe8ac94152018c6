"""The engine inside a real Jupyter kernel (nbclient): timeouts interrupt a cell's task, results are shared
between kernels through the store, and retries are recorded."""

from __future__ import annotations

from pathlib import Path

from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook


def execute(tmp_path: Path, *sources: str) -> list:
    notebook = new_notebook(cells=[new_code_cell(source) for source in sources])
    client = NotebookClient(notebook, kernel_name="python3", timeout=120, allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return notebook.cells


def text_of(cell) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}")
        elif "text/plain" in output.get("data", {}):
            parts.append(output["data"]["text/plain"])
    return "".join(parts)


SETUP = """
import time, nbflow
calls = 0

@nbflow.task(timeout_seconds=0.3)
def sleepy(n):
    time.sleep(n)
    return n

@nbflow.task(retries=2, retry_delay_seconds=0.01)
def flaky(path):
    import os
    with open(path, "a") as f:
        f.write("x")
    if os.path.getsize(path) < 3:
        raise ConnectionError("not yet")
    return "ok"
"""


def test_timeout_interrupts_a_task_in_a_kernel_and_the_kernel_goes_on(tmp_path: Path) -> None:
    cells = execute(
        tmp_path,
        SETUP,
        "started = time.monotonic()\ntry:\n    sleepy(10)\nexcept TimeoutError as e:\n"
        "    print('timed out', type(e).__name__, round(time.monotonic() - started) < 3)",
        "print(sleepy(0.01))",
        "print(flaky('attempts.txt'))",
        "run = nbflow.runs.list_runs()[0]\nprint([(t.task_name, t.state, t.attempts) for t in run.task_runs])",
    )
    assert "timed out TaskTimeoutError True" in text_of(cells[1])
    assert text_of(cells[2]).strip() == "0.01"
    assert text_of(cells[3]).strip() == "ok"
    assert "('sleepy', 'TimedOut', 1), ('sleepy', 'Completed', 1), ('flaky', 'Completed', 3)" in text_of(cells[4])


def test_a_second_kernel_is_served_from_the_first_kernels_store(tmp_path: Path) -> None:
    sources = (
        "import nbflow\n@nbflow.task\ndef square(x):\n    return x * x",
        "state = square(7, return_state=True)\nprint(state.name, state.result())",
    )
    first = execute(tmp_path, *sources)
    second = execute(tmp_path, *sources)
    assert text_of(first[1]).strip() == "Completed 49"
    assert text_of(second[1]).strip() == "Cached 49"
