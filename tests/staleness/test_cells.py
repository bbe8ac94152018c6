"""``%%task`` cells in real kernels: in-place changes, files, randomness, IPython's history and syntax
errors behave as the same notebook without ``%%task`` does, on every rerun."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_notebook

CELLS = [
    "import random\nimport numpy as np\nimport pandas as pd",
    # a process-wide setting: a hit must set it again, for the cells that run after it
    "pd.set_option('display.precision', 3)\nnp.set_printoptions(precision=2)",
    # values made in one cell, changed in place by later ones
    "np.random.seed(0)\nrandom.seed(1)\nrows = [3, 1, 2]\nalias = rows\nframe = pd.DataFrame({'x': [1, 2, 3]})\n"
    "table = {'a': 1}\nvalues = np.array([3.0, 1.0, 2.0])\nrng = np.random.default_rng(7)\n"
    "class Model:\n    def fit(self, data):\n        self.mean_ = float(np.mean(data))\n        return self\n"
    "model = Model()",
    "rows.append(4)\nframe['y'] = frame.x * 2\ntable.update(b=2)\nvalues.sort()\nmodel.fit(values)\n"
    "rng.shuffle(values)",
    "print(rows, alias, frame.y.tolist(), table, values.tolist(), model.mean_, rng.random())",
    # names for parts of values another cell made: a view, an element, the same list
    "grid = np.arange(12).reshape(3, 4)\nnested = [[1], [2]]",
    "row = grid[0]\nfirst = nested[0]\nsame = nested",
    "row[2] = 100\nfirst.append(9)\nsame.append([3])\nprint(grid[0], nested)",
    # global generators: draws, seeded in an earlier cell
    "draws = np.random.randint(0, 100, size=3)\nprint(draws, random.random())",
    "more = np.random.normal(size=2).round(6)\nmore",
    "print(np.random.rand(), random.random())",
    # a file written by the notebook, read by a later cell
    # a file read with the notebook's own open() (IPython puts its own open in the namespace)
    "print(open('notes.txt').read())",
    "print(pd.read_csv('data.csv').a.sum())\nprint(pd.read_csv('data.csv').a / 3, np.array([2 / 3]))",
]


def _notebook(cells: list[str], tasked: bool) -> Any:
    sources = ["%load_ext nbflow", *(f"%%task c{i}\n{c}" for i, c in enumerate(cells))] if tasked else cells
    return new_notebook(cells=[new_code_cell(source) for source in sources],
                        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def _execute(notebook: Any, workdir: Path, allow_errors: bool = False) -> Any:
    client = NotebookClient(notebook, kernel_name="python3", timeout=120, allow_errors=allow_errors,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env={**os.environ})
    return notebook


def _texts(notebook: Any) -> list[str]:
    """What each cell showed, without nbflow's own notices and warnings."""
    shown = []
    for cell in notebook.cells:
        parts = []
        for output in cell.outputs:
            if output.output_type == "stream" and output.name == "stdout":
                parts.append(output.text)
            elif output.output_type in ("execute_result", "display_data"):
                if not output.get("metadata", {}).get("nbflow"):
                    parts.append(output.data.get("text/plain", ""))
            elif output.output_type == "error":
                parts.append(f"{output.ename}")
        shown.append("".join(parts))
    return shown


