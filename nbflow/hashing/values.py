"""Value fingerprints: a stable 128-bit digest of (almost) any Python value.

A fingerprint is ``xxh3_128`` over a stream of type-tagged, length-prefixed bytes that describes the
value (format version :data:`FORMAT_VERSION`). The stream is fed to one hasher as it is produced:
small pieces are gathered in a bounded buffer, large payloads (array buffers, long strings) go to the
hasher directly, so hashing never builds a copy of a large value.

Stability rules the encoding follows, so a digest survives a kernel restart:

* nothing depends on ``hash()``, ``id()``, memory addresses, set iteration order or ``repr`` output
  that may contain an address; ``id()`` is only used to notice cycles while walking a value;
* dicts are written in a canonical order (sorted keys when all keys are ``str`` or all ``int``,
  otherwise sorted by the digest of each key); sets are written as sorted element digests (or sorted
  elements when all are ``str`` or all ``int``), so ``{1: "a", "b": 2}`` digests the same whatever
  the insertion order or ``PYTHONHASHSEED``;
* every value carries a type tag and every variable-length part a length, so ``1``, ``1.0``,
  ``True``, ``"1"``, ``b"1"``, ``(1,)`` and ``[1]`` all differ, and so do ``("ab", "c")`` and
  ``("a", "bc")``.

Values are dispatched by exact type for the builtins; other types are resolved once per type (then
cached) in this order: handlers added with :func:`register` (walking the MRO), classes, things that
cannot be fingerprinted (generators, iterators, files, locks, threads, sockets), enum members,
named tuples, dataclasses, then known library types recognised by module and class name (numpy,
pandas, pyarrow, pydantic and a few stdlib types -- none of them is imported by this module, a value
of such a type can only exist once its library is imported), subclasses of builtins, and last any
picklable object, fingerprinted as its class identity plus the parts ``__reduce_ex__`` returns
(falling back to the pickle bytes when those parts cannot be fingerprinted).

Functions and classes defined in user code (``__main__``, notebook cells, modules of the user's
project) are fingerprinted by their code identity (:mod:`nbflow.hashing.code`), so editing such a
class changes the fingerprint of its instances.
"""

from __future__ import annotations

import math
import operator
import struct
import sys
import types
from collections.abc import Callable, Iterable
from itertools import chain, islice, repeat
from typing import Any, Final

import xxhash

from nbflow.exceptions import UnfingerprintableError

__all__ = [
    "FORMAT_VERSION",
    "Fingerprinter",
    "fingerprint",
    "fingerprint_many",
    "register",
    "unregister",
]

#: Version of the byte stream. Pinned digests in the tests only change together with this number.
FORMAT_VERSION: Final = 1

_Handler = Callable[["_Enc", Any], None]

_xxh3 = xxhash.xxh3_128
_digest = xxhash.xxh3_128_digest
_hexdigest = xxhash.xxh3_128_hexdigest
_pack_q = struct.Struct("<q").pack
_pack_Q = struct.Struct("<Q").pack
_pack_I = struct.Struct("<I").pack
_pack_d = struct.Struct("<d").pack
# Tag byte and payload in one call: the same bytes as tag + pack(...), measurably cheaper per value.
_pack_cq = struct.Struct("<cq").pack
_pack_cQ = struct.Struct("<cQ").pack
_pack_cd = struct.Struct("<cd").pack

_I64 = 1 << 63
# Payloads above _BIG bypass the buffer; the buffer itself is handed over once past _FLUSH. Together
# they bound the memory used by the encoder to roughly _FLUSH + the largest single small payload.
_BIG = 1 << 16
_FLUSH = 1 << 20
# Non-contiguous arrays are copied into C order in blocks of about this many bytes: small enough to
# stay in cache and keep peak memory low, large enough that the per-block overhead is negligible.
_CHUNK = 1 << 22
# Elements of an object array converted to a list at a time.
_OBJ_CHUNK = 1 << 15
_NAN = _pack_d(math.nan)
_MAX_RESOLVED = 4096


class _Fail(Exception):
    """Internal: a part of the value cannot be fingerprinted. Collects the path while unwinding."""

    def __init__(self, type_name: str, reason: str, final: bool = False) -> None:
        super().__init__(type_name, reason)
        self.type_name = type_name
        self.reason = reason
        self.final = final  # refused on purpose (a generator, a lock): no pickle fallback around it
        self.path: list[str] = []  # innermost component first

    def error(self, root: str) -> UnfingerprintableError:
        where = root + "".join(reversed(self.path))
        return UnfingerprintableError(f"cannot fingerprint value of type {self.type_name!r} at {where}: {self.reason}")


def _tname(v: object) -> str:
    return type(v).__name__


def _label(key: object) -> str:
    r = repr(key) if type(key) in (str, int, float, bool, bytes, type(None)) else f"<{_tname(key)}>"
    return f"[{r[:60]}]"


def _index_of(container: Iterable[Any], item: object) -> int:
    # Only called after a failure, so the success path never pays for enumerate().
    for i, x in enumerate(container):
        if x is item:
            return i
    return -1


class _Enc:
    """One fingerprint being computed: a bounded buffer in front of a lazily created hasher."""

    __slots__ = ("active", "buf", "flushes", "h", "memo")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.h: Any = None
        # id() of the containers being walked -> their depth, to emit back-references on cycles.
        self.active: dict[int, int] = {}
        self.flushes = 0
        # Code identities of user functions/classes met during this call (id -> (object, bytes)).
        self.memo: dict[int, tuple[object, bytes]] | None = None

    def feed(self, data: Any) -> None:
        """Hash ``data`` (any contiguous buffer) directly, after what is buffered."""
        h = self.h
        if h is None:
            h = self.h = _xxh3()
        buf = self.buf
        if buf:
            h.update(buf)
            buf.clear()
        h.update(data)
        self.flushes += 1

    def write(self, data: Any, nbytes: int) -> None:
        if nbytes > _BIG:
            self.feed(data)
        else:
            # Through a memoryview: `bytearray += ndarray` would be numpy's broadcasting addition.
            self.buf += memoryview(data)

    def digest(self) -> bytes:
        h = self.h
        if h is None:
            return _digest(self.buf)
        h.update(self.buf)
        return h.digest()

    def hexdigest(self) -> str:
        h = self.h
        if h is None:
            return _hexdigest(self.buf)
        h.update(self.buf)
        return h.hexdigest()

    def sub_digest(self, x: object) -> bytes:
        """Digest of ``x`` on its own (sharing cycle detection), used to order dict keys and sets."""
        buf, h = self.buf, self.h
        self.buf = bytearray()
        self.h = None
        try:
            _enc(self, x)
            return self.digest()
        finally:
            self.buf, self.h = buf, h


