"""The metadata record kept for every stored result, and the store's format version."""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["FORMAT_VERSION", "Record"]

#: Version of the on-disk layout. It is part of every key in the store and of every record, so entries
#: written under another version are never read: they simply are not found in this version's namespace.
#: (2: each payload row carries its MAC and signed fields; 3: the volume is kept by diskcache's size triggers;
#: 4: an entry's two rows are keyed ``<version>:<key>:p`` and ``:m``, next to each other in the key index;
#: see :mod:`nbflow.store.store`.)
FORMAT_VERSION = 4

# The fields an entry's MAC covers, in the fixed order Record.signed_bytes encodes them in: a compact
# JSON array with ASCII escapes, which is canonical (the same fields always encode to the same bytes;
# floats use Python's shortest round-trip repr, which JSON parsing preserves). ``mac`` itself is
# excluded, and so are ``last_used`` and ``hits``: those change on cache hits, and excluding them keeps a
# refresh of the LRU bookkeeping from needing to recompute (or re-verify) anything. These bytes are also
# stored in the entry's payload row, which is where a load reads them from.
SIGNED_FIELDS = (
    "key",
    "task_name",
    "run_id",
    "created",
    "expires",
    "size",
    "serializer",
    "format_version",
    "buffers",
    "stream_size",
    "blob_id",
)

_FIELD_NAMES = (
    "key",
    "task_name",
    "run_id",
    "created",
    "expires",
    "last_used",
    "size",
    "serializer",
    "format_version",
    "buffers",
    "stream_size",
    "mac",
    "hits",
    "blob_id",
)
_BUFFERS = _FIELD_NAMES.index("buffers")
_field_values = operator.itemgetter(*_FIELD_NAMES)

_string = json.encoder.encode_basestring_ascii  # JSON string literal with ASCII escapes (C function)
_encoder = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))
_FINITE = 1.7976931348623157e308


def _float(value: Any) -> str:
    """A float as the encoder writes it; ValueError for anything else (an int, NaN, an infinity)."""
    if type(value) is not float or not -_FINITE <= value <= _FINITE:
        raise ValueError(value)
    return float.__repr__(value)


def _int(value: Any) -> str:
    """An int as the encoder writes it; TypeError for anything else (a bool included)."""
    if type(value) is not int:
        raise TypeError(value)
    return int.__repr__(value)


