"""The ``%%task`` cell magic and the ``%nbflow`` line magic."""

from __future__ import annotations

import argparse
import functools
import math
import os
import shlex
import time
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from nbflow.ipython.cells import CellOptions, cell_number, prepare_cell, run_cell_task
from nbflow.runs import format_duration, time_saved
from nbflow.settings import MAX_SECONDS

if TYPE_CHECKING:
    from nbflow.ipython.session import Session
    from nbflow.runs import RunRecord, TaskRunRecord

__all__ = ["NBFLOW_USAGE", "TASK_USAGE", "nbflow_magic", "parse_task_line", "task_magic"]

TASK_USAGE = (
    "usage: %%task [NAME] [--retries N] [--retry-delay S] [--timeout S] [--no-cache] [--refresh]\n"
    "              [--inputs a,b] [--outputs x,y] [--tags t1,t2]"
)
NBFLOW_USAGE = (
    "usage: %nbflow status | why NAME | runs | graph | cache info | cache clear [NAME] | retry NAME | retry --failed\n"
    "              | auto [on|off] | run-stale"
)


def _usage(message: str, usage: str = TASK_USAGE) -> NoReturn:
    from IPython.core.error import UsageError

    raise UsageError(f"{message}\n{usage}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _usage(f"%%task: {message}")

    def print_help(self, file: Any = None) -> None:
        _usage("%%task runs a cell as a cached, retried, recorded task.")


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if not name.isidentifier():
            _usage(f"%%task: {name!r} is not a variable name")
    return names


def _number(kind: type[int] | type[float], label: str, *, seconds: bool = False) -> Any:
    def convert(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{label} must be a number, got {text!r}") from None
        if not math.isfinite(value):  # float("nan"), float("inf") and "1e400" parse
            raise argparse.ArgumentTypeError(f"{label} must be a finite number, got {text!r}")
        if value < 0:
            raise argparse.ArgumentTypeError(f"{label} must be >= 0, got {text!r}")
        if seconds and value > MAX_SECONDS:
            raise argparse.ArgumentTypeError(f"{label} is too long: at most {MAX_SECONDS:g} seconds, got {text!r}")
        return value

    return convert


def parse_task_line(line: str) -> CellOptions:
    """The options of a ``%%task`` line; a bad line raises IPython's UsageError with the usage text."""
    if not line.strip():
        return CellOptions()  # the common line: no options (and no parser, a few hundred µs a cell)
    try:
        words = shlex.split(line)
    except ValueError as error:
        _usage(f"%%task: {error}")
    args = _task_parser().parse_args(words)
    if args.timeout == 0:
        _usage("%%task: --timeout must be > 0")
    if args.name is not None and args.name.startswith("-"):
        _usage(f"%%task: unknown option {args.name!r}")
    if args.name is not None and not (args.name.isprintable() and args.name.strip() == args.name):
        _usage(f"%%task: the task name {args.name!r} must be printable, without spaces around it")
    return CellOptions(
        name=args.name, retries=args.retries, retry_delay=args.retry_delay, timeout=args.timeout,
        no_cache=args.no_cache, refresh=args.refresh, inputs=args.inputs, outputs=args.outputs,
        # New lists: the parser is shared, and its defaults are one list object for every line.
        tags=list(args.tags), files=list(args.files),
    )


@functools.lru_cache(maxsize=1)
def _task_parser() -> argparse.ArgumentParser:
    """The ``%%task`` line's parser, built once (parsing holds no state in it)."""
    parser = _Parser(prog="%%task", add_help=True)
    parser.add_argument("name", nargs="?")
    parser.add_argument("--retries", type=_number(int, "--retries"), default=0)
    parser.add_argument("--retry-delay", type=_number(float, "--retry-delay", seconds=True), default=0.0)
    parser.add_argument("--timeout", type=_number(float, "--timeout", seconds=True), default=None)
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--refresh", action="store_true")
    parser.add_argument("--inputs", type=_names, default=None)
    parser.add_argument("--outputs", type=_names, default=None)
    parser.add_argument("--tags", type=lambda text: [t.strip() for t in text.split(",") if t.strip()], default=[])
    parser.add_argument("--files", type=lambda text: [t.strip() for t in text.split(",") if t.strip()], default=[])
    return parser


def task_magic(shell: Any, session: Session, line: str, cell: str) -> Any:
    """``%%task``: run the cell as a task (see :mod:`nbflow.ipython`)."""
    options = parse_task_line(line)
    if options.inputs is not None:
        missing = [name for name in options.inputs if name not in shell.user_ns]
        if missing:
            _usage(f"%%task: --inputs names undefined variable(s): {', '.join(missing)}")
    try:
        spec = prepare_cell(shell, cell, options)
        # Compiled once here too, so that errors only the compiler finds (`return` or `nonlocal` at the
        # top level) are reported like the parser's, not from inside nbflow.
        compile(spec.tree, "<cell>", "exec", flags=shell.compile.flags, dont_inherit=True)
    except SyntaxError as error:
        return _syntax_error(shell, cell, error)
    if session.auto is not None and session.auto.claims_magic():
        session.auto.run_task_cell(spec)  # auto mode's status line and stale marks; the options as given
    else:
        run_cell_task(shell, spec, session)
    return None


def _syntax_error(shell: Any, cell: str, error: SyntaxError) -> None:
    """Fail as the same cell without ``%%task`` fails: IPython's own ``SyntaxError`` for the body (same
    message, line numbers counted from the body's first line, the cell's source shown), shown the way
    IPython shows one (no traceback of frames), and the cell's execution marked failed, which stops a run
    unless the cell is tagged ``raises-exception``."""
    try:
        filename = shell.compile.cache(cell, cell_number(shell), raw_code=cell)
        tree = shell.compile.ast_parse(shell.transform_cell(cell), filename=filename)
        compile(tree, filename, "exec", flags=shell.compile.flags, dont_inherit=True)
    except SyntaxError as plain:
        error = plain
    error.__context__ = error.__cause__ = None  # raised while nbflow handled the parser's: not part of the story
    error.__suppress_context__ = True
    result = getattr(getattr(shell, "displayhook", None), "exec_result", None)
    if result is None:  # not inside run_cell: the caller sees the exception
        raise error.with_traceback(None)
    try:
        raise error.with_traceback(None)
    except SyntaxError:
        shell.showsyntaxerror()
    result.error_in_exec = error


# -- %nbflow ------------------------------------------------------------------------------------------


def _table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _session_task_runs() -> list[tuple[RunRecord, TaskRunRecord]]:
    """Task runs of this kernel: its session run, and the flow runs it started."""
    from nbflow.engine.runtime import session_run
    from nbflow.runs import history

    session = session_run()
    pairs = [(session, task_run) for task_run in session.task_runs]
    # The session run's records are the ones in memory: the history's copy has every call of the session.
    for run in history().list_runs(200, pid=os.getpid(), headers_only={session.id}):
        if run.kind == "flow" and run.start_time >= session.start_time:
            pairs += [(run, task_run) for task_run in run.task_runs]
    pairs.sort(key=lambda pair: pair[1].start_time or 0.0)
    return pairs


def _computed_durations() -> dict[str, float]:
    """Seconds each cache entry took to compute, by cache key, from the recorded history."""
    from nbflow.runs import history

    recorded = history()
    runs = recorded.list_runs(500, task_runs=False)
    durations: dict[str, float] = {}
    computed = recorded.find_task_runs([run.id for run in runs], state="Completed")
    for task_run in sorted(computed, key=lambda task_run: task_run.end_time or 0.0):  # the latest wins
        if task_run.cache_key and task_run.duration is not None:
            durations[task_run.cache_key] = task_run.duration
    return durations


def status(session: Session) -> str:
    """One line per task (and cell task) of this kernel: its latest state, duration, cache use, time saved."""
    pairs = _session_task_runs()
    if not pairs:
        return "no task has run in this session yet"
    durations: dict[str, float] | None = None
    latest: dict[str, tuple[RunRecord, TaskRunRecord]] = {}
    saved: dict[str, float] = {}
    counts: dict[str, int] = {}
    for run, task_run in pairs:
        name = task_run.task_name
        latest[name] = (run, task_run)
        counts[name] = counts.get(name, 0) + 1
        if task_run.state == "Cached":
            # A cell's hit line said how much it saved; a task's hit is measured the same way, from the
            # run that computed the entry.
            seconds = session.saved.get(task_run.id)
            if seconds is None and task_run.cache_key:
                if durations is None:
                    durations = _computed_durations()
                computed = durations.get(task_run.cache_key)
                if computed is not None:
                    seconds = time_saved(computed, task_run.duration or 0.0)
            if seconds is not None:
                saved[name] = saved.get(name, 0.0) + seconds
    rows = []
    for name, (run, task_run) in latest.items():
        kind = "cell" if task_run.task_key.startswith("cell:") else (
            "task" if run.kind == "session" else f"task in {run.flow_name}")
        rows.append((
            name, kind, task_run.state, format_duration(task_run.duration),
            "yes" if task_run.state == "Cached" else "no", format_duration(saved.get(name)) if name in saved else "-",
            str(counts[name]),
        ))
    total = sum(saved.values())
    return _table(("task", "kind", "state", "duration", "cached", "saved", "runs"), rows) + (
        f"\n\ntime saved by the cache in this session: {format_duration(total)}" if total else "")


def _describe_part(part: str) -> str:
    if part == "cell":
        return "the cell's own code"
    if part == "settings":
        return "display settings in force (numpy print options, pandas options, matplotlib rcParams)"
    kind, _, name = part.partition(":")
    descriptions = {"input": f"input {name!r}", "code": f"function or class {name!r} (its code)",
                    "module": f"module {name!r} (installed version)", "global": f"global {name}",
                    "env": f"environment variable {name}", "file": f"file {name!r}",
                    "wrote": f"file {name!r} (written by it: missing or changed since)",
                    "random": f"random generator {name} (its state when the call started)"}
    return descriptions.get(kind, part)


def why(name: str) -> str:
    """Which parts of the key of ``name``'s latest run differ from the entry it was compared with."""
    from nbflow.runs import history

    pairs = [pair for pair in _session_task_runs() if pair[1].task_name == name]
    if not pairs:
        return f"no task or cell task named {name!r} has run in this session"
    latest = pairs[-1][1]
    if latest.cache_hit:
        return f"{name}: served from the cache — its code and inputs match the stored entry (key {latest.cache_key})"
    if not latest.cache_key:
        reason = "it was run with --no-cache / persist_result=False" if not latest.key_parts else (
            "its key could not be computed (see the warning it printed)")
        return f"{name}: not cached, so nothing to compare: {reason}"
    earlier: TaskRunRecord | None = None
    recorded = history()
    run_ids = [run.id for run in recorded.list_runs(500, task_runs=False)]
    for task_run in recorded.find_task_runs(run_ids, task_name=name, state="Completed"):
        if (task_run.id != latest.id and task_run.persisted and (task_run.end_time or 0) <= (latest.start_time or 0)
                and (earlier is None or (task_run.end_time or 0) > (earlier.end_time or 0))):
            earlier = task_run
    if earlier is None:
        return f"{name}: computed — there is no earlier cache entry of {name!r} to compare with (first run)"
    old, new = earlier.key_parts, latest.key_parts
    specific = [part for part in sorted(set(old) | set(new)) if part != "code" and old.get(part) != new.get(part)]
    if earlier.cache_key == latest.cache_key and not specific:
        return (f"{name}: computed although the key equals the stored entry's: it was refreshed (--refresh), "
                "or the entry was cleared or evicted")
    lines = [f"{name}: computed — " + ("the key differs from" if earlier.cache_key != latest.cache_key else
                                       "what it read differs from what was read for")
             + f" the entry stored at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(earlier.end_time or 0))}:"]
    for part in specific:
        if part not in old:
            lines.append(f"  + {_describe_part(part)} is new")
        elif part not in new:
            lines.append(f"  - {_describe_part(part)} is no longer read")
        else:
            lines.append(f"  * {_describe_part(part)} changed")
    if old.get("code") != new.get("code") and not any(p == "cell" or p.startswith(("code:", "module:", "global:",
                                                                                  "env:")) for p in specific):
        lines.append("  * code it uses changed (a function it calls, a global it reads, or a package version)")
    if len(lines) == 1:
        lines.append("  (the recorded key parts are equal; the key changed in a part that is not recorded)")
    return "\n".join(lines)


def runs_table() -> str:
    """The latest recorded runs."""
    from nbflow import settings
    from nbflow.cli.history import connect, task_counts
    from nbflow.runs import history

    runs = history().list_runs(15, task_runs=False)  # counted in SQL: a session run may have millions
    connection = connect(settings.get_settings().home) if runs else None
    try:
        by_run = task_counts(connection, [run.id for run in runs]) if connection is not None else {}
    finally:
        if connection is not None:
            connection.close()
    rows = []
    for run in runs:
        counts = by_run.get(run.id) or run.counts()
        rows.append((
            run.id[:12], run.kind, run.flow_name, run.state,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.start_time)),
            f"{counts['computed']} computed, {counts['cached']} cached, {counts['failed']} failed",
        ))
    if not rows:
        return "no runs recorded yet"
    return _table(("run", "kind", "name", "state", "started", "task runs"), rows)


