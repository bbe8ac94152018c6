"""Serializers that turn task results into bytes for the result store, and back.

A serializer produces a *stream* (bytes) plus a list of *out-of-band buffers*: large raw memory areas
(numpy arrays, pandas blocks) that the store writes to files as they are and reads back into preallocated
memory, without copying them through the stream. Serializers are looked up by name when a result is
loaded, so custom ones must be registered with :func:`register_serializer` in every process that loads
their results.
"""

from __future__ import annotations

import copyreg
import functools
import io
import json
import math
import mmap
import pickle
import sys
import threading
from typing import Any, Protocol, TypeAlias, runtime_checkable

from nbflow.exceptions import ConfigurationError, SerializationError

__all__ = [
    "OUT_OF_BAND_MIN_SIZE",
    "JsonSerializer",
    "PickleSerializer",
    "Serializer",
    "WritableBuffer",
    "get_serializer",
    "known_serializers",
    "register_serializer",
]

#: Buffers at least this large (bytes) are stored out-of-band by :class:`PickleSerializer`; smaller ones
#: stay inside the pickle stream, where a separate file would cost more than it saves.
OUT_OF_BAND_MIN_SIZE = 64 * 1024


#: What out-of-band buffers are handed to :meth:`Serializer.loads` as: writable memory holding exactly the
#: bytes that were dumped. Large buffers come as anonymous memory maps (faster to fill than a bytearray);
#: both support the buffer protocol, ``len`` and slicing.
WritableBuffer: TypeAlias = bytearray | mmap.mmap


@runtime_checkable
class Serializer(Protocol):
    """What the result store needs from a serializer.

    ``dumps`` returns the stream and the out-of-band buffers (possibly none); ``loads`` gets the same
    stream and buffers back (as writable buffers, see :data:`WritableBuffer`, in the same order) and
    rebuilds the value. ``type_hint`` is the declared return type of the task, or ``None``. Serializers
    raise :class:`~nbflow.exceptions.SerializationError` for values they cannot handle.
    """

    name: str

    def dumps(self, value: Any) -> tuple[bytes, list[memoryview]]:
        """Serialize ``value`` into a stream and out-of-band buffers."""
        ...

    def loads(self, stream: bytes, buffers: list[WritableBuffer], type_hint: Any = None) -> Any:
        """Rebuild a value from what :meth:`dumps` produced."""
        ...


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


class PickleSerializer:
    """Pickle protocol 5, with buffers of :data:`OUT_OF_BAND_MIN_SIZE` bytes or more kept out-of-band.

    Objects supporting out-of-band pickling (numpy arrays, and through them pandas objects) hand their
    memory over as buffers, so a large array is written to disk once and read back with a single read
    into memory that the rebuilt array then uses directly.
    """

    name = "pickle"

    def __init__(self, out_of_band_min_size: int = OUT_OF_BAND_MIN_SIZE) -> None:
        self.out_of_band_min_size = out_of_band_min_size

    def dumps(self, value: Any) -> tuple[bytes, list[memoryview]]:
        """Pickle ``value``; large contiguous buffers are returned separately instead of copied in."""
        buffers: list[memoryview] = []
        threshold = self.out_of_band_min_size

        def route(buffer: pickle.PickleBuffer) -> bool:
            # True keeps the buffer in-band; a false value makes it out-of-band (pickle's convention).
            try:
                view = buffer.raw()
            except BufferError:  # not contiguous: pickle copies it in-band
                return True
            if view.nbytes < threshold:
                return True
            buffers.append(view)
            return False

        try:
            file = io.BytesIO()
            pickler = pickle.Pickler(file, protocol=5, buffer_callback=route)
            numpy = sys.modules.get("numpy")
            if numpy is not None:
                # Looked up by exact type in C: no cost for any other object of the value.
                pickler.dispatch_table = {**copyreg.dispatch_table,
                                          numpy.ndarray: functools.partial(_reduce_array, threshold)}
            pickler.dump(value)
            stream = file.getvalue()
        except Exception as error:  # whatever a __reduce__ raises means the value cannot be pickled
            raise SerializationError(
                f"a value of type {_type_name(value)} cannot be pickled ({error}); pass "
                f"persist_result=False to keep such results in memory only, or result_serializer='json' "
                f"if the result is JSON-like data"
            ) from error
        return stream, buffers

    def loads(self, stream: bytes, buffers: list[WritableBuffer], type_hint: Any = None) -> Any:
        """Unpickle; only ever called on streams whose authenticity the store has verified."""
        return pickle.loads(stream, buffers=buffers)


