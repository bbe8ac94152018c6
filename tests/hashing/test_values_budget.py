"""Bounded fingerprints: object graphs walked once per object, a budget per value, matplotlib refused at once.

Before this, an object graph was walked as the tree it unfolds into: a matplotlib ``Axes`` (~170 objects,
reached along millions of paths through shared transforms) took 176 s and 3.2 GB. The tests count the work
(objects walked through ``__reduce_ex__``, handler calls) and abort far beyond what the walk needs, so that a
regression fails in a second instead of running for minutes.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import nbflow
from nbflow.exceptions import NbflowWarning, UnfingerprintableError
from nbflow.hashing import Fingerprinter, _encoder, _objects, fingerprint, register, unregister
from nbflow.hashing import values as values_mod


class TooMuchWork(BaseException):
    """Raised by the counters below past their limit: a BaseException, so no handler turns it into a value
    that cannot be fingerprinted (or a task that runs uncached) and hides the regression."""


def _counting(real: Callable[..., Any], calls: list[int], limit: int) -> Callable[..., Any]:
    def counted(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] > limit:
            raise TooMuchWork(f"more than {limit} calls of {real.__name__}")
        return real(*args)

    return counted


@pytest.fixture
def reduce_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many objects were walked through ``__reduce_ex__``; past 20,000 the test aborts."""
    calls = [0]
    monkeypatch.setattr(_objects, "_reduce", _counting(_objects._reduce, calls, 20_000))
    return calls


def _count_handler(monkeypatch: pytest.MonkeyPatch, t: type, limit: int) -> list[int]:
    """How many times values of type ``t`` were entered (through the handler table the walk reads)."""
    calls = [0]
    monkeypatch.setitem(values_mod._HANDLERS, t, _counting(values_mod._HANDLERS[t], calls, limit))
    return calls


def _dag(levels: int, make: Callable[[Any, Any], Any], leaf: Any) -> Any:
    """Each level holds the previous one twice: 2**levels paths to the leaf, levels + 1 objects."""
    node = leaf
    for _ in range(levels):
        node = make(node, node)
    return node


# -- matplotlib ---------------------------------------------------------------------------------------------


@pytest.fixture
def figure() -> Iterator[Any]:
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure  # no pyplot: no backend, no global figure registry

    fig = Figure()
    ax = fig.subplots()
    ax.plot([1, 2, 3])
    ax.set_title("t")
    yield fig


def test_figures_axes_and_artists_are_refused_at_once(figure: Any, reduce_calls: list[int]) -> None:
    ax = figure.axes[0]
    for value, name in [(figure, "Figure"), (ax, "Axes"), (ax.lines[0], "Line2D"), (ax.title, "Text")]:
        with pytest.raises(UnfingerprintableError) as info:
            fingerprint(value)
        message = str(info.value)
        assert f"value of type {name!r} at value: matplotlib figures, axes and other artists" in message
    with pytest.raises(UnfingerprintableError, match=r"'Axes' at value\['plot'\]\[1\]"):
        fingerprint({"plot": (1, ax)})
    assert reduce_calls[0] == 0  # refused by name: nothing of the figure was walked


