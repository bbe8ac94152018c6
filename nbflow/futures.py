"""Futures of submitted task calls under Prefect's module name (``from nbflow.futures import wait``):
:class:`~nbflow.TaskFuture` (also as ``PrefectFuture``), :func:`wait`, :func:`as_completed`,
:func:`resolve_futures_to_results` and :func:`resolve_futures_to_states`."""

from __future__ import annotations

from typing import Any

from nbflow.engine.futures import DoneAndNotDone, TaskFuture, TaskFutureList, as_completed, futures_in, resolve, wait

__all__ = ["DoneAndNotDone", "PrefectFuture", "PrefectFutureList", "TaskFuture", "TaskFutureList", "as_completed",
           "resolve_futures_to_results", "resolve_futures_to_states", "wait"]

PrefectFuture = TaskFuture
PrefectFutureList = TaskFutureList


def resolve_futures_to_results(value: Any) -> Any:
    """``value`` with every future in it (inside lists, tuples, sets and dicts) replaced by its result,
    waiting for them; a failed one raises its exception."""
    for future in futures_in(value):
        future.wait()
    return resolve(value)


def resolve_futures_to_states(value: Any) -> Any:
    """``value`` with every future in it replaced by its final state, waiting for them."""
    futures = futures_in(value)
    for future in futures:
        future.wait()
    if isinstance(value, TaskFuture):
        return value.state
    from nbflow.engine.futures import _CONTAINERS

    def swap(item: Any, depth: int = 0) -> Any:
        if isinstance(item, TaskFuture):
            return item.state
        if depth < 8 and isinstance(item, _CONTAINERS):
            if isinstance(item, dict):
                return type(item)({key: swap(inner, depth + 1) for key, inner in item.items()})
            return type(item)(swap(inner, depth + 1) for inner in item)
        return item

    return swap(value)
