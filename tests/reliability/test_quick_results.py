"""The results of quick calls are committed in batches; slower ones before the call returns.

A call that ran under 50 ms is saved deferred (see ``ResultStore.save(defer=True)``): this process hits
it at once, other processes once its batch is committed (within about 50 ms, when a flow ends, at exit).
A write that fails later still says so: one warning, and the calls' states say ``persisted=False``.
"""

from __future__ import annotations

import textwrap
import time
import warnings
from pathlib import Path

import nbflow
from nbflow.exceptions import NbflowWarning
from nbflow.store import ResultStore
from tests.reliability.conftest import run_child


@nbflow.task
def quick(x: int) -> int:
    return x * 2


@nbflow.task
def slow(x: int) -> int:
    time.sleep(0.08)
    return x * 3


@nbflow.flow
def several(n: int) -> list[int]:
    return [quick(i) for i in range(n)]


def committed_tasks(home: Path) -> list[str]:
    """Task names of the entries committed to ``home``'s store, as another process sees them."""
    from nbflow import settings

    reader = ResultStore(home, size_limit=1 << 34, secret_file=settings.get_settings().secret_file)
    try:
        rows = reader._cache._sql("SELECT value FROM Cache WHERE raw = 1 AND key LIKE '%:m'").fetchall()
        return sorted(reader._parse_record(value).task_name for (value,) in rows)
    finally:
        reader.close()


def test_a_quick_result_is_a_hit_at_once_and_committed_soon(nbflow_home: Path) -> None:
    assert quick(1) == 2
    assert quick(1, return_state=True).name == "Cached"  # read back in this process at once
    quick(2)
    deadline = time.monotonic() + 10
    while committed_tasks(nbflow_home).count("quick") < 2:  # the idle thread commits what is left
        assert time.monotonic() < deadline, "quick results were never committed"
        time.sleep(0.05)


def test_a_slow_result_is_committed_before_the_call_returns(nbflow_home: Path) -> None:
    state = slow(1, return_state=True)
    assert state.persisted is True
    assert committed_tasks(nbflow_home) == ["slow"]


def test_a_flow_commits_its_results_when_it_ends(nbflow_home: Path) -> None:
    assert several(5) == [0, 2, 4, 6, 8]
    assert committed_tasks(nbflow_home) == ["quick"] * 5


def test_a_batch_the_disk_refuses_warns_once_and_the_states_say_so(child_env: dict[str, str],
                                                                   nbflow_home: Path) -> None:
    """A real failure (RLIMIT_FSIZE: SQLite's log cannot grow) of the batch a flow commits as it ends."""
    code = textwrap.dedent(
        """
        import resource, signal, warnings
        import nbflow
        from nbflow.engine.runtime import get_store
        from nbflow.exceptions import NbflowWarning

        @nbflow.task
        def chunk(i: int) -> bytes:
            return bytes([i]) * 600_000  # under 1 MiB: deferred

        states = []

        @nbflow.flow
        def job() -> None:
            for i in range(3):
                states.append(chunk(i, return_state=True))
            assert all(state.persisted for state in states)  # accepted; the batch is written at the end

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        store = get_store()
        store.volume()
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            job()
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        messages = [str(w.message) for w in caught if issubclass(w.category, NbflowWarning)]
        assert len(messages) == 1 and "3 results of task(s) 'chunk' not persisted" in messages[0], messages
        assert [state.persisted for state in states] == [False] * 3
        assert all("not persisted" in state.message for state in states), [s.message for s in states]
        assert list(store.records()) == [] and store.volume() == 0
        # Room again: computed and stored, then hits.
        states.clear()
        job()
        assert [chunk(i, return_state=True).name for i in range(3)] == ["Cached"] * 3
        print(messages[0])
        """
    )
    result = run_child(code, child_env)
    assert str(nbflow_home / "store") in result.stdout, result.stdout


def test_history_records_a_lost_result_as_not_persisted(nbflow_home: Path) -> None:
    from nbflow.engine.runtime import flush_store, get_store
    from nbflow.store import sql

    get_store()
    real = sql.commit_directly

    def full(*args: object, **kwargs: object) -> object:
        import sqlite3

        raise sqlite3.OperationalError("database or disk is full")

    sql.commit_directly = full  # type: ignore[assignment]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state = quick(7, return_state=True)
            assert state.persisted is True  # accepted: its batch is written later
            flush_store()
    finally:
        sql.commit_directly = real
    assert [w for w in caught if issubclass(w.category, NbflowWarning)]
    assert state.persisted is False and "disk is full" in (state.message or "")
    nbflow.runs.history().flush()
    run = nbflow.runs.history().get_run(nbflow.runs.list_runs(1)[0].id)
    assert run is not None
    assert [t.persisted for t in run.task_runs if t.task_name == "quick"] == [False]
