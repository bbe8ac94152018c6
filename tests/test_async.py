"""``async def`` tasks and flows: awaited, gathered concurrently, cached, retried, timed out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import nbflow
from nbflow.cache_policies import NONE
from nbflow.runs import list_runs


class Peak:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0


def test_an_async_task_is_awaited_and_cached(executions) -> None:
    @nbflow.task
    async def fetch(url: str) -> str:
        await asyncio.sleep(0.01)
        return url.upper()

    call = fetch("a")
    assert asyncio.iscoroutine(call)
    assert asyncio.run(call) == "A"
    state = asyncio.run(fetch("a", return_state=True))
    assert state.name == "Cached" and state.result() == "A"
    assert executions["fetch"] == 1


def test_gathered_async_tasks_run_concurrently() -> None:
    peak = Peak()

    @nbflow.task(cache_policy=NONE)
    async def io(i: int) -> int:
        peak.now += 1
        peak.peak = max(peak.peak, peak.now)
        await asyncio.sleep(0.05)
        peak.now -= 1
        return i

    async def main() -> list[int]:
        return await asyncio.gather(*(io(i) for i in range(5)))

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert peak.peak == 5


def test_async_retries_are_the_engines() -> None:
    calls: list[int] = []

    @nbflow.task(retries=3, retry_delay_seconds=0.01, cache_policy=NONE)
    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("flaky")
        return "ok"

    state = asyncio.run(flaky(return_state=True))
    assert state.result() == "ok"
    (task_run,) = [t for run in list_runs() for t in run.task_runs if t.task_name == "flaky"]
    assert task_run.attempts == 3
    assert [entry.name for entry in task_run.history].count("AwaitingRetry") == 2


def test_a_timeout_cancels_the_coroutine() -> None:
    seen: dict[str, Any] = {}

    @nbflow.task(timeout_seconds=0.1, cache_policy=NONE)
    async def hangs() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen["cancelled"] = True
            raise

    state = asyncio.run(hangs(return_state=True))
    assert state.name == "TimedOut"
    assert seen == {"cancelled": True}
    with pytest.raises(TimeoutError, match=r"timed out after 0\.1 s"):
        state.result()


def test_a_timeout_error_raised_by_the_task_itself_is_a_plain_failure() -> None:
    @nbflow.task(timeout_seconds=5, cache_policy=NONE)
    async def raises_timeout() -> None:
        raise TimeoutError("the server said so")

    state = asyncio.run(raises_timeout(return_state=True))
    assert state.name == "Failed"


def test_an_async_flow_records_its_tasks_and_retries() -> None:
    attempts = {"n": 0}

    @nbflow.task
    async def double(x: int) -> int:
        return 2 * x

    @nbflow.flow(retries=1)
    async def pipeline(n: int) -> list[int]:
        attempts["n"] += 1
        values = await asyncio.gather(*(double(i) for i in range(n)))
        if attempts["n"] == 1:
            raise RuntimeError("first attempt fails")
        return list(values)

    assert asyncio.run(pipeline(3)) == [0, 2, 4]
    (run,) = [run for run in list_runs() if run.flow_name == "pipeline"]
    assert run.state == "Completed" and run.attempts == 2
    assert sorted(t.task_name for t in run.task_runs if t.state in ("Completed", "Cached")) == ["double"] * 6


def test_an_async_task_can_be_submitted_from_sync_code() -> None:
    @nbflow.task
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    futures = add.map([1, 2, 3], nbflow.unmapped(10))
    assert futures.result() == [11, 12, 13]


def test_failed_async_tasks_and_flows_can_be_retried_by_hand_even_inside_a_running_loop() -> None:
    from nbflow.engine.manual_retry import retry_flow_run, retry_task_run

    outcomes = {"fail": True}

    @nbflow.task(cache_policy=NONE)
    async def fragile() -> str:
        if outcomes["fail"]:
            raise ConnectionError("down")
        return "up"

    @nbflow.flow
    async def uses_fragile() -> str:
        return await fragile()

    async def main() -> tuple[str, str, str]:
        failed_task = await fragile(return_state=True)
        failed_flow = await uses_fragile(return_state=True)
        assert failed_task.is_failed() and failed_flow.is_failed()
        task_run_id = next(t.id for run in list_runs() for t in run.task_runs if t.state == "Failed")
        flow_run_id = next(run.id for run in list_runs() if run.flow_name == "uses_fragile")
        outcomes["fail"] = False
        # A widget's Retry arrives while the kernel's loop runs: the retries must not need their own.
        again_task = retry_task_run(task_run_id)
        again_flow = retry_flow_run(flow_run_id)
        return again_task.result(), again_flow.result(), again_flow.name

    assert asyncio.run(main()) == ("up", "up", "Completed")


def test_async_tasks_keep_their_prints_and_logs() -> None:
    @nbflow.task(log_prints=True, cache_policy=NONE)
    async def chatty() -> int:
        print("fetching page 1")
        nbflow.get_run_logger().info("parsed %d rows", 3)
        await asyncio.sleep(0)
        return 3

    assert asyncio.run(chatty()) == 3
    (task_run,) = [t for run in list_runs() for t in run.task_runs if t.task_name == "chatty"]
    assert any("fetching page 1" in line for line in task_run.logs)
    assert any("parsed 3 rows" in line for line in task_run.logs)
