"""What a stored result depends on besides its key, checked on every hit: files and random generators.

A call's cache key is computed before it runs, from its code and inputs. Two things a call depends on
are only known once it has run: the files it read (:mod:`nbflow.engine.file_reads`) and the global
random generators it drew from (:mod:`nbflow.engine.randomness`). When a call had either, its result is
stored wrapped in a :class:`Conditional`; a hit checks the conditions first (a changed file or a seeded
generator in another state makes it a miss) and then applies them (generators set to the state the
computed call left, the files adopted by the calls enclosing this one). A result without conditions is
stored as it is, so calls that read no file and draw no number pay nothing for this.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from nbflow.engine import file_reads, randomness
from nbflow.engine.file_reads import FileRead, Recorder
from nbflow.engine.file_reads import current as current_recorder
from nbflow.engine.file_reads import start as start_recording
from nbflow.engine.randomness import Drawn

__all__ = ["Conditional", "Observation", "generator_globals", "is_generator", "key_parts", "restore_in_place"]

# From the engine's first use on, nbflow knows when `random` is seeded.
randomness.watch_seeding()


class Conditional:
    """A stored result and its conditions (pickled with it, authenticated with it). ``arguments`` holds
    the random generators among the call's arguments as the call left them (a hit sets the ones passed
    in to the same state)."""

    __slots__ = ("arguments", "drawn", "files", "value")

    def __init__(self, value: Any, files: list[FileRead], drawn: list[Drawn],
                 arguments: dict[str, Any] | None = None) -> None:
        self.value = value
        self.files = files
        self.drawn = drawn
        self.arguments = arguments or {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (Conditional, (self.value, self.files, self.drawn, self.arguments))

    def stale(self) -> str | None:
        """Why the result no longer holds (``file 'data.csv' changed``), or None."""
        return self.files_changed() or self.generators_moved()

    def files_changed(self) -> str | None:
        read = file_reads.changed(self.files)
        if read is None:
            return None
        if read.written:
            return f"file {read.label!r}, which the call wrote, is missing or changed"
        what = "directory" if read.kind == "dir" else "file"
        return f"{what} {read.label!r} changed" if read.kind != "missing" else f"file {read.label!r} appeared"

    def generators_moved(self) -> str | None:
        generator = randomness.check(self.drawn)
        if generator is None:
            return None
        return f"random generator {generator.name} is not in the state the cached call started from"

    def variant_key(self, key: str) -> str | None:
        """Where the result for the seeded generators' present states would be stored (see
        :func:`~nbflow.engine.randomness.variant`)."""
        return randomness.variant(key, self.drawn, now=True)

    def encoded(self, serializer: Any, task_name: str) -> Conditional:
        """This result with its value encoded by ``serializer`` (a task's ``result_serializer`` other than
        pickle, e.g. JSON): the conditions are Python objects only pickle can store, so the whole is then
        stored with pickle and the value is decoded by its own serializer on load (see :meth:`apply`)."""
        from nbflow.store.serializers import get_serializer, serialize

        chosen = get_serializer(serializer)
        stream, views = serialize(chosen, self.value, task_name)
        return Conditional(Encoded(chosen.name, stream, [bytes(view) for view in views]), self.files, self.drawn,
                           self.arguments)

    def apply(self, parameters: dict[str, Any] | None = None, namespace: dict[str, Any] | None = None,
              type_hint: Any = None) -> Any:
        """The value, after leaving the generators as the computed call did (the global ones; those among
        ``parameters``, the call's arguments; and those its code read from ``namespace``, its globals, stored
        as ``global:NAME``) and telling enclosing calls which files it depends on."""
        if self.drawn:
            randomness.restore(self.drawn)
        for name, after in self.arguments.items():
            if name.startswith("global:"):
                target = (namespace or {}).get(name[7:])
                if target is not None:
                    restore_in_place(target, after)
            elif parameters is not None and name in parameters:
                restore_in_place(parameters[name], after)
        recorder = file_reads.current()
        if recorder is not None and self.files:
            recorder.adopt(self.files)
        return self.decoded(type_hint)

    def decoded(self, type_hint: Any = None) -> Any:
        """The value itself (decoded by its own serializer if it was stored encoded)."""
        value = self.value
        if type(value) is Encoded:
            from nbflow.store.serializers import get_serializer

            buffers: list[Any] = [bytearray(buffer) for buffer in value.buffers]
            return get_serializer(value.serializer).loads(value.stream, buffers, type_hint)
        return value


class Encoded(NamedTuple):
    """A value as its task's own serializer wrote it, inside a pickled :class:`Conditional`."""

    serializer: str
    stream: bytes
    buffers: list[bytes]


