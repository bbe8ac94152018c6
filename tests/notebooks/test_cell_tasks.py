"""``%%task`` cells in real kernels (nbclient): a restarted kernel replays instead of recomputing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

HELPERS = '''
def make_rows(n):
    return [(i * 7) % 11 for i in range(n)]

def double(values):
    return [v * 2 for v in values]
'''

CELLS = [
    "%load_ext nbflow",
    HELPERS,
    "n = 6\nm = 4\n",
    # alpha reads n and make_rows
    "%%task alpha\nopen('calls.log', 'a').write('alpha ')\nrows = make_rows(n)  # rows from the source\n"
    "print('alpha rows', len(rows))\nrows[:3]",
    # beta reads rows (from alpha) and double
    "%%task beta\nopen('calls.log', 'a').write('beta ')\ndoubled = double(rows)\n"
    "import pandas as pd\nframe = pd.DataFrame({'v': doubled})\nframe.head(3)",
    # gamma reads neither: only m
    "%%task gamma\nimport sys\nopen('calls.log', 'a').write('gamma ')\nsquares = [i * i for i in range(m)]\n"
    "print('to stderr', file=sys.stderr)\nfrom IPython.display import HTML, display\n"
    "display(HTML('<b>%d squares</b>' % len(squares)))",
    # delta reads beta's output
    "%%task delta\nopen('calls.log', 'a').write('delta ')\nlast = doubled[-1]\nprint('last', last)",
    "print(repr((rows, doubled, squares, last)))\nprint(frame.shape)",
    "%nbflow status",
]


def execute(cells: list[str], workdir: Path) -> Any:
    notebook = new_notebook(cells=[new_code_cell(source) for source in cells])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(notebook, kernel_name="python3", timeout=120, allow_errors=False,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env={**os.environ})  # NBFLOW_HOME of this test (set by conftest) goes to the kernel
    return notebook


def ran(workdir: Path) -> list[str]:
    log = workdir / "calls.log"
    words = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return words


def bundles(cell: Any) -> list[dict[str, Any]]:
    """A cell's outputs without the restored-from-cache notice and without execution counts."""
    found = []
    for output in cell.outputs:
        if output.get("metadata", {}).get("nbflow", {}).get("cache_notice"):
            continue
        if output.output_type == "stream":
            found.append({"stream": output.name, "text": output.text})
        else:
            found.append({"type": output.output_type, "data": dict(output.data)})
    return found


def notices(cell: Any) -> list[str]:
    return [o.data["text/plain"] for o in cell.outputs if o.get("metadata", {}).get("nbflow", {}).get("cache_notice")]


def test_a_second_kernel_replays_every_cell_task_without_running_it(tmp_path: Path) -> None:
    first = execute(CELLS, tmp_path)
    assert ran(tmp_path) == ["alpha", "beta", "gamma", "delta"]
    second = execute(CELLS, tmp_path)
    assert ran(tmp_path) == []  # no cell-task body ran
    for index in (3, 4, 5, 6):
        assert bundles(first.cells[index]) == bundles(second.cells[index]), index
        assert bundles(first.cells[index]), index
        assert not notices(first.cells[index])
        (notice,) = notices(second.cells[index])
        assert "restored from the cache" in notice and "saved" in notice
    # Rich outputs came back: the data frame's HTML, the HTML display, stderr, the Out[] value.
    assert any("text/html" in b.get("data", {}) for b in bundles(second.cells[4]))
    assert {"stream": "stderr", "text": "to stderr\n"} in bundles(second.cells[5])
    assert any(b.get("type") == "execute_result" for b in bundles(second.cells[3]))
    # The values bound again are equal to the computed ones.
    assert bundles(first.cells[7]) == bundles(second.cells[7])
    status = "".join(o.text for o in second.cells[8].outputs if o.output_type == "stream")
    assert "alpha" in status and "Cached" in status


def test_edits_recompute_exactly_the_cells_that_depend_on_them(tmp_path: Path) -> None:
    execute(CELLS, tmp_path)
    assert ran(tmp_path) == ["alpha", "beta", "gamma", "delta"]

    commented = list(CELLS)
    commented[3] = CELLS[3].replace("# rows from the source", "# a different comment")
    commented[4] = "%%task beta\n# a new comment line\n\n" + CELLS[4].split("\n", 1)[1]
    execute(commented, tmp_path)
    assert ran(tmp_path) == []

    helper_edited = list(CELLS)
    helper_edited[1] = HELPERS.replace("v * 2", "v * 3")
    execute(helper_edited, tmp_path)
    # beta calls double; delta reads beta's changed output. alpha and gamma are untouched.
    assert ran(tmp_path) == ["beta", "delta"]

    input_edited = list(CELLS)
    input_edited[2] = "n = 6\nm = 5\n"
    execute(input_edited, tmp_path)
    assert ran(tmp_path) == ["gamma"]

    execute(input_edited, tmp_path)
    assert ran(tmp_path) == []


def test_interrupting_the_kernel_leaves_the_cell_task_cancelled_with_nothing_stored(tmp_path: Path) -> None:
    import time

    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3", cwd=str(tmp_path), env={**os.environ})
    try:
        client.execute_interactive("%load_ext nbflow", timeout=60)
        msg_id = client.execute("%%task slow\nimport time\nstarted = True\ntime.sleep(60)\ndone = True\n")
        time.sleep(2)  # let the cell get into its body
        manager.interrupt_kernel()
        reply = client.get_shell_msg(timeout=30)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = client.get_shell_msg(timeout=30)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        lines: list[str] = []
        check = (
            "from nbflow.engine import runtime\n"
            "run = runtime.session_run().task_runs[-1]\n"
            "print(run.task_name, run.state, bool(run.persisted), len(list(runtime.get_store().records())),"
            " 'done' in globals())\n"
        )
        client.execute_interactive(
            check, timeout=30,
            output_hook=lambda msg: lines.append(msg["content"].get("text", "")),
        )
        assert "".join(lines).split() == ["slow", "Cancelled", "False", "0", "False"]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
