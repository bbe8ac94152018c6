"""The payload row of an entry, and its MAC: what makes a stored result trustworthy.

A payload row is ``MAGIC`` (4 bytes, the layout), the MAC (32 raw bytes), the length of the signed fields
(4 bytes, big-endian), the signed fields (:meth:`Record.signed_bytes`, a compact JSON array) and the
serialized stream. The MAC is an HMAC-SHA256, keyed by the per-user secret, over everything after itself.
:meth:`Sealer.verify` checks it before the signed fields are parsed or anything is unpickled, and trusts only
those fields (key, expiry, serializer, buffer sizes and checksums), never the metadata record, which is an
unauthenticated index.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from nbflow.store.blobs import CHUNK
from nbflow.store.interface import Invalid
from nbflow.store.record import FORMAT_VERSION, SIGNED_FIELDS, Record

__all__ = ["MAC_MISMATCH", "MAGIC", "Sealer", "mac_of"]

# The reason an entry fails when its MAC does not match (eviction.warn_failed tells it apart).
MAC_MISMATCH = "does not match its authentication code"

MAC_DOMAIN = b"nbflow-store-entry\x00"
# The payload row (see the module documentation): magic, MAC, length of the signed fields, signed fields,
# stream. The magic names the layout, so a payload of another layout is rejected before anything else.
MAGIC = b"nbf\x02"
MAC_START = len(MAGIC)
MAC_END = MAC_START + 32
HEADER = MAC_END + 4
# Sealer.verify unpacks the signed fields in this order; keep it in step with record.SIGNED_FIELDS.
assert SIGNED_FIELDS == (
    "key", "task_name", "run_id", "created", "expires", "size", "serializer", "format_version", "buffers",
    "stream_size", "blob_id",
)
# The JSON scanner json.loads uses, called directly: it parses the signed fields of a small entry in a
# third of the time (the fields are ASCII, MAC-verified, and checked for shape after parsing).
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def mac_of(payload: bytes) -> str:
    """The MAC of a payload row, in hex (as its record keeps it)."""
    return payload[MAC_START:MAC_END].hex()


class Sealer:
    """Seals and verifies the payload rows of one store, under its secret."""

    def __init__(self, secret: bytes) -> None:
        padded = secret.ljust(64, b"\0")  # SHA-256 block size; the key is shorter
        # HMAC computed from SHA-256 states pre-fed with the padded key (RFC 2104) and, for the inner one,
        # the domain prefix of every entry MAC: the same MAC as hmac.new(secret, MAC_DOMAIN + message,
        # "sha256"), without redoing the key setup on every cache hit (tests/store/test_fast_paths.py).
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in padded) + MAC_DOMAIN)
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in padded))

    def entry(self, key: str, task_name: str, run_id: str | None, expires: float | None, serializer: str,
                stream: bytes, buffers: list[tuple[int, str]], blob_id: str) -> tuple[Record, bytes]:
        """The record of a new entry and its payload row."""
        now = time.time()
        record = Record(
            key=key,
            task_name=task_name,
            run_id=run_id,
            created=now,
            expires=None if expires is None else float(expires),
            last_used=now,
            size=len(stream) + sum(size for size, _ in buffers),
            serializer=serializer,
            format_version=FORMAT_VERSION,
            buffers=buffers,
            stream_size=len(stream),
            mac="",
            hits=0,
            blob_id=blob_id,
        )
        payload, mac = self.seal(record, stream)
        # Set in place rather than with dataclasses.replace (a tenth of the cost): the record has not left
        # this store yet.
        object.__setattr__(record, "mac", mac)
        return record, payload

    def seal(self, record: Record, stream: bytes) -> tuple[bytes, str]:
        """The payload row of an entry (see the module documentation) and its MAC in hex."""
        signed = record.signed_bytes()
        length = len(signed).to_bytes(4, "big")
        inner = self._inner.copy()
        inner.update(length)
        inner.update(signed)
        inner.update(stream)
        outer = self._outer.copy()
        outer.update(inner.digest())
        mac = outer.digest()
        return b"".join((MAGIC, mac, length, signed, stream)), mac.hex()

    def verify(self, key: str, payload: Any) -> tuple[str, float | None, str, list[Any], int, str, int]:
        """Check a payload row read for ``key``: its layout, its MAC, then its signed fields; return
        ``(task_name, expires, serializer, checksums, stream_size, blob_id, end)``, where the stream starts
        at ``end``. Raises :class:`~nbflow.store.interface.Invalid` for anything that is not an authentic
        payload of this key."""
        if type(payload) is not bytes or payload[:MAC_START] != MAGIC:
            raise Invalid("has no payload" if payload is None else "has a payload of an unknown layout")
        inner = self._inner.copy()
        if len(payload) < CHUNK:
            inner.update(payload[MAC_END:])
        else:
            with memoryview(payload) as view:  # no copy of a large stream
                inner.update(view[MAC_END:])
        outer = self._outer.copy()
        outer.update(inner.digest())
        if not hmac.compare_digest(outer.digest(), payload[MAC_START:MAC_END]):
            raise Invalid(MAC_MISMATCH)
        # From here on the signed fields are authentic: written by a store that holds the secret.
        end = HEADER + int.from_bytes(payload[MAC_END:HEADER], "big")
        try:
            signed, _ = _scan_json(payload[HEADER:end].decode("ascii"), 0)
            if type(signed) is not list:
                raise ValueError
            signed_key, task_name, _, _, expires, _, name, version, checksums, stream_size, blob_id = signed
        except (ValueError, TypeError, StopIteration):
            raise Invalid("has malformed metadata") from None
        if signed_key != key or version != FORMAT_VERSION:
            # Authentic, but the entry of another key (or format) stored under this one.
            raise Invalid("has metadata that belongs to another entry")
        return task_name, expires, name, checksums, stream_size, blob_id, end

