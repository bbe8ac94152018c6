"""Deferred saves (``ResultStore.save(defer=True)``): committed in batches, read back at once by this process.

A second store on the same home stands for another process: it sees only what was committed.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nbflow.exceptions import NbflowWarning, PersistError
from nbflow.store import CacheMiss, ResultStore, batches, sql

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def other(store: ResultStore, secret_file: Path) -> Any:
    """Another store on the same home (as another process would open it)."""
    reader = ResultStore(store.home, size_limit=1 << 34, secret_file=secret_file)
    yield reader
    reader.close()


def committed(store: ResultStore) -> set[str]:
    """The keys whose entries are committed, read without flushing anything."""
    rows = store._cache._sql("SELECT key FROM Cache WHERE raw = 1").fetchall()
    return {key[len(store._kstart):-2] for (key,) in rows if key.endswith(":m")}


def test_a_deferred_save_is_read_back_at_once_and_committed_by_flush(store: ResultStore, other: ResultStore) -> None:
    record = store.save("k1", {"answer": 42}, task_name="t", defer=True)
    assert record.key == "k1" and record.mac
    assert committed(other) == set()  # not in the database yet: another process misses
    assert store.load("k1") == {"answer": 42}  # this process reads it back (which commits it first)
    assert other.load("k1") == {"answer": 42}
    store.save("k2", [1, 2], task_name="t", defer=True)
    store.flush()
    assert committed(other) == {"k1", "k2"}
    assert other.volume() == store.volume() == sum(r.size for r in store.records())


def test_a_full_batch_is_committed_by_the_save_that_fills_it(store: ResultStore, other: ResultStore) -> None:
    batch = batches.DEFER_BATCH
    for i in range(batch - 1):
        store.save(f"k{i}", i, task_name="t", defer=True)
    assert committed(other) == set()
    store.save(f"k{batch - 1}", batch - 1, task_name="t", defer=True)
    assert committed(other) == {f"k{i}" for i in range(batch)}
    assert [other.load(f"k{i}") for i in range(batch)] == list(range(batch))
    assert other.volume() == sum(r.size for r in other.records())


def test_the_idle_thread_commits_what_a_quiet_process_leaves(store: ResultStore, other: ResultStore) -> None:
    store.save("alone", "value", task_name="t", defer=True)
    deadline = time.monotonic() + 10
    while "alone" not in committed(other):
        assert time.monotonic() < deadline, "the deferred save was never committed"
        time.sleep(0.02)
    assert other.load("alone") == "value"
    # Forgotten here right after the commit (the idle thread does both; the test can look in between).
    while store._deferred:
        assert time.monotonic() < deadline, "the committed save is still held as deferred"
        time.sleep(0.02)


def test_large_and_buffered_results_are_never_deferred(store: ResultStore, other: ResultStore) -> None:
    store.save("array", np.arange(10_000), task_name="t", defer=True)  # buffers: written to files at once
    store.save("big", b"x" * (batches.DEFER_MAX_BYTES + 1), task_name="t", defer=True)
    assert committed(other) == {"array", "big"}
    np.testing.assert_array_equal(other.load("array"), np.arange(10_000))


def test_saves_of_one_key_land_in_order(store: ResultStore, other: ResultStore) -> None:
    store.save("k", "first", task_name="t", defer=True)
    store.save("k", "second", task_name="t", defer=True)  # replaces the one waiting
    assert len(store._deferred) == 1
    store.save("k", "third", task_name="t")  # at once: the deferred one must not land over it later
    store.flush()
    assert other.load("k") == "third" and store.load("k") == "third"
    store.save("k", "fourth", task_name="t", defer=True)
    assert store.delete("k") is True  # deletes the entry as this process sees it
    store.flush()
    with pytest.raises(CacheMiss):
        other.load("k")
    assert other.volume() == 0


def test_every_other_operation_sees_the_deferred_saves(store: ResultStore) -> None:
    store.save("a", 1, task_name="t", defer=True)
    assert [r.key for r in store.records()] == ["a"]
    store.save("b", 2, task_name="t", defer=True)
    assert store.probe("b") is not None
    store.save("c", 3, task_name="t", defer=True)
    assert store.volume() == sum(r.size for r in store.records())
    store.save("d", 4, task_name="t", defer=True)
    assert store.clear() == 4
    assert list(store.records()) == []


def test_a_replaced_entry_loses_its_buffer_files(store: ResultStore) -> None:
    store.save("k", np.arange(50_000), task_name="t")
    assert list((store.directory / "blobs").rglob("*.bin"))
    store.save("k", "small now", task_name="t", defer=True)
    store.flush()
    assert store.load("k") == "small now"
    assert not list((store.directory / "blobs").rglob("*.bin"))


def test_a_batch_that_cannot_be_written_is_reported_and_leaves_nothing(store: ResultStore, other: ResultStore,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    lost: list[tuple[str, str]] = []
    for key in ("a", "b"):
        store.save(key, key, task_name="writer", defer=True, on_lost=lambda reason, key=key: lost.append((key, reason)))

    def full(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sql, "commit_directly", full)
    with pytest.raises(PersistError, match=r"2 results of task\(s\) 'writer' not persisted: .*disk is full"):
        store.flush()
    monkeypatch.undo()
    assert [key for key, _ in lost] == ["a", "b"] and "disk is full" in lost[0][1]
    assert store._deferred == {}
    with pytest.raises(CacheMiss):
        store.load("a")
    assert other.volume() == 0
    # Room again: the next deferred saves are committed as usual.
    store.save("a", "a", task_name="writer", defer=True)
    store.flush()
    assert other.load("a") == "a"


def test_a_failure_in_the_idle_thread_warns(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sql, "commit_directly", full)
    lost: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.save("k", 1, task_name="quiet", defer=True, on_lost=lost.append)
        deadline = time.monotonic() + 10
        while not lost:
            assert time.monotonic() < deadline, "the idle thread never wrote the batch"
            time.sleep(0.02)
    messages = [str(w.message) for w in caught if issubclass(w.category, NbflowWarning)]
    assert len(messages) == 1 and "'quiet'" in messages[0] and "No space left" in messages[0], messages


def test_an_interrupted_batch_stays_deferred(store: ResultStore, other: ResultStore,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store.save("k", "v", task_name="t", defer=True)
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(sql, "commit_directly", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.flush()
    monkeypatch.undo()
    assert "k" in store._deferred and store._deferred_since is not None
    store.flush()
    assert other.load("k") == "v"


def _child(home: Path, secret: Path, end: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from nbflow.store import ResultStore
        store = ResultStore(Path({str(home)!r}), size_limit=1 << 34, secret_file=Path({str(secret)!r}))
        for i in range(3):
            store.save(f"k{{i}}", i, task_name="t", defer=True)
        {end}
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_a_process_commits_its_deferred_saves_at_exit(store: ResultStore, secret_file: Path) -> None:
    done = _child(store.home, secret_file, "sys.exit(0)")
    assert done.returncode == 0, done.stderr
    assert [store.load(f"k{i}") for i in range(3)] == [0, 1, 2]


def test_a_killed_process_loses_only_its_deferred_saves(store: ResultStore, secret_file: Path) -> None:
    store.save("before", "kept", task_name="t")
    done = _child(store.home, secret_file, "os.kill(os.getpid(), signal.SIGKILL)")
    assert done.returncode == -9
    assert committed(store) == {"before"}  # what was committed is there; the quick results are gone
    assert store.load("before") == "kept"
    assert store.volume() == sum(r.size for r in store.records())


def test_a_forked_child_leaves_the_parents_deferred_saves_alone(store: ResultStore, other: ResultStore) -> None:
    store.save("parent", "p", task_name="t", defer=True)
    pid = os.fork()
    if pid == 0:  # the child: exits without writing the parent's batch (os._exit skips atexit anyway)
        code = 0 if store._deferred == {} else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # Still the parent's to write (its idle writer may have done so meanwhile, on a slow machine).
    store.flush()
    assert other.load("parent") == "p"


def test_a_dropped_store_takes_its_idle_thread_along(tmp_path: Path, secret_file: Path) -> None:
    """A kernel that reconfigures its home opens a new store: the old one and its thread must not linger."""
    import gc
    import weakref

    dropped = ResultStore(tmp_path / "other-home", size_limit=1 << 34, secret_file=secret_file)
    dropped.save("k", 1, task_name="t", defer=True)
    thread = dropped._idle._thread
    assert thread is not None and thread.is_alive()
    dropped.close()  # commits the batch
    alive = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert alive() is None, "the idle thread keeps its store alive"
    thread.join(timeout=10)
    assert not thread.is_alive()