def _notices(notebook: Any) -> int:
    return sum(1 for cell in notebook.cells for output in cell.outputs
               if output.get("metadata", {}).get("nbflow", {}).get("cache_notice"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("cells")
    home = workdir / "nbflow-home"
    saved = os.environ.get("NBFLOW_HOME")
    os.environ["NBFLOW_HOME"] = str(home)
    try:
        (workdir / "data.csv").write_text("a\n1\n2\n")
        (workdir / "notes.txt").write_text("first notes")
        plain = _texts(_execute(_notebook(CELLS, False), workdir))
        first = _execute(_notebook(CELLS, True), workdir)
        second = _execute(_notebook(CELLS, True), workdir)
        (workdir / "data.csv").write_text("a\n10\n20\n")
        (workdir / "notes.txt").write_text("later notes")
        later = time.time_ns() + 5_000_000_000
        os.utime(workdir / "data.csv", ns=(later, later))
        os.utime(workdir / "notes.txt", ns=(later, later))
        plain_changed = _texts(_execute(_notebook(CELLS, False), workdir))
        third = _notebook(CELLS, True)
        third.cells.append(new_code_cell(f"%nbflow why c{len(CELLS) - 1}"))
        third = _execute(third, workdir)
    finally:
        if saved is None:
            os.environ.pop("NBFLOW_HOME", None)
        else:
            os.environ["NBFLOW_HOME"] = saved
    return {"plain": plain, "first": first, "second": second, "plain_changed": plain_changed, "third": third,
            "workdir": workdir}


def test_every_run_shows_what_the_plain_notebook_shows(runs: dict[str, Any]) -> None:
    plain = runs["plain"]
    assert _texts(runs["first"])[1:] == plain
    assert _texts(runs["second"])[1:] == plain
    # sanity: the in-place changes are what is compared
    assert "[3, 1, 2, 4] [3, 1, 2, 4]" in plain[4] and "[  0   1 100   3] [[1, 9], [2], [3]]" in plain[7]


def test_the_second_run_is_served_from_the_cache(runs: dict[str, Any]) -> None:
    # Every tasked cell restores but the one binding a view and an element of other cells' values (a
    # stored copy would not be a view): it runs again, quietly.
    assert _notices(runs["second"]) == len(CELLS) - 1


def test_a_changed_file_recomputes_the_cell_that_read_it(runs: dict[str, Any]) -> None:
    third = runs["third"]
    texts = _texts(third)
    assert texts[1:-1] == runs["plain_changed"]
    assert texts[-2].startswith("30\n") and "3.333" in texts[-2] and "3.3333" not in texts[-2]
    assert "[0.67]" in texts[-2]
    assert not any(o.get("metadata", {}).get("nbflow") for o in third.cells[-2].outputs)
    assert "file 'data.csv' changed" in texts[-1]
    assert texts[-3] == "later notes\n"


HISTORY_AND_ERRORS = [
    "%load_ext nbflow",
    "%%task\n40 + 2",
    "%%task\nprint(_ + 1)",
    "%%task\nprint(Out[2] * 2)",
    "%%task\nx = (",
    "print('after the error')",
]


def test_history_readers_see_the_values_of_this_run_and_a_syntax_error_fails_like_a_plain_cell(tmp_path: Path,
                                                                                   nbflow_home: Path) -> None:
    def run(cells: list[str] = HISTORY_AND_ERRORS) -> Any:
        notebook = new_notebook(cells=[new_code_cell(source) for source in cells],
                                metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                         "language": "python"}})
        notebook.cells[4].metadata["tags"] = ["raises-exception"]
        return _execute(notebook, tmp_path)

    first, second = run(), run()
    for notebook in (first, second):
        texts = _texts(notebook)
        assert texts[1:4] == ["42", "43\n", "84\n"]
        assert texts[4] == "SyntaxError" and texts[5] == "after the error\n"
    # IPython's history is an input by its value: the same value read, a hit; another, a miss.
    for cell in second.cells[1:4]:
        assert any(o.get("metadata", {}).get("nbflow") for o in cell.outputs)
        assert "Warning" not in "".join(o.get("text", "") for o in cell.outputs)
    # What the history holds now is what counts: another value in `_` and Out[2] recomputes.
    edited = run([HISTORY_AND_ERRORS[0], "%%task\n40 + 3", *HISTORY_AND_ERRORS[2:]])
    assert _texts(edited)[1:4] == ["43", "44\n", "86\n"]
    # Untagged, the syntax error stops the run as it does without %%task.
    notebook = new_notebook(cells=[new_code_cell(s) for s in ("%load_ext nbflow", "%%task\nx = (", "print(1)")],
                            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                     "language": "python"}})
    with pytest.raises(CellExecutionError, match="SyntaxError"):
        _execute(notebook, tmp_path)


DECLARED_ENV_AND_CLASS = [
    "%load_ext nbflow",
    "import os\nclass Scaled:\n    factor = 2\n    def __init__(self, value):\n        self.value = value\n"
    "    def scaled(self):\n        return self.value * self.factor",
    "Scaled.factor = int(os.environ['FACTOR'])",  # a plain cell changes the class after its statement
    "%%task --files data.bin\nimport subprocess\nblob = subprocess.run(['cat', 'data.bin'], capture_output=True, "
    "text=True).stdout\nprint(blob)",
    "%%task\nregion = os.environ.get('REGION', 'eu')\nprint(region)",
    "%%task\nprint(Scaled(5).scaled())",
]


def test_declared_files_environment_variables_and_class_attributes_in_cells(tmp_path: Path,
                                                                            nbflow_home: Path) -> None:
    def run(data: str, **env: str) -> Any:
        (tmp_path / "data.bin").write_text(data)
        later = time.time_ns() + 5_000_000_000
        os.utime(tmp_path / "data.bin", ns=(later, later))
        notebook = new_notebook(cells=[new_code_cell(source) for source in DECLARED_ENV_AND_CLASS],
                                metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                         "language": "python"}})
        client = NotebookClient(notebook, kernel_name="python3", timeout=120, allow_errors=False,
                                resources={"metadata": {"path": str(tmp_path)}})
        client.execute(env={**os.environ, **env})
        return notebook

    def restored(notebook: Any) -> list[bool]:
        return [any(o.get("metadata", {}).get("nbflow") for o in cell.outputs) for cell in notebook.cells[3:]]

    first = run("one", REGION="us", FACTOR="2")
    assert _texts(first)[3:] == ["one\n", "us\n", "10\n"]
    # An unrelated variable and the same file content (touched): every cell restores.
    second = run("one", REGION="us", FACTOR="2", UNRELATED="1")
    assert _texts(second)[3:] == ["one\n", "us\n", "10\n"] and restored(second) == [True, True, True]
    third = run("two", REGION="ap", FACTOR="3")
    assert _texts(third)[3:] == ["two\n", "ap\n", "15\n"] and restored(third) == [False, False, False]
