"""Artifacts — Prefect's rich results of a run (a markdown report, a table, a link, an image, a progress
bar) — shown where a notebook user looks: inline in the cell that made them.

::

    from nbflow.artifacts import create_markdown_artifact, create_table_artifact

    @nbflow.task
    def report(rows):
        create_table_artifact(rows, key="top-customers", description="Reach out today")

In a Jupyter kernel each artifact is displayed as it is created (a progress artifact is one bar, updated in
place); elsewhere (a script, ``nbflow run``'s terminal) nothing is printed, as in Prefect. Every artifact is
also kept for the process: :meth:`Artifact.get` returns the latest one made under a key. There is no server,
so artifacts are not kept across processes.
"""

from __future__ import annotations

import html
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from nbflow._kernel import in_kernel
from nbflow.exceptions import ConfigurationError

__all__ = ["Artifact", "create_image_artifact", "create_link_artifact", "create_markdown_artifact",
           "create_progress_artifact", "create_table_artifact", "update_progress_artifact"]

_lock = threading.Lock()
_by_id: dict[str, Artifact] = {}
_by_key: dict[str, Artifact] = {}
_MAX_KEPT = 1000


@dataclass
class Artifact:
    """One artifact: ``type`` ("markdown", "table", "link", "image", "progress"), its ``data``, an optional
    ``key`` and ``description``, and the ids of the flow run and task run it was made in."""

    type: str
    data: Any
    key: str | None = None
    description: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    flow_run_id: str | None = None
    task_run_id: str | None = None
    created: float = field(default_factory=time.time)

    @classmethod
    def get(cls, key: str) -> Artifact | None:
        """The latest artifact this process made under ``key``, or None."""
        with _lock:
            return _by_key.get(key)

    def _repr_markdown_(self) -> str | None:
        if self.type == "markdown":
            return str(self.data)
        if self.type == "link":
            url, text = self.data
            return f"[{text or url}]({url})"
        return None

    def _repr_html_(self) -> str | None:
        if self.type == "table":
            return _table_html(self.data)
        if self.type == "image":
            return f'<img src="{html.escape(str(self.data), quote=True)}" style="max-width:100%">'
        if self.type == "progress":
            value = max(0.0, min(100.0, float(self.data)))
            label = html.escape(self.description or "progress")
            return f'<progress max="100" value="{value:g}"></progress> {value:g}% — {label}'
        return None


def _table_html(table: Any) -> str:
    """A table from a list of dicts (one per row), a dict of columns, or a list of rows."""
    if isinstance(table, dict):
        columns = list(table)
        rows = [list(values) for values in zip(*table.values())]
    elif table and all(isinstance(row, dict) for row in table):
        columns = list(dict.fromkeys(name for row in table for name in row))
        rows = [[row.get(name, "") for name in columns] for row in table]
    else:
        columns, rows = [], [list(row) for row in table]
    head = "".join(f"<th>{html.escape(str(name))}</th>" for name in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _create(kind: str, data: Any, key: str | None, description: str | None) -> str:
    if key is not None and (not isinstance(key, str) or not key):
        raise ConfigurationError(f"create_{kind}_artifact: key={key!r} must be a non-empty string or None")
    if description is not None and not isinstance(description, str):
        raise ConfigurationError(f"create_{kind}_artifact: description={description!r} must be a string or None")
    from nbflow import runtime

    artifact = Artifact(kind, data, key, description, flow_run_id=runtime.flow_run.get_id(),
                        task_run_id=runtime.task_run.get_id())
    with _lock:
        _by_id[artifact.id] = artifact
        if key is not None:
            _by_key[key] = artifact
        while len(_by_id) > _MAX_KEPT:
            del _by_id[next(iter(_by_id))]
    _show(artifact, update=False)
    return artifact.id


def _show(artifact: Artifact, update: bool) -> None:
    """Display the artifact in the running Jupyter cell (nothing outside a kernel)."""
    if not in_kernel():
        return
    try:
        from IPython.display import display

        if update:
            display(artifact, display_id=artifact.id, update=True)
        else:
            display(artifact, display_id=artifact.id)
    except Exception:  # an artifact that cannot be shown must never fail the run
        pass


def create_markdown_artifact(markdown: str, key: str | None = None, description: str | None = None) -> str:
    """Show ``markdown`` (a report) in the cell; returns the artifact's id."""
    return _create("markdown", str(markdown), key, description)


def create_table_artifact(table: Any, key: str | None = None, description: str | None = None) -> str:
    """Show ``table`` — a list of dicts (one per row), a dict of columns, or a list of rows — in the cell."""
    return _create("table", table, key, description)


def create_link_artifact(link: str, link_text: str | None = None, key: str | None = None,
                         description: str | None = None) -> str:
    """Show a link to ``link`` (labelled ``link_text``) in the cell."""
    return _create("link", (str(link), link_text), key, description)


def create_image_artifact(image_url: str, key: str | None = None, description: str | None = None) -> str:
    """Show the image at ``image_url`` in the cell."""
    return _create("image", str(image_url), key, description)


def create_progress_artifact(progress: float, key: str | None = None, description: str | None = None) -> str:
    """Show a progress bar at ``progress`` percent (0-100); move it with :func:`update_progress_artifact`."""
    return _create("progress", _percent(progress, "create_progress_artifact"), key, description)


def update_progress_artifact(artifact_id: str, progress: float, description: str | None = None) -> str:
    """Move the progress bar ``artifact_id`` to ``progress`` percent (its display is updated in place)."""
    with _lock:
        artifact = _by_id.get(artifact_id)
    if artifact is None or artifact.type != "progress":
        raise ConfigurationError(
            f"update_progress_artifact: no progress artifact {artifact_id!r} in this process; use the id "
            "create_progress_artifact returned"
        )
    artifact.data = _percent(progress, "update_progress_artifact")
    if description is not None:
        artifact.description = description
    _show(artifact, update=True)
    return artifact_id


def _percent(progress: Any, caller: str) -> float:
    if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not 0 <= progress <= 100:
        raise ConfigurationError(f"{caller}: progress={progress!r} must be a number from 0 to 100")
    return float(progress)
