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
    task = types.SimpleNamespace(id=task_run.get_id(), name=task_run.get_name() or task_name,
                                 task_name=task_run.get_task_name() or task_name, tags=task_run.get_tags())
    flow = types.SimpleNamespace(id=flow_run.get_id(), name=flow_run.get_name(), flow_name=flow_run.get_flow_name(),
                                 parameters=flow_run.get_parameters(), tags=flow_run.get_tags())
    return {"parameters": dict(parameters or task_run.get_parameters()), "task_run": task, "flow_run": flow}
