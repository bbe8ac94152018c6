"""The handbook notebooks as written, run with ``nbflow run --auto``: every code cell a cell task, no edit.

The companion of ``test_handbook.py`` (whose helpers it uses): the same notebooks, the same plain executions
through nbclient (the notebook after a setup cell that is only a comment, so that ``Out[n]`` numbers match),
and three runs in one working directory and one store, like a user re-running a notebook: run 1 computes,
run 2 repeats it, run 3 runs the notebook with its early constant changed (its ``handbook_edit`` metadata).
The auto variant is the plain variant itself: no ``%load_ext``, no ``%%task``.

Each run must show, cell by cell, what the plain execution of the same source shows (``shown`` of
``test_handbook``), nbflow's own status displays (outputs whose metadata has ``"nbflow"``) and NbflowWarnings
left out, cells tagged ``nondeterministic`` not compared. And from the cell rows of the run summary (the output
notebook's ``metadata["nbflow"]["run"]["cells"]``):

* every code cell with code in it has a status (auto mode ran it, as a cell task or not);
* run 2 serves every cacheable cell from the cache (cacheable: not "uncached" and not "failed"), and a cell
  stored in run 1 is cacheable in run 2;
* run 3 serves every cacheable cell before the edited one from the cache and computes the edited one; after
  it, a cell is recomputed only if it is *downstream* of the edit, and one that reads what the edit changed
  (as the cell's own input, unless an earlier cell of the run has the same code) is not served from the cache.

Downstream is found by data flow over the notebook's source (``notebook_flow.downstream``: variables, what
a call may change in place, the global random generators, IPython's history, files by name, display settings).
It over-approximates, so a downstream cell served from the cache is not an error by itself (its value may not
have changed): its outputs are compared all the same. nbflow compares a seeded generator's state at the start
of a cell, also of a cell that seeds it again before drawing: such a cell counts as reading the generator.

A failure lists every problem: each differing cell as ``NOTEBOOK run N cell K (STATE) `first line```, then a
unified diff from the plain output (-) to the auto one (+), and each cell computed or restored against the
rules above.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat import NotebookNode

from tests.notebooks.notebook_flow import downstream, python_tree, reads_directly
from tests.notebooks.test_handbook import (
    CELL_TIMEOUT,
    NOTEBOOKS,
    RUN_TIMEOUT,
    _diff,
    _kill_tree,
    edited,
    execute_plain,
    kernel_env,
    plain_variant,
    shown,
)

NOT_CACHEABLE = ("uncached", "failed")
# Product bugs this test finds today: notebook -> (the start of the problem line each one causes, the bug).
# While they show, and nothing else does, the test xfails; once one no longer shows the test fails, so that
# its entry goes with the fix.
# Bugs this test found that are not fixed yet, by notebook: (the start of the problem line, what it is). A run
# that no longer shows one fails, so that the entry is removed.
KNOWN_BUGS: dict[str, list[tuple[str, str]]] = {}
NO_STATUS = ("nbflow", "not run", "no code")  # no status line: nbflow's own cells, a cell never run, no code


# --------------------------------------------------------------------------------------------- execution
@dataclass
class AutoRun:
    number: int
    seconds: float
    notebook: NotebookNode | None = None
    exit_code: int | None = None
    problem: str | None = None
    log: str = ""
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # cell index -> its row in the summary
    saved: float = 0.0

    def states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows.values():
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        return counts


def nbflow_auto_run(number: int, notebook_path: Path, workdir: Path, home: Path) -> AutoRun:
    output = notebook_path.with_name(f"auto-run-{number}.ipynb")
    output.unlink(missing_ok=True)
    command = [sys.executable, "-m", "nbflow.cli", "run", "--auto", str(notebook_path), "-o", str(output),
               "--cwd", str(workdir), "--timeout", f"{CELL_TIMEOUT:g}"]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=workdir, env=kernel_env(home), stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        log, _ = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_tree(process)
        log, _ = process.communicate()
        last = [line for line in (log or "").splitlines() if line.strip()][-3:]
        return AutoRun(number, time.monotonic() - started, log=log or "",
                       problem=f"timed out after {RUN_TIMEOUT:g} s; last lines: {' | '.join(last)}")
    run = AutoRun(number, time.monotonic() - started, exit_code=process.returncode, log=log)
    # Exit 1: a cell failed, as the cells tagged raises-exception do.
    if process.returncode not in (0, 1) or not output.exists():
        run.problem = f"exit code {process.returncode}, no executed notebook; output:\n{log[-3000:]}"
        return run
    run.notebook = nbformat.read(str(output), as_version=4)
    summary = run.notebook.metadata.get("nbflow", {}).get("run", {})
    cells = summary.get("cells")
    if cells is None:
        run.problem = f"the run summary has no cell rows (was auto mode on?); output:\n{log[-3000:]}"
        return run
    run.rows = {row["index"]: row for row in cells}
    run.saved = summary.get("saved") or 0.0
    return run


# --------------------------------------------------------------------------------------------- comparison
def is_status(output: NotebookNode) -> bool:
    return "nbflow" in output.get("metadata", {})


def compare(name: str, run: AutoRun, expected: NotebookNode) -> list[str]:
    """A readable block per cell whose outputs differ from the plain run's (status lines left out)."""
    assert run.notebook is not None
    label = f"run {run.number}"
    got_cells = [cell for cell in run.notebook.cells if "nbflow-run-summary" not in cell.metadata.get("tags", [])]
    if len(got_cells) != len(expected.cells):
        return [f"{name} {label}: {len(got_cells)} cells, expected {len(expected.cells)}"]
    problems = []
    for index, (want_cell, got_cell) in enumerate(zip(expected.cells, got_cells)):
        if want_cell.cell_type != "code" or "nondeterministic" in want_cell.metadata.get("tags", []):
            continue
        first_line = want_cell.source.splitlines()[0] if want_cell.source else ""
        if got_cell.get("execution_count") is None and want_cell.get("execution_count") is not None:
            failed = (run.notebook.metadata.get("nbflow", {}).get("run", {}) or {}).get("failed_cell")
            problems.append(f"{name} {label}: the run stopped before cell {index} `{first_line}` "
                            f"(failed cell: {failed}); the cells from there on did not run")
            break
        got_cell = copy.copy(got_cell)
        got_cell["outputs"] = [output for output in got_cell.get("outputs", []) if not is_status(output)]
        want, have = shown(want_cell), shown(got_cell)
        if want == have:
            continue
        state = run.rows.get(index, {}).get("state", "no row")
        problems.append("\n".join([f"{name} {label} cell {index} ({state}) `{first_line}`:",
                                   *[line.replace("+++ tasked", "+++ auto") for line in _diff(want, have)]]))
    return problems


