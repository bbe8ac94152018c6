"""``from nbflow.logging.loggers import flow_run_logger``: Prefect's module name for the run loggers."""

from __future__ import annotations

from nbflow.engine.logs import disable_run_logger, flow_run_logger, get_logger, get_run_logger, task_run_logger

__all__ = ["disable_run_logger", "flow_run_logger", "get_logger", "get_run_logger", "task_run_logger"]
