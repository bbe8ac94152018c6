"""nbflow: durable execution native to Jupyter.

Decorate functions with ``@nbflow.task`` and ``@nbflow.flow``; their results are cached on local disk,
keyed by code identity and input fingerprints, so a restarted kernel or a headless ``nbflow run`` only
recomputes what changed.

This module is the public API and nothing else. Names are resolved lazily so that ``import nbflow``
stays cheap (no IPython, numpy, pandas or pydantic until they are needed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    # decorators and their classes
    "Flow",
    "Task",
    "flow",
    "task",
    # concurrency: futures, task runners, limits
    "ProcessPoolTaskRunner",
    "TaskFuture",
    "TaskRunner",
    "ThreadPoolTaskRunner",
    "allow_failure",
    "as_completed",
    "concurrency",
    "quote",
    "rate_limit",
    "set_concurrency_limit",
    "unmapped",
    "wait",
    # transactions
    "Transaction",
    "get_transaction",
    "transaction",
    # states
    "Cancelled",
    "Completed",
    "Crashed",
    "Failed",
    "State",
    "StateType",
    # retries
    "exponential_backoff",
    # run history, logs and what is running now
    "get_run_logger",
    "runs",
    "runtime",
    "tags",
    # settings
    "configure",
    # errors
    "NbflowError",
    "NbflowWarning",
    # IPython extension (%load_ext nbflow)
    "load_ipython_extension",
    "unload_ipython_extension",
]

_LAZY = {
    "Flow": "nbflow.flows",
    "flow": "nbflow.flows",
    "Task": "nbflow.tasks",
    "task": "nbflow.tasks",
    "TaskFuture": "nbflow.engine.futures",
    "as_completed": "nbflow.engine.futures",
    "unmapped": "nbflow.engine.futures",
    "wait": "nbflow.engine.futures",
    "TaskRunner": "nbflow.engine.runners",
    "ProcessPoolTaskRunner": "nbflow.engine.process_runner",
    "allow_failure": "nbflow.engine.futures",
    "quote": "nbflow.engine.futures",
    "rate_limit": "nbflow.concurrency",
    "set_concurrency_limit": "nbflow.concurrency",
    "Cancelled": "nbflow.states",
    "Completed": "nbflow.states",
    "Crashed": "nbflow.states",
    "Failed": "nbflow.states",
    "tags": "nbflow._tags",
    "ThreadPoolTaskRunner": "nbflow.engine.runners",
    "Transaction": "nbflow.transactions",
    "get_transaction": "nbflow.transactions",
    "transaction": "nbflow.transactions",
    "State": "nbflow.states",
    "StateType": "nbflow.states",
    "exponential_backoff": "nbflow.engine.retries",
    "get_run_logger": "nbflow.engine.logs",
    "configure": "nbflow.settings",
    "NbflowError": "nbflow.exceptions",
    "NbflowWarning": "nbflow.exceptions",
}

if TYPE_CHECKING:
    from nbflow import concurrency, runs, runtime
    from nbflow._tags import tags
    from nbflow.concurrency import rate_limit
    from nbflow.concurrency import set_limit as set_concurrency_limit
    from nbflow.engine.futures import TaskFuture, allow_failure, as_completed, quote, unmapped, wait
    from nbflow.engine.logs import get_run_logger
    from nbflow.engine.process_runner import ProcessPoolTaskRunner
    from nbflow.engine.retries import exponential_backoff
    from nbflow.engine.runners import TaskRunner, ThreadPoolTaskRunner
    from nbflow.exceptions import NbflowError, NbflowWarning
    from nbflow.flows import Flow, flow
    from nbflow.settings import configure
    from nbflow.states import Cancelled, Completed, Crashed, Failed, State, StateType
    from nbflow.tasks import Task, task
    from nbflow.transactions import Transaction, get_transaction, transaction


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbflow``: register the ``%%task`` and ``%nbflow`` magics (see :mod:`nbflow.ipython`)."""
    from nbflow.ipython import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbflow``: remove the magics again."""
    from nbflow.ipython import unload_ipython_extension as unload

    unload(ipython)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if name in ("runs", "runtime", "concurrency"):
        # Modules; `nbflow.concurrency` is also callable: nbflow.concurrency("db", occupy=1).
        return importlib.import_module(f"nbflow.{name}")
    raise AttributeError(f"module 'nbflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

