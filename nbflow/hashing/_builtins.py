"""Encodings of the builtin scalars and containers, and of runs of plain scalars (long lists, object arrays).

Part of :mod:`nbflow.hashing.values`; the walk they take part in (cycles, shared objects, the budget) is
:mod:`nbflow.hashing._encoder`'s.
"""

from __future__ import annotations

import operator
import struct
import sys
from collections.abc import Callable, Iterable
from itertools import chain, islice, repeat
from typing import Any

from nbflow.hashing import _encoder
from nbflow.hashing._encoder import (
    _BIG,
    _FLUSH,
    _I64,
    _NAN,
    _OBJ_CHUNK,
    SHARED_INLINE,
    _abandon,
    _checkpoint,
    _done,
    _Enc,
    _enc_at,
    _Fail,
    _index_of,
    _label,
    _pack_cd,
    _pack_cQ,
    _pack_cq,
    _pack_d,
    _pack_I,
    _pack_Q,
    _resolve,
    _sb,
    _tick,
    _utf8,
    _visit,
)

# Assigned, not imported: CPython 3.11 compiles `name.get(...)` into a slower attribute load (no method-call
# fast path) when `name` comes from an import statement, and this is looked up for every element.
_HANDLERS = _encoder._HANDLERS


# -- scalars ---------------------------------------------------------------------------------------


def _bigint(v: int) -> bytes:
    b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"I" + _pack_Q(len(b)) + b


def _b_none(v: None) -> bytes:
    return b"n"


def _b_bool(v: bool) -> bytes:
    return b"T" if v else b"F"


def _b_int(v: int) -> bytes:
    try:
        return _pack_cq(b"i", v)
    except struct.error:  # beyond 64 bits
        return _bigint(v)


def _b_float(v: float) -> bytes:
    # All NaNs are one value for a cache key; -0.0 and 0.0 stay distinct (struct keeps the sign).
    return _pack_cd(b"f", v) if v == v else b"f" + _NAN


def _b_str(v: str) -> bytes:
    try:
        b = v.encode()
    except UnicodeEncodeError:
        b = _utf8(v)
    return _pack_cQ(b"s", len(b)) + b


def _b_bytes(v: bytes) -> bytes:
    return b"b" + _pack_Q(len(v)) + v


_LEAF: dict[type, Callable[[Any], bytes]] = {
    type(None): _b_none,
    bool: _b_bool,
    int: _b_int,
    float: _b_float,
    str: _b_str,
    bytes: _b_bytes,
}


def _h_none(enc: _Enc, v: None) -> None:
    enc.buf += b"n"


def _h_bool(enc: _Enc, v: bool) -> None:
    enc.buf += b"T" if v else b"F"


def _h_int(enc: _Enc, v: int) -> None:
    if -_I64 <= v < _I64:
        enc.buf += _pack_cq(b"i", v)
    else:
        b = _bigint(v)
        enc.write(b, len(b))


def _h_float(enc: _Enc, v: float) -> None:
    enc.buf += _pack_cd(b"f", v) if v == v else b"f" + _NAN


def _h_complex(enc: _Enc, v: complex) -> None:
    re_, im = v.real, v.imag
    enc.buf += b"c" + (_NAN if re_ != re_ else _pack_d(re_)) + (_NAN if im != im else _pack_d(im))


def _h_str(enc: _Enc, v: str) -> None:
    try:
        b = v.encode()
    except UnicodeEncodeError:
        b = _utf8(v)
    n = len(b)
    if n > _BIG:
        enc.buf += _pack_cQ(b"s", n)
        enc.feed(b)
    else:
        enc.buf += _pack_cQ(b"s", n) + b


def _h_bytes(enc: _Enc, v: bytes) -> None:
    n = len(v)
    if n > _BIG:
        enc.buf += b"b" + _pack_Q(n)
        enc.feed(v)
    else:
        enc.buf += b"b" + _pack_Q(n) + v


def _h_bytearray(enc: _Enc, v: bytearray) -> None:
    enc.buf += b"B" + _pack_Q(len(v))
    enc.write(v, len(v))


def _h_memoryview(enc: _Enc, v: memoryview) -> None:
    enc.buf += b"m" + _sb(v.format) + _pack_Q(v.ndim) + b"".join(_pack_Q(n) for n in v.shape or ())
    if v.c_contiguous:
        enc.write(v.cast("B"), v.nbytes)
    else:
        enc.write(v.tobytes(), v.nbytes)


