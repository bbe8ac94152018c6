"""Caching through the engine: policies, hits across calls and processes, expiry, refresh, fallbacks."""

from __future__ import annotations

import dataclasses
import datetime as dt
import pickle
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import nbflow
from nbflow.cache_policies import DEFAULT, FLOW_PARAMETERS, INPUTS, NONE, RUN_ID, TASK_SOURCE, Inputs
from nbflow.exceptions import ConfigurationError, NbflowWarning
from nbflow.runs import list_runs


class Point(BaseModel):
    x: int
    y: float


def make_task(**options):
    """A task whose result carries a fresh token, so a recomputation is visible in its result."""

    @nbflow.task(**options)
    def work(x, verbose: bool = False):
        return {"x": x, "token": uuid.uuid4().hex}

    return work


def test_default_policy_is_inputs_plus_task_source() -> None:
    assert DEFAULT == INPUTS + TASK_SOURCE
    assert repr(DEFAULT) == "INPUTS + TASK_SOURCE"
    assert repr(INPUTS - "verbose" - "debug") == "INPUTS - 'debug' - 'verbose'"
    assert NONE + INPUTS == INPUTS
    assert repr((INPUTS - "v") + TASK_SOURCE + RUN_ID) == "INPUTS - 'v' + TASK_SOURCE + RUN_ID"
    assert (DEFAULT - "v").parts()[0] == Inputs(frozenset({"v"}))
    with pytest.raises(ConfigurationError):
        TASK_SOURCE - "x"


def test_policies_are_immutable_values() -> None:
    # What a policy passed around (a task's options, a pickled task on a worker) must stay.
    for policy in (DEFAULT, INPUTS - "v", NONE, RUN_ID + FLOW_PARAMETERS, TASK_SOURCE):
        copied = pickle.loads(pickle.dumps(policy))
        assert copied == policy and hash(copied) == hash(policy) and repr(copied) == repr(policy)
    assert INPUTS - "a" - "b" == INPUTS - "b" - "a"
    assert len({INPUTS - "a", INPUTS - "a", INPUTS}) == 2
    assert INPUTS != TASK_SOURCE and RUN_ID + INPUTS != INPUTS + RUN_ID  # the order of the parts counts
    with pytest.raises(dataclasses.FrozenInstanceError):
        INPUTS.exclude = frozenset({"x"})  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del (INPUTS + RUN_ID).policies  # type: ignore[attr-defined]


def test_second_call_is_served_from_the_store(executions) -> None:
    work = make_task()
    first = work(1)
    state = work(1, return_state=True)
    assert state.name == "Cached" and state.type == nbflow.StateType.COMPLETED
    assert state.result() == first
    assert work(2)["x"] == 2
    assert executions["work"] == 2
    task_runs = next(run for run in list_runs() if run.kind == "session").task_runs
    assert [t.state for t in task_runs] == ["Completed", "Cached", "Completed"]
    assert task_runs[0].cache_key == task_runs[1].cache_key != task_runs[2].cache_key


def test_defaults_are_part_of_the_inputs(executions) -> None:
    work = make_task()
    work(1)
    work(1, verbose=False)
    work(x=1)
    assert executions["work"] == 1


def test_inputs_minus_an_argument(executions) -> None:
    work = make_task(cache_policy=INPUTS - "verbose")
    work(1, verbose=False)
    work(1, verbose=True)
    assert executions["work"] == 1
    work2 = make_task(cache_policy=INPUTS, name="work2")
    work2(1, verbose=False)
    work2(1, verbose=True)
    assert executions["work2"] == 2


def test_two_tasks_with_equal_inputs_never_share_an_entry() -> None:
    @nbflow.task(cache_policy=INPUTS)
    def double(x: int) -> int:
        return 2 * x

    @nbflow.task(cache_policy=INPUTS)
    def triple(x: int) -> int:
        return 3 * x

    assert (double(5), triple(5)) == (10, 15)


def test_none_policy_and_persist_result_false_never_cache(executions) -> None:
    for name, options in (("a", {"cache_policy": NONE}), ("b", {"persist_result": False})):
        work = make_task(name=name, **options)
        work(1)
        state = work(1, return_state=True)
        assert state.name == "Completed" and state.persisted is False
        assert executions[name] == 2


