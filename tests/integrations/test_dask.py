"""DaskTaskRunner on a real distributed.LocalCluster with two worker processes.

One cluster serves the module (tests connect with ``address=``); the scheduler runs in this process,
so a scheduler plugin counts every attempt the cluster received. Tasks are defined inside the tests:
cloudpickle ships them by value, as it does for functions defined in a notebook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed
import distributed.diagnostics.plugin
import nbformat
import pytest

import nbflow
from nbflow.cache_policies import NONE
from nbflow.exceptions import ConfigurationError, NbflowError, UpstreamTaskError
from nbflow.integrations.dask import DaskTaskRunner
from nbflow.runs import list_runs

ROOT = Path(__file__).resolve().parents[2]


class Received(distributed.diagnostics.plugin.SchedulerPlugin):
    """Counts the keys the scheduler sent to a worker (each shipped attempt is one key)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: list[str] = []

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "processing":
            with self.lock:
                self.keys.append(str(key))

    def count(self) -> int:
        with self.lock:
            return len(self.keys)


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.LocalCluster]:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=":0") as local:
        yield local


@pytest.fixture
def received(cluster: distributed.LocalCluster) -> Iterator[Received]:
    plugin = Received()
    cluster.scheduler.add_plugin(plugin, name="nbflow-test-received")
    yield plugin
    cluster.scheduler.remove_plugin(name="nbflow-test-received")


@pytest.fixture
def worker_pids(cluster: distributed.LocalCluster) -> set[int]:
    with distributed.Client(cluster, set_as_default=False) as client:
        return set(client.run(os.getpid).values())


def flow_run(name: str) -> Any:
    (run,) = [run for run in list_runs() if run.flow_name == name]
    return run


def test_tasks_run_in_the_workers_and_a_second_run_ships_nothing(
    cluster: distributed.LocalCluster, received: Received, worker_pids: set[int], executions: dict[str, int]
) -> None:
    @nbflow.task
    def count_primes(lo: int, hi: int) -> tuple[int, int]:
        import os

        count = sum(1 for n in range(max(lo, 2), hi) if all(n % d for d in range(2, int(n**0.5) + 1)))
        return count, os.getpid()

    @nbflow.flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
    def primes(chunks: int) -> list[tuple[int, int]]:
        return count_primes.map([i * 5000 for i in range(chunks)], [(i + 1) * 5000 for i in range(chunks)])

    first = primes(4)
    assert sum(count for count, _ in first) == 2262  # the primes below 20,000
    pids = {pid for _, pid in first}
    assert os.getpid() not in pids and pids <= worker_pids
    assert received.count() == 4 and all(key.startswith("nbflow-count_primes-") for key in received.keys)
    assert executions["count_primes"] == 4

    again = primes(4)
    assert again == first
    assert received.count() == 4  # nothing shipped: every call was a cache hit in the kernel
    assert executions["count_primes"] == 4
    runs = [run for run in list_runs() if run.flow_name == "primes"]
    states = sorted(tuple(sorted(tr.state for tr in run.task_runs)) for run in runs)
    assert states == [("Cached",) * 4, ("Completed",) * 4]
    computed = next(run for run in runs if run.task_runs[0].state == "Completed")
    assert all(tr.persisted for tr in computed.task_runs)  # written by the kernel when the results came back
    assert all("ran on Dask worker tcp://127.0.0.1:" in tr.history[-1].message for tr in computed.task_runs)


def test_a_raising_worker_is_retried_and_the_record_has_the_users_traceback(
    cluster: distributed.LocalCluster, received: Received, tmp_path: Path
) -> None:
    @nbflow.task(retries=2, retry_delay_seconds=0, cache_policy=NONE)
    def flaky(marker: str) -> int:
        import os

        attempts = len(os.listdir(marker))
        with open(os.path.join(marker, f"attempt-{attempts}-{os.getpid()}"), "w"):
            pass
        if attempts == 0:
            raise ConnectionError("the service hung up")
        return attempts

    @nbflow.task(cache_policy=NONE)
    def broken(x: int) -> int:
        raise ValueError(f"cannot use {x}")

    @nbflow.flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
    def both(marker: str) -> tuple[Any, Any]:
        return flaky.submit(marker), broken.submit(7)

    marker = tmp_path / "attempts"
    marker.mkdir()
    state = both(str(marker), return_state=True)
    assert state.name == "Failed" and isinstance(state.result(raise_on_failure=False), ValueError)
    runs = {tr.task_name: tr for tr in flow_run("both").task_runs}
    retried = runs["flaky"]
    assert retried.state == "Completed" and retried.attempts == 2
    assert [entry.name for entry in retried.history] == ["Pending", "Running", "AwaitingRetry", "Retrying",
                                                          "Completed"]
    assert "ConnectionError: the service hung up" in retried.history[2].message
    ran_in = {int(name.rsplit("-", 1)[1]) for name in os.listdir(marker)}
    assert len(os.listdir(marker)) == 2 and os.getpid() not in ran_in
    failed = runs["broken"]
    assert failed.state == "Failed" and failed.error == "ValueError: cannot use 7"
    # The traceback crossed from the worker with the user's frame in it, nbflow's wrapper frames cut.
    assert "in broken" in failed.traceback and 'raise ValueError(f"cannot use {x}")' in failed.traceback
    assert "integrations/dask.py" not in failed.traceback
    assert received.count() == 3


