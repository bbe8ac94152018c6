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
  it, a cell is recomputed only if it is *downstream* of the edit, and a cell that reads the changed name
  itself is recomputed.

Downstream is found by data flow over the notebook's source, from the names the edit rebinds (see
:func:`downstream`): a cell is downstream when it reads something a downstream cell bound or may have
changed in place. Besides variables it follows what a cell reads without naming it: the global random
generators (a cell calling ``np.random.*`` or ``random.*`` reads and moves their state: nbflow compares a
seeded generator's state at the start of a cell, also of a cell that seeds it again before drawing), IPython's
history (``In``, ``_``, ``Out[n]``), files by name, and settings (``pd.set_option``, ``rcParams``...) that
every cell's display depends on. It over-approximates (a call of a method counts as changing its object), so
a downstream cell served from the cache is not an error by itself: its outputs are compared all the same.

A failure lists every problem: each differing cell as ``NOTEBOOK run N cell K (STATE) `first line```, then a
unified diff from the plain output (-) to the auto one (+), and each cell computed or restored against the
rules above.
"""

from __future__ import annotations

import ast
import copy
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat import NotebookNode

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
KNOWN_BUGS: dict[str, list[tuple[str, str]]] = {
    "pandas-tables": [(
        "pandas-tables run 2 cell 42 (computed)",
        "a cell that calls os.listdir (or io.open, os.scandir, os.open) is recomputed in a run where no cell "
        "was computed before it: its code identity takes in os.listdir, which is nbflow's file-read wrapper "
        "once some cell task has computed in the kernel, and the builtin before",
    )],
}
NO_STATUS = ("nbflow", "not run")  # no status line: nbflow's own cells (or a comment), or a cell never run
# A file a cell names: a string constant that looks like a file name ("table.csv", "data/x.npy").
FILE_NAME = re.compile(r"^[\w./-]+\.[A-Za-z0-9]{1,5}$")


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


# --------------------------------------------------------------------------------------------- data flow
_RANDOM_MAKERS = {"default_rng", "RandomState", "Generator", "SeedSequence", "PCG64", "MT19937", "Philox", "SFC64"}
_SETTINGS_CALLS = {"numpy.set_printoptions", "pandas.set_option", "pandas.reset_option", "matplotlib.rc",
                   "matplotlib.pyplot.rc", "matplotlib.pyplot.style.use", "matplotlib.style.use"}
_HISTORY_INPUTS = re.compile(r"^_i(?:i{0,2}|h|\d+)$|^In$")
_HISTORY_OUTPUT = re.compile(r"^_(\d+)$")


def python_tree(source: str) -> ast.Module | None:
    """The cell as IPython runs it (magics and ``!`` as calls), parsed; None for a cell that does not compile."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        return ast.parse(TransformerManager().transform_cell(source))
    except SyntaxError:
        return None


def _root(node: ast.AST) -> str | None:
    """The variable an expression such as ``df.groupby("a")["b"].agg`` starts from."""
    while True:
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Name):
            return node.id
        else:
            return None