def _reduce_array(threshold: int, array: Any) -> Any:
    """How :class:`PickleSerializer` pickles a numpy array: as numpy does, except a large object array of
    strings (a pandas object column), whose strings go out-of-band as arrow does it: their UTF-8 bytes one
    after the other and where each ends. Pickled in-band they would make a stream as large as the text, which
    the store keeps in its database and authenticates byte by byte; out-of-band they are a file written and
    read in one go. Only data crosses that way (strings are rebuilt from bytes, nothing is unpickled from the
    buffers), as with numpy's own buffers."""
    if array.dtype.hasobject and array.dtype.names is None and array.size and array.flags.c_contiguous:
        strings = _string_buffers(array.reshape(-1).tolist(), threshold)
        if strings is not None:
            ends, data, ascii_only = strings
            return _object_strings, (pickle.PickleBuffer(ends), pickle.PickleBuffer(data), array.shape, ascii_only)
    return array.__reduce_ex__(5)


def _string_buffers(items: list[Any], threshold: int) -> tuple[Any, bytes, bool] | None:
    """(the end of each string as int64, the UTF-8 bytes of all, whether all are ASCII), or None when some
    item is not exactly a ``str`` (subclasses keep their class through pickle), some string cannot be
    encoded strictly, or the text is too small to be worth a buffer."""
    if set(map(type, items)) != {str}:
        return None
    numpy = sys.modules["numpy"]
    joined = "".join(items)
    if len(joined) < threshold:
        return None
    from nbflow.hashing._builtins import utf8_pieces

    pieces = utf8_pieces(items, joined, numpy)
    if pieces is None:  # lone surrogates: pickle keeps them
        return None
    data, lengths = pieces
    return numpy.cumsum(lengths), data, len(data) == len(joined)


# Strings of an object array converted from arrow at a time (see _object_strings): a block's string objects
# (~70 bytes each) stay in the CPU's caches while they are referenced.
_CONVERT_BLOCK = 1 << 15


def _object_strings(ends: Any, data: Any, shape: tuple[int, ...], ascii_only: bool) -> Any:
    """The object array of strings :func:`_reduce_array` wrote (called by pickle when a result loads).

    Its fingerprint is remembered from the buffers it was built from (at memory speed, instead of walking
    its strings again when a later cell or task reads the result: see
    :func:`nbflow.hashing.values.remember_object_strings`)."""
    import numpy

    ends = numpy.frombuffer(ends, dtype=numpy.int64)
    n = len(ends)
    if (int(ends[-1]) if n else 0) != len(data) or n != math.prod(shape):
        raise ValueError("the string buffers of an object array do not fit together")
    try:
        import pyarrow
    except ImportError:
        pyarrow = None
    if pyarrow is not None and n:
        # Converted a block at a time: each block's strings referenced twice while they are in the CPU's
        # caches, by the array and by ``keep``, the copy the fingerprint memo holds (a copy made afterwards
        # would visit every string again, from memory); and the block's offsets built in a small buffer
        # reused from block to block (the stored ends lack the leading zero arrow needs), not a copy of them.
        whole = pyarrow.py_buffer(data)
        offsets = numpy.empty(min(n, _CONVERT_BLOCK) + 1, dtype=numpy.int64)
        flat = numpy.empty(n, dtype=object)
        keep = numpy.empty(n, dtype=object)
        for start in range(0, n, _CONVERT_BLOCK):
            stop = min(start + _CONVERT_BLOCK, n)
            offsets[0] = ends[start - 1] if start else 0
            offsets[1 : stop - start + 1] = ends[start:stop]
            strings = pyarrow.LargeStringArray.from_buffers(
                stop - start, pyarrow.py_buffer(offsets[: stop - start + 1]), whole
            )
            # Offsets in range, increasing, the bytes UTF-8: pyarrow reads the buffers as they say, unchecked.
            strings.validate(full=True)
            block = strings.to_numpy(zero_copy_only=False)
            flat[start:stop] = block
            keep[start:stop] = block
        out = flat.reshape(shape)
    else:
        keep = None
        out = numpy.empty(n, dtype=object)
        if n:
            starts = [0, *ends[:-1].tolist()]
            if ascii_only:
                text = bytes(data).decode("ascii")
                out[:] = list(map(text.__getitem__, map(slice, starts, ends.tolist())))
            else:
                raw = bytes(data)
                out[:] = [raw[a:b].decode() for a, b in zip(starts, ends.tolist(), strict=True)]
        out = out.reshape(shape)
    from nbflow.hashing.values import remember_object_strings

    remember_object_strings(out, ends, data, keep)
    return out