def cache_info() -> str:
    """Where the store is, how much it holds, and entries per task."""
    from nbflow import settings
    from nbflow.engine.runtime import get_store

    store = get_store()
    per_task: dict[str, int] = {}
    for record in store.records():
        per_task[record.task_name] = per_task.get(record.task_name, 0) + 1
    lines = [f"store: {settings.get_settings().home}", f"entries: {sum(per_task.values())}, "
             f"{store.volume() / 1e6:.1f} MB"]
    lines += [f"  {name}: {count}" for name, count in sorted(per_task.items())]
    return "\n".join(lines)


def cache_clear(name: str | None) -> str:
    """Delete every entry, or the entries of one task."""
    from nbflow.engine.runtime import get_store

    store = get_store()
    if name is None:
        return f"removed {store.clear()} cache entries"
    removed = sum(store.delete(record.key) for record in list(store.records()) if record.task_name == name)
    return f"removed {removed} cache entries of {name!r}"


def retry(shell: Any, session: Session, name: str) -> None:
    """Run the failed task run(s) again: ``NAME`` (its latest run), or every failed one (``--failed``); then
    resume each failed flow run whose retried calls completed, as the graph's Retry does."""
    from nbflow.engine.manual_retry import NotRetryable, failed_call_inputs, retry_and_resume

    pairs = _session_task_runs()
    run_names = {run.id: run.flow_name for run, _ in pairs}
    latest: dict[str, TaskRunRecord] = {}
    for _, task_run in pairs:
        latest[task_run.task_name] = task_run
    failed = ("FAILED", "CRASHED", "CANCELLED")
    if name == "--failed":
        # A call that never ran because its upstream failed reruns when the flow resumes.
        targets = [t for t in latest.values() if t.state_type in failed and t.state != "UpstreamFailed"]
        if not targets:
            print("nothing to retry: no task has failed")
            return
    else:
        target = latest.get(name)
        if target is None:
            _usage(f"%nbflow retry: no task or cell task named {name!r} has run in this session", NBFLOW_USAGE)
        if target.state_type not in failed:
            _usage(f"%nbflow retry: {name!r} did not fail (its latest run is {target.state})", NBFLOW_USAGE)
        if target.state == "UpstreamFailed":
            _usage(f"%nbflow retry: {name!r} did not run because a task it depends on failed; retry that task "
                   f"(its flow then resumes and runs {name!r})", NBFLOW_USAGE)
        targets = [target]
    calls = []
    for target in targets:
        if not target.task_key.startswith("cell:"):
            calls.append(target)
            continue
        print(f"retrying {target.task_name} ...")
        spec = session.cells.get(target.task_name)
        if spec is None:
            _usage(f"%nbflow retry: the cell of {target.task_name!r} is unknown", NBFLOW_USAGE)
        # Rerun with the data the failed run saw (rebound in the namespace), not whatever the
        # variables hold now; functions, classes and modules stay current, so a fixed helper counts.
        original = failed_call_inputs(target.id) or {}
        shell.user_ns.update({
            name: value for name, value in original.items()
            if not (callable(value) or isinstance(value, types.ModuleType))
        })
        run_cell_task(shell, spec, session)
    if not calls:
        return
    print(f"retrying {', '.join(target.task_name for target in calls)} ...")
    try:
        # All at once: a flow resumes once, after every failed call of it was retried.
        outcome = retry_and_resume([target.id for target in calls])
    except NotRetryable as error:
        _usage(f"%nbflow retry: {error}", NBFLOW_USAGE)
    for target, state in zip(calls, outcome.states, strict=True):
        print(f"{target.task_name}: {state.name}")
    for run_id, state in outcome.resumed.items():
        print(f"flow run {run_names.get(run_id, run_id[:8])!r} resumed: {state.name}"
              + (f" ({state.message})" if state.message and not state.is_completed() else ""))
    for state in [*outcome.states, *outcome.resumed.values()]:
        if not state.is_completed():
            state.result()  # raises the error


