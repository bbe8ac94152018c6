"""Object arrays of strings (pandas object columns) in a stored result: their text goes out-of-band as two
buffers (where each string ends, the UTF-8 bytes), and comes back as the same array of ``str``; anything else
is pickled as before."""

from __future__ import annotations

import random
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest

import nbflow
from nbflow.store.serializers import PickleSerializer

ALPHABET = ["a", "b", "é", "東", "☕", " ", "\x00", "-"]


class Text(str):
    pass


def _round_trip(value: Any, monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[Any, bytes, list[memoryview]]:
    """Dumped, then loaded (with ``monkeypatch``: where pyarrow cannot be imported)."""
    serializer = PickleSerializer()
    stream, buffers = serializer.dumps(value)
    if monkeypatch is None:
        return serializer.loads(stream, [bytearray(buffer) for buffer in buffers]), stream, buffers
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
        return serializer.loads(stream, [bytearray(buffer) for buffer in buffers]), stream, buffers


@pytest.mark.parametrize("ascii_only", [True, False])
@pytest.mark.parametrize("without_pyarrow", [False, True])
def test_object_strings_go_out_of_band_and_come_back_equal(ascii_only: bool, without_pyarrow: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    patch = monkeypatch if without_pyarrow else None
    rng = random.Random(5)
    letters = ALPHABET[:2] if ascii_only else ALPHABET
    words = ["".join(rng.choice(letters) for _ in range(rng.randrange(0, 12))) for _ in range(30_000)]
    array = np.array(words, dtype=object)
    back, stream, buffers = _round_trip(array, patch)
    assert len(stream) < 1_000 and len(buffers) == 2
    assert back.dtype == object and back.shape == array.shape and back.tolist() == words
    assert {type(x) for x in back.tolist()} == {str}
    grid = array.reshape(100, 300)
    assert _round_trip(grid, patch)[0].tolist() == grid.tolist()
    frame = pd.DataFrame({"a": pd.Series(words, dtype=object), "b": pd.Series(words[::-1], dtype=object),
                          "x": np.arange(len(words), dtype=np.float64)})
    frame.columns = pd.Index(["a", "b", "x"], dtype=object)  # a str-dtype index would need pyarrow to load
    loaded = _round_trip(frame, patch)[0]
    assert loaded.equals(frame) and loaded.dtypes.tolist() == frame.dtypes.tolist()


def test_what_is_not_a_large_array_of_plain_strings_is_pickled_as_before() -> None:
    cases = [
        np.array(["abc"] * 50_000 + [1], dtype=object),  # not all strings
        np.array([Text("abc")] * 50_000, dtype=object),  # a subclass keeps its class
        np.array(["\ud800"] * 100_000, dtype=object),  # lone surrogates (no strict UTF-8)
        np.array(["ab"] * 100, dtype=object),  # too small to be worth a buffer
        np.asfortranarray(np.array([["ab"] * 50_000] * 2, dtype=object)),  # not C-contiguous
    ]
    for value in cases:
        back, _, buffers = _round_trip(value)
        assert not buffers
        assert back.tolist() == value.tolist() and [type(x) for x in back.flat] == [type(x) for x in value.flat]
    empty = np.array([], dtype=object)
    assert _round_trip(empty)[0].shape == (0,)


def test_a_task_result_with_object_string_columns_is_stored_and_loaded() -> None:
    @nbflow.task
    def build(rows: int) -> pd.DataFrame:
        return pd.DataFrame({"name": pd.Series([f"row-{i}-é" for i in range(rows)], dtype=object),
                             "n": np.arange(rows)})

    first = build(50_000, return_state=True)
    again = build(50_000, return_state=True)
    assert (first.name, again.name) == ("Completed", "Cached")
    assert again.result().equals(first.result()) and again.result()["name"].dtype == object


@pytest.mark.parametrize("without_pyarrow", [False, True])
def test_string_buffers_that_do_not_fit_fail_to_load_rather_than_read_elsewhere(
        without_pyarrow: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    serializer = PickleSerializer()
    stream, buffers = serializer.dumps(np.array(["abcd"] * 30_000, dtype=object))
    ends, data = (bytearray(buffer) for buffer in buffers)
    np.frombuffer(ends, dtype=np.int64)[-1] = 10**9  # past the end of the data
    with monkeypatch.context() as patch:
        if without_pyarrow:
            patch.setitem(sys.modules, "pyarrow", None)
        with pytest.raises(Exception):  # noqa: B017 (pyarrow's ArrowInvalid, or a length mismatch)
            back = serializer.loads(stream, [ends, data])
            assert back.tolist() == ["abcd"] * 30_000  # never reached: a short last string would be wrong
