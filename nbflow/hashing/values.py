"""Value fingerprints: a stable 128-bit digest of (almost) any Python value.

A fingerprint is ``xxh3_128`` over a stream of type-tagged, length-prefixed bytes that describes the
value (format version :data:`FORMAT_VERSION`). The stream is fed to one hasher as it is produced:
small pieces are gathered in a bounded buffer, large payloads (array buffers, long strings) go to the
hasher directly, so hashing never builds a copy of a large value.

Stability rules the encoding follows, so a digest survives a kernel restart:

* nothing depends on ``hash()``, ``id()``, memory addresses, set iteration order or ``repr`` output
  that may contain an address; ``id()`` is only used to notice, while walking a value, an object met
  before (a cycle, or a shared object: see below);
* dicts are written in a canonical order (sorted keys when all keys are ``str`` or all ``int``,
  otherwise sorted by the digest of each key); sets are written as sorted element digests (or sorted
  elements when all are ``str`` or all ``int``), so ``{1: "a", "b": 2}`` digests the same whatever
  the insertion order or ``PYTHONHASHSEED``;
* every value carries a type tag and every variable-length part a length, so ``1``, ``1.0``,
  ``True``, ``"1"``, ``b"1"``, ``(1,)`` and ``[1]`` all differ, and so do ``("ab", "c")`` and
  ``("a", "bc")``.

An object graph is walked once per object, not as the tree it unfolds into: a container, record or object
met again is written as a back-reference (to an enclosing one, on a cycle: how many levels up; to a
finished one: its index in order of first visit, never an address) when it holds more than
:data:`~nbflow.hashing._encoder.SHARED_INLINE` other containers, records or objects. Smaller ones are
written again in full, so that ``[s, s]`` and ``[s, copy(s)]`` digest alike, at a cost bounded by that
number per occurrence. Digests of values without such a large shared part are those of format version 1.

Fingerprinting one value is bounded (the budget): at most :data:`MAX_NODES` containers, records and
objects entered, :data:`MAX_OBJECTS` of them walked through the pickle protocol, and :data:`MAX_SECONDS`
of wall time. Past a bound the value cannot be fingerprinted (:class:`UnfingerprintableError`, naming its
type and the bound; a task then warns and runs uncached). Leaves do not count: a large array or
DataFrame is hashed from its buffers whatever its size.

Values are dispatched by exact type for the builtins; other types are resolved once per type (then
cached) in this order: handlers added with :func:`register` (walking the MRO), classes, things that
cannot be fingerprinted (generators, iterators, files, locks, threads, sockets, and matplotlib artists:
figures, axes, lines...), enum members, named tuples, dataclasses, then known library types recognised by
module and class name (numpy, pandas, pyarrow, pydantic and a few stdlib types -- none of them is
imported by this module, a value of such a type can only exist once its library is imported), subclasses
of builtins, and last any picklable object, fingerprinted as its class identity plus the parts
``__reduce_ex__`` returns (falling back to the pickle bytes when those parts cannot be fingerprinted).

Functions and classes defined in user code (``__main__``, notebook cells, modules of the user's
project) are fingerprinted by their code identity (:mod:`nbflow.hashing.code`), so editing such a
class changes the fingerprint of its instances.

The encoder is split in private modules: :mod:`~nbflow.hashing._encoder` (the stream, the walk: cycles,
shared objects, the budget), :mod:`~nbflow.hashing._builtins` (builtin scalars and containers),
:mod:`~nbflow.hashing._objects` (code, records, refusals, the pickle protocol) and
:mod:`~nbflow.hashing._libraries` (types recognised by name); this one holds the type resolution, the
fast path for small values and the public API.
"""

from __future__ import annotations

import struct
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any, Final

from nbflow.exceptions import UnfingerprintableError
from nbflow.hashing import _builtins, _encoder
from nbflow.hashing._builtins import (
    _LEAF,
    _b_int,
    _bigint,
    _h_bool,
    _h_bytearray,
    _h_bytes,
    _h_complex,
    _h_dict,
    _h_ellipsis,
    _h_float,
    _h_frozenset,
    _h_int,
    _h_list,
    _h_memoryview,
    _h_none,
    _h_notimplemented,
    _h_range,
    _h_set,
    _h_slice,
    _h_str,
    _h_tuple,
)

