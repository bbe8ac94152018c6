"""KeyboardInterrupt at any point of a task run leaves the store consistent and the task Cancelled.

The interrupt is raised, in turn, at every line nbflow (and diskcache under it) executes during one
task call -- hashing the arguments, probing and loading, running the function, pickling and writing the
result -- the way a Ctrl-C lands between two lines. After each one: the interrupt reached the caller, the
task run ended Cancelled (or had already ended before the interrupt came), the store holds either no
entry or the complete one, with no stray file and exact size accounting, and the next call works.
"""

from __future__ import annotations

import json
import linecache
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nbflow
from nbflow.exceptions import NbflowWarning
from nbflow.store import CacheMiss, ResultStore
from tests.reliability.conftest import run_child

NBFLOW_DIR = os.path.dirname(os.path.abspath(nbflow.__file__))
DISKCACHE_DIR = os.sep + "diskcache" + os.sep


@nbflow.task
def build(table: dict[str, list[int]], scale: int) -> dict[str, Any]:
    total = sum(sum(column) for column in table.values())
    array = np.arange(20_000, dtype=np.int64) * scale  # 160 kB: written to a buffer file
    return {"total": total, "array": array, "names": sorted(table)}


@nbflow.task
def tally(table: dict[str, list[int]], scale: int) -> dict[str, Any]:
    """A small result of a quick call: its save is deferred (see ResultStore.save(defer=True))."""
    return {"total": sum(sum(column) for column in table.values()) * scale, "names": sorted(table)}


ARGS = ({"a": list(range(50)), "b": list(range(30)), "c": [7] * 20}, 3)


def check(value: Any) -> None:
    want = build.fn(*ARGS)
    assert value["total"] == want["total"] and value["names"] == want["names"]
    np.testing.assert_array_equal(value["array"], want["array"])


def check_tally(value: Any) -> None:
    assert value == tally.fn(*ARGS)


class Interrupter:
    """A trace function raising KeyboardInterrupt at the ``point``-th line event of nbflow's code.

    Lines of nbflow, of diskcache and of the task's own function count. One kind of event is skipped:
    the second event of a ``with`` line, which marks the block's exit just before ``__exit__`` is
    called. An exception there skips ``__exit__`` (a lock stays held), and CPython itself cannot
    guarantee that one a signal raises there is safe (bpo-29988), so no code can be tested against it.
    """

    def __init__(self, point: int) -> None:
        self.point = point
        self.count = 0
        self.fired = False
        self.seen: dict[Any, set[int]] = {}
        self.code = build.fn.__code__
        self.error: KeyboardInterrupt | None = None

    def local(self, frame: Any, event: str, arg: Any) -> Any:
        if event != "line" or self.fired:
            return self.local
        seen = self.seen.setdefault(frame, set())
        line = frame.f_lineno
        if line in seen and linecache.getline(frame.f_code.co_filename, line).lstrip().startswith(
            ("with ", "async with ")
        ):
            return self.local
        seen.add(line)
        self.count += 1
        if self.count == self.point:
            self.fired = True
            raise KeyboardInterrupt
        return self.local

    def scope(self, frame: Any, event: str, arg: Any) -> Any:
        if self.fired:
            return None
        filename = frame.f_code.co_filename
        if filename.startswith(NBFLOW_DIR) or DISKCACHE_DIR in filename or frame.f_code is self.code:
            return self.local
        return None

    def run(self, call: Callable[[], Any]) -> bool:
        """Run ``call`` under this tracer; return whether a KeyboardInterrupt came out of it."""
        sys.settrace(self.scope)
        try:
            call()
        except KeyboardInterrupt as error:
            self.error = error
            return True
        finally:
            sys.settrace(None)
            self.seen.clear()
        return False


def count_lines(call: Callable[[], Any]) -> int:
    counter = Interrupter(0)
    assert not counter.run(call)
    return counter.count


STEPS = {"begin", "reuse", "compute_key", "probe", "call", "persist"}


def after_the_steps(error: BaseException | None) -> bool:
    """Whether ``error`` was raised after the engine's steps, while or after the final state was recorded."""
    tb = error.__traceback__ if error is not None else None
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name in STEPS and code.co_filename.startswith(NBFLOW_DIR):
            return False
        tb = tb.tb_next
    return True


def stray_files(store: ResultStore) -> list[Path]:
    referenced = {
        Path(store._files.path(record.key, record.blob_id, index))
        for record in store.records()
        for index in range(len(record.buffers))
    }
    return [path for path in (store.directory / "blobs").rglob("*") if path.is_file() and path not in referenced]


