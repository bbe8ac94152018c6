"""Value fingerprints: stability, distinctness, containers, libraries, registry and failures."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import uuid
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbflow.exceptions import UnfingerprintableError
from nbflow.hashing import Fingerprinter, fingerprint, fingerprint_many, register, unregister
from nbflow.hashing import values as values_mod


@dataclasses.dataclass
class Point:
    x: int
    y: float = 0.0


@dataclasses.dataclass
class Holder:
    item: Any
    other: Any = None


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Pair(NamedTuple):
    a: int
    b: str


class Model(pydantic.BaseModel):
    name: str
    size: int = 0


class Loose(pydantic.BaseModel, extra="allow"):
    name: str


class Plain:
    def __init__(self, a: Any, b: Any = None) -> None:
        self.a = a
        self.b = b


class Slotted:
    __slots__ = ("p", "q")

    def __init__(self, p: Any, q: Any) -> None:
        self.p = p
        self.q = q


class Hostile:
    """Comparing or hashing it raises: fingerprinting must never need either."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no __eq__")

    def __hash__(self) -> int:
        raise RuntimeError("no __hash__")


# -- pinned digests ------------------------------------------------------------------------------------
# These digests are the on-disk cache keys of format version 4 (2 changed only values with a large shared
# part, none pinned here; 3 changed string columns: "dataframe", whose column "c" is pandas' string dtype; 4
# changed object arrays of strings only, pinned in test_strings.py).
# A change here invalidates every user's cache: update them only together with a bump of nbflow.hashing.FORMAT_VERSION.


def _pinned_cases() -> list[tuple[str, Any]]:
    return [
        ("int", 42),
        ("zero", 0),
        ("negative", -7),
        ("huge int", 2**200 + 12345),
        ("huge negative", -(2**100)),
        ("float", 3.25),
        ("nan", math.nan),
        ("negative zero", -0.0),
        ("inf", math.inf),
        ("complex", complex(1.5, -2)),
        ("str", "data.csv"),
        ("unicode str", "naïve café ☕ 東京"),
        ("empty str", ""),
        ("bytes", b"\x00\x01binary"),
        ("none", None),
        ("true", True),
        ("tuple", (1, "a", 2.0)),
        ("nested", [1, (2, [3, {"k": "v"}]), {"a": [None, True]}]),
        ("dict mixed keys", {1: "one", "two": 2, (3,): [3]}),
        ("set", {3, 1, 2}),
        ("frozenset", frozenset({"b", "a"})),
        ("datetime", dt.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=dt.timezone.utc)),
        ("date", dt.date(2024, 2, 29)),
        ("decimal", decimal.Decimal("1.10")),
        ("path", pathlib.PurePosixPath("/data/in.csv")),
        ("dataclass", Point(1, 2.5)),
        ("int64 array", np.arange(6, dtype=np.int64).reshape(2, 3)),
        ("float32 array", np.array([1.5, -0.0, np.inf], dtype=np.float32)),
        ("str array", np.array(["ab", "c"])),
        ("datetime64 array", np.array(["2024-01-01", "2024-01-02"], dtype="datetime64[D]")),
        (
            "dataframe",
            pd.DataFrame({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5], "c": ["x", "y", "z"]}, index=[10, 20, 30]),
        ),
    ]


EXPECTED = {
    "int": "86cfe31541e0ca32a57cc7fea8a80e3f",
    "zero": "1c7a1d5059bc77218ad2c0e635141f8a",
    "negative": "2cc502e6df105d8d47704501b6148feb",
    "huge int": "6af9df16a9168bf9bf97afdb2ffeae60",
    "huge negative": "59c263f667a4a3e6d75ea2c98d913700",
    "float": "8fc288e7af437f39132bb33662a594d0",
    "nan": "1420def684ff33195e46be79eb2f1aac",
    "negative zero": "f6b43928ce5e5192820ab6b29963bd6b",
    "inf": "7a8db524dbae2e094b793d59b1f88687",
    "complex": "2664c31ae82e6c57701afa0470212f76",
    "str": "1e8e24958f232bbad1ff699faed1dde3",
    "unicode str": "336943e86c2043311a32fcca7b85d084",
    "empty str": "85fefc6f12f345b396720846b631026c",
    "bytes": "17b057d2fb05a34da1fce1a65289ef5a",
    "none": "c311d21b3583875acbaa0f6724ae8b0a",
    "true": "1d33c0bd3511c80d20948828081ddcb4",
    "tuple": "e7842232baca0a72fd2ede9e4f9514d2",
    "nested": "3bcec5ee455aef914c262719622d4c84",
    "dict mixed keys": "d5347b43041670120f8ec9ff12b7108d",
    "set": "d406432a4b9beb6ba4f5d32ced4ae3cf",
    "frozenset": "a9352ef72da4e0d5c61f314058da3e1e",
    "datetime": "f734bacb979556a723403819d217b6ed",
    "date": "03788dcd17f3d3c158ab974860ad661f",
    "decimal": "cf992f3c1eb7708ce483a0338139b143",
    "path": "e05289a7ce17b0f1380b43bc0b3327e1",
    "dataclass": "5eb6dfeba20d75d78784c6b367e01dfa",
    "int64 array": "cf2d4a5e94e53f42cdea5de3edb91019",
    "float32 array": "7d3905d942aa4fb308558169da443354",
    "str array": "9ef8f1cd85ff1a507a42380447cee942",
    "datetime64 array": "923b141094b5ebebdd6d4decb7172422",
    "dataframe": "c0e3b48b0a864d0baf09637145267837",
}