def _enc(enc: _Enc, x: object) -> None:
    h = _HANDLERS.get(type(x))
    if h is None:
        h = _resolve(type(x))
    h(enc, x)


def _enc_at(enc: _Enc, x: object, label: str) -> None:
    try:
        h = _HANDLERS.get(type(x))
        if h is None:
            h = _resolve(type(x))
        h(enc, x)
    except _Fail as e:
        e.path.append(label)
        raise


def _backref(enc: _Enc, depth: int) -> None:
    enc.buf += b"^" + _pack_I(len(enc.active) - depth)


# -- scalars ---------------------------------------------------------------------------------------


def _utf8(s: str) -> bytes:
    try:
        return s.encode()
    except UnicodeEncodeError:  # lone surrogates are legal in str; keep them distinct, don't fail
        return s.encode("utf-8", "surrogatepass")


def _sb(s: str) -> bytes:
    """A length-prefixed string, for names inside other encodings."""
    b = _utf8(s)
    return _pack_Q(len(b)) + b


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
    buf = enc.buf
    try:
        for x in islice(v, start, None):
            h = handlers.get(type(x))
            if h is None:
                h = _resolve(type(x))
            h(enc, x)
            if len(buf) > _FLUSH:
                enc.feed(b"")
    except _Fail as e:
        e.path.append(f"[{_index_of(v, x)}]")
        raise


def _h_tuple(enc: _Enc, v: tuple[Any, ...]) -> None:
    # Tuples are not tracked for cycles: a cycle through a tuple must pass a mutable container,
    # which is tracked, so the walk still ends.
    enc.buf += b"(" + _pack_Q(len(v))
    _enc_items(enc, v)


def _h_list(enc: _Enc, v: list[Any]) -> None:
    active = enc.active
    key = id(v)
    d = active.get(key)
    if d is not None:
        _backref(enc, d)
        return
    active[key] = len(active)
    try:
        enc.buf += b"[" + _pack_Q(len(v))
        _enc_items(enc, v)
    finally:
        del active[key]


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
    active = enc.active
    key = id(v)
    d = active.get(key)
    if d is not None:
        _backref(enc, d)
        return
    active[key] = len(active)
    try:
        _enc_dict_body(enc, v)
    finally:
        del active[key]


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
    active = enc.active
    key = id(v)
    d = active.get(key)
    if d is not None:
        _backref(enc, d)
        return
    active[key] = len(active)
    try:
        _enc_set_body(enc, v, b"S")
    finally:
        del active[key]


def _h_frozenset(enc: _Enc, v: frozenset[Any]) -> None:
    _enc_set_body(enc, v, b"Z")


# -- code objects: functions, classes, modules -----------------------------------------------------

_CODE: Any = None


def _code() -> Any:
    global _CODE
    if _CODE is None:
        from nbflow.hashing import code

        _CODE = code
    return _CODE


def _code_node(enc: _Enc, obj: object) -> bytes:
    """Code identity of a function or user class, memoized for the duration of this fingerprint."""
    memo = enc.memo
    if memo is not None:
        m = memo.get(id(obj))
        if m is not None and m[0] is obj:
            return m[1]
    node, clean = _code().value_node(obj)
    if clean:
        if memo is None:
            memo = enc.memo = {}
        memo[id(obj)] = (obj, node)
    return node


_EXT_CLASS_IDS: dict[type, bytes] = {}


def _class_id(enc: _Enc, cls: type) -> bytes:
    """Identity of a class: module + qualname, or the code identity for classes of user code."""
    r = _EXT_CLASS_IDS.get(cls)
    if r is not None:
        return r
    if _code().is_user_class(cls):
        return b"C" + _code_node(enc, cls)
    r = b"c" + _sb(str(cls.__module__)) + _sb(cls.__qualname__)
    if len(_EXT_CLASS_IDS) > _MAX_RESOLVED:
        _EXT_CLASS_IDS.clear()
    _EXT_CLASS_IDS[cls] = r
    return r


def _h_type(enc: _Enc, v: type) -> None:
    enc.buf += b"t" + _class_id(enc, v)


def _h_function(enc: _Enc, v: types.FunctionType) -> None:
    enc.buf += b"p" + _code_node(enc, v)


def _h_builtin(enc: _Enc, v: Any) -> None:
    # Builtin functions and methods: `len`, `math.sqrt`, `[].append` (bound to a list).
    owner = getattr(v, "__self__", None)
    mod = getattr(v, "__module__", None)
    if mod is None and isinstance(owner, types.ModuleType):
        mod = owner.__name__
    enc.buf += b"q" + _sb(str(mod)) + _sb(str(getattr(v, "__qualname__", v.__name__)))
    if owner is None or isinstance(owner, types.ModuleType):
        enc.buf += b"."
    else:
        enc.buf += b"@"
        _enc_at(enc, owner, ".__self__")


def _h_descriptor(enc: _Enc, v: Any) -> None:
    # Slot wrappers and method descriptors of builtin types: `str.upper`, `int.__add__`, `(1).__add__`.
    enc.buf += b"Q" + _class_id(enc, v.__objclass__) + _sb(v.__name__)
    owner = getattr(v, "__self__", None)
    if owner is None or isinstance(owner, type):
        enc.buf += b"."
    else:
        enc.buf += b"@"
        _enc_at(enc, owner, ".__self__")


def _h_method(enc: _Enc, v: types.MethodType) -> None:
    enc.buf += b"M"
    _enc_at(enc, v.__self__, ".__self__")
    _enc_at(enc, v.__func__, ".__func__")


def _h_wrapped_callable(enc: _Enc, v: Any) -> None:
    # staticmethod / classmethod objects
    enc.buf += b"w" + _sb(_tname(v))
    _enc_at(enc, v.__func__, ".__func__")


def _h_property(enc: _Enc, v: property) -> None:
    enc.buf += b"y"
    _enc_at(enc, v.fget, ".fget")
    _enc_at(enc, v.fset, ".fset")
    _enc_at(enc, v.fdel, ".fdel")


def _h_module(enc: _Enc, v: types.ModuleType) -> None:
    enc.buf += b"u" + _sb(v.__name__) + _sb(_code().module_version(v.__name__))