# Internals other modules reach through this one (nbflow.hashing.code: _sb; the tests: _Enc, _HANDLERS,
# _enc_leaf_run, _h_np_scalar), kept importable from here.
from nbflow.hashing._builtins import _enc_leaf_run as _enc_leaf_run
from nbflow.hashing._encoder import (
    _NAN,
    SHARED_INLINE,
    _digest,
    _Enc,
    _enc,
    _Fail,
    _Handler,
    _hexdigest,
    _pack_cd,
    _pack_cQ,
    _pack_cq,
    _pack_Q,
    _sb,
    _tname,
    _utf8,
)
from nbflow.hashing._libraries import (
    _h_arrow_array,
    _h_arrow_table,
    _h_date,
    _h_datetime,
    _h_decimal,
    _h_defaultdict,
    _h_fraction,
    _h_masked_array,
    _h_ndarray,
    _h_np_dtype,
    _h_np_generator,
    _h_np_random_state,
    _h_np_scalar,
    _h_ordereddict,
    _h_partial,
    _h_path,
    _h_pattern,
    _h_pd_array,
    _h_pd_dataframe,
    _h_pd_index,
    _h_pd_na,
    _h_pd_nat,
    _h_pd_period,
    _h_pd_series,
    _h_pd_timedelta,
    _h_pd_timestamp,
    _h_random,
    _h_sklearn_bunch,
    _h_time,
    _h_timedelta,
    _h_timezone,
    _h_uuid,
    _ObjectsMemo,
    remember_object_strings,
)
from nbflow.hashing._objects import (
    _CONSUMED,
    _DENIED_NAMES,
    _MATPLOTLIB,
    _MATPLOTLIB_NAMES,
    _MAX_RESOLVED,
    _RESOURCE,
    _deny,
    _h_builtin,
    _h_descriptor,
    _h_enum,
    _h_function,
    _h_method,
    _h_module,
    _h_namedtuple,
    _h_object,
    _h_property,
    _h_pydantic,
    _h_type,
    _h_wrapped_callable,
    _make_dataclass_handler,
    _registered_handler,
    _subclass_handler,
)

# Assigned, not imported: CPython 3.11 compiles `name.get(...)` into a slower attribute load (no method
# call fast path) when `name` comes from an import statement, and these two are looked up per value.
_FAST_LEAF: dict[type, Callable[[Any], bytes]] = _builtins._FAST_LEAF
_HANDLERS: dict[type, _Handler] = _encoder._HANDLERS

__all__ = [
    "FORMAT_VERSION",
    "MAX_NODES",
    "MAX_OBJECTS",
    "MAX_SECONDS",
    "Fingerprinter",
    "fingerprint",
    "fingerprint_many",
    "register",
    "remember_object_strings",
    "unregister",
]

#: Version of the byte stream. Pinned digests in the tests only change together with this number.
#: 2: a shared container, record or object holding more than SHARED_INLINE others is written once, then
#: referenced (version 1 wrote it again at every occurrence: exponentially often in a graph of shared
#: objects); the digest of every other value is the same as in version 1.
#: 3: columns of strings (pandas' string dtypes, whichever the storage; arrow string and binary arrays) are
#: written as their offsets, data and validity (three digests: _libraries._StringStreams) instead of value
#: by value; so are arrow fixed-width values with nulls (their bytes, null slots zeroed, and their validity);
#: the elements of an object array (and of a pandas column of other objects) go to a stream of
#: their own whose digest the array writes (so that a large array of strings can be remembered while its
#: slots are unchanged: _libraries._ObjectsMemo); every other digest is the same as in version 2.
#: 4: an object array (or numpy variable-width string array) whose elements are all exactly ``str`` is written
#: as a column of strings (offsets and data: _libraries._object_strings_encoding), which the result store can
#: compute from the buffers it keeps such an array in; every other digest is the same as in version 3.
FORMAT_VERSION: Final = 4

