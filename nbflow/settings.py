"""nbflow's settings: one small validated dataclass, read from ``NBFLOW_*`` environment variables and
overridable in code with :func:`nbflow.configure`.

A dataclass, not a pydantic model: settings are read on a process's first task call, and a cache hit in
a fresh process should not wait for pydantic to import.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from pathlib import Path
from typing import Any

from nbflow.exceptions import ConfigurationError

__all__ = ["MAX_SECONDS", "Settings", "configure", "find_home", "get_settings", "parse_size"]

#: The longest timeout or retry delay nbflow accepts (about 31 years): longer ones overflow the clocks and
#: timers they are handed to, so they fail up front, naming the option, rather than in the middle of a run.
MAX_SECONDS = 1e9

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4, "tb": 1024**4, "tib": 1024**4}


def parse_size(value: int | str) -> int:
    """Parse a byte count such as ``10737418240``, ``"10GiB"``, ``"500 MB"`` or ``"2g"``."""
    if isinstance(value, int):
        return value
    text = str(value).strip().lower().replace(" ", "")
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number):]
    if not number or unit not in _UNITS:
        raise ConfigurationError(
            f"cannot read {value!r} as a size; write a number of bytes or e.g. '10GiB', '500MB'"
        )
    return int(float(number) * _UNITS[unit])


#: Files or directories that mark a project's root directory, where a new store goes.
PROJECT_MARKERS = (".git", "pyproject.toml")


def find_home(start: str | os.PathLike[str] | None = None) -> Path:
    """The store directory used when ``NBFLOW_HOME`` is not set, seen from ``start`` (default: the
    current directory — a kernel's is its notebook's directory, the CLI's the shell's).

    Walking up from ``start``, the first directory that holds a ``.nbflow`` store, ``.git`` or
    ``pyproject.toml`` (a project's root) ends the walk, and the store is the ``.nbflow`` there; if none
    does, the ``.nbflow`` in ``start`` itself. So every notebook of a project shares the store at its
    root, and a store left in a directory above a project is not used by it. The walk stops below the
    user's home directory (which counts only when it is ``start``) and at the filesystem root, so a
    store or a dotfiles repository in the home directory does not capture every notebook under it; it also
    stops at a directory another user owns or others may write into (``/tmp``), and a ``.nbflow`` there or
    of another user's is not used. A few stat calls, made once per process (settings are read once).
    """
    here = Path(start if start is not None else os.getcwd()).expanduser().absolute()
    try:
        user_home = Path.home().absolute()
    except (KeyError, RuntimeError):  # no HOME and no passwd entry
        user_home = None
    for directory in (here, *here.parents):
        if directory != here and (directory == user_home or not _own_directory(directory)):
            break
        store = directory / ".nbflow"
        if (store.is_dir() and _own_directory(store)) or any((directory / marker).exists()
                                                              for marker in PROJECT_MARKERS):
            return store
    return here / ".nbflow"


def _own_directory(path: Path) -> bool:
    """``path`` belongs to this user and nobody else may write into it: a store found in a shared directory
    (``/tmp``, another user's) would hand this user's results, locks and limits to whoever made it."""
    getuid = getattr(os, "getuid", None)
    if getuid is None:  # no owners to compare (Windows)
        return True
    try:
        info = path.stat()
    except OSError:
        return False
    return info.st_uid == getuid() and not info.st_mode & 0o002


def _default_secret_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "nbflow" / "secret.key"


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def _seconds(name: str, value: Any) -> float:
    try:
        seconds = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_SECONDS):
        raise ConfigurationError(f"setting {name}={value!r} must be a number of seconds from 0 to {MAX_SECONDS:g}")
    return seconds


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigurationError(f"setting {name}={value!r} must be true or false (or 1/0, yes/no, on/off)")


def _path(name: str, value: Any) -> Path:
    if not isinstance(value, (str, os.PathLike)) or str(value) == "":
        raise ConfigurationError(f"setting {name}={value!r} must be a path")
    # Resolved once, when set: a later os.chdir in a notebook must not move the store.
    return Path(value).expanduser().absolute()


def _size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigurationError(f"setting size_limit={value!r} must be a number of bytes or e.g. '10GiB'")
    size = parse_size(value) if isinstance(value, str) else int(value)
    if size <= 0:
        raise ConfigurationError(f"setting size_limit={value!r} must be positive")
    return size


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything configurable about nbflow.

    Each field can be set with an environment variable ``NBFLOW_<FIELD>`` (e.g. ``NBFLOW_HOME``,
    ``NBFLOW_SIZE_LIMIT=5GiB``) or in code with ``nbflow.configure(field=value)``:

    - ``home``: directory of the result store and run history. Default: ``.nbflow`` in the nearest
      directory, walking up from the current one, that holds a ``.nbflow`` store, ``.git`` or
      ``pyproject.toml``; else ``.nbflow`` in the current directory (see :func:`find_home`).
    - ``size_limit``: store size limit in bytes (``"10GiB"`` works); least recently used entries are
      evicted beyond it.
    - ``secret_file``: the per-user secret key authenticating stored payloads (created on first use,
      mode 0600; default ``~/.config/nbflow/secret.key``).
    - ``strict_buffers``: also authenticate raw array buffers with a keyed MAC (slower), not only a
      checksum.
    - ``display``: show task graphs automatically in notebooks.
    - ``auto``: auto mode — every notebook cell runs as a cell task (see :mod:`nbflow.ipython.auto`); with
      ``NBFLOW_AUTO=1`` it starts with ``%load_ext nbflow``.
    - ``auto_min_seconds``: in auto mode, a cell that runs quicker than this is run, not stored (default 0:
      every cacheable cell is stored). A hit on a trivial cell costs about 0.5 ms more than running it,
      but a threshold makes a cell whose time is near it stored on one run and not on the next (measured:
      ``print(y.mean())`` took 0.8 ms, then 2 ms), so which cells a rerun serves from the cache could not
      be predicted. Set it (e.g. 0.01) to keep quick cells out of the store.
    """

    home: Path = dataclasses.field(default_factory=find_home)
    size_limit: int = 10 * 1024**3
    secret_file: Path = dataclasses.field(default_factory=_default_secret_file)
    strict_buffers: bool = False
    display: bool = True
    auto: bool = False
    auto_min_seconds: float = 0.0

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # frozen: values are checked and normalized once, here
        set_field(self, "home", _path("home", self.home))
        set_field(self, "secret_file", _path("secret_file", self.secret_file))
        set_field(self, "size_limit", _size(self.size_limit))
        set_field(self, "strict_buffers", _flag("strict_buffers", self.strict_buffers))
        set_field(self, "display", _flag("display", self.display))
        set_field(self, "auto", _flag("auto", self.auto))
        set_field(self, "auto_min_seconds", _seconds("auto_min_seconds", self.auto_min_seconds))

    def model_dump(self) -> dict[str, Any]:
        """The settings as a dict."""
        return dataclasses.asdict(self)


_FIELD_NAMES = tuple(field.name for field in dataclasses.fields(Settings))


_lock = threading.Lock()
_settings: Settings | None = None


def _from_environment() -> Settings:
    values: dict[str, Any] = {}
    for name in _FIELD_NAMES:
        raw = os.environ.get(f"NBFLOW_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = raw
    try:
        return Settings(**values)
    except ConfigurationError as error:
        raise ConfigurationError(f"invalid NBFLOW_* environment variable: {error}") from None


def get_settings() -> Settings:
    """The settings in force (read from the environment on first use)."""
    global _settings
    current = _settings
    if current is None:
        with _lock:
            if _settings is None:
                _settings = _from_environment()
            current = _settings
    return current


def configure(**overrides: Any) -> Settings:
    """Change settings for this process, e.g. ``nbflow.configure(home="/data/cache", size_limit="50GiB")``.

    Unknown names or invalid values raise :class:`~nbflow.exceptions.ConfigurationError`. Returns the new
    settings. Open stores are reopened at their new place on next use.
    """
    global _settings
    unknown = set(overrides) - set(_FIELD_NAMES)
    if unknown:
        raise ConfigurationError(
            f"unknown setting(s) {sorted(unknown)}; known settings are {sorted(_FIELD_NAMES)}"
        )
    with _lock:
        base = _settings if _settings is not None else _from_environment()
        _settings = dataclasses.replace(base, **overrides)
        new = _settings
    _notify(new)
    if "auto" in overrides:
        from nbflow.ipython.auto import apply_setting

        apply_setting(new.auto)
    return new


_listeners: list[Any] = []


def on_change(callback: Any) -> None:
    """Register ``callback(settings)`` to run after every :func:`configure` or :func:`reset` (which passes
    None: the new settings are read lazily). Used to reopen stores."""
    _listeners.append(callback)


def _notify(settings: Settings | None) -> None:
    for callback in list(_listeners):
        callback(settings)


def reset() -> None:
    """Forget configured values; the next :func:`get_settings` reads the environment again (for tests)."""
    global _settings
    with _lock:
        _settings = None
    _notify(None)
