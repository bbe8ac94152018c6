"""Columns of strings: arrow arrays, pandas' string dtypes and object columns.

Arrow string/binary arrays and pandas' string dtypes are fingerprinted from the arrow layout (offsets, data,
validity: nbflow.hashing._libraries._StringStreams). Equal values give equal keys however the array is sliced
or chunked and whatever lies under a null slot; any changed value, a null for an empty string, another type
give another key. Runs of strings in object columns take a numpy fast path that must write exactly what the
element-by-element encoding writes.
"""

from __future__ import annotations

import gc
import itertools
import random

import numpy as np
import pandas as pd
import pyarrow as pa  # in the test extra: a missing install must fail, not skip
import pytest

from nbflow.hashing import _builtins, _libraries, fingerprint
from nbflow.hashing._encoder import _Enc

WORDS = ["", "a", "bb", "naïve", "東京", "x" * 40, "user-17", "☕", " ", "a\x00b"]


def _values(rng: random.Random, n: int, nulls: bool = True) -> list[str | None]:
    return [None if nulls and rng.random() < 0.1 else rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(n)]


def _rechunk(arr: pa.Array, cuts: list[int]) -> pa.ChunkedArray:
    bounds = [0, *sorted(cuts), len(arr)]
    return pa.chunked_array([arr.slice(a, b - a) for a, b in itertools.pairwise(bounds)], type=arr.type)


# -- arrow arrays ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string(), pa.binary(), pa.large_binary()])
def test_slices_and_chunkings_of_equal_values_are_equal(typ: pa.DataType) -> None:
    rng = random.Random(1)
    values = _values(rng, 300)
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        values = [None if v is None else v.encode() for v in values]  # type: ignore[misc]
    whole = pa.array(values[50:250], type=typ)
    key = fingerprint(whole)
    # A slice of a longer array: its offsets start inside the buffers and its data elsewhere.
    assert fingerprint(pa.array(values, type=typ).slice(50, 200)) == key
    for _ in range(20):
        cuts = [rng.randrange(0, 201) for _ in range(rng.randrange(1, 6))]
        assert fingerprint(_rechunk(whole, cuts)) == fingerprint(pa.chunked_array([whole]))
        # Chunks built separately (each with its own buffers) rather than slices of one.
        bounds = [0, *sorted(cuts), 200]
        parts = [pa.array(values[50 + a : 50 + b], type=typ) for a, b in itertools.pairwise(bounds)]
        assert fingerprint(pa.chunked_array(parts, type=typ)) == fingerprint(pa.chunked_array([whole]))
    table = pa.table({"s": whole})
    assert fingerprint(table) == fingerprint(pa.Table.from_batches(table.to_batches(max_chunksize=7)))


def test_a_changed_character_changes_the_key_wherever_it_is() -> None:
    values = [f"value-{i}" for i in range(10_000)]
    key = fingerprint(pa.chunked_array([pa.array(values[:5000]), pa.array(values[5000:])]))
    for i in (0, 4999, 5000, 9999):
        changed = list(values)
        changed[i] = changed[i][:-1] + "X"
        assert fingerprint(pa.chunked_array([pa.array(changed[:5000]), pa.array(changed[5000:])])) != key
    # The same bytes cut into other values.
    assert fingerprint(pa.array(["ab", "c"])) != fingerprint(pa.array(["a", "bc"]))
    assert fingerprint(pa.array(["a", "b"])) != fingerprint(pa.array(["a", "b", ""]))


def test_nulls_differ_from_empty_strings_and_from_each_other() -> None:
    keys = {
        fingerprint(pa.array(v))
        for v in (["a", None, "b"], ["a", "", "b"], ["a", "b", None], [None, "a", "b"], ["a", None, None, "b"],
                  ["", None], [None, ""])
    }
    assert len(keys) == 7


