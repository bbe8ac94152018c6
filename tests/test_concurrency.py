"""Task.submit / Task.map on the thread pool: futures, ordering, bounded concurrency, upstream failures,
futures as arguments, caching exactly as for plain calls."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import nbflow
from nbflow.cache_policies import NONE
from nbflow.engine.runtime import get_store
from nbflow.exceptions import ConfigurationError, ParameterError, UpstreamTaskError
from nbflow.runs import list_runs


class Gauge:
    """How many calls run at once, at most (not fingerprinted: the tasks using it have NONE policies)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def flow_run(name: str) -> Any:
    (run,) = [run for run in list_runs() if run.flow_name == name]
    return run


def test_results_come_back_in_submission_order_whatever_finishes_first() -> None:
    @nbflow.task
    def slow_echo(x: int, delay: float) -> int:
        time.sleep(delay)
        return x

    futures = [slow_echo.submit(i, 0.05 * (5 - i)) for i in range(5)]
    assert [f.result() for f in futures] == [0, 1, 2, 3, 4]
    finished = [f.task_run.end_time for f in futures]
    assert finished == sorted(finished, reverse=True)  # the last submitted ended first
    assert all(f.done() and f.state.name == "Completed" for f in futures)


def test_a_flow_runner_bounds_concurrency_and_the_default_pool_is_bounded() -> None:
    gauge = Gauge()

    @nbflow.task(cache_policy=NONE)
    def busy(i: int) -> int:
        with gauge:
            time.sleep(0.05)
        return i

    @nbflow.flow(task_runner=nbflow.ThreadPoolTaskRunner(max_workers=2))
    def limited(n: int) -> list[int]:
        return busy.map(range(n))

    assert limited(6) == list(range(6))
    assert gauge.peak == 2

    from nbflow.engine.runners import default_runner

    assert 1 <= default_runner().max_workers <= 32
    gauge.peak = 0
    assert nbflow.wait([busy.submit(i) for i in range(8)]).not_done == set()
    assert 2 <= gauge.peak <= default_runner().max_workers


def test_a_failed_upstream_ends_its_downstream_upstream_failed_without_running_it(executions) -> None:
    @nbflow.task
    def load(x: int) -> int:
        raise ValueError(f"cannot load {x}")

    @nbflow.task
    def clean(x: int) -> int:
        return x + 1

    @nbflow.task
    def report(x: int) -> str:
        return f"{x}"

    @nbflow.flow
    def pipeline() -> str:
        return report.submit(clean.submit(load.submit(1))).result()

    state = pipeline(return_state=True)
    assert state.is_failed()
    with pytest.raises(UpstreamTaskError, match="upstream task 'clean' ended UpstreamFailed"):
        state.result()
    run = flow_run("pipeline")
    by_name = {t.task_name: t for t in run.task_runs}
    assert by_name["load"].state == "Failed"
    assert by_name["clean"].state == "UpstreamFailed"
    assert "upstream task 'load' ended Failed: ValueError: cannot load 1" in by_name["clean"].error
    assert by_name["report"].state == "UpstreamFailed"
    assert executions["clean"] == 0 and executions["report"] == 0  # never reached Running


def test_futures_as_arguments_resolve_inside_containers_and_draw_edges() -> None:
    @nbflow.task
    def square(x: int) -> int:
        return x * x

    @nbflow.task
    def total(values: list[int], extra: dict[str, int]) -> int:
        return sum(values) + sum(extra.values())

    parts = [square.submit(i) for i in range(4)]
    bonus = square.submit(10)
    result = total.submit(parts, {"bonus": bonus})
    assert result.result() == 0 + 1 + 4 + 9 + 100
    assert set(result.task_run.upstream) == {f.task_run_id for f in [*parts, bonus]}
    assert result.task_run.inputs["values"] == "list[4]"


def test_submit_and_plain_calls_share_cache_entries(executions) -> None:
    @nbflow.task
    def add(a: int, b: int) -> int:
        return a + b

    first = add.submit(2, 3)
    assert first.result() == 5 and first.state.name == "Completed"
    again = add.submit(2, 3)
    again.wait()
    assert again.state.name == "Cached"
    assert add(2, 3, return_state=True).name == "Cached"
    assert executions["add"] == 1
    assert get_store().probe(first.task_run.cache_key) is not None


def test_map_maps_iterables_passes_unmapped_whole_and_records_one_group() -> None:
    @nbflow.task
    def scale(x: int, factor: int, label: str) -> str:
        return f"{label}{x * factor}"

    futures = scale.map(range(3), factor=nbflow.unmapped(10), label="v")
    assert futures.result() == ["v0", "v10", "v20"]
    runs = [f.task_run for f in futures]
    assert len({run.map_id for run in runs}) == 1 and runs[0].map_id is not None
    assert [run.map_index for run in runs] == [0, 1, 2]
    assert {run.map_size for run in runs} == {3}

    with pytest.raises(ParameterError, match="differ in length"):
        scale.map([1, 2], [3, 4, 5], "x")
    with pytest.raises(ParameterError, match="at least one iterable"):
        scale.map(1, 2, "x")
    with pytest.raises(ParameterError, match="unexpected keyword"):
        scale.map([1], factor=2, label="a", colour="red")