def _h_ellipsis(enc: _Enc, v: object) -> None:
    enc.buf += b"."


def _h_notimplemented(enc: _Enc, v: object) -> None:
    enc.buf += b"!"


def _h_range(enc: _Enc, v: range) -> None:
    enc.buf += b"r" + _b_int(v.start) + _b_int(v.stop) + _b_int(v.step)


def _h_slice(enc: _Enc, v: slice) -> None:
    enc.buf += b"l"
    _enc_at(enc, v.start, ".start")
    _enc_at(enc, v.stop, ".stop")
    _enc_at(enc, v.step, ".step")


# -- containers ------------------------------------------------------------------------------------


def _enc_items(enc: _Enc, v: tuple[Any, ...] | list[Any]) -> None:
    handlers = _HANDLERS
    if len(v) <= 256:
        try:
            for x in v:
                h = handlers.get(type(x))
                if h is None:
                    h = _resolve(type(x))
                h(enc, x)
        except _Fail as e:
            e.path.append(f"[{_index_of(v, x)}]")
            raise
        return
    # Long runs of plain scalars (file lists, ids) are encoded a block at a time at C speed; the
    # first block that holds anything else hands over to the element loop.
    for start in range(0, len(v), _OBJ_CHUNK):
        if not _enc_leaf_run(enc, list(v[start : start + _OBJ_CHUNK])):
            break
    else:
        return
    try:
        for x in islice(v, start, None):
            h = handlers.get(type(x))
            if h is None:
                h = _resolve(type(x))
            h(enc, x)
            if len(enc.buf) > _FLUSH:
                enc.feed(b"")
    except _Fail as e:
        e.path.append(f"[{_index_of(v, x)}]")
        raise


def _h_tuple(enc: _Enc, v: tuple[Any, ...]) -> None:
    # Tuples are not tracked for cycles: a cycle through a tuple must pass a mutable container,
    # which is tracked, so the walk still ends. Nor are they shared by reference: a tuple is a value (the
    # compiler itself shares equal constant tuples), so the budget alone bounds a graph made of them.
    n = enc.nodes = enc.nodes + 1  # _tick, inline: tuples are the most common container in large values
    if n >= enc.check_at:
        _checkpoint(enc, v)
    enc.buf += b"(" + _pack_Q(len(v))
    _enc_items(enc, v)


def _h_list(enc: _Enc, v: list[Any]) -> None:
    # _visit / _done / _abandon, inline: lists and dicts are most of the nodes of large values.
    n = enc.nodes = enc.nodes + 1
    if n >= enc.check_at:
        _checkpoint(enc, v)
    seen = enc.seen
    key = id(v)
    s = seen.get(key)
    if s is not None:
        enc.buf += b"^" + _pack_I(enc.depth - ~s) if s < 0 else b"&" + _pack_I(s)
        return
    depth = enc.depth
    seen[key] = ~depth
    enc.depth = depth + 1
    try:
        enc.buf += b"[" + _pack_Q(len(v))
        _enc_items(enc, v)
    except BaseException:
        enc.depth = depth
        del seen[key]
        raise
    enc.depth = depth
    if enc.nodes - n > SHARED_INLINE:
        seen[key] = len(enc.keep)
        enc.keep.append(v)
    else:
        del seen[key]


def _key_kind(keys: Iterable[Any]) -> int:
    """1 if all keys are exactly str, 2 if all exactly int, else 0 (sort by digest)."""
    kind = -1
    for k in keys:
        t = type(k)
        if t is str:
            if kind == 2:
                return 0
            kind = 1
        elif t is int:
            if kind == 1:
                return 0
            kind = 2
        else:
            return 0
    return kind if kind > 0 else 1


def _first(entry: tuple[bytes, Any, Any]) -> bytes:
    return entry[0]


