"""Caching through the engine: policies, hits across calls and processes, expiry, refresh, fallbacks."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

import nbflow
from nbflow.cache_policies import DEFAULT, FLOW_PARAMETERS, INPUTS, NONE, RUN_ID, TASK_SOURCE, Inputs
from nbflow.exceptions import ConfigurationError, NbflowWarning
from nbflow.runs import list_runs


def counting_task(**options):
    calls: list = []

    @nbflow.task(**options)
    def work(x, verbose: bool = False):
        calls.append(x)
        return {"x": x, "n": len(calls)}

    return work, calls


def test_default_policy_is_inputs_plus_task_source() -> None:
    assert DEFAULT == INPUTS + TASK_SOURCE
    assert repr(DEFAULT) == "INPUTS + TASK_SOURCE"
    assert repr(INPUTS - "verbose" - "debug") == "INPUTS - 'debug' - 'verbose'"
    assert NONE + INPUTS == INPUTS
    assert repr((INPUTS - "v") + TASK_SOURCE + RUN_ID) == "INPUTS - 'v' + TASK_SOURCE + RUN_ID"
    assert (DEFAULT - "v").parts()[0] == Inputs(frozenset({"v"}))
    with pytest.raises(ConfigurationError):
        TASK_SOURCE - "x"


def test_second_call_is_served_from_the_store() -> None:
    work, calls = counting_task()
    assert work(1) == {"x": 1, "n": 1}
    state = work(1, return_state=True)
    assert state.name == "Cached" and state.type == nbflow.StateType.COMPLETED
    assert state.result() == {"x": 1, "n": 1}
    assert work(2)["n"] == 2
    assert calls == [1, 2]
    task_runs = next(run for run in list_runs() if run.kind == "session").task_runs
    assert [t.state for t in task_runs] == ["Completed", "Cached", "Completed"]
    assert task_runs[0].cache_key == task_runs[1].cache_key != task_runs[2].cache_key


def test_defaults_are_part_of_the_inputs() -> None:
    work, calls = counting_task()
    work(1)
    work(1, verbose=False)
    work(x=1)
    assert calls == [1]


def test_inputs_minus_an_argument() -> None:
    work, calls = counting_task(cache_policy=INPUTS - "verbose")
    work(1, verbose=False)
    work(1, verbose=True)
    assert calls == [1]
    work2, calls2 = counting_task(cache_policy=INPUTS)
    work2(1, verbose=False)
    work2(1, verbose=True)
    assert calls2 == [1, 1]


def test_two_tasks_with_equal_inputs_never_share_an_entry() -> None:
    @nbflow.task(cache_policy=INPUTS)
    def double(x: int) -> int:
        return 2 * x

    @nbflow.task(cache_policy=INPUTS)
    def triple(x: int) -> int:
        return 3 * x

    assert (double(5), triple(5)) == (10, 15)


def test_none_policy_and_persist_result_false_never_cache() -> None:
    for options in ({"cache_policy": NONE}, {"persist_result": False}):
        work, calls = counting_task(**options)
        work(1)
        state = work(1, return_state=True)
        assert state.name == "Completed" and state.persisted is False
        assert calls == [1, 1]


def test_refresh_cache_runs_and_overwrites() -> None:
    work, calls = counting_task()
    work(1)
    fresh = work.with_options(refresh_cache=True)
    assert fresh(1)["n"] == 2
    assert work(1)["n"] == 2  # the refreshed entry replaced the old one
    assert calls == [1, 1]


def test_cache_expiration() -> None:
    work, calls = counting_task(cache_expiration=dt.timedelta(seconds=0.3))
    work(1)
    work(1)
    assert calls == [1]
    time.sleep(0.4)
    work(1)
    assert calls == [1, 1]


def test_run_id_policy_is_per_run() -> None:
    calls = []

    @nbflow.task(cache_policy=INPUTS + RUN_ID)
    def f(x: int) -> int:
        calls.append(x)
        return x

    @nbflow.flow
    def pipeline() -> int:
        return f(1) + f(1)

    pipeline()
    pipeline()
    assert calls == [1, 1]  # one computation per run, a hit within the run


def test_flow_parameters_policy() -> None:
    calls = []

    @nbflow.task(cache_policy=FLOW_PARAMETERS + TASK_SOURCE)
    def f() -> int:
        calls.append(1)
        return len(calls)

    @nbflow.flow
    def pipeline(a: int) -> int:
        return f()

    pipeline(1)
    pipeline(1)
    pipeline(2)
    assert len(calls) == 2


def test_cache_key_fn_overrides_and_none_means_no_cache() -> None:
    calls = []

    def by_first_letter(context, parameters):
        name = parameters["name"]
        return None if name.startswith("_") else name[0]

    @nbflow.task(cache_key_fn=by_first_letter)
    def greet(name: str) -> str:
        calls.append(name)
        return f"hi {name}"

    assert greet("ann") == "hi ann"
    assert greet("alice") == "hi ann"  # same key: 'a'
    greet("_x")
    greet("_x")
    assert calls == ["ann", "_x", "_x"]


def test_unfingerprintable_argument_warns_and_runs_uncached() -> None:
    work, calls = counting_task()

    def gen():
        yield 1

    with pytest.warns(NbflowWarning, match=r"task 'work' runs uncached: argument 'x'.*INPUTS - 'x'"):
        state = work(gen(), return_state=True)
    assert state.is_completed() and state.persisted is False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NbflowWarning)
        work(gen())
    assert len(calls) == 2


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
    from pydantic import BaseModel

    class Point(BaseModel):
        x: int
        y: float

    calls = []

    @nbflow.task(result_serializer="json")
    def make(x: int) -> Point:
        calls.append(x)
        return Point(x=x, y=x / 2)

    assert make(3) == Point(x=3, y=1.5)
    cached = make(3, return_state=True)
    assert cached.name == "Cached" and cached.result() == Point(x=3, y=1.5)
    assert calls == [3]


def test_editing_code_invalidates_and_reverting_hits_again() -> None:
    namespace: dict = {"nbflow": nbflow, "calls": []}
    source_a = "@nbflow.task\ndef f(x):\n    calls.append('a')\n    return x + 1\n"
    source_a_comment = "@nbflow.task\ndef f(x):\n    # a comment does not count\n    calls.append('a')\n    return x + 1\n"
    source_b = "@nbflow.task\ndef f(x):\n    calls.append('b')\n    return x + 2\n"
    import linecache

    for index, source in enumerate([source_a, source_a_comment, source_b, source_a]):
        filename = f"<nbflow-test-cell-{index}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), namespace)
        namespace["f"](1)
    assert namespace["calls"] == ["a", "b"]


def test_corrupt_payload_is_a_clean_miss(nbflow_home: Path) -> None:
    work, calls = counting_task()
    work(7)
    from nbflow.engine.runtime import get_store

    store = get_store()
    (record,) = list(store.records())
    cache = store._cache  # the diskcache holding payload streams
    from nbflow.store import FORMAT_VERSION

    payload_key = f"p:{FORMAT_VERSION}:{record.key}"
    data = bytearray(cache[payload_key])
    data[len(data) // 2] ^= 0xFF
    cache[payload_key] = bytes(data)
    with pytest.warns(NbflowWarning, match="work"):
        state = work(7, return_state=True)
    assert state.name == "Completed"  # recomputed, not unpickled
    assert calls == [7, 7]
    assert work(7, return_state=True).name == "Cached"  # and stored again


CHILD = textwrap.dedent(
    """
    import json, sys, time
    import nbflow

    calls = []

    def helper(x):
        return x * 10

    @nbflow.task
    def slow(x):
        calls.append(x)
        time.sleep(0.2)
        return helper(x)

    @nbflow.flow
    def pipeline(n: int):
        return [slow(i) for i in range(n)]

    result = pipeline(3)
    run = nbflow.runs.list_runs(limit=1)[0]
    print(json.dumps({"result": result, "calls": calls, "states": [t.state for t in run.task_runs]}))
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
    assert first["calls"] == [0, 1, 2] and first["states"] == ["Completed"] * 3
    assert second["calls"] == [] and second["states"] == ["Cached"] * 3
