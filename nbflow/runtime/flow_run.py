"""``nbflow.runtime.flow_run``: the flow run the calling code runs in (None outside a flow).

Attributes: ``id``, ``name`` (``flow_run_name``'s rendering, else the flow's name), ``flow_name``,
``parameters`` (the validated parameters), ``tags``, ``run_count`` (the attempt, 1 on the first),
``parent_flow_run_id`` (of a subflow), ``root_flow_run_id``, ``start_time``; the ``get_*`` functions
give the same.
"""

from __future__ import annotations

from typing import Any

from nbflow.context import current_flow_run

__all__ = ["get_flow_name", "get_id", "get_name", "get_parameters", "get_parent_flow_run_id",
           "get_root_flow_run_id", "get_run_count", "get_start_time", "get_tags"]


def get_id() -> str | None:
    """The id of the current flow run, or None."""
    context = current_flow_run()
    return context.run.id if context is not None else None


def get_name() -> str | None:
    """The current flow run's name (its ``flow_run_name``, else the flow's name), or None."""
    context = current_flow_run()
    return (context.run.run_name or context.run.flow_name) if context is not None else None


def get_flow_name() -> str | None:
    """The name of the flow of the current flow run, or None."""
    context = current_flow_run()
    return context.run.flow_name if context is not None else None


def get_parameters() -> dict[str, Any]:
    """The current flow run's parameters (a copy; empty outside a flow)."""
    context = current_flow_run()
    return dict(context.parameters) if context is not None else {}


def get_tags() -> list[str]:
    """The tags active around the current flow run (``nbflow.tags``), else an empty list."""
    from nbflow.context import _tags

    return list(_tags.get())


def get_run_count() -> int:
    """The attempt of the current flow run (1 on the first; 0 outside a flow)."""
    context = current_flow_run()
    return context.attempt if context is not None else 0


def get_parent_flow_run_id() -> str | None:
    """The id of the flow run that called this one as a subflow, or None."""
    context = current_flow_run()
    return context.run.parent_run_id if context is not None else None


def get_root_flow_run_id() -> str | None:
    """The id of the outermost flow run, or None (nbflow records a subflow's parent only: for a nested
    subflow, this is its parent's id)."""
    context = current_flow_run()
    if context is None:
        return None
    return context.run.parent_run_id or context.run.id


def get_start_time() -> Any:
    """When the current flow run started (a UTC datetime), or None."""
    import datetime

    context = current_flow_run()
    if context is None:
        return None
    return datetime.datetime.fromtimestamp(context.run.start_time, datetime.timezone.utc)


_GETTERS = {name[4:]: value for name, value in dict(globals()).items() if name.startswith("get_")}


def __getattr__(name: str) -> Any:
    getter = _GETTERS.get(name)
    if getter is None:
        raise AttributeError(
            f"nbflow.runtime.flow_run has no attribute {name!r}; it offers {', '.join(sorted(_GETTERS))}"
        )
    return getter()


def __dir__() -> list[str]:
    return sorted([*_GETTERS, *__all__])
