"""Encodings of value types recognised by module and class name: stdlib types (datetime, decimal, paths,
ordered and default dicts, partials), numpy, pandas and pyarrow. None of these modules is imported here: a
value of such a type can only exist once its library is imported.

Part of :mod:`nbflow.hashing.values`.
"""

from __future__ import annotations

import math
import struct
import sys
import weakref
from functools import partial
from itertools import chain, islice, repeat
from typing import Any

from nbflow.hashing._builtins import (
    _FAST_LEAF,
    _STR_ONLY,
    _b_int,
    _enc_object_elements,
    _h_dict,
    utf8_pieces,
)
from nbflow.hashing._encoder import (
    _CHUNK,
    _OBJ_CHUNK,
    _abandon,
    _done,
    _Enc,
    _enc,
    _enc_at,
    _Fail,
    _label,
    _pack_Q,
    _sb,
    _utf8,
    _visit,
    _xxh3,
)
from nbflow.hashing._objects import _class_id

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
    n = _visit(enc, v)
    if not n:
        return
    try:
        enc.buf += b"o" + _class_id(enc, type(v)) + _pack_Q(len(v))
        for k, x in list(v.items()):
            _enc_at(enc, k, f"<key {_label(k)[1:-1]}>")
            _enc_at(enc, x, _label(k))
    except BaseException:
        _abandon(enc, v)
        raise
    _done(enc, v, n)


def _h_defaultdict(enc: _Enc, v: Any) -> None:
    enc.buf += b"_" + _class_id(enc, type(v))
    _enc_at(enc, v.default_factory, ".default_factory")
    _h_dict(enc, v)
    enc.buf += b"."


def _h_sklearn_bunch(enc: _Enc, v: Any) -> None:
    # scikit-learn's Bunch (what load_digits() returns) keeps a private table of deprecation warnings in its
    # __dict__ that its __setstate__ drops: the same Bunch loaded from the store would fingerprint as another
    # value, and every cell reading it would miss. Its items are its value.
    enc.buf += b"_" + _class_id(enc, type(v))
    _h_dict(enc, v)
    enc.buf += b"."


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
    """The elements of an object (or numpy variable-width string) array, in C order.

    An array whose elements are all exactly ``str`` (and strictly UTF-8 encodable) is written as a column of
    strings: its offsets and data (:func:`_object_strings_encoding`, the streams of :class:`_StringStreams`),
    at a fraction of the cost of a value-by-value walk, and computable from the buffers the result store keeps
    such an array in (:func:`remember_object_strings`). Any other array's elements go to a stream of their
    own, and the array writes its digest (``<`` + 16 bytes). Either way an array of strings can be
    remembered (:class:`_ObjectsMemo`). References to objects met before (shared objects, cycles) work across
    the element stream as anywhere else.
    """
    memo = _ObjectsMemo.lookup(a, np) if a.dtype.hasobject else None
    if memo is not None and memo.encoding is not None:
        enc.buf += memo.encoding
        return
    encoding = _object_strings_encoding(a, np)
    if encoding is not None:
        if memo is not None:
            memo.remember(encoding)
        enc.buf += encoding
        return
    outer, h, flushes = enc.buf, enc.h, enc.flushes
    enc.buf = bytearray()
    enc.h = None
    try:
        flat = a.reshape(-1) if a.flags.c_contiguous else None
        if flat is None:
            _enc_object_elements(enc, a.flat, 0)
        else:
            for base in range(0, flat.shape[0], _OBJ_CHUNK):
                _enc_object_elements(enc, flat[base : base + _OBJ_CHUNK].tolist(), base)
        digest = enc.digest()
    finally:
        # The elements' bytes never reached the outer stream: a pickle fallback around this array is still
        # possible whatever was flushed in here.
        enc.buf, enc.h, enc.flushes = outer, h, flushes
    enc.buf += b"<" + digest