def _enc_dict_body(enc: _Enc, d: dict[Any, Any], attrs: bool = False) -> None:
    n = len(d)
    kind = _key_kind(d)
    if kind == 1:
        enc.buf += b"{s" + _pack_Q(n)
        for k in sorted(d):
            b = _utf8(k)
            enc.buf += _pack_Q(len(b)) + b
            x = d[k]
            try:
                h = _HANDLERS.get(type(x))
                if h is None:
                    h = _resolve(type(x))
                h(enc, x)
            except _Fail as e:
                e.path.append(f".{k}" if attrs and k.isidentifier() else _label(k))
                raise
        return
    if kind == 2:
        enc.buf += b"{i" + _pack_Q(n)
        for k in sorted(d):
            enc.buf += _b_int(k)
            _enc_at(enc, d[k], _label(k))
        return
    entries: list[tuple[bytes, Any, Any]] = []
    for k, x in list(d.items()):
        try:
            entries.append((enc.sub_digest(k), x, k))
        except _Fail as e:
            e.path.append(f"<key {_label(k)[1:-1]}>")
            raise
    entries.sort(key=_first)
    _break_ties(enc, entries)
    enc.buf += b"{h" + _pack_Q(n)
    for kd, x, k in entries:
        enc.buf += kd
        _enc_at(enc, x, _label(k))


def _break_ties(enc: _Enc, entries: list[tuple[bytes, Any, Any]]) -> None:
    """Order entries whose keys digest the same (distinct but equal-looking keys) by their values."""
    i, n = 0, len(entries)
    while i < n - 1:
        j = i + 1
        while j < n and entries[j][0] == entries[i][0]:
            j += 1
        if j - i > 1:
            group = sorted(entries[i:j], key=lambda e: enc.sub_digest(e[1]))
            entries[i:j] = group
        i = j


def _h_dict(enc: _Enc, v: dict[Any, Any]) -> None:
    # As _h_list.
    n = enc.nodes = enc.nodes + 1
    if n >= enc.check_at:
        _checkpoint(enc, v)
    seen = enc.seen
    key = id(v)
    s = seen.get(key)
    if s is not None:
        enc.buf += b"^" + _pack_I(enc.depth - ~s) if s < 0 else b"&" + _pack_I(s)
        return
    depth = enc.depth
    seen[key] = ~depth
    enc.depth = depth + 1
    try:
        _enc_dict_body(enc, v)
    except BaseException:
        enc.depth = depth
        del seen[key]
        raise
    enc.depth = depth
    if enc.nodes - n > SHARED_INLINE:
        seen[key] = len(enc.keep)
        enc.keep.append(v)
    else:
        del seen[key]


def _enc_set_body(enc: _Enc, v: set[Any] | frozenset[Any], tag: bytes) -> None:
    kind = _key_kind(v)
    n = len(v)
    if kind:
        enc.buf += tag + (b"s" if kind == 1 else b"i") + _pack_Q(n)
        items = sorted(v)
        if n <= 16 or not _enc_leaf_run(enc, items):
            for x in items:
                (_h_str if kind == 1 else _h_int)(enc, x)
    else:
        digests = []
        for x in v:
            try:
                digests.append(enc.sub_digest(x))
            except _Fail as e:
                e.path.append(f"{{{_label(x)[1:-1]}}}")
                raise
        digests.sort()
        enc.buf += tag + b"h" + _pack_Q(n) + b"".join(digests)


def _h_set(enc: _Enc, v: set[Any]) -> None:
    n = _visit(enc, v)
    if not n:
        return
    try:
        _enc_set_body(enc, v, b"S")
    except BaseException:
        _abandon(enc, v)
        raise
    _done(enc, v, n)


def _h_frozenset(enc: _Enc, v: frozenset[Any]) -> None:
    _tick(enc, v)
    _enc_set_body(enc, v, b"Z")


# -- runs of plain scalars and elements of object arrays -------------------------------------------


def _leaf_call(fn: Callable[[Any], bytes], x: Any) -> bytes:
    return fn(x)


_call: Callable[[Callable[[Any], bytes], Any], bytes] = getattr(operator, "call", _leaf_call)  # 3.11+

# The scalar types encoded by _enc_leaf_run, unless a registration took one over (values._reset_handlers).
_FAST_LEAF: dict[type, Callable[[Any], bytes]] = {}


