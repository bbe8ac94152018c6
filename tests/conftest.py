"""Every test gets its own NBFLOW_HOME and secret key, so tests never share cache entries."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def nbflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "nbflow-home"
    secret = tmp_path / "config" / "secret.key"
    monkeypatch.setenv("NBFLOW_HOME", str(home))
    monkeypatch.setenv("NBFLOW_SECRET_FILE", str(secret))
    from nbflow import settings

    settings.reset()
    yield home
    settings.reset()
    _no_session_graph_left_open()


def _no_session_graph_left_open() -> None:
    """A session graph listens to every later task call in the process: one a test leaves open draws (and
    slows, and keeps a thread busy in) every test after it. Close it, and fail the test that left it."""
    widget = sys.modules.get("nbflow.ui.widget")
    if widget is None:
        return
    left = [inbox.graph for inbox in widget._dispatcher._everything]
    for graph in left:
        graph.close()
    assert not left, f"{len(left)} session graph(s) left open: close them (graph.close()) in the test"


@pytest.fixture
def subprocess_env(nbflow_home: Path) -> dict[str, str]:
    """Environment for child processes that must use this test's store."""
    return {**os.environ}


@pytest.fixture
def executions() -> Iterator[dict[str, int]]:
    """How many times each task's function actually ran (reached Running), by task name.

    Counting through the engine's events keeps test bookkeeping out of the tasks' code identity: a task
    that appended to a list it closes over would change its own cache key on every call.
    """
    from collections import Counter

    from nbflow import events

    counts: Counter[str] = Counter()

    def count(event: events.Event) -> None:
        if event.kind == "task_run" and event.state.name == "Running" and event.task_run is not None:
            counts[event.task_run.task_name] += 1

    unsubscribe = events.subscribe(count)
    yield counts  # type: ignore[misc]
    unsubscribe()