def _object_strings_encoding(a: Any, np: Any) -> bytes | None:
    """The encoding of a non-empty array whose elements are all exactly ``str``: their UTF-8 bytes and where
    each ends, in C order, as :class:`_StringStreams` writes a column of strings without nulls (``q8``, so
    never the ``<`` of an element stream). None, having written nothing, for an empty array, any other
    element (a subclass of str too), a string that cannot be encoded strictly (lone surrogates: the element
    stream keeps them distinct), or when a registration took ``str`` over (its handler decides then)."""
    n = a.size
    if not n or str not in _FAST_LEAF:
        return None
    flat = a.reshape(-1) if a.flags.c_contiguous else None
    streams = _StringStreams(True)
    for base in range(0, n, _OBJ_CHUNK):
        block = flat[base : base + _OBJ_CHUNK] if flat is not None else a.flat[base : base + _OBJ_CHUNK]
        items = block.tolist()
        if set(map(type, items)) != _STR_ONLY:
            return None
        pieces = utf8_pieces(items, "".join(items), np)
        if pieces is None:
            return None
        data, lengths = pieces
        offsets = np.empty(len(items) + 1, dtype=np.int64)
        offsets[0] = 0
        np.cumsum(lengths, out=offsets[1:])
        streams.feed(offsets, data, None, np)
    return streams.encoding()


def remember_object_strings(array: Any, ends: Any, data: Any, keep: Any = None) -> None:
    """Remember the encodings of ``array``, an object array of strings just rebuilt from their UTF-8 bytes
    (``data``, validated) and where each ends (``ends``, int64, C order), as the result store rebuilds one:
    computed from those buffers at memory speed, so that the first fingerprint of the restored value does not
    walk its strings again. ``keep``: None, or a flat object array holding exactly the pointers ``array``
    holds (a second reference to every string, made while the strings were being created, when doing so is
    cheap: checked here, it becomes the entries' copy of the slots).

    Seeded for the arrays a fingerprint meets: a 1-D array itself, and the rows of a 2-D one (the columns of
    a pandas block). The entries are those :func:`_enc_array_objects` makes (:class:`_ObjectsMemo`): served
    only while the array's slots hold exactly the strings it was built with, so writing into the restored
    value is seen as on any other array. The encoding is the one :func:`_object_strings_encoding` computes
    from the strings themselves (the same :class:`_StringStreams`, fed the same bytes); tests compare both.
    """
    np = sys.modules.get("numpy")
    if (
        np is None
        or type(array) is not np.ndarray
        or array.dtype != object
        or array.ndim not in (1, 2)
        or not array.flags.c_contiguous
        or str not in _FAST_LEAF
    ):
        return
    ends = np.frombuffer(ends, dtype=np.int64) if not isinstance(ends, np.ndarray) else ends
    if ends.dtype != np.int64 or ends.ndim != 1 or len(ends) != array.size:
        return
    width = array.shape[-1]
    if width < _MEMO_MIN_VALUES or array.size // width > _ObjectsMemo.MAX_ENTRIES // 2:
        return  # rows never looked up (see _ObjectsMemo.lookup), or more than the table keeps
    if keep is not None and (
        type(keep) is not np.ndarray or keep.dtype != object or keep.shape != (array.size,)
        or not _same_slots(array.reshape(-1), keep, np)
    ):
        keep = None
    offsets = np.empty(width + 1, dtype=np.int64)  # one row's, counted from its first string (reused)
    offsets[0] = 0
    for index, row in enumerate([array] if array.ndim == 1 else list(array)):
        low = index * width
        start = int(ends[low - 1]) if low else 0
        np.subtract(ends[low : low + width], start, out=offsets[1:])
        streams = _StringStreams(True)
        streams.feed(offsets, memoryview(data)[start : start + int(offsets[-1])], None, np)
        row_keep = keep[low : low + width] if keep is not None else None
        _ObjectsMemo((row.ctypes.data, width), row).remember(streams.encoding(), row_keep)