def test_refresh_cache_runs_and_overwrites(executions) -> None:
    work = make_task()
    old = work(1)
    fresh = work.with_options(refresh_cache=True)
    new = fresh(1)
    assert new != old
    assert work(1) == new  # the refreshed entry replaced the old one
    assert executions["work"] == 2


def test_cache_expiration(executions) -> None:
    work = make_task(cache_expiration=dt.timedelta(seconds=0.3))
    work(1)
    work(1)
    assert executions["work"] == 1
    time.sleep(0.4)
    work(1)
    assert executions["work"] == 2


def test_run_id_policy_is_per_run(executions) -> None:
    @nbflow.task(cache_policy=INPUTS + RUN_ID)
    def f(x: int) -> int:
        return x

    @nbflow.flow
    def pipeline() -> int:
        return f(1) + f(1)

    pipeline()
    pipeline()
    assert executions["f"] == 2  # one computation per run, a hit within the run


def test_flow_parameters_policy(executions) -> None:
    @nbflow.task(cache_policy=FLOW_PARAMETERS + TASK_SOURCE)
    def f() -> int:
        return 1

    @nbflow.flow
    def pipeline(a: int) -> int:
        return f()

    pipeline(1)
    pipeline(1)
    pipeline(2)
    assert executions["f"] == 2


def test_cache_key_fn_overrides_and_none_means_no_cache(executions) -> None:
    def by_first_letter(context, parameters):
        name = parameters["name"]
        return None if name.startswith("_") else name[0]

    @nbflow.task(cache_key_fn=by_first_letter)
    def greet(name: str) -> str:
        return f"hi {name}"

    assert greet("ann") == "hi ann"
    assert greet("alice") == "hi ann"  # same key: 'a'
    greet("_x")
    greet("_x")
    assert executions["greet"] == 3


def test_unfingerprintable_argument_warns_and_runs_uncached(executions) -> None:
    work = make_task()

    def gen():
        yield 1

    with pytest.warns(NbflowWarning, match=r"task 'work' runs uncached: argument 'x'.*INPUTS - 'x'"):
        state = work(gen(), return_state=True)
    assert state.is_completed() and state.persisted is False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NbflowWarning)
        work(gen())
    assert executions["work"] == 2


def test_unserializable_result_is_returned_with_a_warning() -> None:
    @nbflow.task
    def make_lock(n: int):
        import threading

        return threading.Lock()

    with pytest.warns(NbflowWarning, match="not persisted"):
        state = make_lock(1, return_state=True)
    assert state.name == "Completed" and state.persisted is False
    assert state.result() is not None


def test_json_serializer_round_trips_pydantic_results() -> None:
    @nbflow.task(result_serializer="json")
    def make(x: int) -> Point:
        return Point(x=x, y=x / 2)

    assert make(3) == Point(x=3, y=1.5)
    cached = make(3, return_state=True)
    assert cached.name == "Cached" and cached.result() == Point(x=3, y=1.5)

    @nbflow.task(result_serializer="json")
    def untyped(x: int):
        return Point(x=x, y=0.0)

    untyped(1)
    assert untyped(1) == {"x": 1, "y": 0.0}  # without a return hint, JSON comes back as plain data


def test_editing_code_invalidates_and_reverting_hits_again() -> None:
    namespace: dict = {"nbflow": nbflow}
    helper_v1 = "def helper(x):\n    return x + 1\n"
    helper_v2 = "def helper(x):\n    return x + 2\n"
    task_src = "@nbflow.task\ndef f(x):\n    return helper(x)\n"
    task_commented = "@nbflow.task\ndef f(x):\n    # a comment does not count\n    return helper(x)  # nor this\n"
    task_edited = "@nbflow.task\ndef f(x):\n    return helper(x) * 1\n"
    import linecache

    states = []
    cells = [helper_v1 + task_src, task_commented, helper_v2, helper_v1, task_edited, task_src]
    for index, source in enumerate(cells):
        # As IPython does: each cell's source is registered in linecache under a cell file name.
        filename = f"<nbflow-test-cell-{index}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), namespace)
        states.append(namespace["f"](1, return_state=True).name)
    assert states == ["Completed", "Cached", "Completed", "Cached", "Completed", "Cached"]