# -- stdlib types recognised by name ---------------------------------------------------------------


def _tz(enc: _Enc, tz: object) -> None:
    if tz is None:
        enc.buf += b"n"
    else:
        _enc_at(enc, tz, ".tzinfo")


def _h_datetime(enc: _Enc, v: Any) -> None:
    enc.buf += b"D" + struct.pack(
        "<iBBBBBIB", v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, v.fold
    )
    _tz(enc, v.tzinfo)


def _h_date(enc: _Enc, v: Any) -> None:
    enc.buf += b"d" + struct.pack("<iBB", v.year, v.month, v.day)


def _h_time(enc: _Enc, v: Any) -> None:
    enc.buf += b"h" + struct.pack("<BBBIB", v.hour, v.minute, v.second, v.microsecond, v.fold)
    _tz(enc, v.tzinfo)


def _h_timedelta(enc: _Enc, v: Any) -> None:
    enc.buf += b"e" + struct.pack("<qqq", v.days, v.seconds, v.microseconds)


def _h_timezone(enc: _Enc, v: Any) -> None:
    enc.buf += b"z"
    _enc_at(enc, v.__getinitargs__(), "")


def _h_decimal(enc: _Enc, v: Any) -> None:
    enc.buf += b"x" + _sb(str(v))


def _h_fraction(enc: _Enc, v: Any) -> None:
    enc.buf += b"/" + _b_int(v.numerator) + _b_int(v.denominator)


def _h_uuid(enc: _Enc, v: Any) -> None:
    enc.buf += b"U" + v.bytes


def _h_path(enc: _Enc, v: Any) -> None:
    t = type(v)
    name = t.__qualname__ if t.__module__.partition(".")[0] == "pathlib" else None
    enc.buf += b"P" + (_sb(name) if name is not None else _class_id(enc, t)) + _sb(str(v))


def _h_pattern(enc: _Enc, v: Any) -> None:
    enc.buf += b"X" + _b_int(v.flags)
    _enc(enc, v.pattern)


def _h_partial(enc: _Enc, v: Any) -> None:
    enc.buf += b"~"
    _enc_at(enc, v.func, ".func")
    _enc_at(enc, v.args, ".args")
    _enc_at(enc, v.keywords, ".keywords")


def _h_ordereddict(enc: _Enc, v: dict[Any, Any]) -> None:
    # Order is part of an OrderedDict's value (its == compares it), so keep insertion order.
    active = enc.active
    key = id(v)
    d = active.get(key)
    if d is not None:
        _backref(enc, d)
        return
    active[key] = len(active)
    try:
        enc.buf += b"o" + _class_id(enc, type(v)) + _pack_Q(len(v))
        for k, x in list(v.items()):
            _enc_at(enc, k, f"<key {_label(k)[1:-1]}>")
            _enc_at(enc, x, _label(k))
    finally:
        del active[key]


def _h_defaultdict(enc: _Enc, v: Any) -> None:
    enc.buf += b"_" + _class_id(enc, type(v))
    _enc_at(enc, v.default_factory, ".default_factory")
    _h_dict(enc, v)
    enc.buf += b"."


# -- user-level records: enums, named tuples, dataclasses, pydantic models -------------------------


def _h_enum(enc: _Enc, v: Any) -> None:
    name = v._name_
    if name is not None:
        enc.buf += b"E" + _class_id(enc, type(v)) + _sb(str(name))
    else:  # a combination of Flag members without a name of its own (Python < 3.11)
        enc.buf += b"e" + _class_id(enc, type(v))
        _enc_at(enc, v._value_, "._value_")


def _h_namedtuple(enc: _Enc, v: tuple[Any, ...]) -> None:
    enc.buf += b"W" + _class_id(enc, type(v)) + b"(" + _pack_Q(len(v))
    _enc_items(enc, v)


_ABSENT = object()


def _make_dataclass_handler(t: type) -> _Handler:
    dataclasses = sys.modules["dataclasses"]
    names = tuple(f.name for f in dataclasses.fields(t))
    header = [_sb(n) for n in names]
    count = _pack_Q(len(names))

    def handler(enc: _Enc, v: Any) -> None:
        active = enc.active
        key = id(v)
        d = active.get(key)
        if d is not None:
            _backref(enc, d)
            return
        active[key] = len(active)
        try:
            enc.buf += b"K" + _class_id(enc, type(v)) + count
            for name, head in zip(names, header):
                enc.buf += head
                x = getattr(v, name, _ABSENT)
                if x is _ABSENT:  # a field with init=False that was never set
                    enc.buf += b"-"
                else:
                    _enc_at(enc, x, f".{name}")
        finally:
            del active[key]

    return handler


def _h_pydantic(enc: _Enc, v: Any) -> None:
    active = enc.active
    key = id(v)
    d = active.get(key)
    if d is not None:
        _backref(enc, d)
        return
    active[key] = len(active)
    try:
        fields = object.__getattribute__(v, "__dict__")
        enc.buf += b"Y" + _class_id(enc, type(v)) + _pack_Q(len(fields))
        # pydantic fills __dict__ in field-declaration order whatever the input order, so keep it.
        for name, x in list(fields.items()):
            enc.buf += _sb(str(name))
            _enc_at(enc, x, f".{name}")
        extra = getattr(v, "__pydantic_extra__", None)
        if extra:
            enc.buf += b"x"
            _enc_dict_body(enc, dict(extra), attrs=True)
        else:
            enc.buf += b"."
    finally:
        del active[key]


# -- numpy -----------------------------------------------------------------------------------------


def _dtype_bytes(dt: Any) -> bytes:
    if dt.names is not None:
        return _sb(repr(dt.descr))
    if dt.kind == "T":  # numpy 2 variable-width strings: the NA setting is part of the dtype
        return _sb(repr(dt))
    return _sb(dt.str)