class _ObjectsMemo:
    """The encoding of a large object array of strings, remembered while provably unchanged.

    An object array is mutable, and pandas' object columns are written in place (``df.loc[i, "name"] = ...``),
    so neither the array's identity nor its address says its elements are the same. Its slots do: they are
    pointers to the element objects. The encoding of an array whose elements were all exactly ``str`` (immutable)
    is remembered with a copy of the array (``keep``), which holds a reference to every one of those strings,
    so none of them can be freed and its address taken by another object. Later, an array at the same address
    and of the same size whose slots hold exactly the pointers ``keep`` holds (a memory comparison, ~1 ms per
    million elements) holds the very same strings: the same encoding, whoever wrote the slots and however
    often they were rewritten in between. Any other array, any changed slot, and it is computed again
    (and remembered anew). An entry is dropped when the array's memory is freed (a weak reference to the array
    owning it), so ``keep`` never holds strings longer than the column does, apart from ones a slot
    assignment replaced, until the next fingerprint of the column; and the table is bounded.
    """

    __slots__ = ("encoding", "keep", "key", "owner")
    table: dict[tuple[int, int], _ObjectsMemo] = {}
    MAX_ENTRIES = 256

    def __init__(self, key: tuple[int, int], a: Any) -> None:
        self.key = key
        self.keep = a
        self.owner: Any = None
        self.encoding: bytes | None = None

    @classmethod
    def lookup(cls, a: Any, np: Any) -> _ObjectsMemo | None:
        """The entry of ``a``: with an encoding when ``a`` holds the remembered strings, else a new one to fill
        (None when ``a`` is small or not laid out in one block)."""
        n = a.size
        if n < _MEMO_MIN_VALUES or not a.flags.c_contiguous:
            return None
        key = (a.ctypes.data, n)
        known = cls.table.get(key)
        if known is not None and known.owner() is not None and _same_slots(a, known.keep, np):
            return known
        return cls(key, a)

    def remember(self, encoding: bytes, keep: Any = None) -> None:
        """Remember ``encoding`` for the array's current slots. ``keep``: a copy of them already made (else
        one is made here), holding exactly the pointers the array's slots hold now."""
        owner = self.keep
        while isinstance(owner.base, type(owner)):  # the array owning the memory (a column is often a view)
            owner = owner.base
        try:
            self.owner = weakref.ref(owner, partial(_ObjectsMemo.forget, self.key))
        except TypeError:
            return
        self.keep = self.keep.copy() if keep is None else keep  # a reference to every element (see above)
        self.encoding = encoding
        table = _ObjectsMemo.table
        if len(table) >= self.MAX_ENTRIES:
            table.clear()
        table[self.key] = self

    @staticmethod
    def forget(key: tuple[int, int], gone: Any) -> None:
        known = _ObjectsMemo.table.get(key)
        if known is not None and known.owner is gone:
            del _ObjectsMemo.table[key]


def _same_slots(a: Any, b: Any, np: Any) -> bool:
    """Whether two C-contiguous object arrays of one size hold the same pointers (the same objects)."""
    import ctypes  # stdlib; only when an object array of strings is fingerprinted a second time

    n = a.size
    if b.size != n or not b.flags.c_contiguous:
        return False
    slots = ctypes.c_size_t * n
    return bool(np.array_equal(np.ctypeslib.as_array(slots.from_address(a.ctypes.data)),
                               np.ctypeslib.as_array(slots.from_address(b.ctypes.data))))


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


# -- random generators --------------------------------------------------------------------------------
# A generator's fingerprint is its state: a call drawing from it depends on where in its sequence it is.
# One seeded from the OS (np.random.default_rng(), RandomState()) draws arbitrary numbers: its
# fingerprint is the same in every process, so such a call is cached as Prefect caches it.

_OS_ENTROPY = 1 << 96  # NumPy draws 128 bits from the OS for an unseeded SeedSequence; user seeds are small


def _unseeded(seed_sequence: Any) -> bool:
    entropy = getattr(seed_sequence, "entropy", None)
    return isinstance(entropy, int) and entropy >= _OS_ENTROPY and not getattr(seed_sequence, "spawn_key", ())


def _h_np_generator(enc: _Enc, v: Any) -> None:
    bit_generator = v.bit_generator
    enc.buf += b"Ng" + _sb(type(bit_generator).__qualname__)
    if _unseeded(getattr(bit_generator, "seed_seq", None)):
        enc.buf += b"u"
        return
    _enc(enc, bit_generator.state)


def _h_np_random_state(enc: _Enc, v: Any) -> None:
    enc.buf += b"Nr"
    bit_generator = getattr(v, "_bit_generator", None)
    if _unseeded(getattr(bit_generator, "_seed_seq", None)):  # a legacy seed drops the SeedSequence
        enc.buf += b"u"
        return
    _enc(enc, v.get_state(legacy=False))


