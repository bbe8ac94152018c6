"""Concurrency and rate limits (``nbflow.concurrency``, ``nbflow.rate_limit``): counted across threads and
processes sharing one NBFLOW_HOME, and never able to hang a notebook."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

import nbflow
from nbflow.concurrency import get_limit, list_limits
from nbflow.exceptions import ConcurrencyTimeout, ConfigurationError, NbflowError


def test_a_limit_bounds_how_many_blocks_run_at_once() -> None:
    nbflow.set_concurrency_limit("db", 2)
    running = [0]
    peak = [0]
    lock = threading.Lock()

    def work() -> None:
        with nbflow.concurrency("db", occupy=1, timeout_seconds=30):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.1)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 2
    assert get_limit("db") == nbflow.concurrency.ConcurrencyLimit("db", 2) and list_limits()[0].name == "db"


def test_the_same_function_works_as_prefect_names_it() -> None:
    from nbflow.concurrency.sync import concurrency

    nbflow.set_concurrency_limit("gpu", 1)
    with concurrency(["gpu"], occupy=1):
        pass
    with nbflow.concurrency("gpu"):  # the module is callable
        pass


def test_a_slot_held_by_another_process_is_waited_for_and_a_timeout_says_so(subprocess_env) -> None:
    nbflow.set_concurrency_limit("shared", 1)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import nbflow, time, sys\n"
         "with nbflow.concurrency('shared'):\n    print('held', flush=True)\n    time.sleep(30)\n"],
        env=subprocess_env, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(ConcurrencyTimeout, match=r"within 0.3 s") as raised, nbflow.concurrency(
                "shared", timeout_seconds=0.3):
            pass
        assert isinstance(raised.value, TimeoutError) and time.monotonic() - started < 5
        holder.kill()  # never releases: a dead holder's slot is freed by the next process that looks
        holder.wait()
        with nbflow.concurrency("shared", timeout_seconds=5):
            pass
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.timeout(60)  # a regression would wait forever
def test_what_could_never_be_granted_fails_at_once() -> None:
    nbflow.set_concurrency_limit("small", 1)
    too_many = r"occupy=2 is more than the limit 'small' has \(1 slots\)"
    with pytest.raises(NbflowError, match=too_many), nbflow.concurrency("small", occupy=2):
        pass
    with nbflow.concurrency("small"):
        started = time.monotonic()
        with pytest.raises(NbflowError, match="would wait for itself"), nbflow.concurrency("small"):
            pass
        assert time.monotonic() - started < 2
    with nbflow.concurrency("small", timeout_seconds=1):  # released by the blocks above
        pass
    for bad in ({"occupy": 0}, {"timeout_seconds": -1}):
        with pytest.raises(ConfigurationError), nbflow.concurrency("small", **bad):
            pass
    with pytest.raises(ConfigurationError, match="limit=-1"):
        nbflow.set_concurrency_limit("small", -1)


def test_a_name_without_a_limit_does_not_limit_but_logs_or_is_an_error_when_strict(capsys) -> None:
    from nbflow.exceptions import ConcurrencySlotAcquisitionError

    @nbflow.task(cache_policy=nbflow.cache_policies.NONE)
    def limited() -> str:
        with nbflow.concurrency("unset", lease_duration=60, raise_on_lease_renewal_failure=False):
            return "ran"

    assert limited() == "ran"
    assert "| WARNING | Task run 'limited' - Concurrency limits ['unset'] do not exist - skipping acquisition." in (
        capsys.readouterr().err)
    assert nbflow.runs.list_runs(limit=1)[0].task_runs[-1].logs == [
        "WARNING: Concurrency limits ['unset'] do not exist - skipping acquisition."]
    with pytest.raises(ConcurrencySlotAcquisitionError, match=r"\['unset2'\] must be created"), nbflow.concurrency(
            "unset2", strict=True):
        pass


def test_rate_limit_spaces_calls_at_the_decay_rate() -> None:
    nbflow.set_concurrency_limit("api", 1, slot_decay_per_second=10)
    started = time.monotonic()
    for _ in range(4):
        nbflow.rate_limit("api")
    assert 0.25 <= time.monotonic() - started < 3  # the 2nd, 3rd and 4th wait ~0.1 s each
    nbflow.set_concurrency_limit("slow", 1, slot_decay_per_second=0.01)
    nbflow.rate_limit("slow")
    with pytest.raises(ConcurrencyTimeout):
        nbflow.rate_limit("slow", timeout_seconds=0.2)
    nbflow.set_concurrency_limit("plain", 3)
    with pytest.raises(NbflowError, match="no slot decay"):
        nbflow.rate_limit("plain")


def test_async_versions() -> None:
    import asyncio

    from nbflow.concurrency.asyncio import concurrency, rate_limit

    nbflow.set_concurrency_limit("aio", 1, slot_decay_per_second=50)

    async def main() -> str:
        async with concurrency("aio"):
            pass
        await rate_limit("aio")
        return "done"

    assert asyncio.run(main()) == "done"