@functools.lru_cache(maxsize=256)
def _adapter(type_hint: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(type_hint)


class JsonSerializer:
    """JSON via pydantic: dumps pydantic models, dataclasses, datetimes, UUIDs, paths and plain data.

    On load, a type hint (other than ``Any``) is used to validate the JSON back into that type (e.g. a
    pydantic model); without one, plain JSON data (dicts, lists, strings, numbers) comes back.
    """

    name = "json"

    def dumps(self, value: Any) -> tuple[bytes, list[memoryview]]:
        """Encode ``value`` as JSON bytes; there are never out-of-band buffers."""
        import pydantic_core

        try:
            return pydantic_core.to_json(value), []
        except (pydantic_core.PydanticSerializationError, TypeError, ValueError, RecursionError) as error:
            raise SerializationError(
                f"a value of type {_type_name(value)} cannot be encoded as JSON ({error}); use the "
                f"default pickle serializer, or persist_result=False"
            ) from error

    def loads(self, stream: bytes, buffers: list[WritableBuffer], type_hint: Any = None) -> Any:
        """Decode JSON, validating it into ``type_hint`` when one is given."""
        if type_hint is None or type_hint is Any:
            return json.loads(stream)
        try:
            adapter = _adapter(type_hint)
        except TypeError:  # an unhashable hint (e.g. Annotated with a list) cannot be cached
            adapter = _adapter.__wrapped__(type_hint)
        return adapter.validate_json(stream)


_BUILTIN: dict[str, Serializer] = {"pickle": PickleSerializer(), "json": JsonSerializer()}
_registry: dict[str, Serializer] = dict(_BUILTIN)
_registry_lock = threading.Lock()


def register_serializer(serializer: Serializer) -> Serializer:
    """Make ``serializer`` loadable by its name in this process and return it.

    Registering again under the same name replaces the earlier one (so re-running a notebook cell that
    defines a serializer works). The built-in names ``"pickle"`` and ``"json"`` cannot be taken over by a
    different kind of serializer.
    """
    if not isinstance(serializer, Serializer) or isinstance(serializer, type):
        raise ConfigurationError(
            f"{serializer!r} is not a serializer: it needs a `name` and `dumps`/`loads` methods"
        )
    name = serializer.name
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"serializer {serializer!r} needs a non-empty string `name`")
    builtin = _BUILTIN.get(name)
    if builtin is not None and type(serializer) is not type(builtin):
        raise ConfigurationError(f"the serializer name {name!r} is reserved for nbflow's built-in serializer")
    with _registry_lock:
        _registry[name] = serializer
    return serializer


def get_serializer(name_or_instance: str | Serializer) -> Serializer:
    """The serializer registered under a name, or the given serializer instance itself.

    Raises :class:`~nbflow.exceptions.ConfigurationError` for an unknown name (listing the known ones) or
    an object that is not a serializer.
    """
    if isinstance(name_or_instance, str):
        try:
            return _registry[name_or_instance]
        except KeyError:
            raise ConfigurationError(
                f"unknown serializer {name_or_instance!r}; known serializers are {known_serializers()} "
                f"(register custom ones with nbflow.store.serializers.register_serializer)"
            ) from None
    if isinstance(name_or_instance, Serializer) and not isinstance(name_or_instance, type):
        return name_or_instance
    raise ConfigurationError(
        f"{name_or_instance!r} is not a serializer: pass a name such as 'pickle' or 'json', or an object "
        f"with a `name` and `dumps`/`loads` methods"
    )


def known_serializers() -> list[str]:
    """Names of the serializers registered in this process."""
    return sorted(_registry)


def serialize(
    serializer: Serializer, value: Any, task_name: str
) -> tuple[bytes, list[memoryview]]:
    """``serializer.dumps(value)`` as the store writes it: the stream as bytes and the buffers as flat byte
    views; any failure is a :class:`~nbflow.exceptions.SerializationError` naming the task."""
    try:
        stream, views = serializer.dumps(value)
    except SerializationError as error:
        raise SerializationError(f"the result of task {task_name!r} cannot be stored: {error}") from error
    except Exception as error:
        raise SerializationError(
            f"the result of task {task_name!r} cannot be stored: serializer {serializer.name!r} failed "
            f"on a value of type {type(value).__name__} ({type(error).__name__}: {error}); pass "
            f"persist_result=False to keep such results in memory only"
        ) from error
    if type(stream) is not bytes:
        stream = bytes(stream)
    cast: list[memoryview] = []
    for view in views:
        view = memoryview(view)
        cast.append(view if view.format == "B" and view.ndim == 1 else view.cast("B"))
    return stream, cast

