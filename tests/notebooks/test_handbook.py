"""Handbook-style tutorial notebooks with every code cell a ``%%task``, run headless like a user would.

The notebooks in ``handbook/`` are written in the style of the NumPy, pandas and matplotlib chapters of a
data-science handbook: seeded global and per-object random draws, in-place updates in a later cell than the
creation, files written by one cell and read by a later one, ``_`` / ``Out[n]`` / ``In``, deliberate errors
(one a SyntaxError) tagged ``raises-exception``, inline figures.

For each notebook the test builds two variants:

* *plain*: the notebook as written, after one setup cell that is only a comment (so that execution counts, and
  with them ``Out[n]``, are the same as in the tasked variant);
* *tasked*: ``%load_ext nbflow`` as that first cell, and every code cell that does not start with a magic
  prefixed with ``%%task``.

The plain variant runs once through nbclient, in a fresh working directory. The tasked variant runs three times
with ``nbflow run`` in one working directory and one store, like a user re-running their notebook: run 1
computes, run 2 is served from the cache, then one constant in an early cell (its ``handbook_edit`` metadata) is
changed in both variants, the plain one runs again, and run 3 runs the edited tasked notebook. Every run must
show, cell by cell, what the plain execution of the same source shows: stdout, stderr, the ``text/plain`` and
``text/html`` of results and displays (memory addresses masked), error names and messages, and how many images.
The cache notices and warnings of nbflow are left out; cells tagged ``nondeterministic`` (an unseeded draw,
``%timeit``) are not compared. Run 2 must also have restored most cells from the cache, so a tool that never
caches fails.

A failure lists every differing cell of every run as ``NOTEBOOK run N cell K (restored from the cache | ran)
`first line```, followed by a unified diff from the plain output (-) to the tasked one (+). A run that hangs is
killed after NBFLOW_HANDBOOK_RUN_TIMEOUT seconds (one cell after NBFLOW_HANDBOOK_CELL_TIMEOUT) and reported as
a failure of its notebook. The notebooks are fixtures: keep ``Out[n]`` numbers right (they count the setup cell)
and every cell deterministic unless tagged.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat import NotebookNode

HANDBOOK = Path(__file__).resolve().parent / "handbook"
NOTEBOOKS = sorted(HANDBOOK.glob("*.ipynb"))

# Seconds one `nbflow run` may take in all, and one cell within it (a hang is reported as a failure of the
# notebook, with the cell it was stuck in, instead of blocking the suite).
RUN_TIMEOUT = float(os.environ.get("NBFLOW_HANDBOOK_RUN_TIMEOUT", "300"))
CELL_TIMEOUT = float(os.environ.get("NBFLOW_HANDBOOK_CELL_TIMEOUT", "60"))
# Run 2 repeats run 1 unchanged: more than this share of the tasked cells that do not raise must be restored.
MIN_CACHED_SHARE = 0.5

PLAIN_SETUP = "# setup cell: the tasked variant runs %load_ext nbflow here"
TASKED_SETUP = "%load_ext nbflow"
ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}")
# IPython names the file of a SyntaxError after the cell it compiled ("(3651832473.py, line 1)"): the name is
# a detail of how the cell was compiled, not of what the notebook shows.
SYNTAX_FILE = re.compile(r"\((?:[^(),]*?), line (\d+)\)$")
# The same for the file a warning names ("/tmp/ipykernel_4242/2201955132.py:1: FutureWarning: ..."): the
# kernel's process id and a hash of the compiled code. A cell task's code is compiled under the same name
# ending ".ipy" (nbflow.ipython.cells._cell_filename: IPython then shows the right line of a failure inside
# a comprehension, which it gets wrong for a plain cell).
CELL_FILE = re.compile(r"\S*ipykernel_\d+[/\\]\d+\.i?py\b")
# nbflow's own warnings (a cell it cannot cache and why) are nbflow's, not the notebook's: a warning line and
# the source line Python prints under it.
NBFLOW_WARNING = re.compile(r"^\S.*: NbflowWarning: .*\n(?:  .*\n)?", re.MULTILINE)


# --------------------------------------------------------------------------------------------- variants
def setup_cell(source: str) -> NotebookNode:
    return nbformat.v4.new_code_cell(source, metadata={"tags": ["handbook-setup"]})


def edited(notebook: NotebookNode) -> NotebookNode:
    """The notebook with its early constant changed (cells with ``handbook_edit`` metadata)."""
    notebook = copy.deepcopy(notebook)
    done = 0
    for cell in notebook.cells:
        edit = cell.metadata.get("handbook_edit")
        if edit:
            assert edit["replace"] in cell.source, (edit, cell.source)
            cell.source = cell.source.replace(edit["replace"], edit["with"])
            done += 1
    assert done, "the notebook has no cell with handbook_edit metadata"
    return notebook


def plain_variant(notebook: NotebookNode) -> NotebookNode:
    notebook = copy.deepcopy(notebook)
    notebook.cells.insert(0, setup_cell(PLAIN_SETUP))
    return notebook


def is_tasked(source: str) -> bool:
    return source.startswith("%%task")


def tasked_variant(notebook: NotebookNode) -> NotebookNode:
    """``%load_ext nbflow`` first; every code cell a ``%%task`` unless it starts with a (line or cell) magic."""
    notebook = copy.deepcopy(notebook)
    for cell in notebook.cells:
        if cell.cell_type != "code" or not cell.source.strip() or cell.source.lstrip().startswith("%"):
            continue
        cell.source = "%%task\n" + cell.source
    notebook.cells.insert(0, setup_cell(TASKED_SETUP))
    return notebook


# --------------------------------------------------------------------------------------------- execution
def kernel_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "NBFLOW_HOME": str(home)}
    env.pop("HANDBOOK_DATA", None)  # the notebooks keep their files in the working directory
    env.pop("MPLBACKEND", None)
    return env


def execute_plain(notebook: NotebookNode, workdir: Path, home: Path) -> NotebookNode:
    from nbclient import NotebookClient

    workdir.mkdir(parents=True)
    notebook = copy.deepcopy(notebook)
    client = NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT, allow_errors=False,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env=kernel_env(home))
    return notebook


@dataclass
class TaskedRun:
    number: int
    seconds: float
    notebook: NotebookNode | None = None
    exit_code: int | None = None
    problem: str | None = None  # a timeout, no output notebook, bad usage
    log: str = ""
    counts: dict[str, Any] = field(default_factory=dict)


def _kill_tree(process: subprocess.Popen[str]) -> None:
    """Kill `nbflow run` and everything it started (its kernel runs in a session of its own)."""
    try:
        import psutil

        children = psutil.Process(process.pid).children(recursive=True)
    except Exception:
        children = []
    for child in children:
        try:
            child.kill()
        except Exception:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        process.kill()


def nbflow_run(number: int, notebook_path: Path, workdir: Path, home: Path) -> TaskedRun:
    output = notebook_path.with_name(f"run-{number}.ipynb")
    output.unlink(missing_ok=True)
    command = [sys.executable, "-m", "nbflow.cli", "run", str(notebook_path), "-o", str(output),
               "--cwd", str(workdir), "--timeout", f"{CELL_TIMEOUT:g}"]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=workdir, env=kernel_env(home), stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        log, _ = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_tree(process)
        log, _ = process.communicate()
        seconds = time.monotonic() - started
        last = [line for line in (log or "").splitlines() if line.strip()][-3:]
        return TaskedRun(number, seconds, exit_code=None, log=log or "",
                         problem=f"timed out after {RUN_TIMEOUT:g} s; last lines: {' | '.join(last)}")
    seconds = time.monotonic() - started
    run = TaskedRun(number, seconds, exit_code=process.returncode, log=log)
    if process.returncode not in (0, 1) or not output.exists():
        run.problem = f"exit code {process.returncode}, no executed notebook; output:\n{log[-3000:]}"
        return run
    run.notebook = nbformat.read(str(output), as_version=4)
    run.counts = run.notebook.metadata.get("nbflow", {}).get("run", {}).get("counts", {})
    return run


# --------------------------------------------------------------------------------------------- comparison
def is_notice(output: NotebookNode) -> bool:
    return bool(output.get("metadata", {}).get("nbflow", {}).get("cache_notice"))


def masked(text: str) -> str:
    return CELL_FILE.sub("<cell file>", ADDRESS.sub("0x…", text))


def shown(cell: NotebookNode) -> list[str]:
    """What a cell shows, in order, as text lines (no notices, counts, memory addresses or cell file names).

    Consecutive writes to one stream are one entry (the kernel batches them as it likes); each rich output
    contributes its ``text/plain`` and ``text/html`` and, for an image, only that there is one."""
    entries: list[tuple[str, str]] = []  # (header, text)
    for output in cell.get("outputs", []):
        if is_notice(output):
            continue
        kind = output.output_type
        if kind == "stream":
            header = f"[{output.name}]"
            text = NBFLOW_WARNING.sub("", output.text) if output.name == "stderr" else output.text
            if not text:
                continue
            if entries and entries[-1][0] == header:
                entries[-1] = (header, entries[-1][1] + text)
            else:
                entries.append((header, text))
        elif kind in ("execute_result", "display_data"):
            data = output.get("data", {})
            entries += [(f"[{kind} {mime}]", data[mime]) for mime in ("text/plain", "text/html") if mime in data]
            if "image/png" in data:
                entries.append((f"[{kind} image/png]", ""))
        elif kind == "error":
            value = output.evalue
            if output.ename in ("SyntaxError", "IndentationError"):
                value = SYNTAX_FILE.sub(r"(<cell>, line \1)", value)
            entries.append(("[error]", f"{output.ename}: {value}"))
    return [line for header, text in entries for line in (header, *masked(text).splitlines())]


def _diff(want: list[str], have: list[str], limit: int = 40) -> list[str]:
    import difflib

    diff = list(difflib.unified_diff(want, have, "plain", "tasked", n=1, lineterm=""))[2:]
    if len(diff) > limit:
        diff = [*diff[:limit], f"... ({len(diff) - limit} more diff lines)"]
    return ["      " + line for line in diff]


def compare(name: str, label: str, expected: NotebookNode, got: NotebookNode) -> list[str]:
    """A readable block per cell whose outputs differ: a unified diff from the plain run to the tasked run."""
    got_cells = [cell for cell in got.cells if "nbflow-run-summary" not in cell.metadata.get("tags", [])]
    if len(got_cells) != len(expected.cells):
        return [f"{name} {label}: {len(got_cells)} cells, expected {len(expected.cells)}"]
    problems = []
    for index, (want_cell, got_cell) in enumerate(zip(expected.cells, got_cells)):
        if want_cell.cell_type != "code" or "nondeterministic" in want_cell.metadata.get("tags", []):
            continue
        first_line = want_cell.source.splitlines()[0] if want_cell.source else ""
        if got_cell.get("execution_count") is None and want_cell.get("execution_count") is not None:
            failed = (got.metadata.get("nbflow", {}).get("run", {}) or {}).get("failed_cell")
            problems.append(f"{name} {label}: the run stopped before cell {index} `{first_line}` "
                            f"(failed cell: {failed}); the cells from there on did not run")
            break
        want, have = shown(want_cell), shown(got_cell)
        if want == have:
            continue
        how = "restored from the cache" if any(is_notice(o) for o in got_cell.get("outputs", [])) else "ran"
        problems.append("\n".join([f"{name} {label} cell {index} ({how}) `{first_line}`:", *_diff(want, have)]))
    return problems


def restored(notebook: NotebookNode) -> int:
    return sum(1 for cell in notebook.cells if any(is_notice(output) for output in cell.get("outputs", [])))


def cacheable(notebook: NotebookNode) -> int:
    return sum(1 for cell in notebook.cells
               if cell.cell_type == "code" and is_tasked(cell.source)
               and "raises-exception" not in cell.metadata.get("tags", []))


# --------------------------------------------------------------------------------------------- the test
@pytest.mark.timeout(3 * RUN_TIMEOUT + 300)
@pytest.mark.parametrize("source", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_a_tasked_handbook_notebook_shows_what_its_plain_execution_shows(source: Path, tmp_path: Path) -> None:
    name = source.stem
    original = nbformat.read(str(source), as_version=4)
    changed = edited(original)
    home = tmp_path / "store"
    # The same basename everywhere: a notebook may print the name of its working directory. The plain kernels
    # never load nbflow; they get a store of their own all the same.
    unused = tmp_path / "plain-store"
    expected_before = execute_plain(plain_variant(original), tmp_path / "plain-original" / "work", unused)
    expected_after = execute_plain(plain_variant(changed), tmp_path / "plain-edited" / "work", unused)

    workdir = tmp_path / "tasked" / "work"
    workdir.mkdir(parents=True)
    notebook_path = tmp_path / "tasked" / f"{name}.ipynb"
    problems: list[str] = []
    timings: list[str] = []
    runs: list[TaskedRun] = []
    for number, (variant, expected) in enumerate(
        [(original, expected_before), (original, expected_before), (changed, expected_after)], start=1
    ):
        tasked = tasked_variant(variant)
        nbformat.write(tasked, str(notebook_path))
        run = nbflow_run(number, notebook_path, workdir, home)
        runs.append(run)
        timings.append(f"run {number}: {run.seconds:.1f} s, exit {run.exit_code}, {run.counts}")
        if run.problem or run.notebook is None:
            problems.append(f"{name} run {number}: {run.problem}")
            break  # a run that hung or crashed leaves nothing to compare; later runs would hang as well
        found = compare(name, f"run {number}", expected, run.notebook)
        problems += found
        if any("the run stopped before" in problem for problem in found):
            break  # the next run would stop (or hang) at the same cell

    if len(runs) >= 2 and runs[1].notebook is not None:
        hits, possible = restored(runs[1].notebook), cacheable(tasked_variant(original))
        if hits <= MIN_CACHED_SHARE * possible:
            problems.append(f"{name} run 2: only {hits} of {possible} tasked cells were restored from the cache "
                            f"(more than {MIN_CACHED_SHARE:.0%} expected)")

    report = f"{name}: " + "; ".join(timings)
    print(report)
    if problems:
        pytest.fail(f"{report}\n{len(problems)} problem(s):\n" + "\n".join(problems), pytrace=False)