#: The budget of one value (see the module docstring): containers, records and objects entered, references
#: to ones met before included; leaves (numbers, strings, buffers) do not count. Ten million is a few
#: seconds: ~3.5 s of tuples, ~9 s of frozensets of tuples (the slowest kind, measured on this project's
#: benchmark machine).
MAX_NODES: Final = 10_000_000
#: The budget of one value: objects walked through the pickle protocol (``__reduce_ex__``), which cost a
#: few microseconds each (a million plain objects: ~4.5 s).
MAX_OBJECTS: Final = 1_000_000
#: The budget of one value: seconds of wall time, read every 1,024 nodes, every 16 objects walked through
#: the pickle protocol and as a pickled fallback is written. A backstop for what is slow to walk; the two
#: counts above bound the rest and do not depend on the machine (this one does: it only ever decides
#: between a digest and none, never which digest).
MAX_SECONDS: Final = 20.0

# -- registry and type resolution ------------------------------------------------------------------

_REGISTRY: dict[type, Callable[[Any], Any]] = {}


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
    if _is_named(t, _MATPLOTLIB_NAMES):
        return _deny(_MATPLOTLIB)
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
    ("numpy", "Generator"): _h_np_generator,
    ("numpy", "RandomState"): _h_np_random_state,
    ("random", "Random"): _h_random,
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
    ("sklearn", "Bunch"): _h_sklearn_bunch,
}

# Top-level fast path for scalars (no encoder object): _FAST_LEAF (in _builtins, which shares it with
# _enc_leaf_run); types with a registration are left out.
_FAST_SEQ: dict[type, bytes] = {}
_FAST_DICT = [True]
_INLINE = True


def _fast(v: Any, depth: int, nested: list[int] | None = None) -> bytes | None:
    """Encoding of a small tuple/list/dict of scalars, byte for byte what the full encoder writes.

    Most task arguments look like this, and skipping the encoder object and the handler dispatch makes
    them several times faster (the common scalars are encoded inline: a function call per element is
    a large part of the cost). Returns None for anything else, including anything that could hold a
    cycle (depth is bounded), and the full encoder takes over. So does a value where the full encoder
    could write a back-reference, which this path never does: one whose shared part holds more than
    SHARED_INLINE containers. Only containers two levels down and deeper can be inside such a part (the
    top-level value is never met again), so those are counted (``nested``), for each item of the
    top-level value apart, and past SHARED_INLINE of them this path gives up.
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
                b: bytes | None
                if leaf is not None:
                    b = leaf(x)
                else:
                    if not depth:
                        b = _fast(x, 1)
                    else:  # counted: see the docstring
                        if nested is None:
                            nested = [0]
                        nested[0] += 1
                        b = _fast(x, depth + 1, nested) if nested[0] <= SHARED_INLINE else None
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
                    if leaf is not None:
                        b = leaf(x)
                    else:
                        if not depth:
                            b = _fast(x, 1)
                        else:  # counted: see the docstring
                            if nested is None:
                                nested = [0]
                            nested[0] += 1
                            b = _fast(x, depth + 1, nested) if nested[0] <= SHARED_INLINE else None
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
                if leaf is not None:
                    b = leaf(x)
                else:
                    if not depth:
                        b = _fast(x, 1)
                    else:  # counted: see the docstring
                        if nested is None:
                            nested = [0]
                        nested[0] += 1
                        b = _fast(x, depth + 1, nested) if nested[0] <= SHARED_INLINE else None
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
    # Remembered encodings of object arrays of strings were written by the handlers of before.
    _ObjectsMemo.table.clear()
    # Inline encoding of int, str and float elements in _fast, unless a registration took one over.
    global _INLINE
    _INLINE = int in _FAST_LEAF and str in _FAST_LEAF and float in _FAST_LEAF


_reset_handlers()


# -- public API ------------------------------------------------------------------------------------


def _run(enc: _Enc, value: object, root: str) -> None:
    # The bounds are read here, at every value, so that a change of them (a test's) applies at once.
    enc.budget(MAX_NODES, MAX_OBJECTS, MAX_SECONDS)
    try:
        _enc(enc, value)
    except _Fail as e:
        raise UnfingerprintableError(e.message(root, value)) from e.__cause__
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