def test_wait_and_as_completed() -> None:
    @nbflow.task(cache_policy=NONE)
    def nap(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    quick, slow = nap.submit(0.01), nap.submit(1.0)
    done, not_done = nbflow.wait([quick, slow], timeout=0.5)
    assert done == {quick} and not_done == {slow}
    assert [f.result() for f in nbflow.as_completed([slow, nap.submit(0.05)])] == [0.05, 1.0]
    with pytest.raises(TimeoutError, match="did not finish within"):
        nap.submit(0.5).result(timeout=0.01)
    with pytest.raises(TypeError, match="takes futures"):
        nbflow.wait([1, 2])


def test_retries_and_timeouts_apply_to_submitted_calls() -> None:
    attempts: list[int] = []

    @nbflow.task(retries=2, cache_policy=NONE)
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "ok"

    @nbflow.task(timeout_seconds=0.2, cache_policy=NONE)
    def stuck() -> None:
        for _ in range(200):  # Python code between sleeps, so the worker-thread timeout can land
            time.sleep(0.01)

    future = flaky.submit()
    assert future.result() == "ok" and future.task_run.attempts == 3
    timed = stuck.submit()
    timed.wait()
    assert timed.state.name == "TimedOut"
    with pytest.raises(TimeoutError, match=r"timed out after 0\.2 s"):
        timed.result()


def test_a_task_submitting_from_inside_a_worker_does_not_deadlock_a_full_pool() -> None:
    @nbflow.task
    def leaf(x: int) -> int:
        return x + 1

    @nbflow.task
    def branch(x: int) -> int:
        return sum(leaf.submit(x + i).result() for i in range(3))

    @nbflow.flow(task_runner=nbflow.ThreadPoolTaskRunner(max_workers=1))
    def tree() -> list[int]:
        return branch.map([0, 10])

    assert tree() == [6, 36]


def test_a_flow_waits_for_what_it_submitted_and_fails_on_a_failed_returned_future() -> None:
    @nbflow.task(cache_policy=NONE)
    def later(x: int) -> int:
        time.sleep(0.1)
        if x < 0:
            raise ValueError("negative")
        return x

    @nbflow.flow
    def fire_and_forget() -> str:
        later.submit(1)
        return "returned at once"

    assert fire_and_forget() == "returned at once"
    (task_run,) = flow_run("fire_and_forget").task_runs
    assert task_run.state == "Completed"  # final before the flow ended

    @nbflow.flow
    def sweep(values: list[int]) -> list[Any]:
        return [later.submit(v) for v in values]

    assert sweep([1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="negative"):
        sweep([3, -1])


def test_a_flow_retry_reuses_submitted_calls_that_completed(executions) -> None:
    failures = {"left": 1}

    @nbflow.task(cache_policy=NONE)
    def step(i: int) -> int:
        return i

    @nbflow.task(cache_policy=NONE)
    def fragile(values: list[int]) -> int:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("first attempt fails")
        return sum(values)

    @nbflow.flow(retries=1)
    def job() -> int:
        return fragile.submit(step.map(range(4))).result()

    assert job() == 6
    assert executions["step"] == 4  # the second attempt reused all four
    assert executions["fragile"] == 2


def test_threads_hammering_the_store_lose_nothing() -> None:
    @nbflow.task
    def blob(i: int) -> bytes:
        return bytes([i % 256]) * 1000

    futures = [blob.submit(i % 50) for i in range(300)]  # overlapping keys, 6 calls each
    assert [f.result() for f in futures] == [bytes([i % 50]) * 1000 for i in range(300)]
    assert all(f.state.is_completed() for f in futures)
    store = get_store()
    assert all(store.probe(f.task_run.cache_key) is not None for f in futures[:50])


def test_bad_runner_options_are_clear_errors() -> None:
    with pytest.raises(ConfigurationError, match="max_workers=0"):
        nbflow.ThreadPoolTaskRunner(max_workers=0)
    with pytest.raises(ConfigurationError, match="not a task runner"):
        nbflow.flow(task_runner="threads")(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="missing a required argument"):

        @nbflow.task
        def needs(x: int) -> int:
            return x

        needs.submit()


def test_a_plain_call_given_futures_waits_for_them(executions) -> None:
    @nbflow.task
    def slow_value(x: int) -> int:
        time.sleep(0.05)
        return x

    @nbflow.task
    def add(a: int, b: int) -> int:
        return a + b

    @nbflow.task
    def fails() -> int:
        raise RuntimeError("no value")

    first = slow_value.submit(2)
    assert add(first, 3) == 5
    state = add(fails.submit(), 1, return_state=True)
    assert state.name == "UpstreamFailed"
    assert executions["add"] == 1