def test_bytes_under_a_null_slot_do_not_count() -> None:
    validity = pa.py_buffer(np.packbits(np.array([1, 0, 1], dtype=bool), bitorder="little"))
    data = pa.py_buffer(b"aGARBAGEcc")
    offsets = pa.py_buffer(np.array([0, 1, 8, 10], dtype=np.int32))
    garbage = pa.Array.from_buffers(pa.string(), 3, [validity, offsets, data], null_count=1)
    assert garbage.to_pylist() == ["a", None, "cc"]
    clean = pa.array(["a", None, "cc"])
    assert fingerprint(garbage) == fingerprint(clean)
    assert fingerprint(pa.chunked_array([garbage.slice(1), clean.slice(0, 1)])) == fingerprint(
        pa.array([None, "cc", "a"])
    )


def test_types_are_part_of_the_key() -> None:
    values = ["a", None, "bc"]
    keys = {fingerprint(pa.array(values, type=t)) for t in (pa.string(), pa.large_string(), pa.binary(),
                                                           pa.large_binary())}
    assert len(keys) == 4
    assert fingerprint(pa.array([], pa.string())) != fingerprint(pa.array([], pa.large_string()))


# -- pandas ----------------------------------------------------------------------------------------------


def test_pandas_string_dtypes_do_not_depend_on_the_storage() -> None:
    rng = random.Random(2)
    for n in (0, 1, 5, 40_000):  # 40,000: more than one block of the Python path
        values = _values(rng, n)
        for na in (np.nan, pd.NA):
            arrow = pd.Series(values, dtype=pd.StringDtype("pyarrow", na_value=na))
            python = pd.Series(values, dtype=pd.StringDtype("python", na_value=na))
            assert fingerprint(arrow) == fingerprint(python)
            assert fingerprint(pd.DataFrame({"s": arrow})) == fingerprint(pd.DataFrame({"s": python}))
            assert python.isna().tolist() == [v is None for v in values]  # fingerprinting changed nothing
    # Lone surrogates are legal in Python strings (never in arrow): kept, distinct.
    odd = pd.Series(["a", "\ud800"], dtype=pd.StringDtype("python"))
    assert fingerprint(odd) != fingerprint(pd.Series(["a", "\ud801"], dtype=pd.StringDtype("python")))


def test_pandas_string_columns_by_value() -> None:
    values = [f"row {i}" for i in range(20_000)]
    frame = pd.DataFrame({"s": pd.Series(values, dtype="str")})
    key = fingerprint(frame)
    assert fingerprint(pd.DataFrame({"s": pd.Series(list(values), dtype="str")})) == key
    sliced = pd.DataFrame({"s": pd.Series(["x", *values], dtype="str")}).iloc[1:].reset_index(drop=True)
    assert fingerprint(sliced) == key
    assert fingerprint(pd.concat([frame.iloc[:7], frame.iloc[7:]])) == key
    # Each string dtype is its own (the dtype is part of the key): str (NaN), string (NA), arrow's string.
    keys = {fingerprint(pd.Series(values[:5], dtype=d))
            for d in ("str", "string", "object", pd.ArrowDtype(pa.string()), pd.ArrowDtype(pa.large_string()))}
    assert len(keys) == 5
    with_null = pd.Series(["a", None], dtype="str")
    assert fingerprint(with_null) != fingerprint(pd.Series(["a", ""], dtype="str"))


def test_a_column_changed_in_place_is_never_served_from_the_memo() -> None:
    frame = pd.DataFrame({"s": pd.Series([f"v{i}" for i in range(10_000)], dtype="str"), "n": range(10_000)})
    first = fingerprint(frame)
    assert fingerprint(frame) == first  # remembered: the same
    frame.loc[5_000, "s"] = "changed"
    second = fingerprint(frame)
    assert second != first
    frame.loc[5_000, "s"] = "v5000"
    assert fingerprint(frame) == first
    frame["s"] = frame["s"].str.upper()
    assert fingerprint(frame) not in (first, second)
    column = frame["s"].array
    column[0] = "lower"  # an ExtensionArray assigned to in place (pandas swaps its arrow array)
    assert fingerprint(frame["s"]) != fingerprint(frame["s"].str.upper())


