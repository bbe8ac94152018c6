"""Encodings of code (functions, classes, modules), records (enums, named tuples, dataclasses, pydantic
models), refusals, and the fallback for everything else: the pickle protocol.

Part of :mod:`nbflow.hashing.values` (see its docstring for the order in which types are resolved).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from nbflow.hashing._builtins import (
    _enc_dict_body,
    _enc_items,
    _h_dict,
)
from nbflow.hashing._encoder import (
    _abandon,
    _done,
    _Enc,
    _enc,
    _enc_at,
    _Fail,
    _Handler,
    _OverBudget,
    _pack_Q,
    _sb,
    _tick,
    _tname,
    _visit,
)

_MAX_RESOLVED = 4096

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


# -- user-level records: enums, named tuples, dataclasses, pydantic models -------------------------


def _h_enum(enc: _Enc, v: Any) -> None:
    name = v._name_
    if name is not None:
        enc.buf += b"E" + _class_id(enc, type(v)) + _sb(str(name))
    else:  # a combination of Flag members without a name of its own (Python < 3.11)
        enc.buf += b"e" + _class_id(enc, type(v))
        _enc_at(enc, v._value_, "._value_")


def _h_namedtuple(enc: _Enc, v: tuple[Any, ...]) -> None:
    _tick(enc, v)
    enc.buf += b"W" + _class_id(enc, type(v)) + b"(" + _pack_Q(len(v))
    _enc_items(enc, v)


_ABSENT = object()


def _make_dataclass_handler(t: type) -> _Handler:
    dataclasses = sys.modules["dataclasses"]
    names = tuple(f.name for f in dataclasses.fields(t))
    header = [_sb(n) for n in names]
    count = _pack_Q(len(names))

    def handler(enc: _Enc, v: Any) -> None:
        n = _visit(enc, v)
        if not n:
            return
        try:
            enc.buf += b"K" + _class_id(enc, type(v)) + count
            for name, head in zip(names, header):
                enc.buf += head
                x = getattr(v, name, _ABSENT)
                if x is _ABSENT:  # a field with init=False that was never set
                    enc.buf += b"-"
                else:
                    _enc_at(enc, x, f".{name}")
        except BaseException:
            _abandon(enc, v)
            raise
        _done(enc, v, n)

    return handler


def _h_pydantic(enc: _Enc, v: Any) -> None:
    n = _visit(enc, v)
    if not n:
        return
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
    except BaseException:
        _abandon(enc, v)
        raise
    _done(enc, v, n)


# -- values that must not be fingerprinted ---------------------------------------------------------


def _deny(reason: str) -> _Handler:
    def handler(enc: _Enc, v: Any) -> None:
        raise _Fail(_tname(v), reason, final=True)

    return handler


_CONSUMED = "iterators and generators would be consumed by fingerprinting; pass a list or tuple instead"
_RESOURCE = "it is a live resource (file, lock, thread or socket), not a value"
# Artists are refused by name, at once. Measured with matplotlib 3.11, one Axes holding one line: walked
# through the pickle protocol like any object, the figure is ~500-1,300 objects visited (25-30 ms once each
# object is walked once; 176 s and 3.2 GB before) and the digest differs at every call, even of the same
# Axes: CallbackRegistry.__getstate__ hands out a new callback id each time it is called, and transforms
# keep their parents in dicts keyed by id(). Drawing to pixels instead (Agg, ~20 ms) would miss what an
# Axes holds but does not show (data outside the limits, hidden artists, a higher-resolution savefig).
# What an Axes draws is spread over its lines, texts, ticks, limits and transforms: no digest computed
# cheaply is sure to change with every change to it, so none is computed.
_MATPLOTLIB = (
    "matplotlib figures, axes and other artists are not fingerprinted (what they draw is spread over many "
    "objects with layout and cache state mixed in, so no cheap digest follows every change to the plot); "
    "pass the data it plots instead"
)

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
_MATPLOTLIB_NAMES = {("matplotlib", "Artist")}  # Figure, SubFigure, Axes (and 3D, polar), Line2D, Text...


# -- everything else: the pickle protocol ----------------------------------------------------------

# A pickled fallback is kept in memory up to this size; a larger one is pickled twice: once to learn its
# length (which the encoding writes first), once straight into the hasher.
_PICKLE_IN_MEMORY = 1 << 24


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


class _PickleSink:
    """The file pickle writes to: the output is counted and either kept (up to _PICKLE_IN_MEMORY bytes) or
    fed to the hasher; the clock of the budget is read as it arrives."""

    __slots__ = ("chunks", "enc", "into_hasher", "n", "v")

    def __init__(self, enc: _Enc, v: object, into_hasher: bool) -> None:
        self.enc = enc
        self.v = v
        self.into_hasher = into_hasher
        self.chunks: list[bytes] | None = None if into_hasher else []
        self.n = 0

    def write(self, data: Any) -> int:
        # pickle hands over bytes, and bytearray / PickleBuffer for large in-band buffers
        nbytes = memoryview(data).nbytes
        self.n += nbytes
        if self.into_hasher:
            self.enc.feed(data)
        elif self.chunks is not None:
            if self.n > _PICKLE_IN_MEMORY:
                self.chunks = None  # too large to hold: only count from now on
            else:
                self.chunks.append(data if type(data) is bytes else bytes(memoryview(data)))
        self.enc.check_time(self.v)
        return nbytes


def _enc_pickled(enc: _Enc, v: object) -> bool:
    """Write ``k`` + the length + ``pickle.dumps(v, protocol=5)``, holding at most _PICKLE_IN_MEMORY bytes
    of it; False when pickle cannot handle ``v`` (nothing written then)."""
    import pickle

    sink = _PickleSink(enc, v, into_hasher=False)
    try:
        pickle.Pickler(sink, protocol=5).dump(v)
    except _Fail:
        raise
    except Exception:
        return False
    n = sink.n
    enc.buf += b"k" + _pack_Q(n)
    if sink.chunks is not None:
        data = b"".join(sink.chunks)
        enc.write(data, n)
        return True
    again = _PickleSink(enc, v, into_hasher=True)
    try:
        pickle.Pickler(again, protocol=5).dump(v)
    except _Fail:
        raise
    except Exception as e:  # part of it went to the hasher already: no way back
        raise _Fail(_tname(v), f"pickling it a second time failed ({type(e).__name__}: {e})", final=True) from e
    if again.n != n:
        raise _Fail(_tname(v), "its pickled form changed while it was fingerprinted", final=True)
    return True


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
    n = _visit(enc, v)
    if not n:
        return
    try:
        left = enc.objects_left = enc.objects_left - 1
        if not left & 15:  # every 16 objects (each costs microseconds): the object budget and the clock
            if left < 0:
                raise _OverBudget(_tname(v), "objects", enc.max_objects)
            enc.check_time(v)
        buf = enc.buf
        mark = len(buf)
        flushes = enc.flushes
        kept = len(enc.keep)
        try:
            _enc_reduced(enc, v, _reduce(v))
        except _Fail as e:
            # Pickle may still handle what the parts of __reduce_ex__ could not, as long as nothing
            # of this object reached the hasher yet (then the bytes written so far can be taken back, and
            # so can the objects remembered for them: a reference to one would point at nothing).
            if e.final or enc.flushes != flushes:
                raise
            enc.forget(kept)
            del buf[mark:]
            if not _enc_pickled(enc, v):
                # The objects around this one hold it: pickling any of them would fail here again. Do not
                # try at every level on the way out.
                e.final = True
                raise
    except BaseException:
        _abandon(enc, v)
        raise
    _done(enc, v, n)


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


def _registered_handler(cls: type, fn: Any) -> _Handler:
    def handler(enc: _Enc, v: Any) -> None:
        _tick(enc, v)
        try:
            reduced = fn(v)
        except Exception as e:
            raise _Fail(_tname(v), f"the function registered for it raised {type(e).__name__}: {e}") from e
        if type(reduced) is type(v):
            raise _Fail(_tname(v), "the function registered for it returned a value of the same type")
        enc.buf += b"G" + _class_id(enc, cls)
        _enc(enc, reduced)

    return handler