def nbflow_magic(shell: Any, session: Session, line: str) -> Any:
    """``%nbflow status | why NAME | runs | graph | cache info | cache clear [NAME] | retry NAME | retry --failed |
    auto [on|off] | run-stale``.

    ``auto`` turns auto mode on (every cell runs as a cell task; see :mod:`nbflow.ipython.auto`), ``auto off``
    turns it off; ``run-stale`` runs the cells auto mode marked stale again, in notebook order."""
    words = line.split()
    if not words:
        _usage("%nbflow: which command?", NBFLOW_USAGE)
    command, args = words[0], words[1:]
    auto = session.auto if session.auto is not None and session.auto.enabled else None
    if command == "auto" and len(args) <= 1 and args in ([], ["on"], ["off"]):
        from nbflow.ipython import auto_mode

        mode = auto_mode(shell, create=True)
        if args == ["off"]:
            mode.disable()
            print("[nbflow] auto mode is off: cells run as written")
        else:
            mode.enable()
            print("[nbflow] auto mode is on: every cell runs as a cell task (cached, restored on a hit); "
                  "%nbflow status says what each cell did")
    elif command == "run-stale" and not args:
        if session.auto is None:
            _usage("%nbflow run-stale: stale cells are marked in auto mode; turn it on with %nbflow auto",
                   NBFLOW_USAGE)
        session.auto.run_stale()
    elif command == "status" and not args:
        if auto is not None:
            print(auto.status())
        else:
            print(status(session))
    elif command == "why" and len(args) == 1:
        print(why(args[0]))
    elif command == "runs" and not args:
        print(runs_table())
    elif command == "graph" and not args:
        from nbflow.ui import session_graph
        from nbflow.ui.auto import remember_shown
        from nbflow.ui.cells import cell_graph

        # Returned, so the cell shows it as its result (the widget, or its static SVG without a widget manager).
        # In auto mode: the notebook's cells, producer -> reader, stale ones marked.
        graph = cell_graph(auto) if auto is not None else session_graph()
        remember_shown(graph)  # running the cell again closes it: it would go on drawing every call
        return graph
    elif command == "cache" and args == ["info"]:
        print(cache_info())
    elif command == "cache" and args[:1] == ["clear"] and len(args) <= 2:
        print(cache_clear(args[1] if len(args) == 2 else None))
    elif command == "retry" and len(args) == 1:
        retry(shell, session, args[0])
    else:
        _usage(f"%nbflow: unknown command {line.strip()!r}", NBFLOW_USAGE)
    return None
