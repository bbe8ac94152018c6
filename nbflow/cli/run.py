"""``nbflow run``: execute a notebook headless in a real kernel, live, against the shared store.

The kernel is started by nbclient with the same ``NBFLOW_HOME`` the notebooks use, so a scheduled run
warms the cache for interactive work and the other way round. Before the first cell the kernel loads
nbflow's IPython extension (``%%task`` works without ``%load_ext``) and starts recording task starts;
the CLI polls the run history (SQLite) to print each task as it starts and ends. After the last cell the
kernel writes its history, and the CLI prints (or writes as JSON) a summary of every task run.

Parameters follow papermill's convention: ``-p NAME=VALUE`` values are Python literals (else strings),
assigned in a new cell tagged ``injected-parameters`` placed after the cell tagged ``parameters``.
"""

from __future__ import annotations

import ast
import json
import keyword
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from nbflow.cli.common import EXIT_FAILED, EXIT_OK, Usage, print_json, resolve_home, table
from nbflow.cli.history import LaunchWatcher, outcome, task_row
from nbflow.runs import format_duration, time_saved
from nbflow.settings import MAX_SECONDS

if TYPE_CHECKING:
    from nbflow.runs import RunRecord, TaskRunRecord

__all__ = ["inject_parameters", "parse_parameters", "run_notebook"]

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
SUMMARY_TAG = "nbflow-run-summary"
# How often the CLI reads the history while the kernel runs. The kernel writes it in batches about
# this often, so polling faster would only show the same state again.
_POLL_SECONDS = 0.3
# More task changes than this in one poll are shown as one line of counts (failures still one by one).
_LINES_PER_POLL = 10


# -- parameters ---------------------------------------------------------------------------------------

def parse_parameters(items: Sequence[str]) -> dict[str, Any]:
    """``["n=50", "start=2026-01-01"]`` -> ``{"n": 50, "start": "2026-01-01"}``: Python literals where
    the text is one, strings otherwise. A malformed item is a usage error naming it."""
    parameters: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep:
            raise Usage(f"-p {item!r}: write parameters as NAME=VALUE, e.g. -p n_trials=50")
        if not name.isidentifier() or keyword.iskeyword(name):
            raise Usage(f"-p {item!r}: {name!r} is not a valid Python variable name")
        try:
            value: Any = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = text
        parameters[name] = value
    return parameters


def inject_parameters(notebook: Any, parameters: dict[str, Any]) -> None:
    """Put a cell tagged ``injected-parameters`` after the cell tagged ``parameters`` (at the top if there
    is none), replacing one a previous run injected."""
    from nbformat.v4 import new_code_cell

    notebook.cells = [cell for cell in notebook.cells if INJECTED_TAG not in _tags(cell)]
    if not parameters:
        return
    lines = ["# Parameters"] + [f"{name} = {value!r}" for name, value in parameters.items()]
    cell = new_code_cell("\n".join(lines) + "\n", metadata={"tags": [INJECTED_TAG]})
    _fit_cell_ids(notebook, cell)
    position = next((i + 1 for i, c in enumerate(notebook.cells) if PARAMETERS_TAG in _tags(c)), 0)
    notebook.cells.insert(position, cell)


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _fit_cell_ids(notebook: Any, cell: Any) -> None:
    # Cell ids exist from nbformat 4.5 on; an older notebook would fail validation with one.
    if (notebook.nbformat, notebook.nbformat_minor) < (4, 5):
        cell.pop("id", None)


# -- reading the input --------------------------------------------------------------------------------

def read_notebook(path: Path) -> Any:
    import nbformat

    if not path.exists():
        raise Usage(f"notebook {str(path)!r} does not exist")
    if path.is_dir():
        raise Usage(f"{str(path)!r} is a directory; give the path of an .ipynb file")
    try:
        notebook = nbformat.read(str(path), as_version=4)
        nbformat.validate(notebook)
    except Exception as error:
        raise Usage(f"{str(path)!r} is not a valid Jupyter notebook: {error}") from None
    return notebook