@pytest.mark.parametrize(("name", "value"), _pinned_cases(), ids=[n for n, _ in _pinned_cases()])
def test_pinned_digests(name: str, value: Any) -> None:
    assert fingerprint(value) == EXPECTED[name]


def test_digest_shape() -> None:
    d = fingerprint(42)
    assert len(d) == 32
    assert int(d, 16) >= 0


# -- distinctness ----------------------------------------------------------------------------------------


def test_type_tags_keep_equal_looking_values_apart() -> None:
    values = [1, 1.0, True, "1", b"1", (1,), [1], {1}, frozenset({1}), {1: None}, bytearray(b"1"), 1 + 0j]
    digests = [fingerprint(v) for v in values]
    assert len(set(digests)) == len(values)


def test_lengths_are_prefixed() -> None:
    assert fingerprint(("ab", "c")) != fingerprint(("a", "bc"))
    assert fingerprint([b"ab", b"c"]) != fingerprint([b"a", b"bc"])
    assert fingerprint({"ab": "c"}) != fingerprint({"a": "bc"})
    assert fingerprint(((1, 2), 3)) != fingerprint((1, (2, 3)))
    assert fingerprint([[], []]) != fingerprint([[[]]])


def test_special_floats_and_ints() -> None:
    assert fingerprint(0.0) != fingerprint(-0.0)
    assert fingerprint(math.nan) == fingerprint(float("nan")) == fingerprint(-math.nan)
    assert fingerprint(math.inf) != fingerprint(-math.inf)
    assert fingerprint(2**64) != fingerprint(2**64 + 1)
    assert fingerprint(-(2**63)) != fingerprint(2**63)
    assert fingerprint(2**63 - 1) != fingerprint(2**63)


def test_equal_values_equal_digests() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({1: "a", "b": 2, (1, 2): 3}) == fingerprint({(1, 2): 3, "b": 2, 1: "a"})
    assert fingerprint({3, 1, 2}) == fingerprint({1, 2, 3})
    assert fingerprint({"x", 1, (2, "y")}) == fingerprint({(2, "y"), "x", 1})
    assert fingerprint(Point(1, 2.0)) == fingerprint(Point(1, 2.0))
    assert fingerprint(Point(1, 2.0)) != fingerprint(Point(1, 2.5))


def test_surrogates_and_big_strings() -> None:
    assert fingerprint("\ud800") != fingerprint("\ud801")
    big = "x" * 1_000_000
    assert fingerprint(big) != fingerprint(big + "y")
    assert fingerprint([big]) != fingerprint([big[:-1]])


def test_fast_path_matches_full_encoder() -> None:
    cases: list[Any] = [
        42,
        2**80,
        "s",
        b"b",
        None,
        True,
        1.5,
        (1, "a", 2.0),
        [1, [2, (3, None)]],
        {"a": 1, "b": {"c": [1, 2]}},
        {1: "a", 2: "b"},
        {},
        (),
        list(range(40)),
        {str(i): i for i in range(40)},
    ]
    for value in cases:
        assert Fingerprinter().update(value).hexdigest() == fingerprint(value), value


# -- stdlib types ------------------------------------------------------------------------------------------


