"""Readers that open files in native code, out of sight of the ``open`` wrappers of
:mod:`nbflow.engine.file_reads`: pyarrow's (what ``pandas.read_parquet`` uses). Each one is wrapped so that
the running call's recorder notes the paths it is given — a file, or a directory (a partitioned dataset)
with every file under it — exactly as if the call had opened them with ``open``.

A reader given a remote location (``s3://…``, a non-local ``filesystem=``) cannot be watched: the call
warns, naming it, the first time, since a cached result would then stay in use after the data changes.

Wrapped when the library is imported (a finder on ``sys.meta_path``: pandas imports ``pyarrow.parquet``
inside ``read_parquet``, which may be inside the call), or at once if it already was.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
import urllib.parse
import warnings
import weakref
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from nbflow.engine.file_reads import _current, _rebind, _seen
from nbflow.hashing.code import stand_in

__all__ = ["install"]

# Module -> (attribute, name of the argument that says what to read, its position, the position of a
# ``filesystem`` argument or -1): functions, and classes (their __init__, ``self`` at position 0). The attribute
# is replaced wherever the module's original is referenced (``pyarrow.parquet`` re-exports
# ``pyarrow.parquet.core``'s). pyarrow's file objects (``pa.OSFile``, ``LocalFileSystem().open_input_file``)
# are extension types that cannot be wrapped: a file opened that way and handed to a reader is not seen.
_READERS: dict[str, tuple[tuple[str, str, int, int], ...]] = {
    "pyarrow": (("memory_map", "path", 0, -1), ("input_stream", "source", 0, -1)),
    "pyarrow.parquet.core": (("read_table", "source", 0, -1), ("read_metadata", "where", 0, 3),
                             ("read_schema", "where", 0, 3), ("ParquetFile", "source", 1, -1),
                             ("ParquetDataset", "path_or_paths", 1, 2)),
    "pyarrow.dataset": (("dataset", "source", 0, 3),),
    "pyarrow.feather": (("read_table", "source", 0, -1), ("read_feather", "source", 0, -1)),
    "pyarrow.csv": (("read_csv", "input_file", 0, -1), ("open_csv", "input_file", 0, -1)),
    "pyarrow.json": (("read_json", "input_file", 0, -1),),
    "pyarrow.ipc": (("open_file", "source", 0, -1), ("open_stream", "source", 0, -1)),
    "pyarrow.orc": (("read_table", "source", 0, -1), ("ORCFile", "source", 1, -1)),
}
# pyarrow's functions that open a file and return it, and the kinds of file they (or pyarrow's own
# constructors and filesystems) return. The files the wrapped openers returned: their paths were noted.
_OPENERS = frozenset(("memory_map", "input_stream"))
_UNSEEN_FILES = frozenset(("OSFile", "NativeFile", "MemoryMappedFile"))
_opened: weakref.WeakSet[Any] = weakref.WeakSet()
_WRAPPED = "__nbflow_reads__"  # set on a wrapper (and on a class whose __init__ is wrapped)
_lock = threading.Lock()
_installed = False
_warned: set[str] = set()


def install() -> None:
    """Wrap the readers of the modules already imported and of those imported from now on (once)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        for name in _READERS:
            module = sys.modules.get(name)
            if module is not None:
                _wrap_module(module)
        sys.meta_path.insert(0, _AfterImport())


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a module of :data:`_READERS`, the spec the other finders give, its loader
    made to wrap the readers once the module has run."""

    def __init__(self) -> None:
        self.busy: set[str] = set()

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None,
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _READERS or fullname in self.busy:
            return None
        self.busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        except Exception:
            return None
        finally:
            self.busy.discard(fullname)
        loader = spec.loader if spec is not None else None
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return None
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            _wrap_module(module)

        try:
            loader.exec_module = exec_module  # type: ignore[method-assign]
        except Exception:
            return None
        return spec


def _wrap_module(module: ModuleType) -> None:
    replacements: dict[int, tuple[Any, Any]] = {}
    for attribute, argument, position, at in _READERS.get(module.__name__, ()):
        original = getattr(module, attribute, None)
        if original is None or getattr(original, _WRAPPED, False):
            continue
        try:
            if isinstance(original, type):
                init = getattr(original, "__init__")  # noqa: B009 (mypy: __init__ of a class object)
                original.__init__ = _reader(init, argument, position, at)  # type: ignore[misc]
                setattr(original, _WRAPPED, True)
            else:
                wrapper = _reader(original, argument, position, at)
                setattr(module, attribute, wrapper)
                replacements[id(original)] = (original, wrapper)
        except Exception:  # a library version laid out otherwise: its reads stay unseen, as before
            continue
    if replacements:
        _rebind(replacements)


def _reader(original: Callable[..., Any], argument: str, position: int, at: int) -> Callable[..., Any]:
    opens = getattr(original, "__name__", "") in _OPENERS

    def reader(*args: Any, **kwargs: Any) -> Any:
        recorder = _current.get()
        if recorder is None:
            return original(*args, **kwargs)
        source = kwargs.get(argument, args[position] if len(args) > position else None)
        filesystem = kwargs.get("filesystem", args[at] if 0 <= at < len(args) else None)
        _note_source(recorder, source, filesystem)
        result = original(*args, **kwargs)
        if opens:
            try:
                _opened.add(result)  # its path was noted: a reader given it reads a file already seen
            except TypeError:
                pass
        return result

    for name in ("__name__", "__qualname__", "__doc__", "__module__"):
        try:
            setattr(reader, name, getattr(original, name))
        except (AttributeError, TypeError):
            pass
    setattr(reader, _WRAPPED, True)
    # Code that calls the reader keeps the code identity it had (the library's, by version), as for open.
    stand_in(reader, original)
    return reader


def _note_source(recorder: Any, source: Any, filesystem: Any) -> None:
    try:
        if isinstance(source, (list, tuple)):
            for item in source:
                _note_source(recorder, item, filesystem)
            return
        if not isinstance(source, (str, os.PathLike)):
            # A file object opened through Python (seen there), a buffer, or a pyarrow file: one opened by
            # pyarrow itself (pa.OSFile, a filesystem's open_input_file) names no path nbflow could watch.
            if type(source).__name__ in _UNSEEN_FILES and source not in _opened:
                _warn_untracked(f"a pyarrow {type(source).__name__}")
            return
        path = os.fsdecode(os.fspath(source))
        if path.startswith("file:"):
            # A file URI, as pyarrow reads it: percent-escapes decoded, an empty or local host.
            parsed = urllib.parse.urlsplit(path)
            if parsed.netloc not in ("", "localhost"):
                _warn_untracked(path)
                return
            path = urllib.parse.unquote(parsed.path)
        elif "://" in path or (filesystem is not None and not _local(filesystem)):
            _warn_untracked(path)
            return
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                _seen(recorder, root, "dir", False)
                for file in sorted(files):
                    _seen(recorder, os.path.join(root, file), "file", False)
        else:
            _seen(recorder, path, "file", False)
    except Exception:
        pass  # never the reason a user's read fails


def _local(filesystem: Any) -> bool:
    kind = type(filesystem)
    return kind.__name__ == "LocalFileSystem" or getattr(filesystem, "protocol", None) in ("file", ("file", "local"))


def _warn_untracked(location: str) -> None:
    if location in _warned:
        return
    _warned.add(location)
    from nbflow.exceptions import NbflowWarning

    what = location if location.startswith("a pyarrow ") else repr(location)
    warnings.warn(
        f"a cached call reads {what}, which nbflow cannot watch (not a local file by its path): its cached result "
        "stays in use after that data changes. Give the reader a local path, declare the file with files=, "
        "pass something that changes with the data (a version, a date) as an argument, or set "
        "cache_expiration / refresh_cache=True.",
        NbflowWarning, stacklevel=4,
    )
