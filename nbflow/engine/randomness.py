"""The process's global random generators around a task call: a hit leaves them as the computed call did.

The global generators are Python's ``random`` module and NumPy's legacy ``np.random.*`` functions (one
``RandomState``). A call that may draw from them (see :func:`nbflow.hashing.code.may_draw`; every cell
task may) is observed: their states are taken before and after the call, and a generator whose state
moved was drawn from. Its entry is then stored with the result (:class:`Drawn`) and checked on a hit:

* a **seeded** generator (``random.seed(n)``, ``np.random.seed(n)``, a ``set_state``) must be in the
  state it was in when the cached call started — an upstream cell that now draws more numbers makes a
  miss — and a hit sets it to the state the computed call left it in. A seeded notebook therefore
  draws exactly the numbers of a plain run, whichever cells come from the cache;
* an **unseeded** generator (seeded from the OS, as on import) drew arbitrary numbers: its state is not
  compared and a hit leaves it alone, as Prefect caches such a call.

Seeding is known from NumPy itself (a legacy seed drops the generator's ``SeedSequence``) and, for
``random``, from nbflow's wrappers of ``random.seed`` and ``random.setstate``, installed when the engine
loads. ``random`` seeded before nbflow loaded, in a namespace that already imported it, counts as seeded.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import xxhash

__all__ = ["Drawn", "check", "restore", "states", "watch_seeding"]

_python_seeded = True


class Drawn(NamedTuple):
    """A global generator a call drew from (or seeded)."""

    name: str  # "random" or "numpy.random"
    seeded: bool  # seeded when the call started: its state then is compared on a hit
    entry: str  # digest of its state when the call started ("" when unseeded)
    exit_state: Any  # the state the call left when it was seeded by then (a hit restores it), else None


def _generators() -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    module = sys.modules.get("random")
    if module is not None:
        found.append(("random", module._inst))
    mtrand = sys.modules.get("numpy.random.mtrand")
    if mtrand is not None and getattr(mtrand, "_rand", None) is not None:
        found.append(("numpy.random", mtrand._rand))
    return found


def _get(name: str, generator: Any) -> Any:
    return generator.getstate() if name == "random" else generator.get_state()


def _digest(name: str, state: Any) -> str:
    if name == "random":
        version, internal, gauss = state
        return xxhash.xxh3_128_hexdigest(repr((version, gauss)).encode() + bytes(str(internal), "ascii"))
    kind, key, pos, has_gauss, gauss = state
    return xxhash.xxh3_128_hexdigest(
        memoryview(key).cast("B").tobytes() + repr((kind, pos, has_gauss, gauss)).encode()
    )


def _same(name: str, state: Any, other: Any) -> bool:
    """Whether two states of the generator ``name`` are equal (what equal digests would say)."""
    if name == "random":
        return bool(state == other)
    kind, key, pos, has_gauss, gauss = state
    return (kind, pos, has_gauss, gauss) == other[:1] + other[2:] and memoryview(key) == memoryview(other[1])


def _seeded(name: str, generator: Any) -> bool:
    if name == "random":
        return _python_seeded
    # A legacy seed (np.random.seed(n), RandomState(n)) leaves no SeedSequence; seeding from the OS does.
    return getattr(getattr(generator, "_bit_generator", None), "_seed_seq", None) is None


def states() -> list[tuple[str, Any, Any, bool]]:
    """(name, generator, state, seeded) of every global generator now."""
    return [(name, generator, _get(name, generator), _seeded(name, generator)) for name, generator in _generators()]


def drawn(before: list[tuple[str, Any, Any, bool]]) -> list[Drawn]:
    """The generators whose state moved since ``before`` (taken by :func:`states` at the call's start).

    A generator unseeded at the start drew arbitrary numbers: its state then does not count. One seeded
    by the end (a call that seeds, then draws) leaves a state a hit must restore."""
    moved: list[Drawn] = []
    for name, generator, state, seeded in before:
        after = _get(name, generator)
        if _same(name, state, after):  # compared in C: most calls draw nothing, and digests cost ~40 µs each
            continue
        entry = _digest(name, state)
        if _digest(name, after) == entry:
            continue
        moved.append(Drawn(name, seeded, entry if seeded else "", after if _seeded(name, generator) else None))
    return moved


def check(recorded: list[Drawn]) -> Drawn | None:
    """The first generator not in the state the cached call started from (None: all are): a seeded one in
    another state, or one the call drew from unseeded that is seeded now."""
    current = dict(_generators())
    for entry in recorded:
        generator = current.get(entry.name)
        if not entry.seeded:
            # An arbitrary draw stands for any unseeded state, not for a seeded one: a plain run seeded
            # beforehand would draw the seeded numbers.
            if generator is not None and _seeded(entry.name, generator):
                return entry
            continue
        if generator is None or not _seeded(entry.name, generator):
            return entry
        if _digest(entry.name, _get(entry.name, generator)) != entry.entry:
            return entry
    return None


def variant(key: str, recorded: list[Drawn], now: bool = False) -> str | None:
    """The key under which a call's result is also stored for the states its seeded generators started
    from (``now``: the states they are in at present), so that one task called at several points of a
    seeded sequence keeps one entry per point. None when no seeded generator was drawn from."""
    seeded = sorted({entry.name for entry in recorded if entry.seeded})  # seeded when the call started
    if not seeded:
        return None
    if now:
        current = dict(_generators())
        digests = []
        for name in seeded:
            generator = current.get(name)
            if generator is None:
                return None
            digests.append(_digest(name, _get(name, generator)))
    else:
        by_name = {entry.name: entry.entry for entry in recorded if entry.seeded}
        digests = [by_name[name] for name in seeded]
    return xxhash.xxh3_128_hexdigest("|".join([key, *seeded, *digests]).encode())


def restore(recorded: list[Drawn]) -> None:
    """Leave the generators the cached call seeded or drew from seeded as the call left them."""
    global _python_seeded
    current = dict(_generators())
    for entry in recorded:
        generator = current.get(entry.name)
        if entry.exit_state is None or generator is None:
            continue
        if entry.name == "random":
            generator.setstate(entry.exit_state)
            _python_seeded = True
        else:
            generator.seed(0)  # a legacy seed first: the generator then counts as seeded, as after the call
            generator.set_state(entry.exit_state)


def watch_seeding(namespace: dict[str, Any] | None = None) -> None:
    """Wrap ``random.seed`` / ``random.setstate`` so that nbflow knows whether ``random`` is seeded.

    Until now, ``random`` is taken as unseeded unless ``namespace`` (the user's, ``__main__``) refers to
    the module or one of its functions: then the user may have seeded it, and it counts as seeded.
    """
    global _python_seeded
    import random

    if getattr(random.seed, "_nbflow_wrapper", False):
        return
    if namespace is None:
        main = sys.modules.get("__main__")
        namespace = vars(main) if main is not None else {}
    _python_seeded = any(
        value is random or getattr(value, "__self__", None) is random._inst for value in list(namespace.values())
    )
    original_seed, original_setstate = random.seed, random.setstate

    def seed(a: Any = None, version: int = 2) -> None:
        global _python_seeded
        original_seed(a, version)
        _python_seeded = a is not None

    def setstate(state: Any) -> None:
        global _python_seeded
        original_setstate(state)
        _python_seeded = True

    for wrapper, original in ((seed, original_seed), (setstate, original_setstate)):
        # No __wrapped__: code identity would then count the generator's state as part of the caller's code.
        wrapper.__doc__ = original.__doc__
        setattr(wrapper, "_nbflow_wrapper", True)  # noqa: B010
    setattr(random, "seed", seed)  # noqa: B010
    setattr(random, "setstate", setstate)  # noqa: B010