def assert_consistent(store: ResultStore, key: str | None) -> bool:
    """The entry (if any) loads exactly, nothing else is left; returns whether there is an entry."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        present = False
        if key is not None:
            try:
                check(store.load(key))
                present = True
            except CacheMiss:
                assert store.probe(key) is None
        assert stray_files(store) == []
        assert store.volume() == sum(record.size for record in store.records())
    return present


# The sweeps run in a child process: an exception raised by a trace function inside an ``except`` block
# can leave CPython's "exception being handled" set for the rest of the process, which would show up
# as a spurious chained exception in later tests.


@pytest.mark.parametrize(("path", "kind"), [("miss", "buffers"), ("hit", "buffers"), ("miss", "small")])
def test_an_interrupt_at_any_line_cancels_the_task_and_keeps_the_store_consistent(
    path: str, kind: str, child_env: dict[str, str]
) -> None:
    """``small``: a quick call's small result, deferred and (batches of one here) committed in the call."""
    result = run_child(f"from tests.reliability.test_interrupts import sweep; print(sweep({path!r}, {kind!r}))",
                       child_env, timeout=280)
    outcomes = json.loads(result.stdout.splitlines()[-1])
    assert outcomes["Cancelled"] > outcomes["lines"] // 2, outcomes


def test_code_identity_still_follows_edits_after_interrupts(child_env: dict[str, str]) -> None:
    """An interrupt inside a code identity computation must not leave it serving stale identities."""
    result = run_child("from tests.reliability.test_interrupts import identity_sweep; identity_sweep(); print('ok')",
                       child_env)
    assert result.stdout.split()[-1:] == ["ok"]


def sweep(path: str, kind: str = "buffers") -> str:
    """Interrupt ``build`` (or ``tally``, for a small result) at every line, on a cache miss or a hit; check
    each outcome; count them."""
    from nbflow.engine.runtime import get_store, session_run

    global build, check
    if kind == "small":
        from nbflow.store import batches

        batches.DEFER_BATCH = 1  # every deferred save commits in the call, where the sweep reaches it
        build, check = tally, check_tally
    store = get_store()
    state = build(*ARGS, return_state=True)
    assert state.name == "Completed"
    key = session_run().task_runs[-1].cache_key
    assert key is not None
    if path == "miss":
        store.clear()
    total = count_lines(lambda: build(*ARGS))
    assert total > 100

    outcomes: dict[str, int] = {}
    for point in range(1, total + 1):
        if path == "miss":
            store.clear()
        numbered = session_run().task_run_count
        interrupter = Interrupter(point)
        raised = interrupter.run(lambda: build(*ARGS))
        if not interrupter.fired:
            # A call can take a few lines fewer than the one counted (e.g. no run history to flush).
            assert point > total * 0.95, f"line {point} of {total} was not reached"
            break
        assert raised, f"an interrupt at line {point} was swallowed"
        new_runs = [task_run for task_run in session_run().task_runs if task_run.seq >= numbered]
        if new_runs:
            (task_run,) = new_runs
            # Only an interrupt that comes once the final state is being recorded leaves it as is.
            finished_first = task_run.state in ("Completed", "Cached") and after_the_steps(interrupter.error)
            assert task_run.state == "Cancelled" or finished_first, (
                f"interrupt at line {point}: the task run ended {task_run.state!r}\n"
                + "".join(traceback.format_exception(interrupter.error))
            )
            outcomes[task_run.state] = outcomes.get(task_run.state, 0) + 1
        else:
            outcomes["not begun"] = outcomes.get("not begun", 0) + 1
        present = assert_consistent(store, key)
        if path == "hit":
            assert present, f"interrupt at line {point}: a committed entry was lost"
        # Usable at once: the same call now completes (or hits) normally.
        with warnings.catch_warnings():
            warnings.simplefilter("error", NbflowWarning)
            again = build(*ARGS, return_state=True)
        assert again.name == ("Cached" if present else "Completed"), (point, again.name)
        check(again.result())
        assert assert_consistent(store, key)
    return json.dumps({**outcomes, "lines": total})


SCALE = 2


def helper(x: int) -> int:
    return x * SCALE


def caller(x: int) -> int:
    return helper(x) + 1


def identity_sweep() -> None:
    """Interrupt code_identity(caller) at every line, then check it still follows edits."""
    global SCALE
    from nbflow.hashing import code_identity

    identities = {}
    for scale in (2, 3):
        SCALE = scale
        identities[scale] = code_identity(caller)
    assert identities[2] != identities[3]
    try:
        total = count_lines(lambda: code_identity(caller))
        for point in range(1, total + 1):
            SCALE = 2 + point % 2  # a changed global: every call recomputes
            Interrupter(point).run(lambda: code_identity(caller))
        for scale in (2, 3, 2):
            SCALE = scale
            assert code_identity(caller) == identities[scale]
        SCALE = 4
        assert code_identity(caller) not in identities.values()
    finally:
        SCALE = 2
