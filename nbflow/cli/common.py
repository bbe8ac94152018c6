"""Pieces every ``nbflow`` command shares: usage errors, the store location, tables, JSON, times."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Usage",
    "format_size",
    "format_time",
    "parse_age",
    "print_header",
    "print_json",
    "resolve_home",
    "table",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class Usage(Exception):
    """Bad command-line input: printed as ``nbflow: error: ...`` with exit code 2."""


def resolve_home(option: str | None, base: Path | None = None) -> Path:
    """The store directory: ``--home``, else ``NBFLOW_HOME``, else the store :func:`nbflow.settings.find_home`
    finds walking up from ``base`` (default: the current directory). A relative path is taken relative to
    ``base``. Every command resolves it from the shell's directory, ``nbflow run`` included (which hands
    the result to its kernel), so all of them agree on the store."""
    from nbflow.settings import find_home

    base = base or Path.cwd()
    text = option or os.environ.get("NBFLOW_HOME")
    if not text:
        return find_home(base)
    home = Path(text).expanduser()
    if not home.is_absolute():
        home = base / home
    return home.absolute()


def print_header(home: Path, out: TextIO) -> None:
    """The first line of a command's table output: which store it read."""
    print(f"store {home}", file=out)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Print rows as left-aligned columns under a header line."""
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) if rows else len(headers[i])
              for i in range(len(headers))]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)


def print_json(data: Any, out: TextIO | None = None) -> None:
    json.dump(data, out or sys.stdout, indent=2, default=str)
    print(file=out or sys.stdout)


def format_time(timestamp: float | None) -> str:
    """A local date and time (24 h) as tables show it, ``-`` for None."""
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def format_size(size: int | float) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``2.0 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)?\s*$")
_AGE_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800, None: 86400}


def parse_age(text: str) -> float:
    """An age such as ``7d``, ``12h``, ``30m``, ``90s``, ``2w`` (a bare number is days) in seconds."""
    match = _AGE.match(text)
    if not match:
        raise Usage(f"cannot read {text!r} as an age; write e.g. 7d, 12h, 30m, 90s or 2w")
    return float(match.group(1)) * _AGE_UNITS[match.group(2)]
