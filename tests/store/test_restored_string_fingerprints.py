"""A stored object array of strings (a pandas object column) comes back with its fingerprint already known:
computed from the two buffers it was stored as, never by walking its strings again. That fingerprint must be
exactly the one :func:`nbflow.hashing.fingerprint` computes from the restored value (two implementations of
one digest: compared here on randomized values), and it is served only while the restored array is unchanged.
"""

from __future__ import annotations

import gc
import random
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest

from nbflow.hashing import _libraries, fingerprint
from nbflow.store import ResultStore
from nbflow.store.serializers import PickleSerializer

ALPHABET = ["a", "b", "-", "0", "é", "東", "☕", " ", "\x00", "\n"]
ROWS = 10_000  # remembered from 4,096 values; text out-of-band from 64 KiB


def _words(rng: random.Random, n: int, ascii_only: bool) -> list[str]:
    letters = ALPHABET[:4] if ascii_only else ALPHABET
    return ["".join(rng.choice(letters) for _ in range(rng.randrange(0, 14))) for _ in range(n)]


def _load(value: Any, without_pyarrow: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    serializer = PickleSerializer()
    stream, buffers = serializer.dumps(value)
    with monkeypatch.context() as patch:
        if without_pyarrow:
            patch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
        return serializer.loads(stream, [bytearray(buffer) for buffer in buffers])


def _without_walking(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, a fingerprint that walks the strings of a large object array fails the test (small ones,
    such as an index of column names, are never remembered)."""
    walk = _libraries._object_strings_encoding

    def walked(array: Any, np: Any) -> bytes | None:
        if array.size >= _libraries._MEMO_MIN_VALUES:
            raise AssertionError("the strings of a restored array were walked again")
        return walk(array, np)

    monkeypatch.setattr(_libraries, "_object_strings_encoding", walked)


@pytest.mark.parametrize("seed", range(6))
def test_a_restored_array_knows_the_fingerprint_a_fresh_walk_computes(seed: int,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    ascii_only, without_pyarrow = seed % 2 == 0, seed % 3 == 2
    n = rng.choice([12_000, 33_000, 70_000])  # text of 64 KiB or more: out-of-band
    words = _words(rng, 3 * n, ascii_only)
    frame = pd.DataFrame({f"s{j}": pd.Series(words[j * n : (j + 1) * n], dtype=object) for j in range(3)})
    frame["x"] = np.arange(n, dtype=np.float64)
    frame.columns = pd.Index(list(frame.columns), dtype=object)  # a str-dtype index would need pyarrow to load
    # A 2-D array has its rows remembered (a pandas block's columns), not itself: walked, equal all the same.
    grid = np.array(words[: 2 * n], dtype=object).reshape(2, n)
    for value in [frame, np.array(words[:n], dtype=object), grid]:
        _libraries._ObjectsMemo.table.clear()
        expected = fingerprint(value)
        _libraries._ObjectsMemo.table.clear()
        restored = _load(value, without_pyarrow, monkeypatch)
        assert _libraries._ObjectsMemo.table, "nothing was remembered on restore"
        with monkeypatch.context() as patch:
            if value is not grid:
                _without_walking(patch)
            remembered = fingerprint(restored)
        _libraries._ObjectsMemo.table.clear()  # what fingerprint() computes with nothing remembered
        assert remembered == fingerprint(restored) == expected
        del restored
        gc.collect()


def test_the_store_hands_back_a_frame_whose_fingerprint_is_known(store: ResultStore,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    frame = pd.DataFrame({f"s{j}": pd.Series([f"user-{i}-{j}" for i in range(ROWS)], dtype=object)
                          for j in range(3)})
    expected = fingerprint(frame)
    store.save("frame", frame, task_name="demo.frame")
    del frame
    gc.collect()
    _libraries._ObjectsMemo.table.clear()
    loaded = store.load("frame")
    with monkeypatch.context() as patch:
        _without_walking(patch)
        assert fingerprint(loaded) == expected


@pytest.mark.parametrize("change", [
    "frame.iloc[0, 0] = 'changed'",
    "frame.loc[ROWS - 1, 's2'] = 'changed'",
    "frame['s1'] = frame['s1'].str.upper()",
    "frame['s0'] = [f'user-{i}-0' for i in range(ROWS)]",  # equal strings, other objects: the same key
    "frame.loc[ROWS] = ['a', 'b', 'c']",
    "frame.loc[:, 's1'] = frame['s1'].to_numpy()[::-1]",  # every slot of a column rewritten
])
def test_a_restored_frame_changed_in_place_gets_the_key_of_its_new_values(store: ResultStore, change: str) -> None:
    frame = pd.DataFrame({f"s{j}": pd.Series([f"user-{i}-{j}" for i in range(ROWS)], dtype=object)
                          for j in range(3)})
    store.save("frame", frame, task_name="demo.frame")
    original = fingerprint(frame)
    del frame
    gc.collect()
    _libraries._ObjectsMemo.table.clear()
    namespace: dict[str, Any] = {"frame": store.load("frame"), "ROWS": ROWS}
    assert fingerprint(namespace["frame"]) == original
    exec(change, namespace)
    changed = fingerprint(namespace["frame"])
    _libraries._ObjectsMemo.table.clear()
    assert changed == fingerprint(namespace["frame"])  # what a fresh walk of the new values gives
    assert (changed == original) == ("equal strings" in change)


@pytest.mark.parametrize("shape", [(ROWS,), (3, ROWS)])
def test_a_restored_array_written_in_place_gets_the_key_of_its_new_values(shape: tuple[int, ...],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    array = np.array([f"w{i}" for i in range(int(np.prod(shape)))], dtype=object).reshape(shape)
    original = fingerprint(array)
    restored = _load(array, False, monkeypatch)
    assert fingerprint(restored) == original
    flat = restored.reshape(-1)  # a view: the restored array's own memory
    flat[-1] = "changed"
    changed = fingerprint(restored)
    assert changed != original
    flat[-1] = "".join(["w", str(flat.size - 1)])  # an equal string, another object
    assert fingerprint(restored) == original
    _libraries._ObjectsMemo.table.clear()
    assert fingerprint(restored) == original


def test_a_registration_for_str_forgets_what_was_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    from nbflow.hashing import register, unregister

    array = np.array([f"w{i}" for i in range(ROWS)], dtype=object)
    restored = _load(array, False, monkeypatch)
    before = fingerprint(restored)
    register(str, lambda s: s.encode()[::-1])
    try:
        registered = fingerprint(restored)
        _libraries._ObjectsMemo.table.clear()
        assert registered == fingerprint(restored) != before
    finally:
        unregister(str)
    assert fingerprint(restored) == before


def test_a_copy_of_the_slots_that_does_not_match_them_is_never_kept() -> None:
    """The store hands over the second reference to every string it made while converting them; one that
    does not hold exactly the array's pointers is not taken as the memo's copy (a copy is made instead)."""
    from nbflow.hashing.values import remember_object_strings

    words = [f"w{i}" for i in range(ROWS)]
    array = np.array(words, dtype=object)
    ends = np.cumsum([len(w) for w in words], dtype=np.int64)
    data = "".join(words).encode()
    wrong = array.copy()
    wrong[5] = "other"
    _libraries._ObjectsMemo.table.clear()
    remember_object_strings(array, ends, data, wrong)
    entry = _libraries._ObjectsMemo.table[(array.ctypes.data, ROWS)]
    assert entry.keep is not wrong and _libraries._same_slots(entry.keep, array, np)
    expected = fingerprint(array)
    _libraries._ObjectsMemo.table.clear()
    assert fingerprint(array) == expected