def test_stdlib_types() -> None:
    samples = [
        dt.datetime(2024, 1, 1),
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.date(2024, 1, 1),
        dt.time(12, 30),
        dt.timedelta(days=1),
        dt.timedelta(seconds=86400 - 1),
        decimal.Decimal("1.1"),
        decimal.Decimal("1.10"),
        fractions.Fraction(1, 3),
        uuid.UUID(int=5),
        pathlib.Path("a/b"),
        pathlib.PurePosixPath("a/b"),
        pathlib.Path("a/c"),
        re.compile("a+"),
        re.compile("a+", re.IGNORECASE),
        range(3),
        range(0, 3, 2),
        slice(1, 2),
        Ellipsis,
        Color.RED,
        Color.GREEN,
        Pair(1, "x"),
        (1, "x"),
        collections.OrderedDict([("a", 1), ("b", 2)]),
        collections.OrderedDict([("b", 2), ("a", 1)]),
        collections.defaultdict(list, {"a": [1]}),
        {"a": [1]},
        json,
        json.dumps,
        len,
        str.upper,
        int,
        Point,
        memoryview(b"abc"),
    ]
    digests = [fingerprint(v) for v in samples]
    assert len(set(digests)) == len(samples)
    assert fingerprint(pathlib.Path("a/b")) == fingerprint(pathlib.Path("a") / "b")
    assert fingerprint(dt.datetime(2024, 1, 1)) == fingerprint(dt.datetime(2024, 1, 1))


def test_objects_by_state() -> None:
    assert fingerprint(Plain(1, [2])) == fingerprint(Plain(1, [2]))
    assert fingerprint(Plain(1, [2])) != fingerprint(Plain(1, [3]))
    assert fingerprint(Slotted(1, 2)) == fingerprint(Slotted(1, 2))
    assert fingerprint(Slotted(1, 2)) != fingerprint(Slotted(2, 1))
    assert fingerprint(Plain(1)) != fingerprint(Holder(1))


def test_pydantic_models() -> None:
    assert fingerprint(Model(name="a", size=1)) == fingerprint(Model(size=1, name="a"))
    assert fingerprint(Model(name="a", size=1)) != fingerprint(Model(name="a", size=2))
    assert fingerprint(Loose(name="a", x=1, y=2)) == fingerprint(Loose(name="a", y=2, x=1))
    assert fingerprint(Loose(name="a", x=1)) != fingerprint(Loose(name="a", x=2))
    assert fingerprint(Loose(name="a")) != fingerprint(Loose(name="a", x=None))


def test_functions_and_methods() -> None:
    def f(x: int) -> int:
        return x + 1

    def g(x: int) -> int:
        return x + 2

    assert fingerprint(f) != fingerprint(g)
    assert fingerprint(Plain(1).__init__) != fingerprint(Plain(2).__init__)  # bound to different objects
    assert fingerprint([].append) == fingerprint([].append)


# -- containers: cycles, hostile objects ---------------------------------------------------------------


def test_recursive_list_and_dict() -> None:
    a: list[Any] = [1]
    a.append(a)
    b: list[Any] = [1]
    b.append(b)
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint([1, []])

    d: dict[str, Any] = {"k": 1}
    d["self"] = d
    e: dict[str, Any] = {"self": None, "k": 1}
    e["self"] = e
    assert fingerprint(d) == fingerprint(e)

    x: list[Any] = []
    y: list[Any] = [x]
    x.append(y)
    assert fingerprint(x) == fingerprint(x)  # mutual recursion terminates

    obj = Plain(1)
    obj.b = obj
    assert fingerprint(obj) == fingerprint(obj)


def test_shared_references_are_not_cycles() -> None:
    shared = [1, 2]
    assert fingerprint([shared, shared]) == fingerprint([[1, 2], [1, 2]])


def test_hostile_eq_and_hash() -> None:
    assert fingerprint([Hostile(1), Hostile(2)]) == fingerprint([Hostile(1), Hostile(2)])
    assert fingerprint([Hostile(1)]) != fingerprint([Hostile(2)])
    assert fingerprint(Holder(Hostile(1), {"h": Hostile(3)})) == fingerprint(Holder(Hostile(1), {"h": Hostile(3)}))
    assert fingerprint({Hostile.__name__: Hostile(1)}) != fingerprint({Hostile.__name__: Hostile(2)})


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    v: Any = []
    for _ in range(100_000):
        v = [v]
    with pytest.raises(UnfingerprintableError, match="nested too deeply"):
        fingerprint(v)


# -- failures -------------------------------------------------------------------------------------------


