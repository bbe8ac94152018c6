"""Retrying by hand: a failed task call with its original inputs, a failed flow run in the same run."""

from __future__ import annotations

import pytest

import nbflow
from nbflow.cache_policies import NONE
from nbflow.engine.manual_retry import (
    NotRetryable,
    failed_flow_runs,
    failed_task_runs,
    retry_flow_run,
    retry_task_run,
)
from nbflow.runs import list_runs


def test_retry_a_failed_task_call_with_its_original_inputs(executions) -> None:
    broken = {"on": True}

    @nbflow.task
    def fetch(url: str) -> str:
        if broken["on"]:
            raise ConnectionError(f"cannot reach {url}")
        return f"data from {url}"

    state = fetch("http://example.invalid/a", return_state=True)
    assert state.is_failed()
    failed_id = next(run for run in list_runs() if run.kind == "session").task_runs[-1].id
    assert failed_id in failed_task_runs()
    broken["on"] = False
    retried = retry_task_run(failed_id)
    assert retried.name == "Completed" and retried.result() == "data from http://example.invalid/a"
    assert failed_id not in failed_task_runs()
    with pytest.raises(NotRetryable, match="cannot be retried"):
        retry_task_run(failed_id)


def test_retry_failed_reruns_the_flow_in_the_same_run_reusing_completed_tasks(executions) -> None:
    broken = {"on": True}

    @nbflow.task(cache_policy=NONE)
    def extract() -> list[int]:
        return [1, 2, 3]

    @nbflow.task(cache_policy=NONE)
    def load(rows: list[int]) -> int:
        if broken["on"]:
            raise ConnectionError("database down")
        return sum(rows)

    @nbflow.task(cache_policy=NONE)
    def report(total: int) -> str:
        return f"total={total}"

    @nbflow.flow
    def etl() -> str:
        return report(load(extract()))

    state = etl(return_state=True)
    assert state.is_failed()
    run = list_runs(limit=1)[0]
    assert run.id in failed_flow_runs()
    broken["on"] = False
    resumed = retry_flow_run(run.id)
    assert resumed.is_completed() and resumed.result() == "total=6"
    again = nbflow.runs.get_run(run.id)
    assert again.state == "Completed" and again.attempts == 2
    assert [(t.task_name, t.state) for t in again.task_runs] == [
        ("extract", "Completed"), ("load", "Failed"),
        ("extract", "Cached"), ("load", "Completed"), ("report", "Completed"),
    ]
    assert executions == {"extract": 1, "load": 2, "report": 1}
    with pytest.raises(NotRetryable):
        retry_flow_run(run.id)


def test_a_retried_task_counts_for_a_later_flow_retry(executions) -> None:
    broken = {"load": True, "report": True}

    @nbflow.task(cache_policy=NONE)
    def load() -> int:
        if broken["load"]:
            raise ConnectionError("down")
        return 5

    @nbflow.task(cache_policy=NONE)
    def report(total: int) -> str:
        if broken["report"]:
            raise RuntimeError("printer on fire")
        return str(total)

    @nbflow.flow
    def pipeline() -> str:
        return report(load())

    pipeline(return_state=True)
    run = list_runs(limit=1)[0]
    broken["load"] = False
    retry_task_run(run.task_runs[0].id)  # load, retried alone
    retry_flow_run(run.id)  # report still fails; load is reused
    assert executions["load"] == 2
    broken["report"] = False
    assert retry_flow_run(run.id).result() == "5"
    assert executions["load"] == 2


def test_key_parts_explain_what_changed() -> None:
    @nbflow.task
    def f(a: int, b: str = "x") -> str:
        return b * a

    f(1)
    f(2)
    first, second = next(run for run in list_runs() if run.kind == "session").task_runs
    assert set(first.key_parts) == {"code", "input:a", "input:b"}
    changed = {name for name in first.key_parts if first.key_parts[name] != second.key_parts[name]}
    assert changed == {"input:a"}


def test_a_loop_of_failed_calls_keeps_only_the_latest_inputs_alive() -> None:
    import gc
    import weakref

    import numpy as np

    broken = {"on": True}

    @nbflow.task(cache_policy=NONE)
    def store_chunk(chunk: np.ndarray, label: str) -> float:
        if broken["on"]:
            raise ConnectionError("database down")
        return float(chunk.sum())

    probes = []
    for i in range(5):
        chunk = np.full(1000, float(i))
        probes.append(weakref.ref(chunk))
        assert store_chunk(chunk, f"part {i}", return_state=True).is_failed()
    kept = np.full(1000, 9.0)  # an older failure whose input the caller still holds
    assert store_chunk(kept, "kept", return_state=True).is_failed()
    last = np.full(1000, 7.0)
    assert store_chunk(last, "last", return_state=True).is_failed()
    del chunk, last
    gc.collect()
    # A database outage in a loop must not keep every chunk: only the latest failure's inputs are held.
    assert all(probe() is None for probe in probes)
    failed = [t for t in next(run for run in list_runs() if run.kind == "session").task_runs if t.state == "Failed"]
    first, held_by_caller, latest = failed[0].id, failed[5].id, failed[6].id
    mine = {t.id for t in failed}  # (the registry is the process's: earlier tests' failures are in it too)
    assert [i for i in failed_task_runs() if i in mine] == [held_by_caller, latest]  # inputs still in memory
    with pytest.raises(NotRetryable, match="inputs are no longer in memory"):
        retry_task_run(first)
    broken["on"] = False
    assert retry_task_run(latest).result() == 7000.0
    assert retry_task_run(held_by_caller).result() == 9000.0


def test_a_loop_of_failed_flow_runs_keeps_only_the_latest_parameters_alive() -> None:
    import gc
    import weakref

    import numpy as np

    broken = {"on": True}

    @nbflow.task(cache_policy=NONE)
    def store_chunk(chunk: np.ndarray) -> float:
        if broken["on"]:
            raise ConnectionError("database down")
        return float(chunk.sum())

    @nbflow.flow(validate_parameters=False)
    def load(chunk: np.ndarray) -> float:
        return store_chunk(chunk)

    probes = []
    for i in range(4):
        chunk = np.full(1000, float(i))
        probes.append(weakref.ref(chunk))
        assert load(chunk, return_state=True).is_failed()
    last = np.full(1000, 7.0)
    assert load(last, return_state=True).is_failed()
    del chunk, last
    gc.collect()
    assert all(probe() is None for probe in probes)  # the earlier failed runs hold no chunk
    runs = [run for run in list_runs() if run.flow_name == "load"]  # newest first
    latest, first = runs[0].id, runs[-1].id
    assert latest in failed_flow_runs() and first not in failed_flow_runs()
    with pytest.raises(NotRetryable, match="parameter 'chunk' is no longer in memory"):
        retry_flow_run(first)
    broken["on"] = False
    assert retry_flow_run(latest).result() == 7000.0
