"""Fixtures for the graph widget tests: a stand-in for the notebook front-end."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Pretend to be a notebook kernel: graphs the engine would display are collected here instead."""
    import IPython.display

    import nbflow.ui.auto as auto

    graphs: list[Any] = []

    def display(obj: Any, display_id: Any = None, **kwargs: Any) -> None:
        graphs.append(obj)

    import ipykernel  # the engine's hook looks for it in sys.modules

    assert "ipykernel" in sys.modules and ipykernel
    monkeypatch.setattr(auto, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", display)
    yield graphs
    for graph in graphs:
        graph.close()


def browser_command(widget: Any, content: dict[str, Any]) -> None:
    """What `model.send(content)` in graph.js delivers to the kernel."""
    widget._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})


def browser_sets(widget: Any, **state: Any) -> None:
    """What `model.set(...); model.save_changes()` in graph.js delivers to the kernel."""
    widget._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}},
                        "buffers": []})
