"""What ``nbflow run`` executes inside the kernel, before the notebook's cells and after them.

The CLI learns about task runs from the run history (SQLite, shared with every kernel), which it polls
while the notebook runs. The engine writes a task run to the history when it ends; :func:`setup` also
writes it when it starts running, so the terminal can show a long task while it runs. Those writes go
through the history's batching, so they cost a task call about as much as its final write does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["finish", "setup"]

_unsubscribe: Any = None


def _flush_history(*_: Any) -> None:
    # After every cell: the CLI sees the cell's tasks at once, and a kernel that dies in a later cell
    # (where atexit handlers never run) has its earlier task runs on disk.
    from nbflow.runs import history

    try:
        history().flush()
    except Exception:  # the history logs its own write errors; a cell must never fail for it
        pass


def setup(notebook: str, parameters: dict[str, str] | None = None, auto: bool = False) -> None:
    """Load the IPython extension, name the session run after ``notebook`` (with the ``-p`` parameters),
    and record task starts; with ``auto``, turn auto mode on (every cell a cell task)."""
    global _unsubscribe
    from nbflow import events
    from nbflow.engine import runtime
    from nbflow.runs import history

    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # pragma: no cover - a kernel always has IPython
        shell = None
    if shell is not None:
        # Called directly rather than through %load_ext, so that a notebook's own `%load_ext nbflow`
        # still runs quietly (the extension manager would print "already loaded").
        from nbflow.ipython import load_ipython_extension

        load_ipython_extension(shell)
        if auto:
            from nbflow.ipython import auto_mode

            auto_mode(shell, create=True).enable()
        if _flush_history not in shell.events.callbacks["post_run_cell"]:
            shell.events.register("post_run_cell", _flush_history)
    # `nbflow runs` names a session run by its source; in a kernel there is no __main__ file to use.
    session = runtime.session_run()
    session.source = notebook
    session.parameters = dict(parameters or {})

    def on_event(event: events.Event) -> None:
        if event.kind == "task_run" and event.task_run is not None and event.type.value == "RUNNING":
            history().mark(event.run, event.task_run)

    if _unsubscribe is None:
        _unsubscribe = events.subscribe(on_event)


def finish() -> None:
    """End the session run and write the history and the store's pending hit counts now."""
    global _unsubscribe
    from nbflow.engine import runtime

    if _unsubscribe is not None:
        _unsubscribe()
        _unsubscribe = None
    runtime.finish_session()
    # Hit counts are added to records in batches; without this the hits of this run would be lost when
    # the kernel is shut down.
    store = runtime._store
    if store is not None:
        store.close()
