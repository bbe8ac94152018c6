"""The encoder behind :mod:`nbflow.hashing.values`: the byte stream and the walk of a value.

One :class:`_Enc` is one fingerprint being computed. Besides the buffer in front of the hasher it keeps:

* ``seen``: the objects of the walk that can be shared or cyclic (lists, dicts, sets, records, objects
  walked through the pickle protocol), by ``id()``. While one is being encoded it maps to ``~depth``: met
  again there, it is a cycle, written ``^`` + how many levels up (as in format version 1). Once encoded it
  is forgotten again, unless more than :data:`SHARED_INLINE` other nodes were entered while encoding it:
  then it maps to its index among such objects (order of first visit, so nothing depends on addresses)
  and a later occurrence is written ``&`` + that index instead of being walked again. Smaller shared
  objects (and any container of plain values: writing one again costs its own size, never more) are
  still written in full wherever they occur, so ``[s, s]`` and ``[s, copy(s)]`` keep digesting alike;
  a large one is walked once, which keeps the walk linear in the size of the object graph, not in the
  size of the tree it unfolds into (a shared transform reachable along millions of paths).
  Remembered objects are kept alive in ``keep`` for the duration of the computation, so that no other
  object (a temporary made by some ``__reduce_ex__``) can take over their ``id()``.
* the budget: ``nodes`` counts every container, record and object entered, against ``MAX_NODES``;
  ``objects_left`` the objects walked through ``__reduce_ex__``, against ``MAX_OBJECTS``; the clock is
  read every ``_CHECK_EVERY`` nodes (and every 16 such objects, and as pickle output arrives) against
  ``MAX_SECONDS``. Leaves (numbers, strings, array buffers) do not count: they cost little per byte.
  Past a bound, :class:`_OverBudget` ends the walk. The bounds are set by :mod:`nbflow.hashing.values`.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import xxhash

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
# Payloads above _BIG bypass the buffer; the buffer itself is handed over once past _FLUSH inside long
# sequences, and past _FLUSH_WALK at budget checkpoints (anywhere in the walk). Larger than _FLUSH because a
# flush gives up the pickle fallback of the objects being walked (their bytes can no longer be taken back).
_BIG = 1 << 16
_FLUSH = 1 << 20
_FLUSH_WALK = 1 << 24
# Non-contiguous arrays are copied into C order in blocks of about this many bytes: small enough to
# stay in cache and keep peak memory low, large enough that the per-block overhead is negligible.
_CHUNK = 1 << 22
# Elements of an object array converted to a list at a time.
_OBJ_CHUNK = 1 << 15
_NAN = _pack_d(math.nan)

#: A shared container, record or object holding at most this many others (counted as the walk enters them,
#: at any depth) is written in full at every occurrence, so that aliasing does not change a digest; a larger
#: one is written once and referenced afterwards. Part of the byte stream: changing it changes digests (bump
#: ``FORMAT_VERSION`` with it).
SHARED_INLINE: Final = 64
# Nodes between two checkpoints of the budget (the clock is read there).
_CHECK_EVERY = 1024


class _Fail(Exception):
    """Internal: a part of the value cannot be fingerprinted. Collects the path while unwinding."""

    def __init__(self, type_name: str, reason: str, final: bool = False) -> None:
        super().__init__(type_name, reason)
        self.type_name = type_name
        self.reason = reason
        self.final = final  # refused on purpose (a generator, a lock): no pickle fallback around it
        self.path: list[str] = []  # innermost component first

    def where(self, root: str) -> str:
        return root + "".join(reversed(self.path))

    def message(self, root: str, value: object) -> str:
        return f"cannot fingerprint value of type {self.type_name!r} at {self.where(root)}: {self.reason}"


class _OverBudget(_Fail):
    """Internal: the walk went past a bound of the budget (``kind``: "nodes", "objects" or "seconds")."""

    def __init__(self, type_name: str, kind: str, limit: float) -> None:
        super().__init__(type_name, kind, final=True)  # never retried through pickle: the budget is spent
        self.kind = kind
        self.limit = limit

    def message(self, root: str, value: object) -> str:
        if self.kind == "nodes":
            what = f"more than {self.limit:,} containers and objects to walk (the budget MAX_NODES"
        elif self.kind == "objects":
            what = f"more than {self.limit:,} objects to walk through __reduce_ex__ (the budget MAX_OBJECTS"
        else:
            what = f"fingerprinting it took more than {self.limit:g} s (the budget MAX_SECONDS"
        where = self.where(root)
        if len(where) > 160:
            where = where[:80] + "..." + where[-80:]
        stopped = f"; it stopped at {where} (type {self.type_name!r})" if self.path else ""
        return (
            f"cannot fingerprint value of type {_tname(value)!r} at {root}: {what} of nbflow.hashing.values)"
            f"{stopped}. Leave it out of the key or register a fingerprint with nbflow.hashing.register"
        )


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
    """One fingerprint being computed: a bounded buffer in front of a lazily created hasher, the objects
    met so far (cycles, shared objects) and what is left of the budget."""

    __slots__ = (
        "buf", "check_at", "deadline", "depth", "flushes", "h", "keep", "max_nodes", "max_objects", "memo",
        "nodes", "objects_left", "seconds", "seen",
    )

    def __init__(self) -> None:
        self.buf = bytearray()
        self.h: Any = None
        self.flushes = 0
        # id() -> ~depth while being encoded, -> index once remembered (see the module docstring).
        self.seen: dict[int, int] = {}
        self.keep: list[object] = []
        self.depth = 0
        # Code identities of user functions/classes met during this call (id -> (object, bytes)).
        self.memo: dict[int, tuple[object, bytes]] | None = None
        self.budget(1 << 62, 1 << 62, math.inf)

    def budget(self, max_nodes: int, max_objects: int, seconds: float) -> None:
        """Start counting a value against these bounds (each value of a Fingerprinter has its own)."""
        self.max_nodes = max_nodes
        self.max_objects = max_objects
        self.seconds = seconds
        self.nodes = 0
        self.check_at = min(_CHECK_EVERY, max_nodes + 1)
        self.objects_left = max_objects
        self.deadline = time.monotonic() + seconds

    def check_time(self, v: object) -> None:
        if time.monotonic() > self.deadline:
            raise _OverBudget(_tname(v), "seconds", self.seconds)

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

    def forget(self, mark: int) -> None:
        """Forget the objects remembered since ``len(keep)`` was ``mark``."""
        seen, keep = self.seen, self.keep
        for obj in keep[mark:]:
            del seen[id(obj)]
        del keep[mark:]

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
        """Digest of ``x`` on its own (sharing cycle detection), used to order dict keys and sets.

        Objects remembered inside are forgotten afterwards: sub-digests are computed in iteration order
        (a set's), and none may depend on which was computed first. Objects remembered before are still
        referenced: that state is the same whatever the order.
        """
        buf, h, mark = self.buf, self.h, len(self.keep)
        self.buf = bytearray()
        self.h = None
        try:
            _enc(self, x)
            return self.digest()
        finally:
            self.buf, self.h = buf, h
            if len(self.keep) > mark:
                self.forget(mark)


def _checkpoint(enc: _Enc, v: object) -> None:
    """Every _CHECK_EVERY nodes (and at MAX_NODES + 1): the node budget, the clock, a flush of a large buffer."""
    nodes = enc.nodes
    if nodes > enc.max_nodes:
        raise _OverBudget(_tname(v), "nodes", enc.max_nodes)
    enc.check_at = min(nodes + _CHECK_EVERY, enc.max_nodes + 1)
    enc.check_time(v)
    if len(enc.buf) > _FLUSH_WALK:
        enc.feed(b"")


def _visit(enc: _Enc, v: object) -> int:
    """Enter a container, record or object that may be shared or cyclic: its number among the nodes of the
    walk, or 0 when it was met before (then a reference to it was written instead)."""
    n = enc.nodes = enc.nodes + 1
    if n >= enc.check_at:
        _checkpoint(enc, v)
    seen = enc.seen
    s = seen.get(id(v))
    if s is not None:
        if s < 0:  # being encoded: a cycle, as many levels up as written (the format of version 1)
            enc.buf += b"^" + _pack_I(enc.depth - ~s)
        else:
            enc.buf += b"&" + _pack_I(s)
        return 0
    seen[id(v)] = ~enc.depth
    enc.depth += 1
    return n


def _done(enc: _Enc, v: object, n: int) -> None:
    """Leave what _visit entered (as node ``n``), once written; remember it if it held many nodes."""
    enc.depth -= 1
    if enc.nodes - n > SHARED_INLINE:
        keep = enc.keep
        enc.seen[id(v)] = len(keep)
        keep.append(v)
    else:
        del enc.seen[id(v)]


def _abandon(enc: _Enc, v: object) -> None:
    """Leave what _visit entered, when writing it failed."""
    enc.depth -= 1
    del enc.seen[id(v)]


def _tick(enc: _Enc, v: object) -> None:
    """Count a node that is never shared by reference (tuples, frozensets): the budget still bounds them."""
    n = enc.nodes = enc.nodes + 1
    if n >= enc.check_at:
        _checkpoint(enc, v)


# The handler of each type met so far; filled by nbflow.hashing.values (which resolves new types).
_HANDLERS: dict[type, _Handler] = {}


def _resolve(t: type) -> _Handler:
    from nbflow.hashing.values import _resolve as resolve  # the registry and the tables live there

    return resolve(t)


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


# -- strings inside the stream ----------------------------------------------------------------------


def _utf8(s: str) -> bytes:
    try:
        return s.encode()
    except UnicodeEncodeError:  # lone surrogates are legal in str; keep them distinct, don't fail
        return s.encode("utf-8", "surrogatepass")


def _sb(s: str) -> bytes:
    """A length-prefixed string, for names inside other encodings."""
    b = _utf8(s)
    return _pack_Q(len(b)) + b