def _h_random(enc: _Enc, v: Any) -> None:
    # Python's Random keeps no trace of how it was seeded: always by state.
    enc.buf += b"Pr"
    _enc(enc, v.getstate())


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
    elif "BaseStringArray" in names:
        # pandas' string dtypes, whichever the storage: one encoding (see _StringStreams), from the arrow
        # buffers when there are some, else from the Python strings.
        stored = getattr(ea, "_pa_array", None)  # ArrowStringArray's ChunkedArray (private, checked)
        pa = sys.modules.get("pyarrow")
        if stored is not None and pa is not None and _is_arrow_strings(stored.type, pa):
            enc.buf += _arrow_strings_memo(stored, pa, np, True)
        else:
            enc.buf += _python_strings_encoding(ea, np)
    elif "ArrowExtensionArray" in names and "pyarrow" in sys.modules:
        enc.buf += b"a"
        _enc_arrow_chunks(enc, ea.__arrow_array__(), sys.modules["pyarrow"])
    elif "NumpyExtensionArray" in names and "BaseStringArray" not in names:
        enc.buf += b"n"
        _enc_array(enc, ea.to_numpy(), np, b"N")
    else:
        # Strings (whichever their storage, python or arrow: the digest must not depend on whether
        # pyarrow is installed) and any other extension type: element by element.
        enc.buf += b"o"
        # The element stream an object array of other objects writes (np.asarray(ea, dtype=object), but
        # converted a block at a time so that a long column never exists as Python objects all at once).
        n = len(ea)
        enc.buf += b"N" + _sb("|O") + _pack_Q(1) + _pack_Q(n)
        outer, h, flushes = enc.buf, enc.h, enc.flushes
        enc.buf = bytearray()
        enc.h = None
        try:
            for start in range(0, n, _OBJ_CHUNK):
                block = np.asarray(ea[start : start + _OBJ_CHUNK], dtype=object)
                _enc_object_elements(enc, block.tolist(), start)
            digest = enc.digest()
        finally:
            enc.buf, enc.h, enc.flushes = outer, h, flushes
        enc.buf += b"<" + digest


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


# -- string columns: offsets, data and validity ------------------------------------------------------------
# A column of strings (or bytes) is written as arrow lays it out: where each value ends (the offsets), the
# values' bytes one after the other (the data) and which slots hold a value (the validity). Each of the three
# is its own xxh3 stream, fed chunk by chunk, and the column writes the three digests: a stream fed in pieces
# digests like the same bytes fed at once, so however a chunked array is cut, equal values give equal keys.
# The three streams are canonical: offsets count from the column's first value (a slice's offset into its
# buffers, a chunk's start in the shared data buffer never count), the data stream holds only the referenced
# bytes, and a null slot contributes a zero length and no bytes whatever its buffers hold underneath.


class _StringStreams:
    """The three streams of one string column (see above), fed chunk by chunk."""

    __slots__ = ("data", "end", "n", "nulls", "offsets", "valid", "wide")

    def __init__(self, wide: bool) -> None:
        self.wide = wide  # 8-byte offsets (else 4): part of the key, with the type that decided it
        self.offsets = _xxh3()
        self.data = _xxh3()
        self.valid: Any = None  # created at the first null: a column without any has no validity stream
        self.n = 0  # values fed so far
        self.end = 0  # data bytes fed so far
        self.nulls = 0

    def feed(self, offsets: Any, data: Any, valid: Any, np: Any) -> None:
        """One chunk: ``offsets`` (n + 1 integers into ``data``, null slots of zero length), ``data`` (a
        buffer), ``valid`` (n bools, or None when the chunk has no null)."""
        count = len(offsets) - 1
        if count <= 0:
            return
        first, last = int(offsets[0]), int(offsets[-1])
        ends = offsets[1:]
        dtype = np.int64 if self.wide else np.int32
        if first != self.end or ends.dtype != dtype:
            # Rebased onto the column's running end: a slice, a later chunk, or 4-byte offsets written as 8.
            ends = ends.astype(dtype) + (self.end - first)
        self.offsets.update(ends)
        if last > first:
            self.data.update(memoryview(data)[first:last])
        if valid is not None or self.valid is not None:
            if self.valid is None:
                self.valid = _xxh3()
                if self.n:  # the chunks before the first null were all valid
                    self.valid.update(np.ones(self.n, dtype=np.uint8))
            self.valid.update(valid.view(np.uint8) if valid is not None else np.ones(count, dtype=np.uint8))
            if valid is not None:
                self.nulls += count - int(np.count_nonzero(valid))
        self.n += count
        self.end += last - first

    def encoding(self) -> bytes:
        valid = self.valid.digest() if self.valid is not None else b""
        return (
            b"q" + (b"8" if self.wide else b"4") + _pack_Q(self.n) + _pack_Q(self.nulls)
            + self.offsets.digest() + self.data.digest() + valid
        )


