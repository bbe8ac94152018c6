"""``nbflow.runtime.deployment``: Prefect code reads it; a notebook has no deployments, so every
attribute (``id``, ``name``, ``version``, ``parameters``...) is None (``parameters``: empty)."""

from __future__ import annotations

from typing import Any

__all__: list[str] = []


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return {} if name == "parameters" else None