def _dotted(node: ast.AST, modules: dict[str, str]) -> str:
    """``np.random.seed`` -> ``numpy.random.seed`` when ``np`` is a module the notebook imported; else ""."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in modules:
        return ".".join([modules[node.id], *reversed(parts)])
    return ""


@dataclass
class Flow:
    """What one cell reads and what it binds or may change (names, and ``<...>`` for unnamed state)."""

    reads: set[str] = field(default_factory=set)
    writes: set[str] = field(default_factory=set)  # bound or rebound at the top level
    changes: set[str] = field(default_factory=set)  # may have changed in place (and unnamed state it moves)


class _FlowVisitor(ast.NodeVisitor):
    def __init__(self, modules: dict[str, str], functions: set[str]) -> None:
        self.modules = modules  # alias -> module, grown by the cell's imports
        self.functions = functions  # the notebook's own functions (a call may change its arguments)
        self.flow = Flow()
        self.scopes: list[set[str]] = []  # local names of the functions / comprehensions we are in
        self.globals: set[str] = set()

    def local(self, name: str) -> bool:
        return any(name in scope for scope in self.scopes) and name not in self.globals

    # -- names
    def visit_Name(self, node: ast.Name) -> None:
        flow, name = self.flow, node.id
        if isinstance(node.ctx, ast.Load):
            if self.local(name):
                return
            match = _HISTORY_OUTPUT.match(name)
            if _HISTORY_INPUTS.match(name):
                flow.reads.add("<In>")
            elif name == "_":
                flow.reads.add("<_>")
            elif match:
                flow.reads.add(f"<Out:{match.group(1)}>")
            elif name != "Out":
                flow.reads.add(name)
        elif not self.scopes or name in self.globals:
            flow.writes.add(name)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if (isinstance(node.value, ast.Name) and node.value.id == "Out" and isinstance(node.slice, ast.Constant)
                and isinstance(node.slice.value, int)):
            self.flow.reads.add(f"<Out:{node.slice.value}>")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and FILE_NAME.match(node.value):
            self.flow.reads.add(f"<file:{node.value}>")
            self.flow.changes.add(f"<file:{node.value}>")

    # -- bindings and changes
    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            bound = alias.asname or alias.name.split(".")[0]
            if not self.scopes:
                self.flow.writes.add(bound)
            if isinstance(node, ast.Import):
                self.modules[bound] = alias.name if alias.asname else bound
            elif node.module:
                self.modules[bound] = f"{node.module}.{alias.name}"  # a module or not: only dotted calls use it

    visit_ImportFrom = visit_Import

    def _changed_target(self, target: ast.AST) -> None:
        """``x[0] = ...``, ``df.a = ...``, ``x += ...``: the object is changed in place."""
        if isinstance(target, (ast.Subscript, ast.Attribute)):
            root = _root(target)
            if root is not None and not self.local(root):
                if root in self.modules:
                    self.flow.changes.add("<settings>")  # plt.rcParams[...] = ..., pd.options.x = ...
                else:
                    self.flow.changes.add(root)
                    self.flow.reads.add(root)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._changed_target(target)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._changed_target(node.target)
        if isinstance(node.target, ast.Name) and not self.local(node.target.id):
            self.flow.reads.add(node.target.id)
            self.flow.changes.add(node.target.id)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        flow = self.flow
        dotted = _dotted(node.func, self.modules)
        arguments = [arg.id for arg in [*node.args, *(k.value for k in node.keywords)]
                     if isinstance(arg, ast.Name) and not self.local(arg.id)]
        if dotted:
            module, _, function = dotted.rpartition(".")
            if module in ("numpy.random", "random") and function not in _RANDOM_MAKERS:
                flow.reads.add(f"<{module}>")  # the global generator's state
                flow.changes.add(f"<{module}>")
                flow.changes.update(arguments)  # np.random.shuffle(deck)
            elif dotted in _SETTINGS_CALLS:
                flow.changes.add("<settings>")
        elif isinstance(node.func, ast.Attribute):
            root = _root(node.func)  # a method call may change its object
            if root is not None and not self.local(root) and root not in self.modules:
                flow.changes.add(root)
        elif isinstance(node.func, ast.Name) and node.func.id in self.functions:
            flow.changes.update(arguments)  # center(weights)
        self.generic_visit(node)

    # -- scopes
    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        arguments = node.args
        names = {a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]}
        names |= {a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None}
        body = node.body if isinstance(node.body, list) else [node.body]
        for statement in body:
            for inner in ast.walk(statement):
                if isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
                    names.add(inner.id)
                elif isinstance(inner, ast.Global):
                    self.globals.update(inner.names)
        if not isinstance(node, ast.Lambda):
            if not self.scopes:
                self.flow.writes.add(node.name)
                self.functions.add(node.name)
            for decorator in node.decorator_list:
                self.visit(decorator)
        for default in [*arguments.defaults, *arguments.kw_defaults]:
            if default is not None:
                self.visit(default)
        self.scopes.append(names)
        for statement in body:
            self.visit(statement)
        self.scopes.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if not self.scopes:
            self.flow.writes.add(node.name)
        self.generic_visit(node)

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        names = {inner.id for generator in node.generators for inner in ast.walk(generator.target)
                 if isinstance(inner, ast.Name)}
        self.visit(node.generators[0].iter)  # evaluated outside the comprehension's scope
        self.scopes.append(names)
        for index, generator in enumerate(node.generators):
            if index:
                self.visit(generator.iter)
            for condition in generator.ifs:
                self.visit(condition)
        for part in ("elt", "key", "value"):
            if hasattr(node, part):
                self.visit(getattr(node, part))
        self.scopes.pop()

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension


def cell_flow(source: str, modules: dict[str, str], functions: set[str]) -> Flow:
    tree = python_tree(source)
    if tree is None:
        return Flow()
    visitor = _FlowVisitor(modules, functions)
    visitor.visit(tree)
    flow = visitor.flow
    # `to_celsius = lambda f: ...`: a function of the notebook all the same.
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Lambda):
            functions.update(t.id for t in statement.targets if isinstance(t, ast.Name))
    flow.reads.add("<settings>")  # what a cell shows depends on the display settings in force
    return flow


def edited_names(notebook: NotebookNode) -> tuple[int, set[str]]:
    """(index of the edited cell, the names its edit rebinds to another value)."""
    for index, cell in enumerate(notebook.cells):
        edit = cell.metadata.get("handbook_edit")
        if edit:
            names = {target.id for statement in ast.parse(edit["with"]).body if isinstance(statement, ast.Assign)
                     for target in statement.targets if isinstance(target, ast.Name)}
            assert names, f"the edit {edit} rebinds no name"
            return index, names
    raise AssertionError("the notebook has no cell with handbook_edit metadata")


def downstream(notebook: NotebookNode, start: int, changed: set[str]) -> set[int]:
    """The code cells after ``start`` whose inputs the change of ``changed`` there may reach, by data flow
    (``notebook``: a plain execution, for which cells show a result and their execution counts)."""
    modules: dict[str, str] = {}
    functions: set[str] = set()
    tainted = {*changed, "<In>"}  # `In` holds the edited source from the edited cell on
    found: set[int] = set()
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        flow = cell_flow(cell.source, modules, functions)
        if index <= start:
            continue
        shows_result = any(output.output_type == "execute_result" for output in cell.get("outputs", []))
        if flow.reads & tainted:
            found.add(index)
            tainted |= flow.writes | flow.changes
            if shows_result:
                tainted |= {"<_>", f"<Out:{cell.execution_count}>"}
        else:
            tainted -= flow.writes  # bound afresh from values the edit did not reach
            if shows_result:
                tainted.discard("<_>")
    return found


def reads_directly(source: str, changed: set[str]) -> bool:
    return bool(cell_flow(source, {}, set()).reads & changed)


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


def check_cache_use(name: str, runs: list[AutoRun], notebook: NotebookNode, expected_after: NotebookNode) -> list[str]:
    problems: list[str] = []

    def where(run: AutoRun, index: int) -> str:
        row = run.rows.get(index, {})
        return f"{name} run {run.number} cell {index} ({row.get('state', 'no row')}) `{row.get('first_line', '')}`"

    first, second = runs[0], runs[1] if len(runs) > 1 else None
    if second is not None:
        for index, row in second.rows.items():
            before = first.rows.get(index, {})
            if row["state"] in NOT_CACHEABLE or row["state"] in NO_STATUS:
                if row["state"] == "uncached" and before.get("state") not in ("uncached", None):
                    problems.append(f"{where(second, index)}: not cacheable ({row['reason']}), but "
                                    f"{before.get('state')} in run 1")
                continue
            if row["state"] != "cached":
                problems.append(f"{where(second, index)}: not restored from the cache in a repeated run"
                                + (f" ({row['reason']})" if row.get("reason") else ""))
    if len(runs) < 3:
        return problems
    third = runs[2]
    start, changed = edited_names(notebook)
    reached = downstream(expected_after, start, changed)
    for index, row in third.rows.items():
        state = row["state"]
        if state in NOT_CACHEABLE or state in NO_STATUS:
            continue
        cell = notebook.cells[index]
        if index < start and state != "cached":
            problems.append(f"{where(third, index)}: before the edited cell, yet not restored from the cache")
        elif index == start and state not in ("computed", "quick"):
            problems.append(f"{where(third, index)}: the edited cell was not computed")
        elif index > start and index not in reached and state != "cached":
            problems.append(f"{where(third, index)}: recomputed, though the edit of {sorted(changed)} does not "
                            "reach it")
        elif index > start and reads_directly(cell.source, changed) and state == "cached":
            problems.append(f"{where(third, index)}: reads {sorted(changed)}, which the edit changed, yet it was "
                            "restored from the cache")
    return problems


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
    if runs:
        problems += check_cache_use(name, runs, changed, expected_after)
    if len(runs) == 3:
        start, names = edited_names(changed)
        reached = sorted(downstream(expected_after, start, names))
        states = [runs[2].rows.get(index, {}).get("state") for index in reached]
        timings.append(f"the edit reaches {len(states)} cells after it: {states.count('computed')} recomputed, "
                       f"{states.count('cached')} restored, {sum(s in NOT_CACHEABLE for s in states)} not cacheable")

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