def test_states_upstream_edges_and_upstream_failures_as_with_threads(cluster: distributed.LocalCluster) -> None:
    @nbflow.task
    def load(n: int) -> list[int]:
        return list(range(n))

    @nbflow.task
    def total(values: list[int]) -> int:
        if not values:
            raise ValueError("nothing to add")
        return sum(values)

    @nbflow.task
    def report(value: int) -> str:
        return f"total={value}"

    @nbflow.flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
    def pipeline(n: int) -> Any:
        return report.submit(total.submit(load.submit(n)))

    assert pipeline(5) == "total=10"
    run = flow_run("pipeline")
    by_name = {tr.task_name: tr for tr in run.task_runs}
    assert by_name["total"].upstream == [by_name["load"].id]
    assert by_name["report"].upstream == [by_name["total"].id]
    assert run.state == "Completed" and {tr.state for tr in run.task_runs} == {"Completed"}
    from nbflow.ui.model import GraphModel

    graph = GraphModel()  # what the task-graph widget draws for this run
    graph.add_run(run)
    payload = graph.payload(1)
    assert sorted((node["label"], node["state"]) for node in payload["nodes"]) == [
        ("load", "completed"), ("report", "completed"), ("total", "completed")
    ]
    assert len(payload["edges"]) == 2

    with pytest.raises(UpstreamTaskError, match="upstream task 'total' ended Failed: ValueError: nothing to add"):
        pipeline(0)
    run = next(run for run in list_runs() if run.flow_name == "pipeline" and run.state != "Completed")
    states = {tr.task_name: tr.state for tr in run.task_runs}
    assert states == {"load": "Completed", "total": "Failed", "report": "UpstreamFailed"}


def test_results_computed_on_dask_inside_a_transaction_are_staged_in_the_kernel(
    cluster: distributed.LocalCluster, executions: dict[str, int]
) -> None:
    @nbflow.task
    def double(x: int) -> int:
        return 2 * x

    @nbflow.flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
    def staged(x: int, fail: bool) -> int:
        with nbflow.transaction():
            value = double.submit(x).result()
            if fail:
                raise RuntimeError("a later step failed")
        return value

    with pytest.raises(RuntimeError, match="a later step failed"):
        staged(21, True)
    (rolled_back,) = flow_run("staged").task_runs
    assert rolled_back.state == "RolledBack" and rolled_back.persisted is False
    assert staged(21, False) == 42
    assert executions["double"] == 2  # the rolled-back result never reached the store
    assert staged(21, False) == 42
    assert executions["double"] == 2  # the committed one did


def test_a_timeout_is_enforced_on_the_worker(cluster: distributed.LocalCluster) -> None:
    @nbflow.task(timeout_seconds=0.5, cache_policy=NONE)
    def spins(seconds: float) -> int:
        import time

        end, loops = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            loops += 1
        return loops

    @nbflow.flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
    def spinning() -> Any:
        return spins.submit(30)

    started = time.monotonic()
    state = spinning(return_state=True)
    assert time.monotonic() - started < 10
    (task_run,) = flow_run("spinning").task_runs
    assert task_run.state == "TimedOut" and task_run.error == "TaskTimeoutError: task 'spins' timed out after 0.5 s"
    assert state.name == "Failed"


def test_a_local_cluster_is_started_only_on_a_miss_and_closed_after_the_flow(
    monkeypatch: pytest.MonkeyPatch, worker_pids: set[int]
) -> None:
    started: list[distributed.LocalCluster] = []

    class Recorded(distributed.LocalCluster):  # the real cluster, remembered so the test can look at it
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(distributed, "LocalCluster", Recorded)

    @nbflow.task
    def where(x: int) -> tuple[int, int]:
        import os

        return x * x, os.getpid()

    @nbflow.flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1}))
    def squares(n: int) -> list[tuple[int, int]]:
        return [where.submit(i) for i in range(n)]

    first = squares(3)
    assert [value for value, _ in first] == [0, 1, 4]
    (cluster,) = started
    assert len(cluster.workers) == 0 and cluster.status.name == "closed"  # closed when the flow ended
    assert {pid for _, pid in first}.isdisjoint(worker_pids | {os.getpid()})
    assert squares(3) == first
    assert len(started) == 1  # the second run was all cache hits: no cluster was started for it


def test_an_interrupted_flow_cancels_its_attempts_on_the_cluster_instead_of_waiting(tmp_path: Path) -> None:
    import signal

    @nbflow.task(cache_policy=NONE)
    def long_sleep(marker: str) -> None:
        import pathlib
        import time

        pathlib.Path(marker).touch()
        time.sleep(60)

    @nbflow.flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1}))
    def sleepy(marker: str) -> Any:
        return long_sleep.submit(marker)

    marker = tmp_path / "started"

    def interrupt_once_running() -> None:  # what the kernel's interrupt button does: SIGINT
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_running, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        sleepy(str(marker))
    assert time.monotonic() - started < 30  # not the task's 60 s
    (task_run,) = flow_run("sleepy").task_runs
    assert task_run.state == "Cancelled" and flow_run("sleepy").state == "Cancelled"


