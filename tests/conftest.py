"""Every test gets its own NBFLOW_HOME and secret key, so tests never share cache entries."""

from __future__ import annotations

import os
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
