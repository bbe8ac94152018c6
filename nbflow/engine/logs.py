"""Run logs: :func:`get_run_logger` and ``log_prints``.

Records made through the run logger are kept in the run they were made in — a task run's ``logs``, or,
in a flow's own body, the flow run's ``logs`` — and, at ``INFO`` and above, printed where the run is
(the notebook cell, the terminal, ``nbflow run``'s output) in Prefect's format::

    12:03:04.567 | INFO    | Task run 'load' - read 1,000 rows

They still go to the usual logging handlers of the ``nbflow.run`` logger too. With ``log_prints=True``,
``print`` calls made inside the task (or the flow's body) are kept in its logs too and still printed.
``print`` is wrapped once per process; outside a run with ``log_prints`` the wrapper costs one
context-variable lookup.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from nbflow.context import current_flow_run, current_task_run

__all__ = ["disable_run_logger", "flow_run_logger", "get_logger", "get_run_logger", "task_run_logger"]

_MAX_LOG_LINES = 1000


def _run_label() -> tuple[list[str] | None, str | None]:
    """The logs list of the current run and how it is named in a printed line (``Task run 'load'``)."""
    task_context = current_task_run()
    if task_context is not None:
        return task_context.task_run.logs, f"Task run {task_context.task_run.task_name!r}"
    flow_context = current_flow_run()
    if flow_context is not None:
        run = flow_context.run
        return run.logs, f"Flow run {(run.run_name or run.flow_name)!r}"
    return None, None


class _RunLogHandler(logging.Handler):
    """Keeps records in the current task run's (or flow run's) logs and prints them, as Prefect's
    console handler does."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            bound = record.__dict__.get("nbflow_run")
            logs, label = bound if bound is not None else _run_label()
            message = record.getMessage()
            if logs is not None:
                _append(logs, f"{record.levelname}: {message}")
            if record.levelno >= logging.INFO:
                when = time.strftime("%H:%M:%S", time.localtime(record.created))
                where = f"{label} - " if label is not None else ""
                line = f"{when}.{int(record.msecs):03d} | {record.levelname:<7} | {where}{message}\n"
                if record.exc_info:
                    line += logging.Formatter().formatException(record.exc_info) + "\n"
                sys.stderr.write(line)
        except Exception:  # a log line must never fail the run
            self.handleError(record)


def _append(logs: list[str], line: str) -> None:
    if len(logs) < _MAX_LOG_LINES:
        logs.append(line)
    elif len(logs) == _MAX_LOG_LINES:
        logs.append("... (further log lines dropped)")


_logger = logging.getLogger("nbflow.run")
_logger.addHandler(_RunLogHandler())
_logger.setLevel(logging.INFO)
# Printed by the handler above: the root logger's handlers (basicConfig, pytest) would print it twice.
_logger.propagate = False


def get_run_logger() -> logging.Logger:
    """A logger whose records are kept in the current run's logs (a task run's, or the flow run's in its
    body; see ``nbflow.runs``) and printed at INFO and above, as Prefect's run logger does.

    Outside any run it still works: records are printed, and kept nowhere.
    """
    return _logger


class _BoundRunLogger(logging.LoggerAdapter):
    """The run logger for one given run (records go to that run, wherever they are made)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**kwargs.get("extra", {}), "nbflow_run": self.extra["run"]}  # type: ignore[index]
        return msg, kwargs


def flow_run_logger(flow_run: Any, flow: Any = None) -> logging.LoggerAdapter:
    """A run logger for ``flow_run`` (a :class:`~nbflow.runs.RunRecord`, as hooks receive it): its records are
    kept in that run's logs and printed as ``Flow run 'name' - ...``, also from a hook after the run ended."""
    name = getattr(flow_run, "run_name", None) or getattr(flow_run, "flow_name", None) or getattr(flow, "name", "?")
    return _BoundRunLogger(_logger, {"run": (flow_run.logs, f"Flow run {name!r}")})


def task_run_logger(task_run: Any, task: Any = None, flow_run: Any = None,
                    flow: Any = None) -> logging.LoggerAdapter:
    """A run logger for ``task_run`` (a :class:`~nbflow.runs.TaskRunRecord`, as hooks receive it): records
    are kept in its logs and printed as ``Task run 'name' - ...``."""
    name = getattr(task_run, "task_name", None) or getattr(task, "name", "?")
    return _BoundRunLogger(_logger, {"run": (task_run.logs, f"Task run {name!r}")})


@contextlib.contextmanager
def disable_run_logger() -> Iterator[None]:
    """Within the block, run loggers print and keep nothing (tests call a task's ``.fn`` this way)."""
    was = _logger.disabled
    _logger.disabled = True
    try:
        yield
    finally:
        _logger.disabled = was


def get_logger(name: str | None = None) -> logging.Logger:
    """A plain logger under ``nbflow`` (``get_logger("etl")`` is ``nbflow.etl``); records are not kept in
    a run — use :func:`get_run_logger` for that."""
    return logging.getLogger("nbflow" if not name else f"nbflow.{name}")


_print_lock = threading.Lock()
_original_print = builtins.print


def _capturing_print(*args: Any, **kwargs: Any) -> None:
    task_context = current_task_run()
    logs: list[str] | None = None
    if task_context is not None:
        if task_context.log_prints:
            logs = task_context.task_run.logs
    else:
        flow_context = current_flow_run()
        if flow_context is not None and flow_context.flow.log_prints:
            logs = flow_context.run.logs
    if logs is not None and kwargs.get("file") is None:
        buffer = io.StringIO()
        _original_print(*args, **{**kwargs, "file": buffer})
        text = buffer.getvalue().rstrip("\n")
        if text:
            _append(logs, f"PRINT: {text}")
    _original_print(*args, **kwargs)


def install_print_capture() -> None:
    """Wrap ``builtins.print`` (once) so tasks and flows with ``log_prints=True`` keep their prints."""
    with _print_lock:
        if builtins.print is not _capturing_print:
            builtins.print = _capturing_print