def key_parts(files: list[FileRead], drawn: list[Drawn]) -> dict[str, str]:
    """Parts for ``%nbflow why`` and the graph's details: one per file and per seeded generator."""
    parts = {f"{'wrote' if read.written else 'file'}:{read.label}": read.digest or read.kind for read in files}
    parts.update({f"random:{entry.name}": entry.entry for entry in drawn if entry.seeded})
    return parts


class Observation:
    """What one computed call reads and draws, from before its first attempt to after its last."""

    __slots__ = ("before", "recorder", "token")

    def __init__(self, declared: Any = (), random_generators: bool = True, watch: bool = True) -> None:
        """``watch=False``: the attempts run elsewhere (a Dask worker); only ``declared`` files count."""
        self.recorder = recorder = Recorder(current_recorder())
        self.token = start_recording(recorder) if watch else None
        if declared:
            file_reads.declare(recorder, declared)
        self.before = randomness.states() if random_generators else None

    def stop(self) -> None:
        if self.token is not None:
            file_reads.stop(self.token)

    def outcome(self) -> tuple[list[FileRead], list[str], list[Drawn]]:
        """(files read, files written while the call ran, generators drawn from)."""
        recorder = self.recorder
        files, moved = file_reads.finish(recorder) if recorder.reads or recorder.done or recorder.writes else ([], [])
        drawn = randomness.drawn(self.before) if self.before else []
        return files, moved, drawn


def generator_globals(fn: Any) -> dict[str, Any]:
    """The random generator objects ``fn``'s own code reads as globals (``rng = default_rng(42)`` at the
    top of a notebook, ``rng.normal()`` in the task): their state is in its code identity, and the state
    the call leaves them in is stored and restored like a generator argument's."""
    code = getattr(fn, "__code__", None)
    if code is None or not code.co_names:
        return {}
    namespace = getattr(fn, "__globals__", None)
    if namespace is None:
        return {}
    found = {}
    for name in code.co_names:
        value = namespace.get(name)
        if value is not None and type(value).__module__.startswith(("numpy.random", "random")) and is_generator(value):
            found[name] = value
    return found


def is_generator(value: Any) -> bool:
    """A random generator object: ``random.Random``, NumPy's ``Generator``, ``RandomState`` or a bit
    generator. Drawing changes it in place; that is what it is for."""
    import random

    if isinstance(value, random.Random):
        return True
    kind = type(value)
    return kind.__module__.startswith("numpy.random") and (
        kind.__name__ in ("Generator", "RandomState") or hasattr(value, "random_raw"))


def restore_in_place(target: Any, value: Any) -> bool:
    """Make ``target`` equal to ``value`` (an input as a cell left it) by changing it, not replacing it;
    False when its type does not allow that (the name is then bound to ``value``)."""
    if type(target) is not type(value):
        return False
    try:
        if isinstance(target, list):
            target[:] = value
        elif isinstance(target, (dict, set)):
            target.clear()
            target.update(value)
        elif isinstance(target, bytearray):
            target[:] = value
        elif hasattr(target, "set_state") and hasattr(target, "get_state"):  # numpy RandomState
            target.set_state(value.get_state())
        elif hasattr(target, "bit_generator") and hasattr(target.bit_generator, "state"):  # numpy Generator
            target.bit_generator.state = value.bit_generator.state
        elif hasattr(target, "setstate") and hasattr(target, "getstate"):  # random.Random
            target.setstate(value.getstate())
        elif type(target).__module__ == "numpy" and type(target).__name__ == "ndarray":
            if target.shape != value.shape or target.dtype != value.dtype or not target.flags.writeable:
                return False
            target[...] = value
        elif hasattr(target, "__dict__") and not isinstance(target, type):
            # Plain objects and most library ones (a fitted model, a DataFrame): their state is __dict__.
            state = target.__dict__
            state.clear()
            state.update(value.__dict__)
        else:
            return False
    except Exception:
        return False
    return True