def test_generator_is_refused_and_not_consumed() -> None:
    gen = (i for i in range(3))
    with pytest.raises(UnfingerprintableError, match="'generator' at value"):
        fingerprint(gen)
    assert list(gen) == [0, 1, 2]


def test_error_names_the_path() -> None:
    gen = (i for i in range(3))
    with pytest.raises(UnfingerprintableError) as info:
        fingerprint_many([("args", (1, {"x": gen}))])
    assert "cannot fingerprint value of type 'generator' at args[1]['x']" in str(info.value)
    assert next(gen) == 0
    with pytest.raises(UnfingerprintableError, match=r"at value\.item\[0\]"):
        fingerprint(Holder([threading.Lock()]))
    with pytest.raises(UnfingerprintableError, match=r"at value\.a\['k'\]"):
        fingerprint(Plain({"k": iter([1])}))


@pytest.mark.parametrize(
    "make",
    [
        lambda: iter([1, 2]),
        lambda: map(str, [1]),
        threading.Lock,
        threading.RLock,
        lambda: threading.Thread(target=print),
        lambda: open(os.devnull),  # noqa: SIM115
    ],
    ids=["list_iterator", "map", "lock", "rlock", "thread", "file"],
)
def test_unfingerprintable_kinds(make: Any) -> None:
    value = make()
    try:
        with pytest.raises(UnfingerprintableError):
            fingerprint(value)
        with pytest.raises(TypeError):  # UnfingerprintableError is a TypeError too
            fingerprint([value])
    finally:
        if hasattr(value, "close"):
            value.close()


def test_socket_is_refused() -> None:
    import socket

    with socket.socket() as s, pytest.raises(UnfingerprintableError, match="live resource"):
        fingerprint(s)


# -- registry ---------------------------------------------------------------------------------------------


class Unpicklable:
    def __init__(self, key: str) -> None:
        self.key = key
        self.lock = threading.Lock()


def test_register_beats_the_generic_rule() -> None:
    with pytest.raises(UnfingerprintableError):
        fingerprint(Unpicklable("a"))
    register(Unpicklable, lambda u: u.key)
    try:
        assert fingerprint(Unpicklable("a")) == fingerprint(Unpicklable("a"))
        assert fingerprint(Unpicklable("a")) != fingerprint(Unpicklable("b"))
        assert fingerprint(Unpicklable("a")) != fingerprint("a")  # tagged with the registered type

        class Sub(Unpicklable):
            pass

        assert fingerprint(Sub("a")) == fingerprint(Unpicklable("a"))  # found through the MRO
    finally:
        unregister(Unpicklable)
    with pytest.raises(UnfingerprintableError):
        fingerprint(Unpicklable("a"))


def test_register_overrides_builtins_and_library_types() -> None:
    before = fingerprint(np.arange(3))
    register(np.ndarray, lambda a: a.tolist())
    try:
        assert fingerprint(np.arange(3)) != before
        assert fingerprint(np.arange(3)) == fingerprint(np.array([0, 1, 2]))
    finally:
        unregister(np.ndarray)
    assert fingerprint(np.arange(3)) == before

    register(int, lambda i: str(i))
    try:
        assert fingerprint(5) != Fingerprinter().update(5.0).hexdigest()
        assert fingerprint((5,)) == fingerprint((5,))
    finally:
        unregister(int)
    assert fingerprint(5) == Fingerprinter().update(5).hexdigest()


def test_register_validates_arguments() -> None:
    with pytest.raises(UnfingerprintableError, match="needs a class"):
        register("not a type", str)  # type: ignore[arg-type]
    with pytest.raises(UnfingerprintableError, match="callable"):
        register(Plain, 42)  # type: ignore[arg-type]
    with pytest.raises(UnfingerprintableError, match="object"):
        register(object, str)


def test_registered_function_errors_are_reported() -> None:
    class Boom:
        pass

    def explode(_: Boom) -> Any:
        raise ValueError("bad")

    register(Boom, explode)
    try:
        with pytest.raises(UnfingerprintableError, match=r"'Boom' at value\[0\].*ValueError: bad"):
            fingerprint([Boom()])
    finally:
        unregister(Boom)


# -- streaming API ---------------------------------------------------------------------------------------


