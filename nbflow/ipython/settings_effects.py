"""Process-wide settings a cell changes, so that a cache hit changes them too.

A cell such as ``pd.set_option("display.precision", 3)``, ``np.set_printoptions(precision=3)``,
``plt.rcParams["figure.figsize"] = (6, 4)``, ``os.chdir("data")`` or ``sys.path.append("src")`` returns
nothing and binds nothing: what it does is change how every later cell behaves. Such settings are read
before and after a cell task runs; the ones that changed are stored with the cell's result and set again
when a hit restores the cell. Only libraries already imported are read (nothing here imports one).
"""

from __future__ import annotations

import operator
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["changed_settings", "display_digest", "replay", "snapshot"]


def _numpy() -> dict[str, Any] | None:
    numpy = sys.modules.get("numpy")
    return dict(numpy.get_printoptions()) if numpy is not None and hasattr(numpy, "get_printoptions") else None


def _set_numpy(changes: dict[str, Any]) -> None:
    import numpy

    numpy.set_printoptions(**changes)


def _pandas() -> dict[str, Any] | None:
    config = sys.modules.get("pandas._config.config")
    if config is None:
        return None
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: dict[str, Any]) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            else:
                flat[prefix + key] = value

    walk("", config._global_config)
    return flat


def _set_pandas(changes: dict[str, Any]) -> None:
    import pandas

    for key, value in changes.items():
        pandas.set_option(key, value)


def _matplotlib() -> dict[str, Any] | None:
    matplotlib = sys.modules.get("matplotlib")
    params = getattr(matplotlib, "rcParams", None)
    return dict(dict.items(params)) if isinstance(params, dict) else None


def _set_matplotlib(changes: dict[str, Any]) -> None:
    matplotlib: Any = sys.modules["matplotlib"]
    matplotlib.rcParams.update(changes)


def _working_directory() -> dict[str, Any]:
    return {"cwd": os.getcwd()}


def _set_working_directory(changes: dict[str, Any]) -> None:
    os.chdir(changes["cwd"])


def _import_path() -> dict[str, Any]:
    return {"sys.path": list(sys.path)}


def _set_import_path(changes: dict[str, Any]) -> None:
    sys.path[:] = changes["sys.path"]


def _environment() -> dict[str, Any]:
    # The encoded mapping behind os.environ: copied in C, 20x quicker than decoding every variable.
    data = getattr(os.environ, "_data", None)
    return dict(data) if isinstance(data, dict) else dict(os.environ)