# --------------------------------------------------------------------------------------------- cache use
def check_statuses(name: str, run: AutoRun, notebook: NotebookNode) -> list[str]:
    """Every code cell with code in it has a status line: auto mode ran it."""
    problems = []
    for index, cell in enumerate(notebook.cells):
        tree = python_tree(cell.source) if cell.cell_type == "code" else None
        if tree is None or not tree.body:
            continue
        state = run.rows.get(index, {}).get("state", "no row")
        if state in (*NO_STATUS, "no row"):
            problems.append(f"{name} run {run.number} cell {index} `{cell.source.splitlines()[0]}`: {state}, "
                            "no status line (auto mode did not run it)")
    return problems


def _where(name: str, run: AutoRun, index: int) -> str:
    row = run.rows.get(index, {})
    return f"{name} run {run.number} cell {index} ({row.get('state', 'no row')}) `{row.get('first_line', '')}`"


def check_repeat(name: str, first: AutoRun, second: AutoRun) -> list[str]:
    """Run 2 repeats run 1: every cacheable cell restored, and what was stored in run 1 is cacheable."""
    problems = []
    for index, row in second.rows.items():
        before = first.rows.get(index, {})
        if row["state"] in NOT_CACHEABLE or row["state"] in NO_STATUS:
            if row["state"] == "uncached" and before.get("state") not in ("uncached", None):
                problems.append(f"{_where(name, second, index)}: not cacheable ({row['reason']}), but "
                                f"{before.get('state')} in run 1")
            continue
        if row["state"] != "cached":
            problems.append(f"{_where(name, second, index)}: not restored from the cache in a repeated run"
                            + (f" ({row['reason']})" if row.get("reason") else ""))
    return problems