def _enc_leaf_run(enc: _Enc, items: list[Any]) -> int:
    """Encode a list made only of plain scalars in one go (C-level maps instead of a Python loop).

    Writes exactly what the element-by-element encoding would; returns False (0), writing nothing, when
    some element is not a plain scalar; else :data:`_STR_RUN` (2) when every element is exactly a ``str``,
    1 otherwise.
    """
    kinds = set(map(type, items))
    if kinds == _STR_ONLY and str in _FAST_LEAF and len(items) >= 256 and "numpy" in sys.modules:
        data = _str_run(items, sys.modules["numpy"])
        if data is None:
            return False
        enc.write(data, data.nbytes)
        return _STR_RUN
    if kinds == _STR_ONLY and str in _FAST_LEAF:
        # The run is joined into one bytes object: only for modest sizes; long strings go through
        # the element loop, which streams each one to the hasher.
        if sum(map(len, items)) > _RUN_CHARS:
            return False
        try:
            encoded = list(map(str.encode, items))
        except UnicodeEncodeError:
            return False
        heads = map(_pack_cQ, repeat(b"s"), map(len, encoded))
        data = b"".join(chain.from_iterable(zip(heads, encoded)))
        enc.write(data, len(data))
        return _STR_RUN
    elif kinds <= _RUN_KINDS and kinds <= _FAST_LEAF.keys():
        if str in kinds and sum(map(len, filter(_is_str, items))) > _RUN_CHARS:
            return False
        data = b"".join(map(_call, map(_FAST_LEAF.__getitem__, map(type, items)), items))
    else:
        return False
    enc.write(data, len(data))
    return True


_STR_ONLY = {str}
_STR_RUN = 2


def utf8_pieces(items: list[str], joined: str, np: Any) -> tuple[bytes, Any] | None:
    """The UTF-8 bytes of ``items`` one after another (``joined`` is ``"".join(items)``) and each one's length in
    bytes (int64); None when some string cannot be encoded strictly (lone surrogates)."""
    if joined.isascii():  # one byte per character: the lengths are the strings' own
        return joined.encode(), np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    try:
        encoded = list(map(str.encode, items))
    except UnicodeEncodeError:
        return None
    return b"".join(encoded), np.fromiter(map(len, encoded), dtype=np.int64, count=len(items))


def _str_run(items: list[str], np: Any) -> Any:
    """The encoding of a run of strings (``s`` + 8-byte length + UTF-8 bytes each), as a uint8 array, built
    with numpy: the same bytes as the element-by-element encoding at about half the cost (no bytes object
    per header, no Python-level join of 2 n pieces). None when the run is too long or some string cannot
    be encoded strictly (the element loop then handles it)."""
    joined = "".join(items)
    if len(joined) > _RUN_CHARS:
        return None
    n = len(items)
    pieces = utf8_pieces(items, joined, np)
    if pieces is None:
        return None
    data, lengths = pieces
    heads = np.arange(0, 9 * n, 9, dtype=np.int64)  # where each element's 9-byte header starts
    heads[1:] += np.cumsum(lengths[:-1])
    header = np.empty(n, dtype=[("t", "u1"), ("n", "<u8")])  # packed: 9 bytes, as _pack_cQ writes
    header["t"] = ord("s")
    header["n"] = lengths
    out = np.empty(9 * n + len(data), dtype=np.uint8)
    in_header = (heads[:, None] + np.arange(9)).ravel()
    is_data = np.ones(len(out), dtype=bool)
    is_data[in_header] = False
    out[in_header] = header.view(np.uint8)
    out[is_data] = np.frombuffer(data, dtype=np.uint8)
    return out


_RUN_KINDS = frozenset({int, float, bool, str, type(None)})  # bytes stay with the streaming loop
_RUN_CHARS = 1 << 22
_is_str: Callable[[Any], bool] = str.__instancecheck__


def _enc_object_elements(enc: _Enc, items: Iterable[Any], base: int) -> bool:
    """Encode the elements of an object array (or list) one after the other. True when they were all exactly
    ``str`` and went as one run (an encoding that depends on nothing but the strings)."""
    if type(items) is list and len(items) > 16:
        run = _enc_leaf_run(enc, items)
        if run:
            return run == _STR_RUN
    i = base
    for x in items:
        try:
            h = _HANDLERS.get(type(x))
            if h is None:
                h = _resolve(type(x))
            h(enc, x)
        except _Fail as e:
            e.path.append(f"[{i}]")
            raise
        i += 1
        if len(enc.buf) > _FLUSH:
            enc.feed(b"")
    return False
