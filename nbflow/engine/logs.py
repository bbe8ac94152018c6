"""Run logs: :func:`get_run_logger` and ``log_prints``.

Log records made through the run logger inside a task are appended to that task run's ``logs`` (and
still go to the usual logging handlers). With ``log_prints=True``, ``print`` calls made inside the task
are captured into its logs too and still printed. ``print`` is wrapped once per process; outside a
task with ``log_prints`` the wrapper costs one context-variable lookup.
"""

from __future__ import annotations

import builtins
import io
import logging
import threading
from typing import Any

from nbflow.context import current_flow_run, current_task_run

__all__ = ["get_run_logger"]

_MAX_LOG_LINES = 1000


class _RunLogHandler(logging.Handler):
    """Appends formatted records to the current task run's (or flow run's) logs."""

    def emit(self, record: logging.LogRecord) -> None:
        task_context = current_task_run()
        line = f"{record.levelname}: {record.getMessage()}"
        if task_context is not None:
            _append(task_context.task_run.logs, line)


def _append(logs: list[str], line: str) -> None:
    if len(logs) < _MAX_LOG_LINES:
        logs.append(line)
    elif len(logs) == _MAX_LOG_LINES:
        logs.append("... (further log lines dropped)")


_logger = logging.getLogger("nbflow.run")
_logger.addHandler(_RunLogHandler())
_logger.setLevel(logging.INFO)


class _RunLoggerAdapter(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        task_context = current_task_run()
        if task_context is not None:
            return f"[{task_context.task_run.task_name}] {msg}", kwargs
        flow_context = current_flow_run()
        if flow_context is not None:
            return f"[{flow_context.run.flow_name}] {msg}", kwargs
        return msg, kwargs


def get_run_logger() -> logging.LoggerAdapter:
    """A logger whose records inside a task are kept in that task run's logs (see ``nbflow.runs``).

    Outside any run it still works (records go to the ``nbflow.run`` logger only).
    """
    return _RunLoggerAdapter(_logger, {})


_print_lock = threading.Lock()
_original_print = builtins.print


def _capturing_print(*args: Any, **kwargs: Any) -> None:
    task_context = current_task_run()
    if task_context is not None and task_context.log_prints and kwargs.get("file") is None:
        buffer = io.StringIO()
        _original_print(*args, **{**kwargs, "file": buffer})
        text = buffer.getvalue().rstrip("\n")
        if text:
            _append(task_context.task_run.logs, f"PRINT: {text}")
    _original_print(*args, **kwargs)


def install_print_capture() -> None:
    """Wrap ``builtins.print`` (once) so tasks with ``log_prints=True`` keep their prints."""
    with _print_lock:
        if builtins.print is not _capturing_print:
            builtins.print = _capturing_print