def test_fingerprint_many() -> None:
    a = fingerprint_many([("x", 1), ("y", "a")])
    assert a == fingerprint_many([("x", 1), ("y", "a")])
    assert a != fingerprint_many([("y", "a"), ("x", 1)])
    assert a != fingerprint_many([("x", 1), ("z", "a")])
    assert a != fingerprint_many([("x", 1)])
    assert fingerprint_many([]) != fingerprint_many([("x", None)])


# -- numpy -------------------------------------------------------------------------------------------------


def test_numpy_dtype_and_shape_count() -> None:
    base = np.arange(12, dtype=np.int32)
    same_bytes = base.view(np.float32)
    assert base.tobytes() == same_bytes.tobytes()
    digests = {
        fingerprint(base),
        fingerprint(same_bytes),
        fingerprint(base.reshape(3, 4)),
        fingerprint(base.reshape(4, 3)),
        fingerprint(base.astype(">i4")),
        fingerprint(base.tolist()),
        fingerprint(np.int32(3)),
        fingerprint(np.array(3, dtype=np.int32)),
        fingerprint(np.dtype("int32")),
        fingerprint(np.dtype("int64")),
    }
    assert len(digests) == 10
    assert fingerprint(np.arange(12, dtype=np.int32)) == fingerprint(base)
    assert fingerprint(np.float64(1.5)) == fingerprint(np.float64(1.5))
    assert fingerprint(np.float64(1.5)) != fingerprint(1.5)


def test_numpy_layout_does_not_matter() -> None:
    a = np.arange(10_000, dtype=np.float64).reshape(100, 100)
    assert fingerprint(a[::2]) == fingerprint(a[::2].copy())
    assert fingerprint(a[:, 1::3]) == fingerprint(np.ascontiguousarray(a[:, 1::3]))
    f = np.asfortranarray(a)
    assert not f.flags.c_contiguous
    assert fingerprint(f) == fingerprint(a)
    assert fingerprint(a.T) == fingerprint(a.T.copy())
    assert fingerprint(a.T) != fingerprint(a)
    big_rows = np.arange(3 * 600_000, dtype=np.float64).reshape(3, 600_000)[:, ::3]  # rows over a chunk
    assert fingerprint(big_rows) == fingerprint(big_rows.copy())


def test_numpy_object_and_structured_arrays() -> None:
    objs = np.array([1, "a", None, (1, 2)], dtype=object)
    assert fingerprint(objs) == fingerprint(np.array([1, "a", None, (1, 2)], dtype=object))
    assert fingerprint(objs) != fingerprint(np.array([1, "b", None, (1, 2)], dtype=object))
    assert fingerprint(objs[::2]) == fingerprint(objs[::2].copy())
    gen_array = np.array([None, (i for i in [])], dtype=object)
    with pytest.raises(UnfingerprintableError, match=r"value\[1\]"):
        fingerprint(gen_array)

    dtype = np.dtype({"names": ["a", "b"], "formats": ["u1", "<f8"], "offsets": [0, 8], "itemsize": 16})
    x = np.zeros(3, dtype=dtype)
    y = np.empty(3, dtype=dtype)
    y.view(np.uint8)[:] = 0xAB  # garbage in the padding bytes
    y["a"] = 0
    y["b"] = 0.0
    assert fingerprint(x) == fingerprint(y)
    y["b"][1] = 1.0
    assert fingerprint(x) != fingerprint(y)


def test_numpy_masked_array() -> None:
    a = np.ma.array([1, 2, 3], mask=[0, 1, 0])
    b = np.ma.array([1, 2, 3], mask=[0, 0, 0])
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) == fingerprint(np.ma.array([1, 2, 3], mask=[0, 1, 0]))


def test_large_array_is_hashed_without_copying() -> None:
    a = np.ones(25_000_000, dtype=np.float64)  # 200 MB
    fingerprint(a[:10])  # warm up caches outside the measurement
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fingerprint(a)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.reset_peak()
        fingerprint(a[::2])  # non-contiguous: copied in bounded blocks
        peak_strided = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20
    assert peak_strided < 10 * 2**20


def test_large_array_throughput_report() -> None:
    """Prints GB/s for a 1 GB float64 array; asserts only correctness (timings vary by machine)."""
    a = np.random.default_rng(0).random(2**27)  # 1 GiB
    gb = a.nbytes / 1e9
    t0 = time.perf_counter()
    d1 = fingerprint(a)
    t_hash = time.perf_counter() - t0
    t0 = time.perf_counter()
    c = a.copy()
    t_copy = time.perf_counter() - t0
    d2 = fingerprint(c)
    del c
    a[-1] += 1.0
    assert fingerprint(a) != d1
    assert d1 == d2
    print(f"\nfingerprint 1 GB float64: {gb / t_hash:.1f} GB/s; arr.copy(): {gb / t_copy:.1f} GB/s")


