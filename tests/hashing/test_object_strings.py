"""Object arrays whose elements are all exactly ``str`` are fingerprinted as a column of strings (their UTF-8
bytes and where each ends, format version 4): equal strings give equal keys whatever the array's layout, and
every difference of values, boundaries or types gives another key."""

from __future__ import annotations

import random

import numpy as np
import pytest

from nbflow.hashing import _libraries, fingerprint


class Text(str):
    pass


def test_string_boundaries_and_types_count() -> None:
    def key(items: list[object]) -> str:
        return fingerprint(np.array(items, dtype=object))

    assert key(["ab", "c"]) != key(["a", "bc"])
    assert key(["", "a"]) != key(["a", ""])
    assert key(["a"]) != key(["a", ""])
    assert key(["a", "b"]) != key(["a", Text("b")])  # a subclass is not a str: walked element by element
    assert key(["a", "b"]) != key(["a", b"b"])
    assert key(["1", "2"]) != key([1, 2])
    assert fingerprint(np.array([], dtype=object)) != fingerprint(np.array([""], dtype=object))
    assert fingerprint(np.array(["a", "b"], dtype=object)) != fingerprint(["a", "b"])


@pytest.mark.parametrize("seed", range(4))
def test_equal_strings_in_any_layout_give_one_key(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = ["a", "é", "東", "☕", "\x00", " "]
    n = rng.choice([10, 5_000, 70_000])
    items = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 9))) for _ in range(n)]
    plain = np.array(items, dtype=object)
    key = fingerprint(plain)
    strided = np.empty(2 * n, dtype=object)
    strided[::2] = items
    strided[1::2] = 0
    assert fingerprint(strided[::2]) == key
    fortran = np.asfortranarray(np.array(items + items, dtype=object).reshape(2, n))
    assert fingerprint(fortran) == fingerprint(np.array(items + items, dtype=object).reshape(2, n))
    _libraries._ObjectsMemo.table.clear()
    assert fingerprint(plain) == key
    other = list(items)
    other[rng.randrange(n)] += "x"
    assert fingerprint(np.array(other, dtype=object)) != key