def _is_arrow_strings(typ: Any, pa: Any) -> bool:
    t = pa.types
    return bool(t.is_string(typ) or t.is_large_string(typ) or t.is_binary(typ) or t.is_large_binary(typ))


def _arrow_string_chunk(c: Any, pa: Any, np: Any) -> tuple[Any, Any, Any]:
    """Offsets (n + 1), data buffer and validity (None without nulls) of one arrow string/binary array."""
    n = len(c)
    large = pa.types.is_large_string(c.type) or pa.types.is_large_binary(c.type)
    valid = None
    if c.null_count:
        valid = c.is_valid().to_numpy(zero_copy_only=False)
    bufs = c.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64 if large else np.int32)[c.offset : c.offset + n + 1]
    if valid is not None:
        null_slots = ~valid
        if np.any(offsets[1:][null_slots] != offsets[:-1][null_slots]):
            # Bytes under a null slot (legal in arrow, arbitrary): the same values with empty null slots.
            c = pa.compute.if_else(c.is_valid(), c, pa.scalar(b"" if pa.types.is_binary(c.type)
                                                                or pa.types.is_large_binary(c.type) else "",
                                                                c.type))
            bufs = c.buffers()
            offsets = np.frombuffer(bufs[1], dtype=np.int64 if large else np.int32)[c.offset : c.offset + n + 1]
    data = bufs[2] if bufs[2] is not None else b""
    return offsets, data, valid


def _arrow_strings_encoding(arr: Any, pa: Any, np: Any, wide: bool | None) -> bytes:
    """The encoding of an arrow string/binary Array or ChunkedArray: see :class:`_StringStreams`.

    ``wide``: None writes the type's own offset width (4 bytes for ``string``/``binary``, 8 for the large
    types; 8 when a 4-byte column's data passes 2 GiB, which only a chunked one can: a property of the
    values, not of the chunking); True writes 8-byte offsets whatever the type (pandas' string dtype, whose
    digest does not depend on its storage).
    """
    chunks = [_arrow_string_chunk(c, pa, np) for c in (arr.chunks if hasattr(arr, "chunks") else [arr])]
    if wide is None:
        large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
        wide = large or sum(int(o[-1]) - int(o[0]) for o, _, _ in chunks if len(o)) >= 1 << 31
    streams = _StringStreams(wide)
    for offsets, data, valid in chunks:
        streams.feed(offsets, data, valid, np)
    return streams.encoding()


# Encodings of large arrow string columns already computed, by the identity of the array object (kept only
# while it lives: a weak reference; its id() alone could be a new array's). Why this is never stale: arrow
# arrays are immutable (pyarrow offers no way to change one in place; pandas replaces a column's array on
# every assignment, it never writes into one), and only arrays whose buffers arrow allocated itself are
# remembered (see _allocated_by_arrow: not one over a memory-mapped file or a zero-copy read). Numeric
# arrow arrays are never remembered: pyarrow wraps a numpy array without copying it, and writing into that
# numpy array changes the arrow array. The one way around the rule is to build a string array by hand over
# writable memory (``pa.Array.from_buffers`` on a ``py_buffer`` of a bytearray) and then write into that
# memory: arrow's own contract calls that undefined, and nbflow's documentation says so.
_STRINGS_MEMO: dict[tuple[int, bool | None], tuple[weakref.ref[Any], bytes]] = {}
_MEMO_MIN_VALUES = 1 << 12  # smaller columns are hashed again: microseconds, not worth an entry
_MEMO_MAX_ENTRIES = 1 << 12