def test_the_memo_forgets_arrays_that_are_gone() -> None:
    before = len(_libraries._STRINGS_MEMO)
    arr = pa.array([f"x{i}" for i in range(10_000)])
    key = fingerprint(arr)
    assert len(_libraries._STRINGS_MEMO) == before + 1
    del arr
    gc.collect()
    assert len(_libraries._STRINGS_MEMO) == before
    assert fingerprint(pa.array([f"x{i}" for i in range(10_000)])) == key


# -- object columns: the numpy run of strings ---------------------------------------------------------------


def _element_by_element(items: list[str]) -> bytes:
    return b"".join(_builtins._b_str(x) for x in items)


@pytest.mark.parametrize("seed", range(8))
def test_string_runs_write_what_the_element_loop_writes(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = ["a", "Z", "0", " ", "é", "東", "☕", "\x00", "\n"] if seed % 2 else ["a", "b", "-", "9"]
    count = rng.randrange(256, 3000)
    items = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30))) for _ in range(count)]
    encoded = _builtins._str_run(items, np)
    assert encoded is not None
    assert encoded.tobytes() == _element_by_element(items)
    # And whole object arrays digest as the element loop makes them (a non-contiguous view walks element by
    # element): equal whichever path.
    array = np.empty(2 * len(items), dtype=object)
    array[::2] = items
    array[1::2] = "other"
    assert fingerprint(array[::2]) == fingerprint(np.array(items, dtype=object))


def test_string_runs_leave_what_they_cannot_encode_to_the_element_loop() -> None:
    assert _builtins._str_run(["a", "\ud800"] * 200, np) is None
    enc = _Enc()
    assert _builtins._enc_leaf_run(enc, ["a", "\ud800"] * 200) is False
    assert fingerprint(np.array(["a", "\ud800"] * 200, dtype=object)) != fingerprint(
        np.array(["a", "\ud801"] * 200, dtype=object)
    )


def test_object_string_columns_changed_in_place_are_never_served_from_the_memo() -> None:
    frame = pd.DataFrame({"s": pd.Series([f"v{i}" for i in range(10_000)], dtype=object), "n": range(10_000)})
    first = fingerprint(frame)
    assert fingerprint(frame) == first
    frame.loc[5_000, "s"] = "changed"
    changed = fingerprint(frame)
    assert changed != first
    frame.loc[5_000, "s"] = "".join(["v", "5000"])  # an equal string, another object: equal again
    assert fingerprint(frame) == first
    # Written through another view of the same memory.
    array = np.array([f"w{i}" for i in range(10_000)], dtype=object)
    key = fingerprint(array)
    view = array[:]
    view[9_999] = "other"
    assert fingerprint(array) != key
    view[9_999] = "w9999"
    assert fingerprint(array) == key
    # A slot that stops holding a string: the digest of the mixed array, then never remembered.
    array[0] = 1
    mixed = fingerprint(array)
    _libraries._ObjectsMemo.table.clear()
    assert fingerprint(array) == mixed


def test_object_string_memo_agrees_with_a_fresh_digest() -> None:
    rng = random.Random(3)
    for _ in range(20):
        n = rng.choice([4_096, 5_000, 40_000])
        array = np.array([rng.choice(WORDS) + str(rng.randrange(1000)) for _ in range(n)], dtype=object)
        remembered = [fingerprint(array), fingerprint(array)]
        _libraries._ObjectsMemo.table.clear()
        assert remembered == [fingerprint(array)] * 2
        del array  # the next array may well take its address: never its digest
        gc.collect()