def test_corrupt_payload_is_a_clean_miss(nbflow_home: Path, executions) -> None:
    work = make_task()
    work(7)
    from nbflow.engine.runtime import get_store

    store = get_store()
    (record,) = list(store.records())
    cache = store._cache  # the diskcache holding payload streams
    from nbflow.store import FORMAT_VERSION

    payload_key = f"{FORMAT_VERSION}:{record.key}:p"
    data = bytearray(cache[payload_key])
    data[len(data) // 2] ^= 0xFF
    cache[payload_key] = bytes(data)
    with pytest.warns(NbflowWarning, match="work"):
        state = work(7, return_state=True)
    assert state.name == "Completed"  # recomputed, not unpickled
    assert executions["work"] == 2
    assert work(7, return_state=True).name == "Cached"  # and stored again


CHILD = textwrap.dedent(
    """
    import json, sys, time
    import nbflow

    def helper(x):
        return x * 10

    @nbflow.task
    def slow(x):
        time.sleep(0.2)
        return helper(x)

    @nbflow.flow
    def pipeline(n: int):
        return [slow(i) for i in range(n)]

    result = pipeline(3)
    run = nbflow.runs.list_runs(limit=1)[0]
    print(json.dumps({"result": result, "states": [t.state for t in run.task_runs]}))
    """
)


def test_a_new_process_hits_the_entries_of_an_earlier_one(tmp_path: Path) -> None:
    import json
    import os

    script = tmp_path / "pipeline.py"
    script.write_text(CHILD)
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                              timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        outputs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, second = outputs
    assert first["result"] == second["result"] == [0, 10, 20]
    assert first["states"] == ["Completed"] * 3
    assert second["states"] == ["Cached"] * 3


@pytest.mark.parametrize("policy", [DEFAULT, INPUTS - "verbose" + TASK_SOURCE], ids=repr)
def test_the_default_policy_key_is_the_one_its_parts_compute(policy) -> None:  # type: ignore[no-untyped-def]
    # The engine computes INPUTS (- names) + TASK_SOURCE directly on every call; the key and its recorded
    # parts must be exactly what the policy objects compute, so a user's policy built from them agrees.
    import xxhash

    from nbflow.cache_policies import KeyContext

    @nbflow.task(cache_policy=policy)
    def scale(x: int, factor: float = 2.0, verbose: bool = False) -> float:
        return x * factor

    scale(3, 1.5)
    task_run = next(run for run in list_runs() if run.kind == "session").task_runs[-1]
    context = KeyContext(task=scale, run_id="unused")
    expected = policy.compute_key(context, {"x": 3, "factor": 1.5, "verbose": False})
    assert task_run.cache_key == xxhash.xxh3_128_hexdigest(f"scale|{expected}".encode())
    assert task_run.key_parts == context.parts


@settings(max_examples=60, deadline=None)
@given(x=st.integers() | st.text(max_size=20) | st.lists(st.integers(), max_size=5),
       factor=st.floats(allow_nan=False) | st.integers(), verbose=st.booleans())
def test_the_engines_inline_default_key_agrees_with_the_policy_on_random_arguments(
    x: Any, factor: Any, verbose: bool
) -> None:
    import xxhash

    from nbflow.cache_policies import KeyContext

    @nbflow.task
    def scale(x: Any, factor: Any = 2.0, verbose: bool = False) -> Any:
        return None

    state = scale(x, factor, verbose=verbose, return_state=True)
    task_run = next(run for run in list_runs() if run.kind == "session").task_runs[-1]
    context = KeyContext(task=scale, run_id="unused")
    expected = DEFAULT.compute_key(context, {"x": x, "factor": factor, "verbose": verbose})
    assert task_run.cache_key == xxhash.xxh3_128_hexdigest(f"scale|{expected}".encode()), state
    assert task_run.key_parts == context.parts


def test_a_store_that_fails_to_read_makes_a_miss_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from nbflow.engine.runtime import get_store

    @nbflow.task
    def double(x: int) -> int:
        return 2 * x

    store = get_store()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error (a test's)")

    monkeypatch.setattr(store, "load", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        states = [double(x, return_state=True) for x in (1, 2, 1)]
    assert [state.result() for state in states] == [2, 4, 2]
    assert [state.name for state in states] == ["Completed"] * 3
    messages = [str(w.message) for w in caught if issubclass(w.category, NbflowWarning)]
    assert len(messages) == 1 and "disk I/O error (a test's)" in messages[0], messages
