"""Task runners under Prefect's module name: ``from nbflow.task_runners import ThreadPoolTaskRunner``."""

from __future__ import annotations

from nbflow.engine.process_runner import ProcessPoolTaskRunner
from nbflow.engine.runners import TaskRunner, ThreadPoolTaskRunner

__all__ = ["ProcessPoolTaskRunner", "TaskRunner", "ThreadPoolTaskRunner"]