def test_object_string_memo_is_dropped_with_the_array() -> None:
    _libraries._ObjectsMemo.table.clear()
    array = np.array([f"x{i}" for i in range(10_000)], dtype=object)
    frame = pd.DataFrame({"s": pd.Series(array, dtype=object)})
    fingerprint(frame)
    fingerprint(array)
    assert len(_libraries._ObjectsMemo.table) >= 1
    del array, frame
    gc.collect()
    assert not _libraries._ObjectsMemo.table


# -- pinned digests (nbflow.hashing.FORMAT_VERSION 4; see tests/hashing/test_values.py) -------------------------


def _pinned() -> dict[str, object]:
    return {
        "arrow strings": pa.array(["a", None, "ccc", ""]),
        "arrow large strings, chunked": pa.chunked_array([["a", None], ["ccc", ""]], type=pa.large_string()),
        "pandas str": pd.Series(["x", None, "東京"], dtype="str"),
        "object strings": np.array([f"s{i}" for i in range(300)], dtype=object),
        "object mixed": np.array(["ab", None, 1, 2.5], dtype=object),
        "arrow ints with nulls": pa.array([1, None, 3]),
    }


PINNED = {
    "arrow strings": "4ad7fc747e4f21ff36e498349c90f7bd",
    "arrow large strings, chunked": "70a722e74a64aff3881b358e6e1441da",
    "pandas str": "6239109bfdaaf1c0de05eb8f8b96d0e9",
    "object strings": "3475aa318dc12e8d4e6b6fa7d25fda6b",  # version 4: offsets and data
    "object mixed": "92c68157e7b3147f4a9f4da8c4fa3bab",
    "arrow ints with nulls": "8a6b1b9be98cf4bd4e67c5a71a5ac02d",
}


@pytest.mark.parametrize("name", list(PINNED))
def test_pinned_string_digests(name: str) -> None:
    assert fingerprint(_pinned()[name]) == PINNED[name]


# -- arrow fixed-width values with nulls (hashed from their buffers too) -----------------------------------------


@pytest.mark.parametrize("typ", [pa.int64(), pa.int8(), pa.float64(), pa.timestamp("ms"), pa.duration("s")])
def test_fixed_width_arrow_values_with_nulls(typ: pa.DataType) -> None:
    rng = random.Random(4)
    raw = [None if rng.random() < 0.2 else rng.randrange(100) for _ in range(500)]
    values = pa.array(raw, type=pa.int64()).cast(typ)
    key = fingerprint(values)
    for _ in range(10):
        cuts = [rng.randrange(0, 501) for _ in range(rng.randrange(1, 5))]
        assert fingerprint(_rechunk(values, cuts)) == fingerprint(pa.chunked_array([values]))
    assert fingerprint(pa.array([None, *raw, 7], type=pa.int64()).cast(typ).slice(1, 500)) == key
    first_null = raw.index(None)
    zero = list(raw)
    zero[first_null] = 0
    assert fingerprint(pa.array(zero, type=pa.int64()).cast(typ)) != key  # a null is not a zero
    changed = list(raw)
    changed[-1] = 1 if changed[-1] != 1 else 2
    assert fingerprint(pa.array(changed, type=pa.int64()).cast(typ)) != key
    assert fingerprint(pa.table({"v": values})) == fingerprint(pa.table({"v": _rechunk(values, [250])}))


def test_fixed_width_bytes_under_a_null_slot_do_not_count() -> None:
    validity = pa.py_buffer(np.packbits(np.array([1, 0, 1], dtype=bool), bitorder="little"))
    garbage = pa.Array.from_buffers(pa.int64(), 3, [validity, pa.py_buffer(np.array([5, 999, 7]))], null_count=1)
    assert garbage.to_pylist() == [5, None, 7]
    assert fingerprint(garbage) == fingerprint(pa.array([5, None, 7]))
    series = pd.Series([5, None, 7], dtype="int64[pyarrow]")
    assert fingerprint(series) == fingerprint(pd.Series(garbage, dtype="int64[pyarrow]"))