def _enc_array(enc: _Enc, a: Any, np: Any, tag: bytes) -> None:
    shape = a.shape
    enc.buf += tag + _dtype_bytes(a.dtype) + _pack_Q(len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
    _enc_array_data(enc, a, np)


def _enc_array_data(enc: _Enc, a: Any, np: Any) -> None:
    dt = a.dtype
    if dt.names is not None:
        # Field by field, so padding bytes between fields (possibly uninitialised) never count.
        for name in dt.names:
            try:
                _enc_array_data(enc, a[name], np)
            except _Fail as e:
                e.path.append(f"[{name!r}]")
                raise
    elif dt.hasobject or dt.kind == "T":
        _enc_array_objects(enc, a, np)
    else:
        _feed_array(enc, a, np)


def _feed_array(enc: _Enc, a: Any, np: Any) -> None:
    """Hash the logical C-order bytes of a fixed-width array, zero-copy when it is C-contiguous."""
    if a.flags.c_contiguous:
        nb = a.nbytes
        if nb:
            enc.write(a.reshape(-1).view(np.uint8), nb)
        return
    shape = a.shape
    row = a.itemsize * math.prod(shape[1:])
    if row == 0:
        return
    if row <= _CHUNK:
        step = max(1, _CHUNK // row)
        fortran = a.flags.f_contiguous
        for start in range(0, shape[0], step):
            block = a[start : start + step]
            if fortran:
                # Gathering rows straight out of a column-major array misses the cache on every
                # element; compacting the block in its own order first, then transposing it while it
                # is in cache, is about twice as fast. Same bytes either way.
                block = np.ascontiguousarray(block.T).T
            block = np.ascontiguousarray(block)
            enc.write(block.reshape(-1).view(np.uint8), block.nbytes)
    else:
        for i in range(shape[0]):
            _feed_array(enc, a[i], np)


def _enc_array_objects(enc: _Enc, a: Any, np: Any) -> None:
    flat = a.reshape(-1) if a.flags.c_contiguous else None
    if flat is None:
        items: Iterable[Any] = a.flat
        base = 0
        _enc_object_elements(enc, items, base)
        return
    for base in range(0, flat.shape[0], _OBJ_CHUNK):
        _enc_object_elements(enc, flat[base : base + _OBJ_CHUNK].tolist(), base)


def _leaf_call(fn: Callable[[Any], bytes], x: Any) -> bytes:
    return fn(x)


_call: Callable[[Callable[[Any], bytes], Any], bytes] = getattr(operator, "call", _leaf_call)  # 3.11+


def _enc_leaf_run(enc: _Enc, items: list[Any]) -> bool:
    """Encode a list made only of plain scalars in one go (C-level maps instead of a Python loop).

    Writes exactly what the element-by-element encoding would; returns False, writing nothing, when
    some element is not a plain scalar.
    """
    kinds = set(map(type, items))
    if kinds == _STR_ONLY:
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
    elif kinds <= _RUN_KINDS and kinds <= _FAST_LEAF.keys():
        if str in kinds and sum(map(len, filter(_is_str, items))) > _RUN_CHARS:
            return False
        data = b"".join(map(_call, map(_FAST_LEAF.__getitem__, map(type, items)), items))
    else:
        return False
    enc.write(data, len(data))
    return True


_STR_ONLY = {str}
_RUN_KINDS = frozenset({int, float, bool, str, type(None)})  # bytes stay with the streaming loop
_RUN_CHARS = 1 << 22
_is_str: Callable[[Any], bool] = str.__instancecheck__


def _enc_object_elements(enc: _Enc, items: Iterable[Any], base: int) -> None:
    if type(items) is list and len(items) > 16 and _enc_leaf_run(enc, items):
        return
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


def _h_ndarray(enc: _Enc, a: Any) -> None:
    np = sys.modules["numpy"]
    t = type(a)
    if t is not np.ndarray and not issubclass(t, np.memmap):  # a memmap is just where the data lives
        enc.buf += b"_" + _class_id(enc, t)
    _enc_array(enc, a, np, b"N")


def _h_masked_array(enc: _Enc, a: Any) -> None:
    np = sys.modules["numpy"]
    enc.buf += b"_" + _class_id(enc, type(a))
    _enc_array(enc, np.ma.getdata(a), np, b"N")
    _enc_array(enc, np.ma.getmaskarray(a), np, b"N")
    _enc_at(enc, a.fill_value, ".fill_value")


def _h_np_scalar(enc: _Enc, v: Any) -> None:
    np = sys.modules["numpy"]
    _enc_array(enc, np.asarray(v), np, b"g")


def _h_np_dtype(enc: _Enc, v: Any) -> None:
    enc.buf += b"Nt" + _dtype_bytes(v)


# -- pandas ----------------------------------------------------------------------------------------


def _pandas_names(t: type) -> set[str]:
    return {c.__qualname__ for c in t.__mro__ if c.__module__.partition(".")[0] == "pandas"}


def _enc_pd_values(enc: _Enc, ea: Any) -> None:
    """The values of a pandas column or index (an ExtensionArray), with their dtype.

    Fixed-width data (numbers, datetimes, categorical codes, masked arrays) is hashed from its numpy
    buffer without conversion, at memory bandwidth. Object and string data is walked element by
    element through the normal recursion, in blocks: a few million short strings a second (runs of
    plain scalars take a vectorized path), other objects slower. Correctness first.
    """
    np = sys.modules["numpy"]
    enc.buf += b"Pv" + _sb(str(ea.dtype)) + _pack_Q(len(ea))
    names = _pandas_names(type(ea))
    if "Categorical" in names:
        enc.buf += b"c" + (b"T" if ea.ordered else b"F")
        _enc_pd_index(enc, ea.categories)
        _enc_array(enc, np.asarray(ea.codes), np, b"N")
    elif names & {"DatetimeArray", "TimedeltaArray", "PeriodArray"}:
        enc.buf += b"8"
        _enc_array(enc, np.asarray(ea.asi8), np, b"N")
    elif "BaseMaskedArray" in names and hasattr(ea, "_data") and hasattr(ea, "_mask"):
        data, mask = ea._data, ea._mask  # private, but stable since pandas 1.0; checked above
        if mask.any():  # the data under the mask is arbitrary: zero it so equal arrays hash equal
            data = data.copy()
            data[mask] = 0
        enc.buf += b"k"
        _enc_array(enc, data, np, b"N")
        _enc_array(enc, mask, np, b"N")
    elif "ArrowExtensionArray" in names and "BaseStringArray" not in names and "pyarrow" in sys.modules:
        enc.buf += b"a"
        _enc_arrow_chunks(enc, ea.__arrow_array__(), sys.modules["pyarrow"])
    elif "NumpyExtensionArray" in names and "BaseStringArray" not in names:
        enc.buf += b"n"
        _enc_array(enc, ea.to_numpy(), np, b"N")
    else:
        # Strings (whichever their storage, python or arrow: the digest must not depend on whether
        # pyarrow is installed) and any other extension type: element by element.
        enc.buf += b"o"
        # The same bytes as the object array np.asarray(ea, dtype=object), converted a block at a
        # time so that a long column never exists as Python objects all at once.
        n = len(ea)
        enc.buf += b"N" + _sb("|O") + _pack_Q(1) + _pack_Q(n)
        for start in range(0, n, _OBJ_CHUNK):
            block = np.asarray(ea[start : start + _OBJ_CHUNK], dtype=object)
            _enc_object_elements(enc, block.tolist(), start)


def _enc_pd_index(enc: _Enc, idx: Any) -> None:
    names = _pandas_names(type(idx))
    if "MultiIndex" in names:
        enc.buf += b"PM" + _pack_Q(idx.nlevels)
        _enc_at(enc, tuple(idx.names), ".names")
        for i in range(idx.nlevels):
            # Materialised level values, not levels + codes: unused levels left over after slicing
            # must not make two equal indexes differ.
            _enc_pd_values(enc, idx.get_level_values(i).array)
    elif "RangeIndex" in names:
        enc.buf += b"PR" + _b_int(idx.start) + _b_int(idx.stop) + _b_int(idx.step)
        _enc_at(enc, idx.name, ".name")
    else:
        enc.buf += b"PI" + _sb(type(idx).__qualname__)
        _enc_at(enc, idx.name, ".name")
        _enc_pd_values(enc, idx.array)


def _h_pd_index(enc: _Enc, v: Any) -> None:
    _enc_pd_index(enc, v)


def _h_pd_series(enc: _Enc, v: Any) -> None:
    enc.buf += b"PS"
    _enc_at(enc, v.name, ".name")
    try:
        _enc_pd_index(enc, v.index)
    except _Fail as e:
        e.path.append(".index")
        raise
    try:
        _enc_pd_values(enc, v.array)
    except _Fail as e:
        e.path.append(".values")
        raise


def _h_pd_dataframe(enc: _Enc, v: Any) -> None:
    nrows, ncols = v.shape
    enc.buf += b"PF" + _pack_Q(nrows) + _pack_Q(ncols)
    for label, part in ((".index", v.index), (".columns", v.columns)):
        try:
            _enc_pd_index(enc, part)
        except _Fail as e:
            e.path.append(label)
            raise
    columns = v.columns
    np = sys.modules["numpy"]
    # The arrays as the frame stores them (pandas' own iteration, private but long-standing): ``iloc`` builds
    # a Series per column, ~1 ms each once hashing the previous column has pushed pandas out of the CPU's
    # caches, a tenth of a 1 GB frame's time. A numeric ndarray is what ``.array`` wraps (NumpyExtensionArray)
    # and is encoded the same; anything else goes through ``.array`` as before.
    arrays = getattr(v, "_iter_column_arrays", None)
    stored = islice(chain(arrays() if callable(arrays) else (), repeat(None)), ncols)  # exactly one per column
    for i, array in enumerate(stored):
        try:
            if type(array) is np.ndarray and array.ndim == 1 and array.dtype.kind in "biufc":
                enc.buf += b"Pv" + _sb(str(array.dtype)) + _pack_Q(len(array)) + b"n"
                _enc_array(enc, array, np, b"N")
            else:
                _enc_pd_values(enc, v.iloc[:, i].array)
        except _Fail as e:
            e.path.append(_label(columns[i]))
            raise


def _h_pd_array(enc: _Enc, v: Any) -> None:
    enc.buf += b"PA"
    _enc_pd_values(enc, v)


def _h_pd_timestamp(enc: _Enc, v: Any) -> None:
    enc.buf += b"Pt" + _sb(str(v.tz) if v.tz is not None else "")
    _enc(enc, v.asm8)


def _h_pd_timedelta(enc: _Enc, v: Any) -> None:
    enc.buf += b"Pd"
    _enc(enc, v.asm8)


def _h_pd_period(enc: _Enc, v: Any) -> None:
    enc.buf += b"Pp" + _sb(v.freqstr) + _b_int(v.ordinal)


def _h_pd_nat(enc: _Enc, v: Any) -> None:
    enc.buf += b"PN"


def _h_pd_na(enc: _Enc, v: Any) -> None:
    enc.buf += b"P?"


# -- pyarrow ---------------------------------------------------------------------------------------


def _enc_arrow_chunks(enc: _Enc, arr: Any, pa: Any) -> None:
    """An arrow Array or ChunkedArray; the digest does not depend on how the data is chunked."""
    chunks = arr.chunks if hasattr(arr, "chunks") else [arr]
    typ = arr.type
    enc.buf += _sb(str(typ)) + _pack_Q(len(arr))
    t = pa.types
    fixed = (
        t.is_integer(typ)
        or t.is_floating(typ)
        or t.is_timestamp(typ)
        or t.is_date(typ)
        or t.is_time(typ)
        or t.is_duration(typ)
    )
    if fixed and arr.null_count == 0:
        # Null-free fixed-width data: hash the numpy view of each chunk's buffer; the C-order
        # bytes of consecutive chunks concatenate to the same stream however the data is chunked.
        np = sys.modules["numpy"]
        enc.buf += b"r"
        for c in chunks:
            _feed_array(enc, c.to_numpy(zero_copy_only=False), np)
        return
    enc.buf += b"e"
    i = 0
    for c in chunks:
        for start in range(0, len(c), _OBJ_CHUNK):
            _enc_object_elements(enc, c.slice(start, _OBJ_CHUNK).to_pylist(), i)
            i += min(_OBJ_CHUNK, len(c) - start)


def _h_arrow_array(enc: _Enc, v: Any) -> None:
    enc.buf += b"AA"
    _enc_arrow_chunks(enc, v, sys.modules["pyarrow"])


def _h_arrow_table(enc: _Enc, v: Any) -> None:
    pa = sys.modules["pyarrow"]
    schema = v.schema
    enc.buf += b"AT" + _pack_Q(v.num_rows) + _pack_Q(v.num_columns)
    for i, field in enumerate(schema):
        enc.buf += _sb(field.name) + _sb(str(field.type)) + (b"T" if field.nullable else b"F")
        try:
            _enc_arrow_chunks(enc, v.column(i), pa)
        except _Fail as e:
            e.path.append(_label(field.name))
            raise


# -- values that must not be fingerprinted ---------------------------------------------------------


def _deny(reason: str) -> _Handler:
    def handler(enc: _Enc, v: Any) -> None:
        raise _Fail(_tname(v), reason, final=True)

    return handler


_CONSUMED = "iterators and generators would be consumed by fingerprinting; pass a list or tuple instead"
_RESOURCE = "it is a live resource (file, lock, thread or socket), not a value"

_DENIED_NAMES = {
    ("_thread", "lock"),
    ("_thread", "RLock"),
    ("threading", "Thread"),
    ("threading", "Condition"),
    ("threading", "Semaphore"),
    ("threading", "Event"),
    ("socket", "socket"),
    ("_socket", "socket"),
    ("_io", "_IOBase"),
    ("io", "IOBase"),
    ("asyncio", "Future"),
    ("asyncio", "Task"),
}


# -- everything else: the pickle protocol ----------------------------------------------------------


def _reduce(v: Any) -> Any:
    import copyreg

    t = type(v)
    reducer = copyreg.dispatch_table.get(t)
    try:
        if reducer is not None:
            return reducer(v)
        reduce_ex: Any = t.__reduce_ex__  # the class's, as pickle does: never an instance attribute
        return reduce_ex(v, 5)
    except Exception as e:
        raise _Fail(_tname(v), f"it is not picklable ({type(e).__name__}: {e})") from e


def _pickled(v: object) -> bytes | None:
    import pickle

    try:
        return pickle.dumps(v, protocol=5)
    except Exception:
        return None


def _enc_state(enc: _Enc, state: Any) -> None:
    if state is None:
        enc.buf += b"n"
    elif type(state) is dict:
        enc.buf += b"="
        _enc_dict_body(enc, state, attrs=True)
    elif type(state) is tuple and len(state) == 2 and type(state[1]) is dict:
        # (instance __dict__ or None, __slots__ values): the default state of slotted classes
        enc.buf += b"2"
        if state[0] is None:
            enc.buf += b"n"
        else:
            _enc_dict_body(enc, state[0], attrs=True)
        _enc_dict_body(enc, state[1], attrs=True)
    else:
        _enc_at(enc, state, ".__getstate__()")


def _enc_reduced(enc: _Enc, v: Any, rv: Any) -> None:
    import copyreg

    if isinstance(rv, str):  # a global singleton, pickled by name
        enc.buf += b"Rg" + _sb(str(getattr(v, "__module__", ""))) + _sb(rv)
        return
    if type(rv) is not tuple or not 2 <= len(rv) <= 6:
        raise _Fail(_tname(v), "__reduce_ex__ returned an unexpected value")
    func, args = rv[0], rv[1]
    rest = rv[2:] + (None,) * (6 - len(rv))
    state, listitems, dictitems, setter = rest
    if func is copyreg.__newobj__ and args and isinstance(args[0], type):  # type: ignore[attr-defined]
        enc.buf += b"O" + _class_id(enc, args[0])
        _enc_at(enc, tuple(args[1:]), ".__getnewargs__()")
    else:
        enc.buf += b"R"
        _enc_at(enc, func, ".__reduce__()[0]")
        _enc_at(enc, args, ".__reduce__()[1]")
    _enc_state(enc, state)
    if listitems is not None:
        enc.buf += b"L"
        _enc_at(enc, list(listitems), ".__reduce__()[3]")
    if dictitems is not None:
        enc.buf += b"H"
        _enc_at(enc, list(dictitems), ".__reduce__()[4]")
    if setter is not None:
        enc.buf += b"V"
        _enc_at(enc, setter, ".__reduce__()[5]")
    enc.buf += b"."


def _h_object(enc: _Enc, v: Any) -> None:
    active = enc.active
    key = id(v)
    d = active.get(key)
    if d is not None:
        _backref(enc, d)
        return
    buf = enc.buf
    mark = len(buf)
    flushes = enc.flushes
    active[key] = len(active)
    try:
        try:
            _enc_reduced(enc, v, _reduce(v))
        except _Fail as e:
            # Pickle may still handle what the parts of __reduce_ex__ could not, as long as nothing
            # of this object reached the hasher yet (then the bytes written so far can be dropped).
            if e.final or enc.flushes != flushes:
                raise
            data = _pickled(v)
            if data is None:
                raise
            del buf[mark:]
            buf += b"k" + _pack_Q(len(data))
            enc.write(data, len(data))
    finally:
        del active[key]


def _subclass_handler(base: _Handler) -> _Handler:
    def handler(enc: _Enc, v: Any) -> None:
        enc.buf += b"_" + _class_id(enc, type(v))
        base(enc, v)
        try:
            attrs = object.__getattribute__(v, "__dict__")
        except AttributeError:
            attrs = None
        if attrs:
            enc.buf += b"a"
            _h_dict(enc, attrs)
        else:
            enc.buf += b"."

    return handler


# -- registry and type resolution ------------------------------------------------------------------

_REGISTRY: dict[type, Callable[[Any], Any]] = {}


def _registered_handler(cls: type, fn: Callable[[Any], Any]) -> _Handler:
    def handler(enc: _Enc, v: Any) -> None:
        try:
            reduced = fn(v)
        except Exception as e:
            raise _Fail(_tname(v), f"the function registered for it raised {type(e).__name__}: {e}") from e
        if type(reduced) is type(v):
            raise _Fail(_tname(v), "the function registered for it returned a value of the same type")
        enc.buf += b"G" + _class_id(enc, cls)
        _enc(enc, reduced)

    return handler


def register(type_: type, fn: Callable[[Any], Any]) -> None:
    """Teach :func:`fingerprint` a type: ``fn(value)`` returns a stand-in value to fingerprint instead.

    The stand-in (say a tuple of the fields that matter) is fingerprinted in place of the value and
    tagged with the identity of ``type_``. Registered types are looked up first, walking the value's
    MRO, so a registration also covers subclasses and overrides every built-in rule.

    Raises:
        UnfingerprintableError: ``type_`` is not a class (or is ``object``), or ``fn`` is not callable.
    """
    if not isinstance(type_, type):
        raise UnfingerprintableError(f"register() needs a class as first argument, got {type_!r}")
    if type_ is object:
        raise UnfingerprintableError("register() cannot take over `object`: register a specific class")
    if not callable(fn):
        raise UnfingerprintableError(f"register() needs a callable as second argument, got {fn!r}")
    _REGISTRY[type_] = fn
    _reset_handlers()


def unregister(type_: type) -> None:
    """Remove what :func:`register` added for ``type_`` (no error if nothing was registered)."""
    if _REGISTRY.pop(type_, None) is not None:
        _reset_handlers()


def _is_named(t: type, names: set[tuple[str, str]]) -> bool:
    return any((c.__module__.partition(".")[0], c.__qualname__) in names for c in t.__mro__)


def _resolve_uncached(t: type) -> _Handler:
    mro = t.__mro__
    if _REGISTRY:
        for c in mro:
            fn = _REGISTRY.get(c)
            if fn is not None:
                return _registered_handler(c, fn)
    if issubclass(t, type):
        return _h_type
    if t in _DENIED_TYPES or hasattr(t, "__next__"):
        return _deny(_CONSUMED)
    if _is_named(t, _DENIED_NAMES):
        return _deny(_RESOURCE)
    if _is_named(t, {("enum", "Enum")}):
        return _h_enum
    if issubclass(t, tuple) and hasattr(t, "_fields"):
        return _h_namedtuple
    if hasattr(t, "__dataclass_fields__") and "dataclasses" in sys.modules:
        return _make_dataclass_handler(t)
    for c in mro:
        h = _BY_NAME.get((c.__module__.partition(".")[0], c.__qualname__))
        if h is not None:
            return h
        if c in _BASE_HANDLERS and c is not t:
            return _subclass_handler(_BASE_HANDLERS[c])
    return _h_object


def _resolve(t: type) -> _Handler:
    h = _resolve_uncached(t)
    if len(_HANDLERS) > _MAX_RESOLVED:
        _reset_handlers()
    _HANDLERS[t] = h
    return h


_DENIED_TYPES = {types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType}

# Builtin types whose subclasses are encoded as "class identity + the builtin's encoding".
_BASE_HANDLERS: dict[type, _Handler] = {
    int: _h_int,
    float: _h_float,
    complex: _h_complex,
    str: _h_str,
    bytes: _h_bytes,
    bytearray: _h_bytearray,
    tuple: _h_tuple,
    list: _h_list,
    dict: _h_dict,
    set: _h_set,
    frozenset: _h_frozenset,
}

_BUILTIN_HANDLERS: dict[type, _Handler] = {
    **_BASE_HANDLERS,
    type(None): _h_none,
    bool: _h_bool,
    memoryview: _h_memoryview,
    range: _h_range,
    slice: _h_slice,
    type(Ellipsis): _h_ellipsis,
    type(NotImplemented): _h_notimplemented,
    type: _h_type,
    types.FunctionType: _h_function,
    types.BuiltinFunctionType: _h_builtin,
    types.MethodType: _h_method,
    types.WrapperDescriptorType: _h_descriptor,
    types.MethodWrapperType: _h_descriptor,
    types.MethodDescriptorType: _h_descriptor,
    types.ClassMethodDescriptorType: _h_descriptor,
    types.ModuleType: _h_module,
    staticmethod: _h_wrapped_callable,
    classmethod: _h_wrapped_callable,
    property: _h_property,
}

# Types recognised by (top-level package, class qualname) anywhere in the MRO, so that their modules
# never need importing here.
_BY_NAME: dict[tuple[str, str], _Handler] = {
    ("datetime", "datetime"): _h_datetime,
    ("datetime", "date"): _h_date,
    ("datetime", "time"): _h_time,
    ("datetime", "timedelta"): _h_timedelta,
    ("datetime", "timezone"): _h_timezone,
    ("decimal", "Decimal"): _h_decimal,
    ("_decimal", "Decimal"): _h_decimal,
    ("fractions", "Fraction"): _h_fraction,
    ("uuid", "UUID"): _h_uuid,
    ("pathlib", "PurePath"): _h_path,
    ("re", "Pattern"): _h_pattern,
    ("functools", "partial"): _h_partial,
    ("collections", "OrderedDict"): _h_ordereddict,
    ("collections", "defaultdict"): _h_defaultdict,
    ("numpy", "MaskedArray"): _h_masked_array,
    ("numpy", "ndarray"): _h_ndarray,
    ("numpy", "generic"): _h_np_scalar,
    ("numpy", "dtype"): _h_np_dtype,
    ("pandas", "DataFrame"): _h_pd_dataframe,
    ("pandas", "Series"): _h_pd_series,
    ("pandas", "Index"): _h_pd_index,
    ("pandas", "ExtensionArray"): _h_pd_array,
    ("pandas", "Timestamp"): _h_pd_timestamp,
    ("pandas", "Timedelta"): _h_pd_timedelta,
    ("pandas", "Period"): _h_pd_period,
    ("pandas", "NaTType"): _h_pd_nat,
    ("pandas", "NAType"): _h_pd_na,
    ("pyarrow", "Array"): _h_arrow_array,
    ("pyarrow", "ChunkedArray"): _h_arrow_array,
    ("pyarrow", "Table"): _h_arrow_table,
    ("pyarrow", "RecordBatch"): _h_arrow_table,
    ("pydantic", "BaseModel"): _h_pydantic,
}

_HANDLERS: dict[type, _Handler] = {}
# Top-level fast path for scalars (no encoder object); types with a registration are left out.
_FAST_LEAF: dict[type, Callable[[Any], bytes]] = {}
_FAST_SEQ: dict[type, bytes] = {}
_FAST_DICT = [True]
_INLINE = True


def _fast(v: Any, depth: int) -> bytes | None:
    """Encoding of a small tuple/list/dict of scalars, byte for byte what the full encoder writes.

    Most task arguments look like this, and skipping the encoder object and the handler dispatch makes
    them several times faster (the common scalars are encoded inline: a function call per element is
    a large part of the cost). Returns None for anything else, including anything that could hold a
    cycle (depth is bounded), and the full encoder takes over.
    """
    t = type(v)
    tag = _FAST_SEQ.get(t)
    if tag is not None:
        if len(v) > 32 or depth > 3:
            return None
        parts = [tag, _pack_Q(len(v))]
        append = parts.append
        for x in v:
            tx = type(x)
            if tx is int and _INLINE:
                try:
                    append(_pack_cq(b"i", x))
                except struct.error:
                    append(_bigint(x))
            elif tx is str and _INLINE:
                try:
                    e = x.encode()
                except UnicodeEncodeError:
                    e = _utf8(x)
                append(_pack_cQ(b"s", len(e)))
                append(e)
            elif tx is float and _INLINE:
                append(_pack_cd(b"f", x) if x == x else b"f" + _NAN)
            else:
                leaf = _FAST_LEAF.get(tx)
                b = leaf(x) if leaf is not None else _fast(x, depth + 1)
                if b is None:
                    return None
                append(b)
        return b"".join(parts)
    if t is dict and _FAST_DICT[0] and len(v) <= 32 and depth <= 3:
        try:
            keys = sorted(v)
        except Exception:  # mixed key types; or keys whose comparison raises
            return None
        if not keys:
            return b"{s" + _pack_Q(0)
        if type(keys[0]) is str:
            parts = [b"{s", _pack_Q(len(v))]
            append = parts.append
            for k in keys:
                if type(k) is not str:  # checked first: str subclasses must never use the cache
                    return None
                kb = _KEY_BYTES.get(k)
                if kb is None:
                    kb = _sb(k)
                    if len(_KEY_BYTES) < 1024 and len(kb) <= 72:
                        _KEY_BYTES[k] = kb
                append(kb)
                x = v[k]
                tx = type(x)
                if tx is int and _INLINE:
                    try:
                        append(_pack_cq(b"i", x))
                    except struct.error:
                        append(_bigint(x))
                elif tx is str and _INLINE:
                    try:
                        e = x.encode()
                    except UnicodeEncodeError:
                        e = _utf8(x)
                    append(_pack_cQ(b"s", len(e)))
                    append(e)
                elif tx is float and _INLINE:
                    append(_pack_cd(b"f", x) if x == x else b"f" + _NAN)
                else:
                    leaf = _FAST_LEAF.get(tx)
                    b = leaf(x) if leaf is not None else _fast(x, depth + 1)
                    if b is None:
                        return None
                    append(b)
            return b"".join(parts)
        if type(keys[0]) is int:
            parts = [b"{i", _pack_Q(len(v))]
            for k in keys:
                if type(k) is not int:
                    return None
                x = v[k]
                leaf = _FAST_LEAF.get(type(x))
                b = leaf(x) if leaf is not None else _fast(x, depth + 1)
                if b is None:
                    return None
                parts += (_b_int(k), b)
            return b"".join(parts)
    return None


# Encoded (length-prefixed) dict keys: the same few argument and field names come back on every call.
_KEY_BYTES: dict[str, bytes] = {}


def _reset_handlers() -> None:
    _HANDLERS.clear()
    for t, h in _BUILTIN_HANDLERS.items():
        if not any(c in _REGISTRY for c in t.__mro__):
            _HANDLERS[t] = h
    _FAST_LEAF.clear()
    _FAST_LEAF.update((t, f) for t, f in _LEAF.items() if t in _HANDLERS)
    _FAST_SEQ.clear()
    _FAST_SEQ.update((t, tag) for t, tag in ((tuple, b"("), (list, b"[")) if t in _HANDLERS)
    _FAST_DICT[0] = dict in _HANDLERS
    # Inline encoding of int, str and float elements in _fast, unless a registration took one over.
    global _INLINE
    _INLINE = int in _FAST_LEAF and str in _FAST_LEAF and float in _FAST_LEAF


_reset_handlers()


# -- public API ------------------------------------------------------------------------------------


def _run(enc: _Enc, value: object, root: str) -> None:
    try:
        _enc(enc, value)
    except _Fail as e:
        raise e.error(root) from e.__cause__
    except UnfingerprintableError:
        raise
    except RecursionError as e:
        raise UnfingerprintableError(
            f"cannot fingerprint value of type {_tname(value)!r} at {root}: it is nested too deeply"
        ) from e
    except Exception as e:
        # Something inside the value misbehaved (a property that raises, a library object in an
        # unexpected state): for the caller that is a value that cannot be fingerprinted.
        raise UnfingerprintableError(
            f"cannot fingerprint value of type {_tname(value)!r} at {root}: {type(e).__name__}: {e}"
        ) from e


def fingerprint(value: object) -> str:
    """Stable digest of ``value``: 32 hex characters of ``xxh3_128``.

    Equal digests mean the values are the same for caching purposes: same type (``1``, ``1.0`` and
    ``True`` differ), same content, and for user-defined classes and functions the same code. The
    digest does not depend on the process, ``PYTHONHASHSEED``, dict insertion order or memory layout
    (a sliced or Fortran-ordered array digests like its C-ordered copy).

    Raises:
        UnfingerprintableError: some part of ``value`` cannot be fingerprinted (a generator, a file,
            a lock, an object that is neither handled nor picklable). The message names the type and
            where it sits inside ``value``, e.g. ``value[1]['x']``. Generators are never consumed.
    """
    leaf = _FAST_LEAF.get(type(value))
    if leaf is not None:
        return _hexdigest(leaf(value))
    fast = _fast(value, 0)
    if fast is not None:
        return _hexdigest(fast)
    enc = _Enc()
    _run(enc, value, "value")
    return enc.hexdigest()


def fingerprint_digest(value: object) -> bytes:
    """Like :func:`fingerprint` but the 16 raw bytes (used to combine digests)."""
    leaf = _FAST_LEAF.get(type(value))
    if leaf is not None:
        return _digest(leaf(value))
    fast = _fast(value, 0)
    if fast is not None:
        return _digest(fast)
    enc = _Enc()
    _run(enc, value, "value")
    return enc.digest()


class Fingerprinter:
    """Streaming form of :func:`fingerprint`: feed several values, get one digest.

    ``Fingerprinter().update(v).hexdigest() == fingerprint(v)``. With ``name``, the name is part of
    the digest and is where error messages say the problem is (``args[1]['x']``).
    """

    __slots__ = ("_count", "_enc")

    def __init__(self) -> None:
        self._enc = _Enc()
        self._count = 0

    def update(self, value: object, name: str | None = None) -> Fingerprinter:
        """Add ``value`` (labelled ``name``, if given) to the digest. Returns ``self``."""
        enc = self._enc
        if name is not None:
            enc.buf += b"=" + _sb(name)
        _run(enc, value, name if name is not None else "value")
        self._count += 1
        return self

    def hexdigest(self) -> str:
        """Digest of everything added so far. Call once: the fingerprinter is spent afterwards."""
        return self._enc.hexdigest()


def fingerprint_many(parts: Iterable[tuple[str, Any]]) -> str:
    """One digest for named values, e.g. the bound arguments of a call, in the order given.

    Each name is part of the digest; errors name the part, as in ``args[1]['x']``.
    """
    fp = Fingerprinter()
    fp._enc.buf += b"*"
    for name, value in parts:
        fp.update(value, name)
    fp._enc.buf += b"$" + _pack_Q(fp._count)
    return fp.hexdigest()