# -- pandas -------------------------------------------------------------------------------------------------


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5], "c": ["x", "y", "z"]})


def test_dataframe_equal_and_different() -> None:
    df = _frame()
    assert fingerprint(df) == fingerprint(_frame())
    variants = [
        df.rename(columns={"a": "A"}),
        df.set_axis([1, 2, 3]),
        df.set_axis(pd.Index([0, 1, 2], name="i")),
        df.astype({"a": "int32"}),
        df.astype({"a": "float64"}),
        df.astype({"c": "object"}),
        df.astype({"c": "category"}),
        df[["b", "a", "c"]],
        df.iloc[:2],
        df.assign(b=[0.5, 1.5, 2.6]),
        df.assign(c=["x", "y", "w"]),
        df.rename_axis(columns="cols"),
    ]
    digests = {fingerprint(df)} | {fingerprint(v) for v in variants}
    assert len(digests) == len(variants) + 1


def test_dataframe_views_and_copies_agree() -> None:
    big = pd.DataFrame(np.arange(30.0).reshape(10, 3), columns=list("abc"))
    assert fingerprint(big.iloc[::2].reset_index(drop=True)) == fingerprint(big.iloc[::2].copy().reset_index(drop=True))
    assert fingerprint(big[["a"]]) == fingerprint(big[["a"]].copy())


def test_dataframe_columns_as_stored_hash_as_through_iloc(monkeypatch: pytest.MonkeyPatch) -> None:
    # Numeric columns are read as the frame stores them (faster than a Series per column); the digest is
    # the one the public path (iloc, then .array) gives, for every kind of column and layout.
    blocks = np.arange(24.0).reshape(6, 4)
    frames = [
        _frame(),
        pd.DataFrame({"i8": np.arange(3, dtype=np.int8), "u2": np.arange(3, dtype=np.uint16),
                      "f4": np.ones(3, dtype=np.float32), "c": np.ones(3, dtype=complex), "b": [True, False, True]}),
        pd.DataFrame(blocks, columns=list("abcd")),  # one 2D block, column-major as given
        pd.DataFrame(blocks.T.copy().T, columns=list("abcd")).iloc[::2],  # strided
        pd.DataFrame(blocks, columns=["x", "x", "y", "x"]),  # duplicate labels
        pd.DataFrame(blocks, columns=pd.MultiIndex.from_product([["p", "q"], [1, 2]])),
        pd.DataFrame({"t": pd.to_datetime(["2024-01-01", None, "2024-03-01"]), "n": [1, 2, 3]}),
        pd.DataFrame({"z": pd.to_datetime(["2024-01-01", None]).tz_localize("UTC"),
                      "d": pd.to_timedelta(["1D", "2D"])}),
        pd.DataFrame({"m": pd.array([1, None, 3], dtype="Int64"), "k": pd.Categorical(["a", "b", "a"])}),
        pd.DataFrame({"o": pd.Series([1, "a", None], dtype=object), "s": ["x", "y", "z"]}),
        pd.DataFrame({"a": np.array([], dtype=float), "b": np.array([], dtype=np.int64)}),
    ]
    fast = [fingerprint(frame) for frame in frames]
    assert len(set(fast)) == len(frames)
    monkeypatch.setattr(pd.DataFrame, "_iter_column_arrays", None, raising=False)  # pandas-private: may go
    assert [fingerprint(frame) for frame in frames] == fast


