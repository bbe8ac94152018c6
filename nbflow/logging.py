"""Run logging under Prefect's module name: ``from nbflow.logging import get_run_logger``."""

from __future__ import annotations

from nbflow.engine.logs import get_logger, get_run_logger

__all__ = ["get_logger", "get_run_logger"]