def check_edit(name: str, third: AutoRun, before: NotebookNode, after: NotebookNode) -> tuple[list[str], str]:
    """Run 3 after the edit: (problems, a line saying how far the edit reached)."""
    problems = []
    start, changed, reached = downstream(before, after)
    for index, row in third.rows.items():
        state = row["state"]
        if state in NOT_CACHEABLE or state in NO_STATUS:
            continue
        source = after.cells[index].source
        # The same code over the same values as an earlier cell of the run is served that cell's entry.
        repeated = any(cell.cell_type == "code" and cell.source.strip() == source.strip()
                       for cell in after.cells[:index])
        if index < start and state != "cached":
            problems.append(f"{_where(name, third, index)}: before the edited cell, yet not restored from the cache")
        elif index == start and state not in ("computed", "quick"):
            problems.append(f"{_where(name, third, index)}: the edited cell was not computed")
        elif index > start and index not in reached and state != "cached":
            problems.append(f"{_where(name, third, index)}: recomputed, though the edit (of {sorted(changed)}) "
                            "does not reach it")
        elif index > start and state == "cached" and not repeated and reads_directly(source, changed):
            problems.append(f"{_where(name, third, index)}: reads what the edit changed ({sorted(changed)}), yet "
                            "it was restored from the cache")
    states = [third.rows.get(index, {}).get("state") for index in sorted(reached)]
    note = (f"the edit of {sorted(changed)} in cell {start} reaches {len(states)} cells after it: "
            f"{states.count('computed')} recomputed, {states.count('cached')} restored, "
            f"{sum(state in NOT_CACHEABLE for state in states)} not cacheable")
    return problems, note


# --------------------------------------------------------------------------------------------- the test
@pytest.mark.timeout(3 * RUN_TIMEOUT + 300)
@pytest.mark.parametrize("source", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_a_handbook_notebook_in_auto_mode_shows_what_its_plain_execution_shows(source: Path, tmp_path: Path) -> None:
    name = source.stem
    original = plain_variant(nbformat.read(str(source), as_version=4))
    changed = edited(original)
    unused = tmp_path / "plain-store"
    expected_before = execute_plain(original, tmp_path / "plain-original" / "work", unused)
    expected_after = execute_plain(changed, tmp_path / "plain-edited" / "work", unused)

    workdir = tmp_path / "auto" / "work"
    workdir.mkdir(parents=True)
    notebook_path = tmp_path / "auto" / f"{name}.ipynb"
    problems: list[str] = []
    timings: list[str] = []
    runs: list[AutoRun] = []
    for number, (variant, expected) in enumerate(
        [(original, expected_before), (original, expected_before), (changed, expected_after)], start=1
    ):
        nbformat.write(variant, str(notebook_path))
        run = nbflow_auto_run(number, notebook_path, workdir, tmp_path / "store")
        timings.append(f"run {number}: {run.seconds:.1f} s, exit {run.exit_code}, cells {run.states()}, "
                       f"saved {run.saved:.2f} s")
        if run.problem or run.notebook is None:
            problems.append(f"{name} run {number}: {run.problem}")
            break
        runs.append(run)
        found = compare(name, run, expected)
        problems += found + check_statuses(name, run, variant)
        if any("the run stopped before" in problem for problem in found):
            break
    if len(runs) >= 2:
        problems += check_repeat(name, runs[0], runs[1])
    if len(runs) == 3:
        found, note = check_edit(name, runs[2], original, expected_after)
        problems += found
        timings.append(note)

    report = f"{name} (auto): " + "; ".join(timings)
    print(report)
    known = KNOWN_BUGS.get(name, [])
    shown_known = [bug for start, bug in known if any(problem.startswith(start) for problem in problems)]
    problems = [problem for problem in problems if not any(problem.startswith(start) for start, _ in known)]
    if problems:
        pytest.fail(f"{report}\n{len(problems)} problem(s):\n" + "\n".join(problems), pytrace=False)
    if len(shown_known) < len(known):
        gone = [bug for _, bug in known if bug not in shown_known]
        pytest.fail(f"{report}\nno longer seen, remove from KNOWN_BUGS: {gone}", pytrace=False)
    if shown_known:
        pytest.xfail("known bug(s): " + "; ".join(shown_known))