def test_pandas_object_columns_and_extension_types() -> None:
    class Thing:
        def __init__(self, v: int) -> None:
            self.v = v

    a = pd.DataFrame({"o": pd.Series([Thing(1), Thing(2)], dtype=object)})
    b = pd.DataFrame({"o": pd.Series([Thing(1), Thing(2)], dtype=object)})
    c = pd.DataFrame({"o": pd.Series([Thing(1), Thing(3)], dtype=object)})
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(c)

    samples = [
        pd.Series([1, None, 3], dtype="Int64"),
        pd.Series([1, 2, 3], dtype="Int64"),
        pd.Series([1.0, np.nan, 3.0]),
        pd.Series(pd.to_datetime(["2024-01-01", None])),
        pd.Series(pd.to_datetime(["2024-01-01", None]).tz_localize("UTC")),
        pd.Series(pd.to_datetime(["2024-01-01", None]).tz_localize("Europe/Paris")),
        pd.Series(pd.to_timedelta(["1D", "2D"])),
        pd.Series(pd.period_range("2024-01", periods=2, freq="M")),
        pd.Series(pd.Categorical(["a", "b", "a"])),
        pd.Series(pd.Categorical(["a", "b", "a"], categories=["b", "a"])),
        pd.Series(pd.Categorical(["a", "b", "a"], ordered=True)),
        pd.Series(["a", None, "c"], dtype="string"),
        pd.Series(["a", None, "c"]),
        pd.Series(["a", None, "c"], dtype=object),
        pd.Series([pd.Interval(0, 1), pd.Interval(1, 2)]),
        pd.Series([1, 2], name="named"),
    ]
    digests = [fingerprint(s) for s in samples]
    assert len(set(digests)) == len(samples)
    # NA positions in a masked array hold arbitrary data; equal arrays must still agree
    m1 = pd.array([1, None], dtype="Int64")
    m2 = pd.array([1, 5], dtype="Int64")
    m2[1] = None
    assert fingerprint(m1) == fingerprint(m2)


def test_pandas_indexes() -> None:
    mi = pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1)], names=["k", "n"])
    assert fingerprint(mi) == fingerprint(pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1)], names=["k", "n"]))
    assert fingerprint(mi) != fingerprint(mi.set_names(["k", "m"]))
    sliced = mi[:2]  # keeps the unused level value "b"
    rebuilt = pd.MultiIndex.from_tuples([("a", 1), ("a", 2)], names=["k", "n"])
    assert fingerprint(sliced) == fingerprint(rebuilt)
    assert fingerprint(pd.RangeIndex(3)) != fingerprint(pd.RangeIndex(4))
    assert fingerprint(pd.RangeIndex(3)) == fingerprint(pd.RangeIndex(0, 3))
    assert fingerprint(pd.Index([1, 2])) != fingerprint(pd.Index([1, 2], name="x"))
    assert fingerprint(pd.date_range("2024", periods=3, tz="UTC")) != fingerprint(pd.date_range("2024", periods=3))
    frame = pd.DataFrame({"v": [1, 2, 3]}, index=mi)
    assert fingerprint(frame) != fingerprint(frame.reset_index())


