"""The ``nbflow`` console script.

``nbflow run NOTEBOOK.ipynb`` executes a notebook headless in a real Jupyter kernel (nbclient), then
prints one line per task run from the run history — cached or computed, attempts, duration — and exits
with 0 when everything succeeded, 1 when a cell or a task failed, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from nbflow.runs import format_duration

if TYPE_CHECKING:
    from nbflow.runs import RunRecord

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# Run in the kernel after the notebook, even when a cell failed, so the kernel's run history is on
# disk before the summary is read (the kernel also flushes at exit; this does not rely on it).
_FLUSH_CODE = "import nbflow.engine.runtime as _nbflow_runtime\n_nbflow_runtime.finish_session()\n"


class _Usage(Exception):
    """Bad command-line input: printed as ``nbflow: error: ...`` with exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbflow",
        description="Durable execution for Jupyter notebooks: run notebooks headless with nbflow's cache.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="execute a notebook in a real kernel and summarize its tasks",
        description="Execute NOTEBOOK in a fresh kernel (like 'Restart & Run All'), reusing cached task "
        "results, then print a summary of every task run. Exit code: 0 success, 1 a cell or task "
        "failed, 2 bad usage.",
    )
    run.add_argument("notebook", help="path of the .ipynb file to execute")
    run.add_argument("-o", "--output", help="write the executed notebook (with outputs) here")
    run.add_argument("--kernel", default=None, help="kernel name (default: the notebook's, else python3)")
    run.add_argument("--cwd", default=None, help="working directory of the kernel (default: the notebook's)")
    run.add_argument("--timeout", type=float, default=None,
                     help="seconds a single cell may run (default: no limit)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nbflow`` console script; returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits 2 on bad usage, 0 on --help
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "run":
            return run_notebook(
                Path(args.notebook), output=args.output, kernel=args.kernel, cwd=args.cwd,
                timeout=args.timeout,
            )
    except _Usage as error:
        print(f"nbflow: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nbflow: interrupted", file=sys.stderr)
        return 130
    return EXIT_USAGE


def _read_notebook(path: Path) -> Any:
    import nbformat

    if not path.exists():
        raise _Usage(f"notebook {str(path)!r} does not exist")
    if path.is_dir():
        raise _Usage(f"{str(path)!r} is a directory; give the path of an .ipynb file")
    try:
        notebook = nbformat.read(str(path), as_version=4)
        nbformat.validate(notebook)
    except Exception as error:
        raise _Usage(f"{str(path)!r} is not a valid Jupyter notebook: {error}") from None
    return notebook


def _check_kernel(name: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        manager.get_kernel_spec(name)
    except NoSuchKernel:
        known = ", ".join(sorted(manager.find_kernel_specs())) or "none"
        raise _Usage(f"kernel {name!r} is not installed (installed kernels: {known})") from None


def run_notebook(path: Path, *, output: str | None = None, kernel: str | None = None, cwd: str | None = None,
                 timeout: float | None = None, stream: TextIO | None = None) -> int:
    """Execute the notebook at ``path`` and print the task summary; return the exit code."""
    import asyncio
    import uuid

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    out = stream or sys.stdout
    notebook = _read_notebook(path)
    workdir = Path(cwd) if cwd else path.resolve().parent
    if not workdir.is_dir():
        raise _Usage(f"--cwd {str(workdir)!r} is not a directory")
    kernel_name = kernel or notebook.metadata.get("kernelspec", {}).get("name") or "python3"
    _check_kernel(kernel_name)

    # The kernel must use the same store as this process will read: resolve NBFLOW_HOME the way the
    # kernel would (relative to its working directory) and pass it down explicitly.
    home_setting = os.environ.get("NBFLOW_HOME")
    home = Path(home_setting).expanduser() if home_setting else Path(".nbflow")
    if not home.is_absolute():
        home = (workdir / home).absolute()
    launch_id = uuid.uuid4().hex
    env = {**os.environ, "NBFLOW_HOME": str(home), "NBFLOW_LAUNCH_ID": launch_id}

    client = NotebookClient(
        notebook, kernel_name=kernel_name, timeout=timeout, allow_errors=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    failed_cell: str | None = None
    started = time.time()
    print(f"nbflow run {path} (kernel {kernel_name}, store {home})", file=out)

    async def execute() -> None:
        nonlocal failed_cell
        client.reset_execution_trackers()
        # The kernel process's own stderr carries only its start-up chatter; what cells print to
        # stderr still arrives through the kernel protocol and lands in the outputs.
        async with client.async_setup_kernel(env=env, stderr=subprocess.DEVNULL):
            try:
                for index, cell in enumerate(notebook.cells):
                    await client.async_execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
            except CellExecutionError as error:
                failed_cell = _cell_error_summary(error)
            finally:
                assert client.kc is not None
                msg_id = client.kc.execute(_FLUSH_CODE, silent=True, store_history=False)
                # An error reply just means nbflow is not importable there: nothing to flush.
                await client.async_wait_for_reply(msg_id)
            client.set_widgets_metadata()

    try:
        asyncio.run(execute())
    except Exception as error:
        if failed_cell is None:
            failed_cell = f"{type(error).__name__}: {error}"
    elapsed = time.time() - started

    if output:
        output_path = Path(output)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, str(output_path))

    from nbflow.runs import RunHistory

    runs = [run for run in RunHistory(home).list_runs() if run.launch_id == launch_id]
    runs.sort(key=lambda run: run.start_time)
    failed_tasks = _print_summary(runs, out)
    if failed_cell:
        print(f"\nA cell failed: {failed_cell}", file=out)
    status = "FAILED" if (failed_cell or failed_tasks) else "OK"
    print(f"\n{status} in {elapsed:.1f} s", file=out)
    return EXIT_FAILED if (failed_cell or failed_tasks) else EXIT_OK


def _cell_error_summary(error: Exception) -> str:
    name = getattr(error, "ename", None) or type(error).__name__
    value = getattr(error, "evalue", None) or ""
    return f"{name}: {value}".strip()


def _print_summary(runs: list[RunRecord], out: TextIO) -> list[str]:
    """Print one line per task run; return descriptions of the failed ones."""
    rows: list[tuple[str, str, str, str, str]] = []
    failed: list[str] = []
    for run in runs:
        where = run.flow_name if run.kind == "flow" else "(notebook)"
        for task_run in run.task_runs:
            outcome = "cached" if task_run.state == "Cached" else (
                "computed" if task_run.state_type == "COMPLETED" else "-"
            )
            rows.append((task_run.task_name, where, task_run.state, outcome, format_duration(task_run.duration)))
            if task_run.state_type in ("FAILED", "CRASHED", "CANCELLED"):
                failed.append(f"{task_run.task_name}: {task_run.error}")
    counts = {"cached": 0, "computed": 0, "failed": 0}
    for run in runs:
        for outcome, count in run.counts().items():
            if outcome in counts:
                counts[outcome] += count
    print(f"\n{len(rows)} task run(s): {counts['cached']} cached, {counts['computed']} computed, "
          f"{counts['failed']} failed", file=out)
    if rows:
        headers = ("task", "in", "state", "result", "duration")
        widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(5)]
        line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
        print(line, file=out)
        print("  ".join("-" * w for w in widths), file=out)
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)), file=out)
    for description in failed:
        print(f"failed task {description}", file=out)
    return failed


if __name__ == "__main__":
    sys.exit(main())
