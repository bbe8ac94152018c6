"""States, settings, the light import, and the public surface."""

from __future__ import annotations

import datetime
import json
import pickle
import subprocess
import sys

import pytest

import nbflow
from nbflow import states
from nbflow.exceptions import ConfigurationError, MissingResult


def test_import_is_light() -> None:
    code = (
        "import sys, json, nbflow; "
        "print(json.dumps(sorted(m for m in ('IPython', 'numpy', 'pandas', 'diskcache', 'pydantic', "
        "'nbclient', 'ipywidgets') if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


def test_a_cache_hit_in_a_fresh_process_stays_light(subprocess_env) -> None:
    # What "Restart & Run All" pays before its first result: no pydantic, asyncio or notebook machinery, and
    # none of what only a failure (traceback), a timeout (its module, ctypes) or a failing subscriber (logging)
    # needs.
    code = (
        "import sys, json, nbflow\n"
        "@nbflow.task\ndef double(x):\n    return 2 * x\n"
        "state = double(21, return_state=True)\n"
        "print(json.dumps([state.name, state.result(), sorted(m for m in ('IPython', 'numpy', 'pandas', "
        "'pydantic', 'pydantic_core', 'asyncio', 'concurrent.futures', 'nbclient', 'ipywidgets', 'traceback', "
        "'ctypes', 'logging', 'nbflow.engine.timeouts') if m in sys.modules)]))"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=subprocess_env) for _ in range(2)]
    assert [json.loads(done.stdout) for done in runs] == [["Completed", 42, []], ["Cached", 42, []]]


def test_public_surface() -> None:
    for name in nbflow.__all__:
        assert getattr(nbflow, name) is not None
    assert callable(nbflow.task) and callable(nbflow.flow)
    assert nbflow.runs.list_runs is not None
    with pytest.raises(AttributeError):
        nbflow.no_such_name  # noqa: B018


def test_state_constructors_and_predicates() -> None:
    cached = states.Cached(42)
    assert (cached.type, cached.name, cached.result()) == (states.StateType.COMPLETED, "Cached", 42)
    assert cached.is_completed() and cached.is_final()
    assert repr(cached) == "State(name='Cached', type=COMPLETED)"
    timed_out = states.TimedOut(TimeoutError("late"), message="late")
    assert timed_out.type == states.StateType.FAILED and timed_out.is_failed()
    with pytest.raises(TimeoutError):
        timed_out.result()
    assert states.Pending().is_pending() and not states.Pending().is_final()
    assert states.AwaitingRetry().type == states.StateType.SCHEDULED
    assert states.Retrying().is_running()
    assert states.Crashed(SystemExit(1)).is_crashed()
    assert states.Cancelled(KeyboardInterrupt()).is_cancelled()
    with pytest.raises(MissingResult):
        states.Running().result()
    dumped = cached.model_dump()
    assert dumped["name"] == "Cached" and "timestamp" in dumped


def test_state_timestamps_are_aware_datetimes_however_the_state_was_made() -> None:
    before = datetime.datetime.now(datetime.timezone.utc)
    made = [states.Cached(1), states.State("COMPLETED", "Done"), pickle.loads(pickle.dumps(states.Completed(2)))]
    after = datetime.datetime.now(datetime.timezone.utc)
    for state in made:
        assert isinstance(state.timestamp, datetime.datetime) and state.timestamp.tzinfo is not None
        assert before - datetime.timedelta(seconds=1) <= state.timestamp <= after
        assert state.timestamp is state.timestamp  # read twice, the same moment
    copy = made[0].model_copy(update={"message": "again"})
    assert copy.timestamp == made[0].timestamp and copy.message == "again"
    assert made[0].model_dump(mode="json")["timestamp"] == made[0].timestamp.isoformat()
    with pytest.raises(ConfigurationError, match="timestamp"):
        made[0].timestamp = "yesterday"  # type: ignore[assignment]
    assert {t.value for t in states.StateType} == {
        "PENDING", "RUNNING", "SCHEDULED", "COMPLETED", "FAILED", "CANCELLED", "CRASHED"
    }


def test_configure_validates_and_moves_the_store(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="unknown setting"):
        nbflow.configure(hme="/tmp")
    with pytest.raises(ConfigurationError):
        nbflow.configure(size_limit="lots")
    settings = nbflow.configure(home=tmp_path / "elsewhere", size_limit="2GiB")
    assert settings.size_limit == 2 * 1024**3
    assert settings.home == (tmp_path / "elsewhere").absolute()

    @nbflow.task
    def f() -> int:
        return 1

    f()
    assert (tmp_path / "elsewhere").is_dir()
    assert nbflow.runs.list_runs()[0].task_runs[0].task_name == "f"


def test_environment_settings(monkeypatch, tmp_path) -> None:
    from nbflow import settings

    monkeypatch.setenv("NBFLOW_SIZE_LIMIT", "500MB")
    settings.reset()
    assert settings.get_settings().size_limit == 500 * 1024**2
    monkeypatch.setenv("NBFLOW_SIZE_LIMIT", "-1")
    settings.reset()
    with pytest.raises(ConfigurationError, match="NBFLOW_"):
        settings.get_settings()
    monkeypatch.delenv("NBFLOW_SIZE_LIMIT")
    settings.reset()


def test_events_are_published_in_order() -> None:
    from nbflow import events

    seen: list[tuple[str, str]] = []
    firsts: list[tuple[str, str]] = []
    unsubscribe = events.subscribe(lambda event: seen.append((event.kind, event.state.name)))
    unsubscribe_firsts = events.subscribe(lambda event: firsts.append((event.kind, event.name)), state_changes=False)
    try:
        @nbflow.task
        def f() -> int:
            return 1

        @nbflow.flow
        def pipeline() -> int:
            return f()

        pipeline()
        pipeline()
    finally:
        unsubscribe()
        unsubscribe_firsts()
    assert seen == [
        ("run", "Pending"), ("run", "Running"), ("task_run", "Pending"), ("task_run", "Running"),
        ("task_run", "Completed"), ("run", "Completed"),
        ("run", "Pending"), ("run", "Running"), ("task_run", "Pending"), ("task_run", "Cached"),
        ("run", "Completed"),
    ]
    # Without state changes: every event of the runs, and each task run's first one only.
    assert firsts == [event for event in seen if event[0] == "run" or event[1] == "Pending"]
    assert len(firsts) == 8