def test_pandas_scalars() -> None:
    values = [pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-01", tz="UTC"), pd.Timedelta("1D"), pd.NaT, pd.NA]
    values += [pd.Period("2024-01", freq="M"), dt.datetime(2024, 1, 1)]
    assert len({fingerprint(v) for v in values}) == len(values)


def test_pyarrow_tables() -> None:
    import pyarrow as pa  # in the test extra: a missing install must fail, not skip
    t1 = pa.table({"a": [1, 2, 3], "s": ["x", None, "z"]})
    t2 = pa.concat_tables([t1.slice(0, 1), t1.slice(1)])
    assert fingerprint(t1) == fingerprint(t2)  # chunking does not count
    assert fingerprint(t1) != fingerprint(t1.rename_columns(["b", "s"]))
    assert fingerprint(pa.array([1, 2])) != fingerprint(pa.array([1, 3]))


# -- stability across processes ------------------------------------------------------------------------------

_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from nbflow.hashing import code_identity, fingerprint
import stable_mod
out = {
    "strings": fingerprint({"alpha", "beta", "gamma", "delta", "épsilon"}),
    "mixed": fingerprint({1: "a", "b": 2, (3, "c"): [4.5, None], frozenset({"x"}): b"y"}),
    "frozen": fingerprint(frozenset({"p", "q", ("r", 1)})),
    "nested": fingerprint([{"k": {"a", "b"}}, ("t", 1)]),
    "code": code_identity(stable_mod.compute),
    "object": fingerprint(stable_mod.Config("a", [1, 2])),
}
print(json.dumps(out))
"""

_STABLE_MOD = '''
import dataclasses
import json

FACTOR = 3


def helper(x):
    return x * FACTOR


def compute(items):
    """Docstring."""
    return [helper(i) for i in items] + [json.dumps(items)]


@dataclasses.dataclass
class Config:
    name: str
    values: list

    def total(self):
        return sum(self.values)
'''


def test_stable_across_processes_and_hash_seeds(tmp_path: pathlib.Path) -> None:
    (tmp_path / "stable_mod.py").write_text(textwrap.dedent(_STABLE_MOD))
    outputs = []
    for seed in ("1", "2", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", _SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True, check=True
        )
        outputs.append(json.loads(proc.stdout))
    assert outputs[0] == outputs[1] == outputs[2]


def test_import_does_not_load_heavy_libraries() -> None:
    code = (
        "import sys; import nbflow.hashing as h; h.fingerprint((1, 'a', {'b': 2.0}));"
        "print(sorted(m for m in ('numpy', 'pandas', 'pyarrow', 'IPython', 'pydantic') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_handlers_are_resolved_by_name_not_import() -> None:
    # the lazily-recognised types all go through the per-type cache, not isinstance checks
    fingerprint(np.float32(1))
    assert values_mod._HANDLERS[np.float32] is values_mod._h_np_scalar


def test_vectorized_runs_write_the_same_bytes_as_the_element_loop() -> None:
    runs: list[list[Any]] = [
        ["a", "é", "x" * 100_000, 1, -(2**70), 2.5, math.nan, None, True, ""] * 5,
        [f"s{i}" for i in range(1000)],
    ]
    for items in runs:
        fast = values_mod._Enc()
        assert values_mod._enc_leaf_run(fast, items)
        slow = values_mod._Enc()
        for x in items:
            values_mod._HANDLERS[type(x)](slow, x)
        assert fast.digest() == slow.digest()
    # refused, writing nothing: containers, bytes (streamed one by one), runs too large to join
    for refused in ([1, [2]], [b"raw", 1], ["x" * 3_000_000, "y" * 3_000_000]):
        enc = values_mod._Enc()
        assert not values_mod._enc_leaf_run(enc, refused)
        assert not enc.buf


def test_long_containers() -> None:
    strs = [f"file-{i}.csv" for i in range(5000)]
    assert fingerprint(set(strs)) == fingerprint(set(reversed(strs)))
    assert fingerprint(strs) != fingerprint(strs[::-1])
    mixed: list[Any] = [*range(40_000), [1], "tail"]  # the first block is plain, the second is not
    assert fingerprint(mixed) == fingerprint(list(mixed))
    assert fingerprint(mixed) != fingerprint([*range(40_000), [2], "tail"])
    with pytest.raises(UnfingerprintableError, match=r"at value\[40001\]"):
        fingerprint([*range(40_001), iter([])])


def test_flag_enums() -> None:
    class Perm(enum.Flag):
        R = 4
        W = 2
        X = 1

    assert fingerprint(Perm.R | Perm.W) != fingerprint(Perm.R | Perm.X)
    assert fingerprint(Perm.R | Perm.W) == fingerprint(Perm.W | Perm.R)
    assert fingerprint(Perm.R) != fingerprint(Perm.W)


# Nested plain values of every kind the fast path encodes inline (and some it hands back to the full one).
_PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: (st.lists(children, max_size=5) | st.tuples(children, children)
                      | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=5)
                      | st.frozensets(st.integers() | st.text(max_size=5), max_size=4)),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=_PLAIN)
def test_fast_path_matches_full_encoder_on_random_values(value: Any) -> None:
    # fingerprint() takes the fast path where it can; the streaming Fingerprinter always runs the full one.
    assert Fingerprinter().update(value).hexdigest() == fingerprint(value)


def test_a_scikit_learn_bunch_fingerprints_by_its_items_as_loaded_from_the_store() -> None:
    # sklearn.utils.Bunch (what load_digits() returns) keeps a private table in __dict__ that its __setstate__
    # drops. Stand-in with its module and name (scikit-learn is not among the test dependencies).

    from nbflow.hashing import fingerprint

    class Bunch(dict):  # type: ignore[type-arg]
        def __init__(self, **items: object) -> None:
            super().__init__(items)
            self.__dict__["_deprecated_key_to_warnings"] = {}

        def __setstate__(self, state: object) -> None:
            pass

    Bunch.__module__ = "sklearn.utils._bunch"
    Bunch.__qualname__ = "Bunch"
    fresh = Bunch(data=[1, 2, 3], target=[0, 1])
    restored = dict.__new__(Bunch)
    restored.update(fresh)  # what unpickling builds: the items, and no __dict__
    assert restored.__dict__ == {} and fresh.__dict__
    assert fingerprint(restored) == fingerprint(fresh)
    assert fingerprint(Bunch(data=[1, 2, 4], target=[0, 1])) != fingerprint(fresh)
