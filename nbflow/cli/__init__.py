"""The ``nbflow`` console script: run notebooks headless, look at run history, manage the cache.

::

    nbflow run NOTEBOOK [-p NAME=VALUE]... [-o OUTPUT] [--kernel NAME] [--cwd DIR] [--timeout S] [--auto] [--json]
    nbflow runs [--limit N] [--json]          recent runs, newest first
    nbflow runs show RUN_ID [--json]          one run's task table, with errors
    nbflow runs prune --older-than AGE [--json]  delete runs that ended longer ago than AGE
    nbflow cache info [--json]                entries, sizes, limit, hits, oldest/newest
    nbflow cache ls [--task NAME] [--json]    one line per entry
    nbflow cache clear [--task NAME] [--older-than AGE] [--json]
    nbflow cache prune [--json]               apply expirations and the size limit now

Every command works on the store and run history of ``NBFLOW_HOME``, the same ones notebooks use, and
accepts ``--home DIR`` instead. Without either, the store is ``.nbflow`` in the nearest directory,
walking up from the current one, that holds a ``.nbflow`` store, ``.git`` or ``pyproject.toml`` (else
``./.nbflow``); every command prints the store it uses first. Exit codes:
0 success, 1 a cell or task failed (``run``), 2 bad usage, 130 interrupted, 141 the reader of the output left
(``nbflow runs | head``: the command stops quietly).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from nbflow.cli.common import EXIT_USAGE, Usage, print_header, resolve_home

#: The exit status when the reader of the output left (``nbflow run ... | head``): a shell's for SIGPIPE.
EXIT_BROKEN_PIPE = 128 + 13

__all__ = ["main"]

_HOME_HELP = ("store directory (default: $NBFLOW_HOME, else .nbflow in the nearest directory, walking up "
              "from here, that holds .nbflow, .git or pyproject.toml, else ./.nbflow)")
_JSON_HELP = "print JSON instead of a table"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbflow",
        description="Durable execution for Jupyter notebooks: run notebooks headless against nbflow's cache, "
        "and inspect the run history and the cache that notebooks and headless runs share.",
        epilog="Exit codes: 0 success, 1 a cell or task failed, 2 bad usage. "
        "`nbflow COMMAND --help` describes each command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="execute a notebook in a real kernel, showing its tasks live",
        description="Execute NOTEBOOK in a fresh kernel (like 'Restart & Run All') with nbflow's extension "
        "loaded, reusing cached task results. Each task is shown as it starts and ends; a summary of every "
        "task run follows. Exit code: 0 success, 1 a cell or task failed, 2 bad usage.",
    )
    run.add_argument("notebook", metavar="NOTEBOOK", help="path of the .ipynb file to execute")
    run.add_argument("-p", "--parameter", dest="parameters", action="append", default=[], metavar="NAME=VALUE",
                     help="set a parameter (repeatable): a Python literal, else a string; assigned in a cell "
                     "after the one tagged 'parameters' (papermill's convention)")
    run.add_argument("-o", "--output", help="write the executed notebook (outputs, task graph, run summary) here")
    run.add_argument("--kernel", default=None, metavar="NAME",
                     help="kernel name (default: the notebook's, else python3)")
    run.add_argument("--cwd", default=None, metavar="DIR",
                     help="working directory of the kernel (default: the notebook's)")
    run.add_argument("--timeout", type=float, default=None, metavar="S",
                     help="seconds a single cell may run (default: no limit)")
    run.add_argument("--home", default=None, metavar="DIR",
                     help=_HOME_HELP + "; passed to the kernel")
    run.add_argument("--auto", action="store_true",
                     help="auto mode: run every code cell as a cached cell task, with no edit to the notebook; "
                     "the summary says per cell: cached, computed, or not cached and why")
    run.add_argument("--json", action="store_true", help="print the run summary as JSON (live lines go to stderr)")

    runs = commands.add_parser(
        "runs",
        help="list recent runs (flows, notebook sessions, headless runs)",
        description="List recorded runs, newest first: id, notebook or flow, state, start, duration, and "
        "task runs cached/computed/failed. `nbflow runs show RUN_ID` shows one run's tasks.",
    )
    runs.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")
    runs.add_argument("--home", default=None, metavar="DIR", help=_HOME_HELP)
    runs.add_argument("--json", action="store_true", help=_JSON_HELP)
    runs_commands = runs.add_subparsers(dest="runs_command", metavar="SUBCOMMAND")
    show = runs_commands.add_parser(
        "show", help="one run's task table, with errors",
        description="Show the task runs of one run (a unique prefix of its id is enough), with errors.",
    )
    show.add_argument("run_id", metavar="RUN_ID", help="run id or a unique prefix of it (from `nbflow runs`)")
    show.add_argument("--traceback", action="store_true", help="print the tracebacks of failed tasks too")
    show.add_argument("--home", default=None, metavar="DIR", help=_HOME_HELP)
    show.add_argument("--json", action="store_true", help=_JSON_HELP)
    prune_runs = runs_commands.add_parser(
        "prune", help="delete runs that ended longer ago than an age",
        description="Delete the runs that ended longer ago than AGE, with their task runs. Runs in progress "
        "are kept; a run whose process was killed counts from its start. Cached results are not touched "
        "(see `nbflow cache clear --older-than`). The space is reused by later runs; the file does not shrink.")
    prune_runs.add_argument("--older-than", required=True, metavar="AGE",
                            help="delete runs that ended longer ago than AGE: 90s, 30m, 12h, 7d, 2w")
    prune_runs.add_argument("--home", default=None, metavar="DIR", help=_HOME_HELP)
    prune_runs.add_argument("--json", action="store_true", help=_JSON_HELP)

    cache = commands.add_parser(
        "cache",
        help="inspect and clean the result store",
        description="Inspect and clean the result store. Listing reads metadata records only, never a "
        "stored result, and is safe while notebooks write to the store.",
    )
    cache_commands = cache.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")
    info = cache_commands.add_parser(
        "info", help="entries, size on disk, limit, hit counts, oldest/newest",
        description="Summarize the store: entries, size of the results and on disk, the size limit, hit "
        "counts, the oldest and newest entry, and entries per task.")
    ls = cache_commands.add_parser(
        "ls", help="one line per entry", description="List entries, most recently used first: task, size, "
        "created, last used, hits, expiry and key.")
    ls.add_argument("--task", default=None, metavar="NAME", help="only the entries of this task")
    ls.add_argument("--limit", type=int, default=None, help="at most this many entries")
    clear = cache_commands.add_parser(
        "clear", help="delete entries (all, one task's, or older ones)",
        description="Delete cache entries: all of them, or those of one task and/or those created longer "
        "ago than an age.")
    clear.add_argument("--task", default=None, metavar="NAME", help="only the entries of this task")
    clear.add_argument("--older-than", default=None, metavar="AGE",
                       help="only entries created longer ago than AGE: 90s, 30m, 12h, 7d, 2w")
    prune = cache_commands.add_parser(
        "prune", help="apply the size limit and expirations now",
        description="Delete expired entries, then least recently used ones until the store is within its "
        "size limit (NBFLOW_SIZE_LIMIT); also removes leftovers of interrupted writes.")
    for sub in (info, ls, clear, prune):
        sub.add_argument("--home", default=None, metavar="DIR", help=_HOME_HELP)
        sub.add_argument("--json", action="store_true", help=_JSON_HELP)
    return parser


def _runs_command(args: argparse.Namespace, out: TextIO) -> int:
    import sqlite3

    from nbflow.cli import history
    from nbflow.runs import set_aside_if_damaged

    home = resolve_home(args.home)
    if not args.json:
        print_header(home, out)
    try:
        return _run_history_command(history, args, home, out)
    except sqlite3.DatabaseError as error:
        # A damaged history file is moved aside (a warning says where) and the command runs on a new one.
        if not set_aside_if_damaged(home, error):
            raise
        return _run_history_command(history, args, home, out)


def _run_history_command(history: Any, args: argparse.Namespace, home: Path, out: TextIO) -> int:
    if args.runs_command == "show":
        return int(history.show_command(home, args.run_id, as_json=args.json, tracebacks=args.traceback, out=out))
    if args.runs_command == "prune":
        return int(history.prune_command(home, older_than=args.older_than, as_json=args.json, out=out))
    return int(history.list_command(home, limit=args.limit, as_json=args.json, out=out))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nbflow`` console script; returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits 2 on bad usage, 0 on --help
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    out = sys.stdout
    try:
        code = _dispatch(args, out)
        # Written out here, inside the try: a reader that left shows up as BrokenPipeError now, not as
        # "Exception ignored" when the interpreter flushes at exit.
        out.flush()
        return code
    except Usage as error:
        print(f"nbflow: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nbflow: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `nbflow runs | head`: the reader left. Say nothing more; stdout goes to devnull so that the
        # interpreter's last flush fails quietly too (the recipe of Python's signal docs), and exit with
        # the status a shell gives a program killed by SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _dispatch(args: argparse.Namespace, out: TextIO) -> int:
    if args.command == "run":
        from nbflow.cli.run import run_notebook

        return run_notebook(
            Path(args.notebook), output=args.output, kernel=args.kernel, cwd=args.cwd, timeout=args.timeout,
            parameters=args.parameters, as_json=args.json, home=args.home, out=out, auto=args.auto,
        )
    if args.command == "runs":
        return _runs_command(args, out)
    if args.command == "cache":
        from nbflow.cli import cache

        if args.cache_command is None:
            raise Usage("`nbflow cache` needs a subcommand: info, ls, clear or prune (see nbflow cache --help)")
        home = resolve_home(args.home)
        if not args.json:
            print_header(home, out)
        if args.cache_command == "info":
            return cache.info_command(home, as_json=args.json, out=out)
        if args.cache_command == "ls":
            return cache.ls_command(home, task=args.task, limit=args.limit, as_json=args.json, out=out)
        if args.cache_command == "clear":
            return cache.clear_command(home, task=args.task, older_than=args.older_than, as_json=args.json,
                                       out=out)
        return cache.prune_command(home, as_json=args.json, out=out)
    return EXIT_USAGE