def test_an_existing_client_is_used_and_left_open(cluster: distributed.LocalCluster, received: Received) -> None:
    @nbflow.task(cache_policy=NONE)
    def double(x: int) -> int:
        return 2 * x

    with distributed.Client(cluster, set_as_default=False) as client:
        @nbflow.flow(task_runner=DaskTaskRunner(client=client))
        def doubled(values: list[int]) -> list[int]:
            return double.map(values)

        assert doubled([1, 2, 3]) == [2, 4, 6]
        assert client.status == "running" and received.count() == 3
        assert client.submit(sum, [1, 2], pure=False).result() == 3


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ConfigurationError, match="address"):
        DaskTaskRunner(address=8786)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="cluster_kwargs"):
        DaskTaskRunner(address="tcp://127.0.0.1:8786", cluster_kwargs={"n_workers": 2})
    with pytest.raises(ConfigurationError, match="max_in_flight"):
        DaskTaskRunner(max_in_flight=0)
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 1}, client_kwargs={"timeout": "5s"}, max_in_flight=4)
    copy = runner.duplicate()
    assert (copy.cluster_kwargs, copy.client_kwargs, copy.max_in_flight) == ({"n_workers": 1}, {"timeout": "5s"}, 4)
    assert copy is not runner and copy.cluster is None

    @nbflow.flow(task_runner=DaskTaskRunner(address="tcp://127.0.0.1:1", client_kwargs={"timeout": "1s"}))
    def unreachable() -> None:
        return None

    with pytest.raises(NbflowError, match=r"cannot reach the Dask scheduler at 'tcp://127.0.0.1:1'"):
        unreachable()


def test_the_import_says_how_to_install_distributed_when_it_is_missing() -> None:
    code = (
        "import sys; sys.modules['distributed'] = None\n"
        "try:\n    import nbflow.integrations.dask\n"
        "except ImportError as error:\n    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert 'pip install "nbflow[dask]"' in done.stdout, done.stdout + done.stderr


def test_the_tutorial_notebook_runs_headless_with_a_local_cluster(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    output = tmp_path / "executed.ipynb"
    done = subprocess.run(
        [sys.executable, "-m", "nbflow.cli", "run", str(ROOT / "notebooks" / "parallel-and-transactions.ipynb"),
         "-o", str(output), "--json"],
        capture_output=True, text=True, cwd=tmp_path, env=subprocess_env, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    log = done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["counts"]["computed"] >= 10 and summary["status"] == "ok", log
    states = {(task["task"], task["state"]) for task in summary["tasks"]}
    assert ("write_table", "RolledBack") in states and ("write_table", "Completed") in states, log
    text = "\n".join(
        output.get("text", "") for cell in nbformat.read(str(output), as_version=4).cells
        for output in cell.get("outputs", []) if output.get("output_type") == "stream"
    )
    assert "9592 primes below 100,000" in text and "ran in the kernel's process: False" in text, text
    assert "rollback: removed" in text, text


def test_the_benchmark_runs_and_prints_its_tables() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_dask.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for line in ("sequential plain calls", "DaskTaskRunner, 2 worker processes", "speed-up on Dask with 2 workers",
                 "all cache hits", "Task.submit + wait (thread pool)", "submit overhead per task"):
        assert line in done.stdout, done.stdout


def test_a_timeout_stops_the_kernel_waiting_even_when_the_worker_cannot_interrupt_the_task(
    cluster: distributed.LocalCluster,
) -> None:
    # Last in the module: the sleeping attempt keeps one worker busy for a few seconds after it is cancelled.
    @nbflow.task(timeout_seconds=0.3, cache_policy=NONE)
    def blocked() -> None:
        import time

        time.sleep(4)  # a C call: the worker's asynchronous timeout only lands when it returns

    runner = DaskTaskRunner(address=cluster.scheduler_address)
    runner.timeout_grace_seconds = 0.3

    @nbflow.flow(task_runner=runner)
    def stuck() -> Any:
        return blocked.submit()

    started = time.monotonic()
    stuck(return_state=True)
    assert time.monotonic() - started < 3.5
    (task_run,) = flow_run("stuck").task_runs
    assert task_run.state == "TimedOut" and "the attempt was cancelled" in task_run.error


def test_files_read_on_a_worker_of_this_machine_count_for_the_entry(
    cluster: distributed.LocalCluster, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("first")

    @nbflow.task
    def read(path: str) -> str:
        with open(path) as handle:
            return handle.read()

    @nbflow.flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
    def on_dask(path: str) -> str:
        return read.submit(path).result()

    assert on_dask(str(notes)) == "first"
    assert read(str(notes), return_state=True).name == "Cached"  # the entry the worker's attempt stored
    notes.write_text("second")
    later = time.time_ns() + 5_000_000_000
    os.utime(notes, ns=(later, later))
    assert on_dask(str(notes)) == "second"
