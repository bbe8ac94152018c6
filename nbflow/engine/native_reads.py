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
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from nbflow.engine.file_reads import _current, _rebind, _seen
from nbflow.hashing.code import stand_in

__all__ = ["install"]

# Module -> (attribute, name of the argument that says what to read, its position): functions, and
# classes (their __init__, ``self`` at position 0). The attribute is replaced wherever the module's
# original is referenced (``pyarrow.parquet`` re-exports ``pyarrow.parquet.core``'s).
_READERS: dict[str, tuple[tuple[str, str, int], ...]] = {
    "pyarrow": (("memory_map", "path", 0),),
    "pyarrow.parquet.core": (("read_table", "source", 0), ("read_metadata", "where", 0),
                             ("read_schema", "where", 0), ("ParquetFile", "source", 1),
                             ("ParquetDataset", "path_or_paths", 1)),
    "pyarrow.dataset": (("dataset", "source", 0),),
    "pyarrow.feather": (("read_table", "source", 0), ("read_feather", "source", 0)),
    "pyarrow.csv": (("read_csv", "input_file", 0), ("open_csv", "input_file", 0)),
    "pyarrow.json": (("read_json", "input_file", 0),),
    "pyarrow.ipc": (("open_file", "source", 0), ("open_stream", "source", 0)),
    "pyarrow.orc": (("read_table", "source", 0), ("ORCFile", "source", 1)),
}
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
    for attribute, argument, position in _READERS.get(module.__name__, ()):
        original = getattr(module, attribute, None)
        if original is None or getattr(original, _WRAPPED, False):
            continue
        try:
            if isinstance(original, type):
                init = getattr(original, "__init__")  # noqa: B009 (mypy: __init__ of a class object)
                original.__init__ = _reader(init, argument, position)  # type: ignore[misc]
                setattr(original, _WRAPPED, True)
            else:
                wrapper = _reader(original, argument, position)
                setattr(module, attribute, wrapper)
                replacements[id(original)] = (original, wrapper)
        except Exception:  # a library version laid out otherwise: its reads stay unseen, as before
            continue
    if replacements:
        _rebind(replacements)


def _reader(original: Callable[..., Any], argument: str, position: int) -> Callable[..., Any]:
    def reader(*args: Any, **kwargs: Any) -> Any:
        recorder = _current.get()
        if recorder is not None:
            source = kwargs.get(argument, args[position] if len(args) > position else None)
            _note_source(recorder, source, kwargs.get("filesystem"))
        return original(*args, **kwargs)

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
            return  # a file object (opened through Python: seen there) or a buffer
        path = os.fsdecode(os.fspath(source))
        if path.startswith("file://"):
            path = path[len("file://"):]
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

    warnings.warn(
        f"a cached call reads {location!r}, which nbflow cannot watch (not a local file): its cached result "
        "stays in use after that data changes. Pass something that changes with the data (a version, a "
        "date) as an argument, or set cache_expiration / refresh_cache=True.",
        NbflowWarning, stacklevel=4,
    )
