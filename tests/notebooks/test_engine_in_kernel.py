"""The engine inside a real Jupyter kernel (nbclient): timeouts interrupt a cell's task, results are shared
between kernels through the store, and retries are recorded."""

from __future__ import annotations

import re
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


def test_async_tasks_are_awaited_at_top_level_and_submit_works_in_a_kernel(tmp_path: Path) -> None:
    cells = execute(
        tmp_path,
        "import asyncio, time, nbflow\n"
        "@nbflow.task\nasync def fetch(i):\n    await asyncio.sleep(0.2)\n    return i * 2\n"
        "@nbflow.flow\nasync def gather_all(n):\n    return await asyncio.gather(*(fetch(i) for i in range(n)))",
        "started = time.monotonic()\nvalues = await gather_all(5)\n"
        "print(values, time.monotonic() - started < 0.9)",
        "print(await fetch(3, return_state=True))",
        "@nbflow.task\ndef square(x):\n    return x * x\n"
        "print(nbflow.wait(square.map(range(4))).not_done, [f.result() for f in square.map(range(4))])",
    )
    assert text_of(cells[1]).strip().endswith("[0, 2, 4, 6, 8] True")  # after the flow's graph
    assert "Cached" in text_of(cells[2])
    assert text_of(cells[3]).strip() == "set() [0, 1, 4, 9]"


def test_a_transaction_inside_a_cell_task_rolls_back_and_the_cell_is_not_stored(tmp_path: Path) -> None:
    cells = execute(
        tmp_path,
        "%load_ext nbflow\nimport nbflow\nundone = []\n"
        "@nbflow.task\ndef write(x):\n    return x\n"
        "write.on_rollback(lambda txn: undone.append(txn.get('table')))",
        "%%task publish\nwith nbflow.transaction() as txn:\n    txn.set('table', 'sales')\n"
        "    written = write(1)\n    raise RuntimeError('publish failed')",
        "print(undone)\n%nbflow status",
    )
    assert "RuntimeError: publish failed" in text_of(cells[1])
    status = text_of(cells[2])
    assert status.startswith("['sales']")
    assert re.search(r"publish\s+cell\s+Failed", status) and re.search(r"write\s+task\s+RolledBack", status)