def test_a_figure_walked_like_any_object_visits_each_object_once(
    figure: Any, reduce_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the refusal an Axes is walked through the pickle protocol, as any object would be. Its figure is a
    # graph of objects that share transforms: walked as a tree it was 28.8 million objects (176 s); walked once
    # per object (small ones once per occurrence) it is 500-1,300.
    from matplotlib.artist import Artist

    pending, artist_types = [Artist], set()
    while pending:
        cls = pending.pop()
        artist_types.add(cls)
        pending.extend(cls.__subclasses__())
    for cls in artist_types:
        monkeypatch.setitem(values_mod._HANDLERS, cls, values_mod._h_object)
    fingerprint(figure.axes[0])
    assert 0 < reduce_calls[0] < 2_000


# -- graphs of shared objects -------------------------------------------------------------------------------


def test_a_dag_of_lists_is_walked_in_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    lists = _count_handler(monkeypatch, list, 10_000)
    value = _dag(30, lambda a, b: [a, b], ["leaf"])
    digest = fingerprint(value)
    at_30, lists[0] = lists[0], 0
    assert at_30 < 300  # 2**31 - 1 lists along all paths
    fingerprint(_dag(60, lambda a, b: [a, b], ["leaf"]))
    assert lists[0] <= at_30 + 2 * 30  # 30 more levels: two visits each (the level, the reference to it)
    assert fingerprint(_dag(30, lambda a, b: [a, b], ["leaf"])) == digest  # built again, apart
    assert fingerprint(_dag(30, lambda a, b: [a, b], ["other"])) != digest
    assert Fingerprinter().update(value).hexdigest() == digest


def test_a_dag_of_dicts_is_walked_in_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    dicts = _count_handler(monkeypatch, dict, 10_000)
    value = _dag(30, lambda a, b: {"left": a, "right": b}, {"k": 1})
    digest = fingerprint(value)
    assert dicts[0] < 300
    assert fingerprint(_dag(30, lambda a, b: {"left": a, "right": b}, {"k": 1})) == digest
    assert fingerprint(_dag(30, lambda a, b: {"left": a, "right": b}, {"k": 2})) != digest


def test_a_dag_of_objects_is_walked_in_linear_work(reduce_calls: list[int]) -> None:
    def make(a: Any, b: Any) -> Any:
        return types.SimpleNamespace(a=a, b=b)

    digest = fingerprint(_dag(30, make, 1))
    assert reduce_calls[0] < 300
    assert fingerprint(_dag(30, make, 1)) == digest
    assert fingerprint(_dag(30, make, 2)) != digest


def test_small_shared_objects_digest_like_copies_large_ones_are_referenced() -> None:
    small = [[1, 2], {"a": [3]}]
    assert fingerprint([small, small]) == fingerprint([small, [[1, 2], {"a": [3]}]])
    ns = types.SimpleNamespace(x=[1])
    assert fingerprint([ns, ns]) == fingerprint([ns, types.SimpleNamespace(x=[1])])
    flat = list(range(10_000))  # plain values only: written again costs its own size, never more
    assert fingerprint([flat, flat]) == fingerprint([flat, list(flat)])
    # Holding more than SHARED_INLINE containers, a shared object is written once and referenced: aliasing
    # shows then, and so the same sharing gives the same digest, another sharing another.
    def rows() -> list[list[int]]:
        return [[i] for i in range(values_mod.SHARED_INLINE + 1)]

    big, copy = rows(), rows()
    assert fingerprint([big, big]) == fingerprint([copy, copy])
    assert fingerprint([big, big]) != fingerprint([big, copy])
    assert fingerprint([rows()[:-1]] * 2) == fingerprint([rows()[:-1], rows()[:-1]])  # at the bound: in full


@pytest.mark.parametrize("k", range(2, 11))
def test_the_fast_path_agrees_with_the_full_encoder_around_the_sharing_bound(k: int) -> None:
    # fingerprint() encodes small values (containers of at most 32 items, 3 levels deep) without the encoder;
    # it must hand over whenever the encoder would write a back-reference: a container holding more than
    # SHARED_INLINE others, met again. Here the shared part holds k + k * k containers.
    inner = [[[i] for i in range(k)] for _ in range(k)]
    for value in ([inner, inner], {"a": inner, "b": inner}, {1: inner, 2: inner}, ([inner], inner)):
        assert Fingerprinter().update(value).hexdigest() == fingerprint(value)


def test_cycles_still_work_and_combine_with_shared_objects() -> None:
    def build(tail: int) -> Any:
        big = list(range(500))
        a: list[Any] = [big]
        a.append(a)
        d: dict[str, Any] = {"big": big, "a": a}
        d["self"] = d
        obj = types.SimpleNamespace(big=big, d=d)
        obj.me = obj
        return [a, d, obj, big, tail]

    assert fingerprint(build(1)) == fingerprint(build(1))
    assert fingerprint(build(1)) != fingerprint(build(2))
    x: list[Any] = []
    y: list[Any] = [x]
    x.append(y)
    assert fingerprint(x) == fingerprint(x)


def test_set_elements_sharing_a_large_object_digest_alike_in_any_order() -> None:
    # Set elements are digested one by one in iteration order (for partials: by address). Objects remembered
    # inside one element must not turn into references inside the next, or the digest would follow the order.
    def build() -> Any:
        big = [[i] for i in range(100)]  # holds more than SHARED_INLINE containers: remembered
        return {functools.partial(f, big) for f in (len, sorted, sum, min, max, any, all, tuple)}

    digests = {fingerprint(build()) for _ in range(20)}
    assert len(digests) == 1


_CROSS_PROCESS = textwrap.dedent(
    """
    import functools, json, types
    from nbflow.hashing import fingerprint

    def dag(levels, make, leaf):
        node = leaf
        for _ in range(levels):
            node = make(node, node)
        return node

    def values():
        big = [[i] for i in range(100)]
        cyclic = types.SimpleNamespace(big=big, items=[big, {"b": big}])
        cyclic.me = cyclic
        return {
            "lists": dag(30, lambda a, b: [a, b], ["leaf"]),
            "dicts": dag(30, lambda a, b: {"l": a, "r": b}, {"k": 1.5}),
            "objects": dag(30, lambda a, b: types.SimpleNamespace(a=a, b=b), "x"),
            "cyclic": cyclic,
            "set": {functools.partial(f, big) for f in (len, sorted, sum, min, max, any, all, tuple)},
            "keys": {(1, "a"): big, (2, "b"): big, ("c",): [big, big]},
        }

    print(json.dumps({name: fingerprint(value) for name, value in values().items()}))
    """
)


def test_digests_of_shared_structures_are_equal_in_fresh_processes(tmp_path: Path) -> None:
    script = tmp_path / "digests.py"
    script.write_text(_CROSS_PROCESS)
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        outputs.add(done.stdout)
    assert len(outputs) == 1
    namespace: dict[str, Any] = {}
    exec(compile(_CROSS_PROCESS.replace("print(json.dumps(", "result = (("), "digests", "exec"), namespace)
    assert json.loads(outputs.pop()) == namespace["result"]


# -- the budget ------------------------------------------------------------------------------------------


def test_past_the_node_budget_the_value_cannot_be_fingerprinted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(values_mod, "MAX_NODES", 10_000)
    with pytest.raises(UnfingerprintableError) as info:
        fingerprint([[i] for i in range(20_000)])
    message = str(info.value)
    assert "value of type 'list' at value: more than 10,000 containers and objects to walk" in message
    assert "MAX_NODES" in message and "nbflow.hashing.register" in message
    fingerprint([[i] for i in range(9_000)])  # under it: fine


def test_tuples_are_not_shared_by_reference_but_the_budget_bounds_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(values_mod, "MAX_NODES", 100_000)
    tuples = _count_handler(monkeypatch, tuple, 1_000_000)
    with pytest.raises(UnfingerprintableError, match=r"type 'tuple' at value: more than 100,000 containers"):
        fingerprint(_dag(30, lambda a, b: (a, b), (1,)))
    assert tuples[0] < 110_000


def test_past_the_object_budget_the_value_cannot_be_fingerprinted(
    monkeypatch: pytest.MonkeyPatch, reduce_calls: list[int]
) -> None:
    monkeypatch.setattr(values_mod, "MAX_OBJECTS", 100)
    with pytest.raises(UnfingerprintableError, match=r"'list' at value: more than 100 objects to walk through "
                       r"__reduce_ex__ \(the budget MAX_OBJECTS"):
        fingerprint([types.SimpleNamespace(i=i) for i in range(1_000)])
    assert reduce_calls[0] < 200


def test_past_the_time_budget_the_value_cannot_be_fingerprinted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(values_mod, "MAX_SECONDS", 0.0)
    with pytest.raises(UnfingerprintableError, match=r"'list' at value: fingerprinting it took more than 0 s"):
        fingerprint([[i] for i in range(5_000)])


def test_the_budget_does_not_count_buffers_or_scalars(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = 100_000
    values = [
        np.arange(10**7, dtype=np.float64),
        pd.DataFrame({"x": np.arange(rows, dtype=np.float64), "name": [f"w{i}" for i in range(rows)]}),
        list(range(10**6)),
        "s" * 10**7,
        {f"k{i}": i for i in range(100_000)},
    ]
    expected = [fingerprint(v) for v in values]
    monkeypatch.setattr(values_mod, "MAX_NODES", 50)
    monkeypatch.setattr(values_mod, "MAX_OBJECTS", 5)
    monkeypatch.setattr(values_mod, "MAX_SECONDS", 0.0)
    assert [fingerprint(v) for v in values] == expected


# -- the pickle fallback ------------------------------------------------------------------------------------


class Unreducible:
    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("no")


def test_a_failed_pickle_fallback_is_not_retried_at_every_level(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = [0]
    monkeypatch.setattr(_objects, "_enc_pickled", _counting(_objects._enc_pickled, attempts, 1_000))
    value: Any = Unreducible()
    for _ in range(50):
        value = types.SimpleNamespace(inner=value)
    with pytest.raises(UnfingerprintableError, match=r"'Unreducible' at value(\.inner){50}: it is not picklable"):
        fingerprint(value)
    assert attempts[0] == 1


class Opaque:
    """Registered with a function that fails: the object around it falls back to its pickle."""

    def __init__(self, n: int) -> None:
        self.data = list(range(n))


def test_a_large_pickle_fallback_streams_to_the_same_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(v: Opaque) -> Any:
        raise ValueError("no stand-in")

    register(Opaque, refuse)
    try:
        value = types.SimpleNamespace(opaque=Opaque(10_000), tag="x")
        in_memory = fingerprint(value)
        monkeypatch.setattr(_objects, "_PICKLE_IN_MEMORY", 1_000)  # pickled twice, the second time into the hasher
        assert fingerprint(value) == in_memory
        assert fingerprint(types.SimpleNamespace(opaque=Opaque(10_001), tag="x")) != in_memory
    finally:
        unregister(Opaque)


# -- through the engine -------------------------------------------------------------------------------------


def test_a_task_called_with_an_axes_warns_and_runs_uncached(
    figure: Any, executions: dict[str, int], nbflow_home: Path, reduce_calls: list[int]
) -> None:
    @nbflow.task
    def count_lines(ax: Any) -> int:
        return len(ax.lines)

    ax = figure.axes[0]
    for _ in range(2):
        with pytest.warns(NbflowWarning, match=r"task 'count_lines' runs uncached: argument 'ax' cannot be "
                          r"fingerprinted \(cannot fingerprint value of type 'Axes' at value: matplotlib"):
            assert count_lines(ax) == 1
    assert executions["count_lines"] == 2
    assert reduce_calls[0] == 0


def test_a_task_called_with_a_value_past_the_budget_warns_and_runs_uncached(
    executions: dict[str, int], nbflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(values_mod, "MAX_NODES", 10_000)
    _count_handler(monkeypatch, tuple, 1_000_000)

    @nbflow.task
    def depth(tree: Any) -> int:
        return 30

    tree = _dag(30, lambda a, b: (a, b), (1,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert depth(tree) == 30
        assert depth(tree) == 30
    messages = [str(w.message) for w in caught if issubclass(w.category, NbflowWarning)]
    assert len(messages) == 2
    assert all("argument 'tree' cannot be fingerprinted" in m and "MAX_NODES" in m for m in messages)
    assert executions["depth"] == 2


def test_remembered_objects_are_kept_alive_for_the_whole_computation() -> None:
    # Each Fresh hands out a new payload (large: remembered by id) and drops it once encoded. Were it not kept
    # alive, the next Fresh's payload could take over its address and be written as a reference to it.
    class Fresh:
        def __init__(self, n: int) -> None:
            self.n = n

        def __reduce_ex__(self, protocol: Any) -> Any:
            return (types.SimpleNamespace, (), [[i] for i in range(self.n, self.n + 100)])  # a new one each time

    digests = {fingerprint([Fresh(0), Fresh(i)]) for i in range(1, 30)}
    assert len(digests) == 29
    enc = _encoder._Enc()
    values_mod._run(enc, [Fresh(i) for i in range(50)], "value")
    assert sum(type(x) is list for x in enc.keep) >= 50
