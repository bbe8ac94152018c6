"""Transactions: staged results, commit and rollback, hooks, nesting, commit modes, serializable keys."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nbflow
from nbflow.engine.runtime import get_store
from nbflow.exceptions import ConfigurationError
from nbflow.runs import list_runs


def stored(*, key: str | None) -> bool:
    """Whether the store holds an entry for ``key`` (a task run's cache key)."""
    assert key is not None
    return get_store().probe(key) is not None


def task_runs(name: str) -> list:
    return [t for run in list_runs() for t in run.task_runs if t.task_name == name]


def test_rollback_runs_hooks_newest_first_ends_runs_rolled_back_and_reraises() -> None:
    undone: list[tuple[str, str]] = []

    @nbflow.task
    def write_table(name: str) -> str:
        return f"table {name}"

    @write_table.on_rollback
    def drop_table(txn: nbflow.Transaction) -> None:
        undone.append(("drop", txn.get("owner")))

    @nbflow.task
    def publish(name: str) -> str:
        raise PermissionError(f"cannot publish {name}")

    with pytest.raises(PermissionError, match="cannot publish"), nbflow.transaction() as txn:
        txn.set("owner", "ana")
        write_table("a")
        write_table("b")
        publish("a")

    assert undone == [("drop", "ana"), ("drop", "ana")]
    runs = task_runs("write_table")
    assert [t.state for t in runs] == ["RolledBack", "RolledBack"]
    assert all(t.persisted is False for t in runs)
    assert not any(stored(key=t.cache_key) for t in runs)
    assert txn.state.value == "rolled_back"


def test_hook_order_is_reverse_completion_order_across_tasks() -> None:
    order: list[str] = []

    @nbflow.task
    def first() -> int:
        return 1

    @nbflow.task
    def second() -> int:
        return 2

    first.on_rollback(lambda txn: order.append("undo first"))
    second.on_rollback(lambda txn: order.append("undo second"))

    with pytest.raises(RuntimeError), nbflow.transaction():
        first()
        second()
        raise RuntimeError("abort")
    assert order == ["undo second", "undo first"]


def test_staged_results_are_invisible_to_the_store_until_commit_but_visible_inside(executions) -> None:
    committed: list[str] = []

    @nbflow.task(on_commit=[lambda txn: committed.append("saved")])
    def compute(x: int) -> int:
        return x * 10

    with nbflow.transaction() as txn:
        state = compute(4, return_state=True)
        key = task_runs("compute")[0].cache_key
        assert state.persisted is False and not stored(key=key)
        assert compute(4, return_state=True).name == "Cached"  # read your own writes
        assert committed == []
    assert stored(key=key) and state.persisted is True
    assert committed == ["saved"]
    assert txn.state.value == "committed"
    assert compute(4, return_state=True).name == "Cached"
    assert executions["compute"] == 1


def test_nested_transactions_commit_with_their_parent() -> None:
    undone: list[str] = []

    @nbflow.task(on_rollback=[lambda txn: undone.append("inner work")])
    def inner_work() -> str:
        return "inner"

    @nbflow.task
    def outer_work() -> str:
        return "outer"

    with pytest.raises(ValueError), nbflow.transaction():
        outer_work()
        with nbflow.transaction():
            inner_work()
        key = task_runs("inner_work")[0].cache_key
        assert not stored(key=key)  # committed into the parent, not the store
        raise ValueError("the parent fails after the child committed")
    assert undone == ["inner work"]
    assert not stored(key=key)

    with nbflow.transaction(), nbflow.transaction():
        inner_work()
    assert stored(key=task_runs("inner_work")[-1].cache_key)


def test_commit_modes_eager_and_off() -> None:
    @nbflow.task
    def eager_value() -> int:
        return 1

    @nbflow.task
    def discarded_value() -> int:
        return 2

    with nbflow.transaction(commit_mode="eager"):
        eager_value()
        assert stored(key=task_runs("eager_value")[0].cache_key)
    with nbflow.transaction(commit_mode="off"):
        discarded_value()
    assert not stored(key=task_runs("discarded_value")[0].cache_key)


def test_a_transaction_inside_a_flow_covers_submitted_tasks() -> None:
    undone: list[int] = []

    @nbflow.task(on_rollback=[lambda txn: undone.append(1)])
    def part(i: int) -> int:
        return i

    @nbflow.task
    def fail_after(values: list[int]) -> int:
        raise RuntimeError(f"failed after {len(values)} parts")

    @nbflow.flow
    def job() -> int:
        with nbflow.transaction():
            return fail_after.submit(part.map(range(3))).result()

    with pytest.raises(RuntimeError, match="failed after 3 parts"):
        job()
    assert undone == [1, 1, 1]
    assert [t.state for t in task_runs("part")] == ["RolledBack"] * 3


def test_keyed_transactions_stage_and_read_a_value() -> None:
    with nbflow.transaction(key="daily-report") as txn:
        assert not txn.is_committed()
        txn.stage({"rows": 3})
    with nbflow.transaction(key="daily-report") as again:
        assert again.is_committed() and again.read() == {"rows": 3}


def test_bad_transaction_options_are_clear_errors() -> None:
    with pytest.raises(ConfigurationError, match="commit_mode='sometimes' is not one of 'eager', 'lazy', 'off'"):
        nbflow.transaction(commit_mode="sometimes")
    with pytest.raises(ConfigurationError, match="needs a key"):
        nbflow.transaction(isolation_level="serializable")
    with pytest.raises(KeyError, match=r"set it with txn\.set"), nbflow.transaction() as txn:
        txn.get("missing")
    txn = nbflow.transaction()
    with txn:
        pass
    with pytest.raises(ConfigurationError, match="already used"), txn:
        pass


RACER = textwrap.dedent(
    """
    import sys, time
    import nbflow

    @nbflow.task
    def expensive(n: int, log: str) -> int:
        with open(log, "a") as handle:
            handle.write("computed\\n")
        time.sleep(1.0)
        return n * n

    with nbflow.transaction(key="nightly", isolation_level="serializable"):
        print(expensive(12, sys.argv[1]))
    """
)


def test_two_processes_racing_on_a_serializable_key_compute_once(tmp_path: Path, subprocess_env) -> None:
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    log = tmp_path / "computed.log"
    racers = [
        subprocess.Popen([sys.executable, str(script), str(log)], env=subprocess_env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [racer.communicate(timeout=60) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == ["144", "144"]
    assert log.read_text() == "computed\n"


def test_a_transaction_ends_after_the_calls_submitted_inside_it() -> None:
    import time

    undone: list[int] = []

    @nbflow.task(on_rollback=[lambda txn: undone.append(1)])
    def slow_part(i: int) -> int:
        time.sleep(0.2)
        return i

    with nbflow.transaction():
        futures = slow_part.map(range(3))  # not waited for inside the block
    assert all(future.done() for future in futures)
    assert all(stored(key=future.task_run.cache_key) for future in futures)

    with pytest.raises(RuntimeError), nbflow.transaction():
        slow_part.submit(10)
        raise RuntimeError("fails while the call still runs")
    assert undone == [1]
    assert task_runs("slow_part")[-1].state == "RolledBack"


def test_a_key_lock_interrupted_while_waiting_is_let_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while waiting for another process's lock: the key's lock is free again afterwards (else every
    later call of a SERIALIZABLE key would wait for ever)."""
    import fcntl

    from nbflow.transactions import lock_key, unlock_key

    real_flock = fcntl.flock
    interrupted = []

    def flock(fd: int, operation: int) -> None:
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt  # as SIGINT arrives in a blocking flock
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    with pytest.raises(KeyboardInterrupt):
        lock_key("report-2026", None, "test")
    unlock_key(lock_key("report-2026", 3, "test"))  # free again, at once
