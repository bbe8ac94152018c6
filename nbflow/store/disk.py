"""How the store's diskcache turns rows into values: raw strings and bytes only, never a pickle.

diskcache's own ``Disk`` unpickles a row whose ``mode`` says pickle, a key stored pickled (``raw = 0``) and
the file a row's ``filename`` names, and it opens and deletes that file wherever the name points. Someone
who can write the store directory but cannot read the secret key (the MAC checks nothing before the value
is read) could plant such a row and run code in every process that reads it. :class:`SafeDisk` is the
``Disk`` every nbflow store uses, so no path through diskcache's API — ``get``, ``iterkeys``, ``delete``,
``clear`` — can do that:

* a pickled key reads as :data:`UNTRUSTED` (not a string, so it matches no key of nbflow's);
* a pickled value, or a row of a mode nbflow never writes, reads as :data:`UNTRUSTED`, which every reader
  treats as a damaged entry (a miss, and the rows deleted);
* a file is only read or deleted when its name is one diskcache makes (``aa/bb/<28 hex digits>.val``),
  reached through no symbolic link (nbflow.store.paths);
* writing anything but ``str``, ``bytes`` or a number raises instead of pickling it.
"""

from __future__ import annotations

import os
import re
from typing import Any, TypeGuard

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, MODE_TEXT, UNKNOWN

from nbflow.store.paths import directory_fd, open_inside, unlink_inside

__all__ = ["UNTRUSTED", "SafeDisk"]


class _Untrusted:
    """What a row nbflow did not write reads as: never equal to a str or bytes, never unpickled."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<untrusted store row>"


UNTRUSTED: Any = _Untrusted()

# The names diskcache's Disk.filename() makes: two levels of two hex digits, then 28 hex digits.
_FILE_NAME = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val\Z")


class SafeDisk(diskcache.Disk):
    """A diskcache ``Disk`` that never unpickles and never leaves its directory (see the module docs)."""

    def __init__(self, directory: str, min_file_size: int = 0, pickle_protocol: int = 0, **_ignored: Any) -> None:
        # Settings read back from the database may name options this Disk does not have: a planted
        # ``disk_*`` row must not make the store impossible to open.
        super().__init__(directory, min_file_size=min_file_size, pickle_protocol=pickle_protocol)

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) not in (str, bytes, int, float):
            raise TypeError(f"nbflow's store keys are strings, not {type(key).__name__}")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            return UNTRUSTED
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, str | None, Any]:
        if not read and type(value) not in (str, bytes, int, float):
            raise TypeError(f"nbflow's store holds strings and bytes, not {type(value).__name__}")
        return super().store(value, read, key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == MODE_RAW:
            return super().fetch(mode, filename, value, read)
        if mode not in (MODE_BINARY, MODE_TEXT) or not self._ours(filename):
            return UNTRUSTED
        # An OSError here is diskcache's "value file missing": it drops the row.
        fd = open_inside(self._directory, filename, os.O_RDONLY)
        if mode == MODE_BINARY:
            reader = os.fdopen(fd, "rb")
            if read:
                return reader
            with reader:
                return reader.read()
        with open(fd, encoding="UTF-8") as text:
            return text.read()

    def remove(self, file_path: str) -> None:
        if not self._ours(file_path) or not unlink_inside(self._directory, file_path):
            return  # not a file of this store's: the row goes, whatever it names stays
        # diskcache's own remove() also removes the emptied directories above, up to the root of the
        # filesystem; only the two levels of the value files' own directories go here.
        first, second, _name = file_path.split("/")
        for parent, child in (([first], second), ([], first)):
            try:
                with directory_fd(self._directory, parent) as directory:
                    os.rmdir(child, dir_fd=directory)
            except OSError:
                return

    @staticmethod
    def _ours(filename: Any) -> TypeGuard[str]:
        return isinstance(filename, str) and _FILE_NAME.match(filename) is not None