def check_kernel(name: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        manager.get_kernel_spec(name)
    except NoSuchKernel:
        known = ", ".join(sorted(manager.find_kernel_specs())) or "none"
        raise Usage(f"kernel {name!r} is not installed (installed kernels: {known}); "
                    f"pick one with --kernel NAME") from None


# -- the live display -----------------------------------------------------------------------------------

class LiveDisplay:
    """Prints a line when a task is seen running and when it ends, with the cell and task counts."""

    def __init__(self, out: TextIO, total_cells: int) -> None:
        self.out = out
        self.total_cells = total_cells
        self.cell = 0
        self.done = 0
        self.running: set[str] = set()
        self._lock = threading.Lock()
        self._final: set[str] = set()

    def show(self, task_runs: list[TaskRunRecord]) -> None:
        with self._lock:
            # A flow of thousands of quick tasks gets one line per poll, not one per task (failures and
            # long tasks starting are still shown one by one).
            busy = len(task_runs) > _LINES_PER_POLL
            quiet: dict[str, int] = {}
            for task_run in task_runs:
                result = outcome(task_run.state, task_run.state_type)
                if result == "other":
                    if task_run.id in self.running or task_run.id in self._final:
                        continue
                    self.running.add(task_run.id)
                    if not busy:
                        self._line("start", task_run.task_name,
                                   task_run.state if task_run.state != "Running" else "")
                    continue
                if task_run.id in self._final:  # a later change of a final record (e.g. its logs)
                    continue
                self._final.add(task_run.id)
                self.running.discard(task_run.id)
                self.done += 1
                if busy and result != "failed":
                    quiet[result] = quiet.get(result, 0) + 1
                    continue
                detail = format_duration(task_run.duration)
                if task_run.attempts > 1:
                    detail += f", {task_run.attempts} attempts"
                if result == "failed" and task_run.error:
                    detail += f"  {task_run.error}"
                self._line(result if result != "failed" else task_run.state.lower(), task_run.task_name, detail)
                self._logs(task_run)
            if quiet:
                self._line("ended", f"{sum(quiet.values())} tasks", ", ".join(f"{n} {r}" for r, n in quiet.items()))
            self.out.flush()

    def _logs(self, task_run: TaskRunRecord) -> None:
        """The task's run-logger lines at INFO and above, under its line, as the kernel printed them in the
        cell (Prefect's format; the record keeps ``LEVEL: message``)."""
        for line in list(task_run.logs):
            level, _, message = line.partition(": ")
            if level in ("INFO", "WARNING", "ERROR", "CRITICAL"):
                print(f"      | {level:<7} | Task run {task_run.task_name!r} - {message}", file=self.out)

    def _line(self, verb: str, task: str, detail: str) -> None:
        count = f"{self.done} done" + (f", {len(self.running)} running" if self.running else "")
        cells = f"cell {self.cell}/{self.total_cells}"
        print(f"  [{cells}, {count}] {verb:<9} {task:<24} {detail}".rstrip(), file=self.out)


def _watch(watcher: LaunchWatcher, display: LiveDisplay | None, stop: threading.Event) -> None:
    while not stop.wait(_POLL_SECONDS):
        try:
            changes = watcher.poll()
        except Exception:  # the history is busy or being created: the next poll will see it
            continue
        if display is not None and changes:
            try:
                display.show(changes)
            except BrokenPipeError:
                # The reader left (`nbflow run ... | head`): no more live lines. The run goes on to its end
                # (its results are stored) and then exits quietly, when the summary meets the same pipe.
                display = None


# -- outcome --------------------------------------------------------------------------------------------

def unresolved_failures(runs: list[RunRecord], allowed: Sequence[tuple[float, float]] = ()) -> list[TaskRunRecord]:
    """Failed task runs not followed by a successful run of the same call (same task and inputs in the
    same run): a task retried by hand (``%nbflow retry``) or by its flow's retry is not a failure. A cell
    task's failure is its cell's error, which the run judges as it judges any cell's (a cell tagged
    ``raises-exception`` may fail); so is a task failure while such a cell ran: ``allowed`` holds the
    (start, end) times of those cells."""
    failed: list[TaskRunRecord] = []
    for run in runs:
        succeeded: dict[tuple[str, str], int] = {}
        for task_run in run.task_runs:
            if task_run.state_type == "COMPLETED":
                call = (task_run.task_key, repr(sorted(task_run.inputs.items())))
                succeeded[call] = max(succeeded.get(call, -1), task_run.seq)
        for task_run in run.task_runs:
            if outcome(task_run.state, task_run.state_type) != "failed" or task_run.task_key.startswith("cell:"):
                continue
            if in_allowed_cell(task_run, allowed):
                continue
            call = (task_run.task_key, repr(sorted(task_run.inputs.items())))
            if succeeded.get(call, -1) < task_run.seq:
                failed.append(task_run)
    return failed


def in_allowed_cell(task_run: TaskRunRecord, allowed: Sequence[tuple[float, float]]) -> bool:
    """Whether ``task_run`` ended while a cell tagged ``raises-exception`` ran (its times and the
    kernel's are read from the same clock: the kernel runs on this machine)."""
    moments = [entry.timestamp for entry in task_run.history] + [
        moment for moment in (task_run.start_time, task_run.end_time) if moment is not None]
    if not moments:
        return False
    ended = max(moments)
    return any(start <= ended <= end for start, end in allowed)


def task_time_saved(runs: list[RunRecord], durations: dict[str, float], *, cells: bool = True) -> float:
    """Seconds the cache hits of ``runs`` saved: for each hit, what computing its entry took (``durations``,
    by cache key, from the run history) less what the hit took. ``cells=False`` leaves cell tasks out (auto
    mode counts them per cell, from their status lines)."""
    return sum(
        time_saved(durations[task_run.cache_key], task_run.duration or 0.0)
        for run in runs for task_run in run.task_runs
        if task_run.state == "Cached" and task_run.cache_key in durations
        and (cells or not task_run.task_key.startswith("cell:"))
    )


def cell_statuses(notebook: Any) -> list[dict[str, Any]]:
    """Auto mode: one row per code cell, from the status line each cell shows (its latest version)."""
    rows = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or INJECTED_TAG in _tags(cell):
            continue
        status: dict[str, Any] | None = None
        for output in cell.get("outputs", []):
            found = output.get("metadata", {}).get("nbflow", {}).get("cell_status")
            if found is not None:
                status = found
        failed = any(output.get("output_type") == "error" for output in cell.get("outputs", []))
        first = next((line.strip() for line in cell.source.splitlines() if line.strip()), "")
        row = {"index": index, "execution_count": cell.get("execution_count"), "first_line": first[:60],
               "state": "failed" if failed else "not run" if status is None else status.get("cell_state", "?"),
               "reason": (status or {}).get("reason", ""), "duration": (status or {}).get("duration"),
               "saved": (status or {}).get("saved", 0.0)}
        if status is None and not failed and all(not line.strip() or line.lstrip().startswith("#")
                                                 for line in cell.source.splitlines()):
            row["state"] = "no code"  # empty, or only comments
        elif status is None and not failed and cell.get("execution_count") is not None:
            row["state"] = "nbflow"  # nbflow's own magics (%load_ext nbflow, %nbflow ...): no status line
        rows.append(row)
    return rows


def build_summary(*, path: Path, output: str | None, kernel: str, home: Path, launch_id: str,
                  parameters: dict[str, Any], started: float, elapsed: float, runs: list[RunRecord],
                  failed_cell: dict[str, Any] | None, cells: list[dict[str, Any]] | None = None,
                  allowed: Sequence[tuple[float, float]] = (), task_time_saved: float = 0.0) -> dict[str, Any]:
    """The run summary: what ``--json`` prints and the output notebook keeps in its metadata. ``allowed``:
    when the cells tagged ``raises-exception`` ran (a task failing in one is no failure of the run).
    ``task_time_saved``: what the run's cache hits saved (see :func:`task_time_saved`)."""
    counts = {"cached": 0, "computed": 0, "failed": 0, "other": 0}
    tasks = []
    for run in runs:
        for task_run in run.task_runs:
            counts[outcome(task_run.state, task_run.state_type)] += 1
            tasks.append(task_row(task_run, run))
    failures = unresolved_failures(runs, allowed)
    accepted = [task_run for run in runs for task_run in run.task_runs
                if outcome(task_run.state, task_run.state_type) == "failed"
                and not task_run.task_key.startswith("cell:") and in_allowed_cell(task_run, allowed)]
    ok = failed_cell is None and not failures
    return {
        "notebook": str(path),
        "output": output,
        "kernel": kernel,
        "home": str(home),
        "launch_id": launch_id,
        # JSON-safe: the summary also goes into the output notebook's metadata.
        "parameters": json.loads(json.dumps(parameters, default=repr)),
        "status": "ok" if ok else "failed",
        "exit_code": EXIT_OK if ok else EXIT_FAILED,
        "start_time": started,
        "duration": elapsed,
        "counts": counts,
        "runs": [{"id": run.id, "name": run.flow_name, "kind": run.kind, "state": run.state,
                  "parent_run_id": run.parent_run_id} for run in runs],
        "tasks": tasks,
        "failed_tasks": [{"task": tr.task_name, "state": tr.state, "error": tr.error, "id": tr.id}
                         for tr in failures],
        # Failed in a cell tagged raises-exception: shown, but no failure of the run (as the cell's error is not).
        "allowed_failures": [{"task": tr.task_name, "state": tr.state, "error": tr.error, "id": tr.id}
                             for tr in accepted],
        "failed_cell": failed_cell,
        # Auto mode (nbflow run --auto): a row per code cell, and how much time the cache saved.
        "cells": cells,
        "saved": sum(cell["saved"] or 0.0 for cell in cells) if cells else None,
        # Seconds of task time the cache hits saved (in auto mode: of the task calls, not the cells).
        "task_time_saved": task_time_saved,
    }


def print_summary(summary: dict[str, Any], out: TextIO) -> None:
    counts = summary["counts"]
    total = sum(counts.values())
    allowed = len(summary.get("allowed_failures", ()))
    retried = counts["failed"] - len(summary["failed_tasks"]) - allowed
    notes = ([f"{retried} then retried successfully"] if retried else []) + (
        [f"{allowed} in cells tagged raises-exception"] if allowed else [])
    saved = summary.get("task_time_saved") or 0.0
    print(f"\n{total} task run(s): {counts['cached']} cached, {counts['computed']} computed, "
          f"{counts['failed']} failed" + (f" ({', '.join(notes)})" if notes else "")
          + (f"; the cache saved {format_duration(saved)} of task time" if counts["cached"] else ""), file=out)
    names = {run["id"]: run["name"] if run["kind"] == "flow" else "(notebook)" for run in summary["runs"]}
    cells = summary.get("cells")
    if cells is not None:
        _print_cells(cells, summary.get("saved") or 0.0, out)
        # The cells' own tasks are in the cell table; the table below lists the task calls in them.
        summary = {**summary, "tasks": [task for task in summary["tasks"] if not task.get("cell")]}
    if summary["tasks"]:
        rows = [(task["task"], names.get(task["run_id"], "?"), task["state"],
                 task["result"] if task["result"] != "other" else "-", str(task["attempts"]),
                 format_duration(task["duration"])) for task in summary["tasks"]]
        table(("task", "in", "state", "result", "attempts", "duration"), rows, out)
    for task in summary["failed_tasks"]:
        print(f"failed task {task['task']}: {task['error']}", file=out)
    cell = summary["failed_cell"]
    if cell is not None:
        where = ""
        if cell.get("index") is not None:
            where = f" (cell {cell['index'] + 1}" + (f": {cell['first_line']}" if cell.get("first_line") else "") + ")"
        what = "Interrupted" if cell.get("ename") == "KeyboardInterrupt" else "A cell failed"
        print(f"\n{what}{where}: {cell['error']}", file=out)
    status = "INTERRUPTED" if summary["exit_code"] == EXIT_INTERRUPTED else "FAILED" if summary["exit_code"] else "OK"
    print(f"\n{status} in {summary['duration']:.1f} s", file=out)


_CELL_WORDS = {"cached": "cached", "computed": "computed", "quick": "ran (quick)", "uncached": "not cacheable",
               "failed": "failed", "not run": "not run", "nbflow": "nbflow", "no code": "no code"}


def _print_cells(cells: list[dict[str, Any]], saved: float, out: TextIO) -> None:
    counts: dict[str, int] = {}
    for cell in cells:
        counts[cell["state"]] = counts.get(cell["state"], 0) + 1
    rows = []
    for cell in cells:
        note = cell["reason"] if cell["state"] in ("uncached", "quick") else ""
        if len(note) > 70:  # the whole reason is in --json and in %nbflow status
            note = note[:69] + "…"
        rows.append((str(cell["index"] + 1), cell["first_line"][:40], _CELL_WORDS.get(cell["state"], cell["state"]),
                     format_duration(cell["duration"]) if cell["duration"] is not None else "-",
                     format_duration(cell["saved"]) if cell["state"] == "cached" else "-", note))
    table(("cell", "first line", "result", "took", "saved", "why not cached"), rows, out)
    order = ("cached", "computed", "quick", "uncached", "failed", "not run")
    said = ", ".join(f"{counts[state]} {_CELL_WORDS[state]}" for state in order if counts.get(state))
    print(f"cells: {said}; the cache saved {format_duration(saved)}", file=out)


# -- the output notebook ------------------------------------------------------------------------------

def _graph_outputs(runs: list[RunRecord], text: str) -> list[Any]:
    """A display output with a static SVG of the run's task graph (the widget's layout and colours)."""
    from nbformat.v4 import new_output

    from nbflow.ui.model import GraphModel
    from nbflow.ui.svg import STATIC_NODE_LIMIT, render_html, render_svg

    model = GraphModel()
    for run in runs:
        model.add_run(run)
    payload = model.payload(rev=1)
    # An SVG image where there is one: front-ends strip SVG out of an untrusted notebook's HTML (see
    # nbflow.ui.static); a graph too big to draw is a line of HTML text.
    data: dict[str, Any] = {"text/plain": text}
    if len(payload["nodes"]) <= STATIC_NODE_LIMIT:
        data["image/svg+xml"] = render_svg(payload)
    else:
        data["text/html"] = render_html(payload)
    return [new_output("display_data", data=data)]


def finish_output_notebook(notebook: Any, summary: dict[str, Any], runs: list[RunRecord]) -> None:
    """Add the run summary to the metadata and a last cell showing the run's task graph."""
    from nbformat.v4 import new_code_cell

    from nbflow.ui.static import keep_static_graphs

    notebook.cells = [cell for cell in notebook.cells if SUMMARY_TAG not in _tags(cell)]
    notebook.metadata["nbflow"] = {"run": summary}
    # With no kernel to hold the graphs' models, their final pictures are what shows (nbflow.ui.static).
    keep_static_graphs(notebook)
    if not summary["tasks"]:
        return
    counts = summary["counts"]
    text = (f"nbflow run: {summary['status']}, {sum(counts.values())} task run(s): {counts['cached']} cached, "
            f"{counts['computed']} computed, {counts['failed']} failed")
    cell = new_code_cell(
        "# The task graph of this run, added by `nbflow run` (the summary is in the notebook's metadata).",
        metadata={"tags": [SUMMARY_TAG], "editable": False},
    )
    _fit_cell_ids(notebook, cell)
    try:
        cell.outputs = _graph_outputs(runs, text)
    except Exception as error:  # the picture is a nicety: the run and its summary stand without it
        print(f"nbflow: warning: could not draw the task graph: {error}", file=sys.stderr)
        return
    notebook.cells.append(cell)


# -- the command ----------------------------------------------------------------------------------------

def _setup_code(path: Path, parameters: dict[str, Any], auto: bool = False) -> str:
    return (
        "import nbflow.cli.kernel as _nbflow_cli_kernel\n"
        f"_nbflow_cli_kernel.setup({str(path)!r}, {({k: repr(v) for k, v in parameters.items()})!r}, auto={auto!r})\n"
        "del _nbflow_cli_kernel\n"
    )


_FINISH_CODE = "import nbflow.cli.kernel as _nbflow_cli_kernel\n_nbflow_cli_kernel.finish()\ndel _nbflow_cli_kernel\n"


def run_notebook(path: Path, *, output: str | None = None, kernel: str | None = None, cwd: str | None = None,
                 timeout: float | None = None, parameters: Sequence[str] = (), as_json: bool = False,
                 home: str | None = None, out: TextIO | None = None, auto: bool = False) -> int:
    """Execute the notebook at ``path``, showing tasks live, then print the summary; return the exit code.
    ``auto``: every code cell runs as a cell task (auto mode), and the summary has a row per cell."""
    import asyncio

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    out = out or sys.stdout
    values = parse_parameters(parameters)
    notebook = read_notebook(path)
    workdir = Path(cwd) if cwd else path.resolve().parent
    if not workdir.is_dir():
        raise Usage(f"--cwd {str(workdir)!r} is not a directory")
    if timeout is not None and not 0 < timeout <= MAX_SECONDS:  # nan fails this too
        raise Usage(f"--timeout must be a number of seconds above 0 and at most {MAX_SECONDS:g}, not {timeout}")
    if output is not None and Path(output).is_dir():
        raise Usage(f"-o {output!r} is a directory: give the path of the notebook file to write")
    kernel_name = kernel or notebook.metadata.get("kernelspec", {}).get("name") or "python3"
    check_kernel(kernel_name)
    inject_parameters(notebook, values)

    # The store is resolved here, from the shell's directory, as `nbflow runs` and `nbflow cache` resolve it,
    # and handed to the kernel explicitly: a kernel resolving it from its own directory (the notebook's)
    # could pick another store than the one those commands show.
    store_home = resolve_home(home)
    launch_id = uuid.uuid4().hex
    env = {**os.environ, "NBFLOW_HOME": str(store_home), "NBFLOW_LAUNCH_ID": launch_id}
    # A cell past --timeout is interrupted (KeyboardInterrupt in the kernel, a failed cell), so the run ends
    # near the limit with that cell named, instead of waiting on a kernel that is still busy.
    client = NotebookClient(
        # (nbclient takes whole seconds: --timeout 2.5 interrupts after 3 s)
        notebook, kernel_name=kernel_name, timeout=None if timeout is None else math.ceil(timeout),
        allow_errors=False, interrupt_on_timeout=True,
        resources={"metadata": {"path": str(workdir)}},
    )
    # With --json, stdout carries the JSON alone; the live lines go to stderr.
    live_out = sys.stderr if as_json else out
    code_cells = sum(1 for cell in notebook.cells if cell.cell_type == "code")
    display = LiveDisplay(live_out, code_cells)
    failed_cell: dict[str, Any] | None = None
    started = time.time()
    given = ", ".join(f"{k}={v!r}" for k, v in values.items())
    print(f"nbflow run {path} (kernel {kernel_name}, store {store_home})" + (f"\nparameters: {given}" if given else ""),
          file=live_out, flush=True)
    watcher = LaunchWatcher(store_home, launch_id, started)
    stop = threading.Event()
    poller = threading.Thread(target=_watch, args=(watcher, display, stop), name="nbflow-run-watch", daemon=True)

    async def execute() -> None:
        nonlocal failed_cell
        client.reset_execution_trackers()
        # The kernel process's own stderr carries only its start-up chatter; what cells print to stderr
        # still arrives through the kernel protocol and lands in the outputs.
        async with client.async_setup_kernel(env=env, stderr=subprocess.DEVNULL):
            interrupt.listen()
            assert client.kc is not None
            reply = await client.async_wait_for_reply(
                client.kc.execute(_setup_code(path.resolve(), values, auto), silent=True, store_history=False))
            if reply is not None and reply["content"].get("status") != "ok":
                content = reply["content"]
                print(f"nbflow: warning: nbflow could not be set up in kernel {kernel_name!r} "
                      f"({content.get('ename')}: {content.get('evalue')}); its tasks will not be shown",
                      file=sys.stderr)
            poller.start()
            busy = False  # the kernel is still running a cell that ignored the interrupt
            try:
                for index, cell in enumerate(notebook.cells):
                    if cell.cell_type == "code":
                        display.cell += 1
                    current.update(index=index, first_line=_first_line(cell.source))
                    began = time.time()
                    finished = await _execute_within(client, cell, index, timeout)
                    if "raises-exception" in _tags(cell):
                        allowed.append((began, time.time()))
                    if not finished:
                        assert timeout is not None  # only a cell past the timeout is abandoned
                        busy = True
                        failed_cell = _timeout_failure(current, timeout, interrupted=False)
                        break
            except DeadKernelError:
                # Killed (out of memory, a crash in C code, a Ctrl-C that reached it): nothing to finish.
                busy = True
                failed_cell = {**current, "error": "DeadKernelError: the kernel died while the cell ran",
                               "ename": "DeadKernelError", "evalue": "the kernel died while the cell ran"}
            except (CellExecutionError, CellTimeoutError) as error:
                ename = getattr(error, "ename", None) or type(error).__name__
                evalue = getattr(error, "evalue", None) or ""
                if timeout is not None and (ename == "KeyboardInterrupt" or isinstance(error, CellTimeoutError)):
                    failed_cell = _timeout_failure(current, timeout, interrupted=True)
                else:
                    failed_cell = {**current, "error": f"{ename}: {evalue}".strip(), "ename": ename,
                                   "evalue": evalue}
            finally:
                if busy or interrupt.stopping or client.kc is None:
                    # The finishing step would wait behind the busy cell (and its error hide the
                    # timeout): stop the kernel at once instead. Its task runs of earlier cells are
                    # already in the history (written after every cell).
                    client.shutdown_kernel = "immediate"
                else:
                    # Even after a failed cell, so the kernel's history is on disk before it is read. Not
                    # under --timeout, which is the cells' limit: writing a large history may take longer.
                    if timeout is not None:
                        client.timeout = max(math.ceil(timeout), _FINISH_SECONDS)
                    await client.async_wait_for_reply(
                        client.kc.execute(_FINISH_CODE, silent=True, store_history=False))
            if not busy and not interrupt.stopping:
                client.set_widgets_metadata()

    current: dict[str, Any] = {"index": None, "first_line": None}
    allowed: list[tuple[float, float]] = []  # when the cells tagged raises-exception ran
    interrupt = _Interrupt()
    try:
        asyncio.run(interrupt.around(execute()))
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass  # Ctrl-C: noted by ``interrupt``; the summary says so below
    except Exception as error:
        if interrupt.stopping:
            pass  # what stopping the kernel at once left behind (nbclient's clean-up of a dead kernel)
        elif failed_cell is None:
            failed_cell = {**current, "error": f"{type(error).__name__}: {error}", "ename": type(error).__name__,
                           "evalue": str(error)}
    finally:
        stop.set()
        if poller.is_alive():
            poller.join()
    elapsed = time.time() - started
    try:
        display.show(watcher.poll(everything=True))  # what the kernel wrote at its end, and all the rest
    except Exception as error:
        print(f"nbflow: warning: could not read the run history in {store_home}: {error}", file=sys.stderr)
    runs = watcher.records()
    if interrupt.stopping or (failed_cell or {}).get("ename") in ("DeadKernelError", "CellTimeoutError"):
        _end_abandoned(store_home, runs, "Cancelled" if interrupt.stopping else "Crashed")
    try:
        keys = {tr.cache_key for run in runs for tr in run.task_runs if tr.state == "Cached" and tr.cache_key}
        saved = task_time_saved(runs, watcher.computed_durations(keys), cells=not auto)
    except Exception as error:  # the figure is a nicety: the run and its summary stand without it
        print(f"nbflow: warning: could not add up the time the cache saved: {error}", file=sys.stderr)
        saved = 0.0
    watcher.close()

    if interrupt.stopping:
        evalue = "the run was interrupted (Ctrl-C) and its kernel stopped; what ran before is stored"
        failed_cell = {**current, "error": f"KeyboardInterrupt: {evalue}", "ename": "KeyboardInterrupt",
                       "evalue": evalue}
    summary = build_summary(path=path, output=output, kernel=kernel_name, home=store_home, launch_id=launch_id,
                            parameters=values, started=started, elapsed=elapsed, runs=runs,
                            failed_cell=failed_cell, cells=cell_statuses(notebook) if auto else None,
                            allowed=allowed, task_time_saved=saved)
    if interrupt.stopping:
        summary["exit_code"] = EXIT_INTERRUPTED
    if output:
        finish_output_notebook(notebook, summary, runs)
        output_path = Path(output)
        try:
            output_path.parent.mkdir(parents=True, exist_ok=True)
            # Trusted only when every code cell ran here: a cell never reached (after a failure, Ctrl-C or
            # a timeout) still holds the outputs the notebook came with, which nobody here produced.
            complete = failed_cell is None and not interrupt.stopping
            nbformat.write(_signed(notebook) if complete else notebook, str(output_path))
        except OSError as error:
            # The run itself is over and recorded; say what could not be written, as an error.
            print(f"nbflow: error: could not write the executed notebook to {output}: {error}", file=sys.stderr)
            summary["exit_code"] = max(int(summary["exit_code"]), EXIT_FAILED)
    if as_json:
        print_json(summary, out)
    else:
        print_summary(summary, out)
    return int(summary["exit_code"])


def _signed(notebook: Any) -> Any:
    """The executed notebook marked trusted by this user's Jupyter, as Jupyter marks a notebook a user ran
    and saved: its outputs are this run's own (the caller signs only a run in which every cell ran), and a
    front-end shows an untrusted notebook's graphs (SVG) as plain text. Anyone else opening it sees it
    untrusted, as usual. Signed as it reads back from disk (the executed notebook in memory differs in ways
    the signature sees)."""
    import nbformat
    from nbformat.sign import NotebookNotary

    try:
        written = nbformat.reads(nbformat.writes(notebook), as_version=4)
        NotebookNotary().sign(written)
        return written
    except Exception as error:  # the notebook stands without the signature
        print(f"nbflow: warning: could not mark the executed notebook trusted: {error}", file=sys.stderr)
        return notebook


def _end_abandoned(home: Path, runs: list[RunRecord], state: str) -> None:
    """Record the end of the runs (and calls) a stopped kernel left under way: its finishing step never ran,
    and the history would list them as running for ever."""
    from nbflow.runs import RunHistory, StateEntry

    now = time.time()
    state_type = state.upper()
    message = "the run was interrupted" if state == "Cancelled" else "the kernel was stopped or died"
    try:
        recorded = RunHistory(home)
        for run in runs:
            for task_run in run.task_runs:
                if task_run.end_time is None and task_run.state_type in ("PENDING", "SCHEDULED", "RUNNING"):
                    task_run.state, task_run.state_type, task_run.end_time = state, state_type, now
                    task_run.history.append(StateEntry(state, state_type, now, message))
                    recorded.mark(run, task_run)
            if run.end_time is None:
                run.state, run.state_type, run.end_time = state, state_type, now
                run.history.append(StateEntry(state, state_type, now, message))
                recorded.mark(run)
        recorded.flush()
        recorded.close()
    except Exception as error:  # the summary stands without it
        print(f"nbflow: warning: could not record the end of the stopped kernel's runs: {error}", file=sys.stderr)


EXIT_INTERRUPTED = 130  # as a shell reports a program ended by Ctrl-C


class _Interrupt:
    """Ctrl-C during a run: the run's task is cancelled, the kernel stopped at once, and the run ends with a
    summary of what ran and exit status 130 (nbclient's own handler would kill the kernel under the running
    cell, which then reads as a kernel that died). A second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.stopping = False
        self._task: Any = None

    def _on_sigint(self) -> None:
        if self.stopping:
            raise KeyboardInterrupt
        self.stopping = True
        if self._task is not None:
            self._task.cancel()

    def listen(self) -> None:
        """Handle Ctrl-C in the running loop (again: starting a kernel, nbclient puts in its own handler)."""
        import asyncio
        import signal

        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self._on_sigint)
        except (RuntimeError, NotImplementedError, ValueError):
            pass  # not the main thread, or no signals here (Windows): Ctrl-C stays Python's

    async def around(self, work: Any) -> None:
        """Run ``work``, listening for Ctrl-C."""
        import asyncio

        self._task = asyncio.ensure_future(work)
        self.listen()
        await self._task


# After --timeout, nbclient interrupts the cell; a cell that ignores the interrupt (a signal handler, a
# long call into C code) gets this many more seconds before the run gives up on it and stops the kernel.
_INTERRUPT_GRACE = 5.0
# The longest the finishing step (the kernel writes its history and hit counts) may take under --timeout.
_FINISH_SECONDS = 120


async def _execute_within(client: Any, cell: Any, index: int, timeout: float | None) -> bool:
    """Execute one cell; False if it was still running ``_INTERRUPT_GRACE`` s after it was interrupted at
    ``timeout`` (it is then abandoned: nbclient would wait for it for ever, interrupting it again and again)."""
    import asyncio

    work = asyncio.ensure_future(
        client.async_execute_cell(cell, index, execution_count=client.code_cells_executed + 1))
    try:
        done, _ = await asyncio.wait({work}, timeout=None if timeout is None else timeout + _INTERRUPT_GRACE)
    except asyncio.CancelledError:  # Ctrl-C (see _Interrupt): the kernel is being stopped under the cell
        work.cancel()
        work.add_done_callback(lambda task: task.cancelled() or task.exception())  # its error is no news
        raise
    if done:
        work.result()  # the cell's error, if any
        return True
    work.cancel()
    try:
        await work
    except BaseException:  # nbclient turns the cancellation into DeadKernelError: the cell is abandoned
        pass
    return False


def _first_line(source: str) -> str:
    line = next((line.strip() for line in source.splitlines() if line.strip()), "")
    return line if len(line) <= 60 else line[:59] + "…"


def _timeout_failure(current: dict[str, Any], timeout: float, *, interrupted: bool) -> dict[str, Any]:
    """The ``failed_cell`` of a cell that ran past ``--timeout``."""
    evalue = (f"the cell ran past --timeout {timeout:g} s and was interrupted" if interrupted else
              f"the cell ran past --timeout {timeout:g} s and did not stop when interrupted; the kernel was stopped")
    return {**current, "error": f"CellTimeoutError: {evalue}", "ename": "CellTimeoutError", "evalue": evalue}


def _cell_error(error: Exception) -> str:
    name = getattr(error, "ename", None) or type(error).__name__
    value = getattr(error, "evalue", None) or ""
    return f"{name}: {value}".strip()