@dataclass(frozen=True, slots=True)
class Record:
    """Metadata of one stored result: everything about the entry except the payload itself.

    Listing, probing and evicting work on records alone, so they never read payload bytes.

    Attributes:
        key: The cache key the entry is stored under.
        task_name: Name of the task that produced the result (used in warnings and listings).
        run_id: Id of the run that produced it, if any.
        created: When the entry was written (seconds since the epoch).
        expires: When it stops being valid (seconds since the epoch), or ``None`` for never.
        last_used: When it was last written or loaded, to a granularity of
            :attr:`ResultStore.touch_interval <nbflow.store.ResultStore.touch_interval>` (60 s): a cache
            hit only rewrites the record when this is older than that, so hits stay read-only.
        size: Bytes on disk: the pickle stream plus all out-of-band buffers.
        serializer: Name of the serializer that wrote the payload (``"pickle"``, ``"json"`` or a
            registered custom one).
        format_version: :data:`FORMAT_VERSION` of the code that wrote the entry.
        buffers: ``(size, checksum)`` of each out-of-band buffer, in order.
        stream_size: Length of the serialized stream in bytes.
        mac: Hex HMAC-SHA256 over the signed fields and the stream.
        hits: Cache hits counted so far. Hits are added to the record when it is rewritten (at most once
            per ``touch_interval``, and when the store is closed), so recent hits may not show yet.
        blob_id: Random id of the write that produced the buffer files (empty when there are none); each
            write gets fresh file names so a concurrent or failed write never touches a live entry's files.
    """

    key: str
    task_name: str
    run_id: str | None
    created: float
    expires: float | None
    last_used: float
    size: int
    serializer: str
    format_version: int
    buffers: list[tuple[int, str]]
    stream_size: int
    mac: str
    hits: int = 0
    blob_id: str = ""

    def signed_bytes(self) -> bytes:
        """The canonical encoding of the fields covered by :attr:`mac`: a compact JSON array.

        Built directly rather than with :mod:`json` because it runs on every cache hit; for well-typed
        records it is byte for byte what ``json.dumps(values, separators=(",", ":"))`` gives. Numbers go
        through ``repr`` without conversion, so a field whose type was changed (``5`` to ``"5"``, ``1.0``
        to ``1``) encodes differently and fails the MAC, and a non-string where a string belongs raises.
        """
        run_id, expires, buffers = self.run_id, self.expires, self.buffers
        return (
            f"[{_string(self.key)},{_string(self.task_name)},{'null' if run_id is None else _string(run_id)},"
            f"{self.created!r},{'null' if expires is None else repr(expires)},{self.size!r},"
            f"{_string(self.serializer)},{self.format_version!r},"
            f"[{','.join([f'[{size!r},{_string(checksum)}]' for size, checksum in buffers])}],"
            f"{self.stream_size!r},{_string(self.blob_id)}]"
        ).encode("ascii")

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-compatible data (buffers as lists)."""
        return {
            "key": self.key,
            "task_name": self.task_name,
            "run_id": self.run_id,
            "created": self.created,
            "expires": self.expires,
            "last_used": self.last_used,
            "size": self.size,
            "serializer": self.serializer,
            "format_version": self.format_version,
            "buffers": [[size, checksum] for size, checksum in self.buffers],
            "stream_size": self.stream_size,
            "mac": self.mac,
            "hits": self.hits,
            "blob_id": self.blob_id,
        }

    def to_json(self) -> str:
        """The record as a compact JSON object (the form it is stored in)."""
        try:
            return self._json_directly()
        except (TypeError, ValueError):  # a field of an unexpected type: the encoder decides
            return _encoder.encode(self.to_dict())

    def _json_directly(self) -> str:
        # What the encoder writes for a well-typed record, byte for byte, at a third of its cost (every
        # save writes a record). Raises TypeError or ValueError for any field the encoder might write
        # differently or refuse (a bool or a NaN where a number belongs, a non-string where a string does).
        run_id, expires = self.run_id, self.expires
        return (
            f'{{"key":{_string(self.key)},"task_name":{_string(self.task_name)},'
            f'"run_id":{"null" if run_id is None else _string(run_id)},"created":{_float(self.created)},'
            f'"expires":{"null" if expires is None else _float(expires)},"last_used":{_float(self.last_used)},'
            f'"size":{_int(self.size)},"serializer":{_string(self.serializer)},'
            f'"format_version":{_int(self.format_version)},'
            f'"buffers":[{",".join([f"[{_int(size)},{_string(checksum)}]" for size, checksum in self.buffers])}],'
            f'"stream_size":{_int(self.stream_size)},"mac":{_string(self.mac)},"hits":{_int(self.hits)},'
            f'"blob_id":{_string(self.blob_id)}}}'
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """Build a record from :meth:`to_dict` output. Raises ``ValueError`` if it is malformed."""
        try:
            # One C-level itemgetter call and positional arguments: this runs on every cache hit.
            values = _field_values(data)
            if values[_BUFFERS]:
                buffers = [(size, checksum) for size, checksum in values[_BUFFERS]]
                values = (*values[:_BUFFERS], buffers, *values[_BUFFERS + 1 :])
            return cls(*values)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed store record: {error!r}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Record:
        """Parse :meth:`to_json` output. Raises ``ValueError`` if it is not a well-formed record."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a store record must be a JSON object")
        return cls.from_dict(data)


# The fast constructor above relies on this order; keep it in step with the class.
assert tuple(field.name for field in fields(Record)) == _FIELD_NAMES
