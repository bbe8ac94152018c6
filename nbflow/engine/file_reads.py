"""The files a task call reads, so that a cache hit can tell whether they changed since.

While a call that may be cached runs, a :class:`Recorder` is current (a context variable, so threads
started by :meth:`Task.submit` carry the caller's). Wrappers of ``open`` (``builtins.open`` and
``io.open``), ``os.open``, ``os.listdir`` and ``os.scandir`` (see :func:`_install`) see every file opened
through Python — ``open()``, ``pathlib``, ``numpy.load``, ``pandas.read_csv`` with a path — and every
directory listing (hence ``glob`` and ``Path.iterdir``). Each one read
by the call is noted with its size and ``mtime_ns`` at that moment, in the call's recorder and in every
enclosing call's (a flow or a cell that called the task depends on the file too).

When the call ends, :func:`finish` reads each file once more to digest its content (xxh3-128) — or, for
a directory, its sorted entry names. A file whose size or mtime moved while the call ran was written
meanwhile: what the call read can no longer be told, so the call is not cached (the caller warns).

On a hit, :func:`changed` re-checks the recorded reads: a ``stat`` per file when size and mtime still
match (and the file was not modified within a second of being digested, where a coarse clock could hide
a change: that one is digested again); otherwise the content is digested again and compared. A file
that changed, appeared or vanished makes the hit a miss, named in ``%nbflow why``.

pyarrow's readers (``pandas.read_parquet``, ``pyarrow.parquet``, ``pyarrow.dataset``, …) open files in native
code: :mod:`nbflow.engine.native_reads` wraps them so the paths they are given are seen too.

Not seen: reads made inside other native libraries that open files themselves (h5py, polars, some image
libraries), reads in other processes (a Dask worker, a subprocess), databases and URLs. Declare such
files with ``@task(files=...)`` / ``%%task --files``; they are recorded as if the call read them.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, TypeAlias, TypeVar

import xxhash

__all__ = ["FileRead", "Recorder", "changed", "current", "declare", "finish", "start", "stop", "unwatched", "watched"]

# A file modified this close to the moment it was digested may change again within the same mtime tick
# (1-2 s on some filesystems): such a read is digested again on every check.
_RACY_NS = 2_000_000_000
_CHUNK = 1 << 20


class FileRead(NamedTuple):
    """One file or directory a call read (or wrote): what a later hit compares with."""

    path: str  # as the call named it: a relative path is resolved against the working directory of each check
    kind: str  # "file", "dir" or "missing"
    size: int
    mtime_ns: int
    digest: str  # content (file), sorted entry names (dir), "" (missing)
    digested_ns: int  # when the digest was taken (time.time_ns())
    # A file the call created or overwrote: a hit needs it as the call left it (it is not stored), so a
    # later cell that reads it finds it, in this directory or another one.
    written: bool = False

    @property
    def label(self) -> str:
        """The path as the user would write it: relative to the working directory when inside it."""
        if not os.path.isabs(self.path):
            return self.path
        try:
            relative = os.path.relpath(self.path)
        except ValueError:
            return self.path
        return self.path if relative.startswith("..") else relative


# What a recorder saw, as sent between processes: reads (path -> kind, size, mtime_ns, path as named), writes,
# appends (path -> path as named), and the reads of cached entries served inside the call.
Seen: TypeAlias = tuple[dict[str, tuple[str, int, int, str]], dict[str, str], dict[str, str], list[FileRead]]
T = TypeVar("T")


class Recorder:
    """The reads of one running call: absolute path -> (kind, size, mtime_ns, path as named) when first
    seen; the files it wrote: absolute path -> path as named."""

    __slots__ = ("appends", "done", "parent", "reads", "writes")

    def __init__(self, parent: Recorder | None) -> None:
        self.parent = parent
        self.reads: dict[str, tuple[str, int, int, str]] = {}
        self.writes: dict[str, str] = {}
        # Files opened for appending: not a condition of a hit (a log others add to would make every call
        # miss), but a cell in auto mode that appends is not cached, since a hit would not add its lines.
        self.appends: dict[str, str] = {}
        self.done: dict[str, FileRead] = {}  # reads a cache hit inside this call brought, already digested

    def note(self, path: str, kind: str, given: str | None = None) -> None:
        recorder: Recorder | None = self
        seen = None
        while recorder is not None:
            # A file the call wrote before reading it is its own: the written record covers it.
            if path not in recorder.reads and path not in recorder.done and path not in recorder.writes:
                if seen is None:
                    seen = (*_stat(path, kind), path if given is None else given)
                recorder.reads[path] = seen
            recorder = recorder.parent

    def wrote(self, path: str, given: str) -> None:
        recorder: Recorder | None = self
        while recorder is not None:
            recorder.writes.setdefault(path, given)
            recorder = recorder.parent

    def appended(self, path: str, given: str) -> None:
        recorder: Recorder | None = self
        while recorder is not None:
            recorder.appends.setdefault(path, given)
            recorder = recorder.parent

    def seen(self) -> Seen:
        """What this recorder saw (reads, writes, appends, and the reads of cached entries served inside the
        call), to send to the process that made the call."""
        return self.reads, self.writes, self.appends, [read._replace(path=path) for path, read in self.done.items()]

    def take(self, seen: Seen) -> None:
        """What a recorder in another process saw (:meth:`seen`) for this call, as if seen here: each read
        with the size and time it had when it was read there, by its absolute path (the other process's
        working directory may not be this one's)."""
        reads, writes, appends, done = seen
        recorder: Recorder | None = self
        while recorder is not None:
            for path, (kind, size, mtime_ns, _) in reads.items():
                if path not in recorder.reads and path not in recorder.done and path not in recorder.writes:
                    recorder.reads[path] = (kind, size, mtime_ns, path)
            for path in writes:
                recorder.writes.setdefault(path, path)
            for path in appends:
                recorder.appends.setdefault(path, path)
            recorder = recorder.parent
        self.adopt(done)

    def adopt(self, reads: Iterable[FileRead]) -> None:
        """Reads (and writes) of a cached entry served inside this call: this call depends on them too."""
        recorder: Recorder | None = self
        while recorder is not None:
            for read in reads:
                path = os.path.abspath(read.path)
                if path not in recorder.reads:
                    recorder.done.setdefault(path, read)
            recorder = recorder.parent


_current: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("nbflow_file_reads", default=None)
current = _current.get

_installed = False
_install_lock = threading.Lock()
_ignored: tuple[str, ...] = ()
_local = threading.local()


def _ignored_prefixes() -> tuple[str, ...]:
    """Where Python and installed packages live (imports, not data), and kernel pseudo-filesystems."""
    import site
    import sysconfig

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            roots.add(sysconfig.get_paths()[name])
        except KeyError:
            pass
    try:
        roots.update(site.getsitepackages())
        roots.add(site.getusersitepackages())
    except Exception:
        pass
    try:  # the time zone database (read by imports such as pandas'), not the user's data
        import zoneinfo

        roots.update(zoneinfo.TZPATH)
    except Exception:
        pass
    prefixes = {os.path.join(os.path.realpath(root), "") for root in roots if root}
    prefixes.update({"/proc/", "/sys/", "/dev/"})
    return tuple(sorted(prefixes))


def _install() -> None:
    """Wrap the functions through which Python code opens files and lists directories, once.

    Not an audit hook: once a process has one, every audited operation calls it — ``id()``, reading a
    function's ``__code__`` — at ~0.8 µs each (``copy.deepcopy`` of a large structure, a fingerprint,
    nbflow's own cache hits would all slow down). The wrappers cost a context-variable read per open,
    and nothing anywhere else. Code that captured ``open`` before this ran (``tarfile``, the import
    system, ``tokenize`` reading source for tracebacks) is not seen.
    """
    global _installed, _ignored
    with _install_lock:
        if _installed:
            return
        _ignored = _ignored_prefixes()
        import builtins
        import io

        from nbflow.hashing.code import stand_in

        original_open = io.open
        original_os_open, original_listdir, original_scandir = os.open, os.listdir, os.scandir

        def open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            recorder = _current.get()
            if recorder is not None and not isinstance(file, int) and isinstance(mode, str):
                writes = "w" in mode or "x" in mode  # the content is the call's: 'a' adds to others'
                reads = ("r" in mode or "+" in mode) and not writes
                if reads or writes:
                    _seen(recorder, file, "file" if reads else "wrote", False)
                if "a" in mode:
                    _seen(recorder, file, "appended", False)
            return original_open(file, mode, *args, **kwargs)

        def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> Any:
            recorder = _current.get()
            if recorder is not None and kwargs.get("dir_fd") is None and isinstance(flags, int):
                writes = bool(flags & os.O_TRUNC) or bool(flags & os.O_CREAT and flags & os.O_EXCL)
                reads = flags & os.O_ACCMODE != os.O_WRONLY and not writes
                if reads or writes:
                    _seen(recorder, path, "file" if reads else "wrote", False)
                if flags & os.O_APPEND:
                    _seen(recorder, path, "appended", False)
            return original_os_open(path, flags, *args, **kwargs)

        def listdir(path: Any = None) -> Any:
            recorder = _current.get()
            if recorder is not None and not isinstance(path, int):
                _seen(recorder, "." if path is None else path, "dir", False)
            return original_listdir(path)

        def scandir(path: Any = None) -> Any:
            recorder = _current.get()
            if recorder is not None and not isinstance(path, int):
                _seen(recorder, "." if path is None else path, "dir", False)
            return original_scandir(path) if path is not None else original_scandir()

        replacements = {}
        for wrapper, original, module in ((open, original_open, "builtins"), (os_open, original_os_open, "os"),
                                          (listdir, original_listdir, "os"), (scandir, original_scandir, "os")):
            # No __wrapped__: code identity would then count the C function for every call of open. The
            # module and name are where pickle finds the wrapper again (a pickled reference to open).
            wrapper.__doc__ = original.__doc__
            wrapper.__name__ = wrapper.__qualname__ = original.__name__
            wrapper.__module__ = module
            replacements[id(original)] = (original, wrapper)
            stand_in(wrapper, original)
        builtins.open = io.open = open
        os.open, os.listdir, os.scandir = os_open, listdir, scandir
        _rebind(replacements)
        _rebind_openers(original_open, open)
        _installed = True
    from nbflow.engine import native_reads

    native_reads.install()  # pyarrow's readers, which open files in native code


# Modules whose own references to open stay as they are: reading source code is not reading data.
_KEEP = ("tokenize", "linecache", "importlib", "nbflow", "io", "_io", "os", "posix", "builtins")


def _rebind(replacements: dict[int, tuple[Any, Any]]) -> None:
    """Point module-level references to the original functions taken before now (``from io import open as
    io_open`` in IPython, whose ``open`` in a notebook calls it; ``tarfile``'s ``bltn_open``) at the
    wrappers, so those reads are seen too."""
    for name, module in list(sys.modules.items()):
        if module is None or name.partition(".")[0] in _KEEP:
            continue
        try:
            namespace = vars(module)
        except TypeError:
            continue
        try:
            items = list(namespace.items())
        except Exception:
            continue
        for key, value in items:
            found = replacements.get(id(value))
            if found is not None and found[0] is value:
                try:
                    namespace[key] = found[1]
                except Exception:
                    pass


def _rebind_openers(original: Any, wrapper: Any) -> None:
    """Tables of openers that took ``open`` before now: numpy's (``np.loadtxt``, ``np.genfromtxt`` open files
    through ``numpy.lib._datasource``, whose table holds the ``open`` of the moment numpy was imported)."""
    datasource = sys.modules.get("numpy.lib._datasource")
    openers = getattr(getattr(datasource, "_file_openers", None), "_file_openers", None)
    if isinstance(openers, dict) and openers.get(None) is original:
        openers[None] = wrapper


def _seen(recorder: Recorder, path: Any, kind: str, absolute_only: bool) -> None:
    if getattr(_local, "busy", False):
        return
    _local.busy = True
    try:
        given = os.fsdecode(path)
        if absolute_only and not os.path.isabs(given):
            return
        name = os.path.abspath(given)
        if name.startswith(_ignored) or _in_store(name) or name.endswith(".pyc"):
            return
        if kind == "wrote":
            recorder.wrote(name, given)
        elif kind == "appended":
            recorder.appended(name, given)
        else:
            recorder.note(name, kind, given)
    except Exception:
        pass  # never the reason a user's open fails
    finally:
        _local.busy = False


def _in_store(path: str) -> bool:
    """Whether ``path`` is nbflow's own (the store under the home, the secret key): never a call's read."""
    from nbflow import settings

    configured = settings.get_settings()
    home = os.path.join(os.path.abspath(configured.home), "")
    return path.startswith(home) or path == os.path.abspath(configured.secret_file)


def _stat(path: str, kind: str) -> tuple[str, int, int]:
    try:
        info = os.stat(path)
    except OSError:
        return ("missing", -1, 0)
    if stat.S_ISDIR(info.st_mode):
        return ("dir", 0, info.st_mtime_ns)
    return (kind if kind == "file" else "file", info.st_size, info.st_mtime_ns)


def start(recorder: Recorder) -> contextvars.Token[Recorder | None]:
    """Make ``recorder`` the current one (wrapping ``open`` and the rest on first use); returns the token
    :func:`stop` takes."""
    if not _installed:
        _install()
    return _current.set(recorder)


def stop(token: contextvars.Token[Recorder | None]) -> None:
    """The recorder current before :func:`start` is current again."""
    _current.reset(token)


def watched(fn: Callable[..., T], *args: Any) -> tuple[T, Seen]:
    """``fn(*args)`` with a recorder of its own: its result and what it read (:meth:`Recorder.seen`), which a
    worker process sends back to the process that made the call (:meth:`Recorder.take`)."""
    recorder = Recorder(None)
    token = start(recorder)
    try:
        result = fn(*args)
    finally:
        stop(token)
    return result, recorder.seen()


@contextlib.contextmanager
def unwatched() -> Iterator[None]:
    """Within this block, files opened are nobody's reads (nbflow's own work inside a call)."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)


def declare(recorder: Recorder | None, paths: Iterable[Any]) -> None:
    """Record ``paths`` (files or directories, walked recursively) as read by the call."""
    if recorder is None:
        return
    for path in paths:
        name = os.path.abspath(os.fsdecode(os.fspath(path)))
        if os.path.isdir(name):
            for root, dirs, files in os.walk(name):
                dirs.sort()
                recorder.note(root, "dir")
                for file in sorted(files):
                    recorder.note(os.path.join(root, file), "file")
        else:
            recorder.note(name, "file")


def _digest_file(path: str) -> str:
    hasher = xxhash.xxh3_128()
    previous = getattr(_local, "busy", False)
    _local.busy = True  # nbflow's own read: not one of the calls around it
    try:
        with open(path, "rb", buffering=0) as handle:
            while chunk := handle.read(_CHUNK):
                hasher.update(chunk)
    finally:
        _local.busy = previous
    return hasher.hexdigest()


def _digest_dir(path: str) -> str:
    previous = getattr(_local, "busy", False)
    _local.busy = True
    try:
        names = sorted(os.listdir(path))
    finally:
        _local.busy = previous
    return xxhash.xxh3_128_hexdigest("\0".join(names).encode("utf-8", "surrogateescape"))


def _read_now(path: str, kind: str, written: bool = False) -> FileRead:
    """The read as the file is now (content digested); ``path`` as the call named it."""
    now = time.time_ns()
    where = os.path.abspath(path)
    seen = _stat(where, kind)
    if seen[0] == "missing":
        return FileRead(path, "missing", -1, 0, "", now, written)
    try:
        digest = _digest_dir(where) if seen[0] == "dir" else _digest_file(where)
    except OSError:
        return FileRead(path, "missing", -1, 0, "", now, written)
    return FileRead(path, seen[0], seen[1], seen[2], digest, now, written)


def finish(recorder: Recorder) -> tuple[list[FileRead], list[str]]:
    """The call's reads, digested, and the labels of files written while it ran (then it is not cached)."""
    reads = list(recorder.done.values())
    moved: list[str] = []
    _local.busy = True
    try:
        for path, (kind, size, mtime_ns, given) in recorder.reads.items():
            read = _read_now(given, kind)
            if path in recorder.writes or read.kind != kind or (
                    kind != "missing" and (read.mtime_ns != mtime_ns or (kind == "file" and read.size != size))):
                moved.append(read.label)  # changed since it was read (or read, then written): what it read is gone
                continue
            reads.append(read)
        for path, given in recorder.writes.items():
            if path not in recorder.reads:
                reads.append(_read_now(given, "file", written=True))
    finally:
        _local.busy = False
    return reads, moved


def changed(reads: Iterable[FileRead]) -> FileRead | None:
    """The first recorded read whose file is no longer as it was (None: all unchanged)."""
    for read in reads:
        seen = _stat(os.path.abspath(read.path), read.kind)
        if seen[0] != read.kind:
            return read
        if read.kind == "missing":
            continue
        same_stat = seen[2] == read.mtime_ns and (read.kind == "dir" or seen[1] == read.size)
        if same_stat and read.digested_ns - read.mtime_ns > _RACY_NS:
            continue
        if read.kind == "file" and seen[1] != read.size:
            return read
        if _read_now(read.path, read.kind).digest != read.digest:
            return read
    return None