def _set_environment(changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        name = os.fsdecode(key) if isinstance(key, bytes) else key
        if value is None:  # the cell removed it
            os.environ.pop(name, None)
        else:
            os.environ[name] = os.fsdecode(value) if isinstance(value, bytes) else value


def _warning_filters() -> dict[str, Any]:
    import warnings

    return {"filters": tuple(warnings.filters)}


def _set_warning_filters(changes: dict[str, Any]) -> None:
    import warnings

    warnings.filters[:] = list(changes["filters"])  # type: ignore[index]
    mutated = getattr(warnings, "_filters_mutated", None)  # what filterwarnings() calls after a change
    if mutated is not None:
        mutated()


_SETTINGS: dict[str, tuple[Callable[[], dict[str, Any] | None], Callable[[dict[str, Any]], None]]] = {
    "numpy print options": (_numpy, _set_numpy),
    "pandas options": (_pandas, _set_pandas),
    "matplotlib rcParams": (_matplotlib, _set_matplotlib),
    "working directory": (_working_directory, _set_working_directory),
    "import path": (_import_path, _set_import_path),
    "environment variables": (_environment, _set_environment),
    "warning filters": (_warning_filters, _set_warning_filters),
}
# Groups whose keys a cell may remove (a removed key is recorded as None).
_REMOVABLE = frozenset({"environment variables"})


def snapshot() -> dict[str, dict[str, Any]]:
    """The settings now, by group (groups of libraries not imported yet are left out)."""
    found: dict[str, dict[str, Any]] = {}
    for group, (read, _) in _SETTINGS.items():
        try:
            values = read()
        except Exception:
            continue
        if values is not None:
            found[group] = values
    return found


# Settings that change what a cell shows or computes: part of every cell's key, so that a cell printing a
# frame after `pd.set_option("display.precision", 3)` changed to 5 is not replayed with 3 digits.
_IN_KEY = ("numpy print options", "pandas options", "matplotlib rcParams")


# The last digest, with the settings it was computed from: per group its name, keys and values; the values
# that are lists, and a copy of each; the digest. The values are held, so an unchanged identity means an
# unchanged value (lists are compared by content: they can change in place).
_Last = tuple[list[tuple[str, list[Any], list[Any]]], list[list[Any]], list[list[Any]], str]
_last_digest: _Last | None = None


def _display_settings() -> list[tuple[str, dict[str, Any]]]:
    """The settings of ``_IN_KEY`` now, by group (libraries not imported are left out)."""
    groups = []
    for group in _IN_KEY:
        try:
            found = _SETTINGS[group][0]()
        except Exception:
            continue
        if found is None:
            continue
        found.pop("backend", None)  # how figures are shown, not what they show
        groups.append((group, found))
    return groups


def _unchanged(last: _Last, groups: list[tuple[str, dict[str, Any]]]) -> bool:
    """Whether ``groups`` hold the very objects the last digest was computed from, lists with the same content."""
    known = last[0]
    if len(known) != len(groups):
        return False
    for (group, keys, values), (name, found) in zip(known, groups):
        # All in C: the keys' order as well (the values are compared position by position).
        if group != name or len(keys) != len(found) or list(found) != keys or not all(
                map(operator.is_, found.values(), values)):
            return False
    return last[1] == last[2]  # the lists held (the same objects, by the test above) against their copies


def display_digest() -> str:
    """A digest of the settings in force that change what cells show (see ``_IN_KEY``).

    Computed again only when a setting is another object than last time (or a list of them changed in
    place): a setter stores a new value, so identity tells a change in ~15 µs where the digest of rcParams'
    339 values takes ~0.6 ms."""
    global _last_digest
    import xxhash

    groups = _display_settings()
    last = _last_digest
    if last is not None and _unchanged(last, groups):
        return last[3]
    pieces = []
    for group, found in groups:
        pieces.append(group)
        pieces += [f"{key}={_text(value)}" for key, value in sorted(found.items())]
    digest = xxhash.xxh3_128_hexdigest("\0".join(pieces).encode("utf-8", "surrogatepass"))
    lists = [value for _, found in groups for value in found.values() if type(value) is list]
    _last_digest = ([(group, list(found), list(found.values())) for group, found in groups], lists,
                    [list(value) for value in lists], digest)
    return digest


def _text(value: Any) -> str:
    # repr is exact for the plain values settings hold, and 4x quicker than a fingerprint of rcParams'
    # 339 values; a repr with an address in it (a formatter function) is not stable: fingerprinted instead.
    try:
        text = repr(value)
    except Exception:
        text = " at 0x"
    if " at 0x" not in text:
        return text
    from nbflow.hashing import fingerprint

    try:
        return fingerprint(value)
    except Exception:
        return type(value).__qualname__


def changed_settings(before: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The settings that differ from ``before``, by group: what a hit must set again."""
    changes: dict[str, dict[str, Any]] = {}
    for group, values in snapshot().items():
        earlier = before.get(group)
        if earlier is None:  # imported by the cell: a change is from the defaults importing it gives
            earlier = _defaults(group)
            if earlier is None:
                continue
        try:
            # The usual case, nothing changed, told in C: the same keys, and values the same objects or ==.
            # (Per key below, a value that is not == to itself, such as NaN, would count as set again.)
            if values == earlier:
                continue
        except Exception:  # a value without a plain ==: compared per key
            pass
        delta = {}
        for key, value in values.items():
            try:
                same = key in earlier and bool(earlier[key] == value)
            except Exception:  # a value without a plain ==
                same = key in earlier and earlier[key] is value
            if not same:
                delta[key] = value
        if group in _REMOVABLE:
            delta.update((key, None) for key in earlier if key not in values)
        if delta:
            changes[group] = delta
    return changes


def _defaults(group: str) -> dict[str, Any] | None:
    """The settings of ``group`` as importing its library sets them (None: not known)."""
    try:
        if group == "pandas options":
            registered = sys.modules["pandas._config.config"]._registered_options
            return {key: option.defval for key, option in registered.items()}
        if group == "matplotlib rcParams":
            return dict(dict.items(sys.modules["matplotlib"].rcParamsOrig))
    except Exception:
        return None
    return None


def replay(changes: dict[str, dict[str, Any]]) -> None:
    """Set the settings a cached cell changed, as it changed them."""
    for group, delta in changes.items():
        entry = _SETTINGS.get(group)
        if entry is None:
            continue
        try:
            entry[1](delta)
        except Exception as error:
            import warnings

            from nbflow.exceptions import NbflowWarning

            warnings.warn(f"a cached cell's change of the {group} could not be set again: {error}",
                          NbflowWarning, stacklevel=3)
