"""``nbflow.runtime.task_run``: the task run the calling code runs in (None outside a task).

Attributes: ``id``, ``name`` (``task_run_name``'s rendering, else the task's name), ``task_name``,
``parameters`` (the call's bound arguments), ``tags``, ``run_count`` (the attempt, 1 on the first),
``flow_run_id``; the ``get_*`` functions give the same.
"""

from __future__ import annotations

from typing import Any

from nbflow.context import current_task_run

__all__ = ["get_flow_run_id", "get_id", "get_name", "get_parameters", "get_run_count", "get_tags",
           "get_task_name"]


def get_id() -> str | None:
    """The id of the current task run, or None."""
    context = current_task_run()
    return context.task_run.id if context is not None else None


def get_name() -> str | None:
    """The current task run's name (its ``task_run_name``, else the task's name), or None."""
    context = current_task_run()
    return context.task_run.task_name if context is not None else None


def get_task_name() -> str | None:
    """The name of the task of the current task run, or None."""
    context = current_task_run()
    return context.task.name if context is not None else None


def get_parameters() -> dict[str, Any]:
    """The current call's bound arguments (a copy; empty outside a task)."""
    context = current_task_run()
    return dict(context.parameters or {}) if context is not None else {}


def get_tags() -> list[str]:
    """The current task run's tags (the task's and those of enclosing ``nbflow.tags`` blocks)."""
    context = current_task_run()
    return list(context.task_run.tags) if context is not None else []


def get_run_count() -> int:
    """The attempt of the current task run (1 on the first; 0 outside a task)."""
    context = current_task_run()
    return context.task_run.attempts if context is not None else 0


def get_flow_run_id() -> str | None:
    """The id of the run the current task run belongs to (a flow run, or the session run), or None."""
    context = current_task_run()
    return context.task_run.run_id if context is not None else None


_GETTERS = {name[4:]: value for name, value in dict(globals()).items() if name.startswith("get_")}


def __getattr__(name: str) -> Any:
    getter = _GETTERS.get(name)
    if getter is None:
        raise AttributeError(
            f"nbflow.runtime.task_run has no attribute {name!r}; it offers {', '.join(sorted(_GETTERS))}"
        )
    return getter()


def __dir__() -> list[str]:
    return sorted([*_GETTERS, *__all__])
