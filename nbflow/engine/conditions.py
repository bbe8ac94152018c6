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

from typing import Any

from nbflow.engine import file_reads, randomness
from nbflow.engine.file_reads import FileRead
from nbflow.engine.randomness import Drawn

__all__ = ["Conditional", "Observation", "key_parts"]

# From the engine's first use on, nbflow knows when `random` is seeded.
randomness.watch_seeding()


class Conditional:
    """A stored result and its conditions (pickled with it, authenticated with it)."""

    __slots__ = ("drawn", "files", "value")

    def __init__(self, value: Any, files: list[FileRead], drawn: list[Drawn]) -> None:
        self.value = value
        self.files = files
        self.drawn = drawn

    def __reduce__(self) -> tuple[Any, ...]:
        return (Conditional, (self.value, self.files, self.drawn))

    def stale(self) -> str | None:
        """Why the result no longer holds (``file 'data.csv' changed``), or None."""
        return self.files_changed() or self.generators_moved()

    def files_changed(self) -> str | None:
        read = file_reads.changed(self.files)
        if read is None:
            return None
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

    def apply(self) -> Any:
        """The value, after leaving the generators as the computed call did and telling enclosing calls
        which files this result depends on."""
        if self.drawn:
            randomness.restore(self.drawn)
        recorder = file_reads.current()
        if recorder is not None and self.files:
            recorder.adopt(self.files)
        return self.value


def key_parts(files: list[FileRead], drawn: list[Drawn]) -> dict[str, str]:
    """Parts for ``%nbflow why`` and the graph's details: one per file and per seeded generator."""
    parts = {f"file:{read.label}": read.digest or read.kind for read in files}
    parts.update({f"random:{entry.name}": entry.entry for entry in drawn if entry.seeded})
    return parts


class Observation:
    """What one computed call reads and draws, from before its first attempt to after its last."""

    __slots__ = ("before", "recorder", "recording")

    def __init__(self, declared: Any = (), random_generators: bool = True) -> None:
        self.recording = file_reads.recording()
        self.recorder = self.recording.__enter__()
        if declared:
            file_reads.declare(self.recorder, declared)
        self.before = randomness.states() if random_generators else None

    def stop(self) -> None:
        self.recording.__exit__()

    def outcome(self) -> tuple[list[FileRead], list[str], list[Drawn]]:
        """(files read, files written while the call ran, generators drawn from)."""
        recorder = self.recorder
        files, moved = file_reads.finish(recorder) if recorder.reads or recorder.done else ([], [])
        drawn = randomness.drawn(self.before) if self.before else []
        return files, moved, drawn
