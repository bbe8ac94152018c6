"""``nbflow.runtime``: what is running now — the current flow run and task run — as Prefect's
``prefect.runtime`` offers it::

    from nbflow import runtime

    @nbflow.flow(flow_run_name=lambda: f"report-{runtime.flow_run.parameters['day']}")
    def report(day: str) -> None:
        print(runtime.flow_run.name, runtime.task_run.id)   # task_run.id is None outside a task

Every attribute is read when asked (``runtime.flow_run.id`` inside a task gives its flow run's id);
outside a run, ids and names are None, ``parameters`` is empty and ``tags`` is empty. ``deployment``
exists for Prefect code and always answers None (a notebook has no deployments).
"""

from __future__ import annotations

import types
from typing import Any

from nbflow.runtime import deployment, flow_run, task_run

__all__ = ["deployment", "flow_run", "task_run", "template_values"]


def template_values(parameters: dict[str, Any] | None = None, task_name: str | None = None) -> dict[str, Any]:
    """The names a ``result_storage_key`` template may use: ``parameters`` (the call's arguments),
    ``task_run`` (``.id``, ``.name``, ``.task_name``) and ``flow_run`` (``.id``, ``.name``, ``.flow_name``,
    ``.parameters``), as Prefect formats them."""
    # The key is made before the call's own task run exists: its id and run name are, as in Prefect, the
    # run's own — new for every call — so a template using them never shares an entry between two calls
    # (a key rendered from the task's name, or from None, would hand one call's result to another).
    from nbflow.runs import new_id

    own = new_id()
    task = types.SimpleNamespace(id=own, name=f"{task_name or task_run.get_task_name() or 'task'}-{own[:8]}",
                                 task_name=task_run.get_task_name() or task_name, tags=task_run.get_tags())
    flow = types.SimpleNamespace(
        id=_known(flow_run.get_id(), "flow_run.id"), name=_known(flow_run.get_name(), "flow_run.name"),
        flow_name=_known(flow_run.get_flow_name(), "flow_run.flow_name"),
        parameters=flow_run.get_parameters(), tags=flow_run.get_tags())
    return {"parameters": dict(parameters or task_run.get_parameters()), "task_run": task, "flow_run": flow}


class _Unknown:
    """A template field with no value here (a flow run's outside any flow): formatting it is an error, not
    the text "None" that every such call would share."""

    def __init__(self, field: str) -> None:
        self.field = field

    def __format__(self, spec: str) -> str:
        raise ValueError(f"{{{self.field}}} has no value here: the call is not inside a flow run")

    def __str__(self) -> str:  # str() and !r fail the same way
        return self.__format__("")

    __repr__ = __str__


def _known(value: Any, field: str) -> Any:
    return _Unknown(field) if value is None else value