def _arrow_strings_memo(arr: Any, pa: Any, np: Any, wide: bool | None) -> bytes:
    """:func:`_arrow_strings_encoding`, computed once per array object while that object lives."""
    if len(arr) < _MEMO_MIN_VALUES or not _allocated_by_arrow(arr):
        return _arrow_strings_encoding(arr, pa, np, wide)
    key = (id(arr), wide)
    known = _STRINGS_MEMO.get(key)
    if known is not None and known[0]() is arr:
        return known[1]
    encoding = _arrow_strings_encoding(arr, pa, np, wide)
    try:
        ref = weakref.ref(arr, partial(_forget_strings, key))
    except TypeError:  # not weakly referenceable: never remembered
        return encoding
    if len(_STRINGS_MEMO) >= _MEMO_MAX_ENTRIES:
        _STRINGS_MEMO.clear()
    _STRINGS_MEMO[key] = (ref, encoding)
    return encoding


def _allocated_by_arrow(arr: Any) -> bool:
    """Every buffer of ``arr`` is memory arrow allocated itself: not a slice of another buffer, as the
    buffers of a memory-mapped file or a zero-copy IPC read are (whose bytes another process, or a write to
    the file, can change under an immutable-looking array). Only such arrays are remembered."""
    try:
        buffers = arr.buffers()
    except Exception:
        return False
    return all(buf is None or (buf.parent is None and buf.is_mutable) for buf in buffers)


def _forget_strings(key: tuple[int, bool | None], gone: weakref.ref[Any]) -> None:
    known = _STRINGS_MEMO.get(key)
    if known is not None and known[0] is gone:  # not a later array that took over the same id
        del _STRINGS_MEMO[key]


def _python_strings_encoding(ea: Any, np: Any) -> bytes:
    """The same encoding as :func:`_arrow_strings_encoding` (8-byte offsets) for pandas strings held as
    Python objects (``string[python]``, or ``str`` without pyarrow): the digest does not depend on the
    storage. Missing values (NA, or NaN for ``str``) are the nulls."""
    streams = _StringStreams(True)
    n = len(ea)
    missing = np.asarray(ea.isna(), dtype=bool)
    for start in range(0, n, _OBJ_CHUNK):
        block = np.asarray(ea[start : start + _OBJ_CHUNK], dtype=object)
        nulls = missing[start : start + _OBJ_CHUNK]
        valid = None
        if nulls.any():
            block = np.where(nulls, "", block)  # a new array: `block` may be the column's own storage
            valid = ~nulls
        items = block.tolist()
        try:
            encoded = list(map(str.encode, items))
        except UnicodeEncodeError:  # lone surrogates (arrow cannot hold them): kept distinct, never failing
            encoded = [_utf8(s) for s in items]
        offsets = np.empty(len(encoded) + 1, dtype=np.int64)
        offsets[0] = 0
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
        streams.feed(offsets, b"".join(encoded), valid, np)
    return streams.encoding()


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
    if _is_arrow_strings(typ, pa):
        enc.buf += _arrow_strings_memo(arr, pa, sys.modules["numpy"], None)
        return
    if fixed and arr.null_count:
        enc.buf += b"m" + _arrow_nullable_fixed(chunks, typ.bit_width // 8, sys.modules["numpy"])
        return
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


def _arrow_nullable_fixed(chunks: list[Any], width: int, np: Any) -> bytes:
    """Fixed-width arrow values with nulls: the digest of their bytes with every null slot's zeroed (what lies
    under a null is arbitrary) and the digest of their validity (a byte per value), each fed chunk by chunk
    (as a stream fed in pieces digests like the whole, the chunking does not count)."""
    data, validity = _xxh3(), _xxh3()
    for c in chunks:
        n = len(c)
        if not n:
            continue
        raw = np.frombuffer(c.buffers()[1], dtype=np.uint8)[c.offset * width : (c.offset + n) * width]
        if c.null_count:
            valid = c.is_valid().to_numpy(zero_copy_only=False)
            values = raw.reshape(n, width).copy()
            values[~valid] = 0
            data.update(values)
            validity.update(valid.view(np.uint8))
        else:
            data.update(raw)
            validity.update(np.ones(n, dtype=np.uint8))
    return data.digest() + validity.digest()


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
