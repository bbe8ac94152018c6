"""The per-user secret key that authenticates stored results.

Results are unpickled on load, and unpickling runs code. The store therefore only unpickles payloads whose
MAC, keyed by this secret, verifies: anyone able to write into the store directory but not to read the
user's secret cannot get code run by planting or editing entries.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import time
import warnings
from pathlib import Path

from nbflow.exceptions import ConfigurationError, NbflowWarning

__all__ = ["SECRET_SIZE", "load_or_create_secret"]

#: Length of the secret key in bytes.
SECRET_SIZE = 32

# A key file shorter than a key and younger than this is taken to be still being written by another
# process and waited for (only possible on filesystems without hard links, where the file is created in
# place rather than linked into place); an older one is damaged.
_PARTIAL_WAIT_SECONDS = 2.0


def load_or_create_secret(path: Path) -> bytes:
    """Read the secret key at ``path``, creating it (32 random bytes, mode 0600) if it does not exist.

    Creation is race-safe: if several processes create the key at once, exactly one file wins and every
    process ends up using it. The parent directory is created with mode 0700 when missing. A key file that
    other users can read is used, with an :class:`~nbflow.exceptions.NbflowWarning`.

    Raises :class:`~nbflow.exceptions.ConfigurationError` if the file exists but is not a valid key, or
    cannot be read or created.
    """
    path = Path(path)
    while True:
        try:
            key, modified = _read(path)
        except FileNotFoundError:
            _create(path)
            continue
        except OSError as error:
            raise ConfigurationError(f"cannot read the nbflow secret key file {path}: {error}") from error
        if len(key) == SECRET_SIZE:
            return key
        # A short file is either being written right now by another process (see _create), or damaged.
        if time.time() - modified > _PARTIAL_WAIT_SECONDS:
            raise ConfigurationError(
                f"the nbflow secret key file {path} is damaged (expected {SECRET_SIZE} bytes, found "
                f"{len(key)}); delete it to create a new key (cached results will then be recomputed)"
            )
        time.sleep(0.01)


def _read(path: Path) -> tuple[bytes, float]:
    """The file's content (up to one byte more than a key) and its modification time."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        status = os.fstat(fd)
        data = os.read(fd, SECRET_SIZE + 1)
    finally:
        os.close(fd)
    if len(data) == SECRET_SIZE and status.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.warn(
            f"the nbflow secret key file {path} is accessible to other users, who could forge cache "
            f"entries; run `chmod 600 {path}`",
            NbflowWarning,
            stacklevel=4,
        )
    return data, status.st_mtime


def _create(path: Path) -> None:
    """Create the key file unless it exists; whoever loses a creation race leaves the winner's file."""
    try:
        # mkdir's mode only applies to the last component; intermediate directories (e.g. ~/.config)
        # get the usual default permissions.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigurationError(
            f"cannot create the directory of the nbflow secret key {path}: {error}"
        ) from error
    key = secrets.token_bytes(SECRET_SIZE)
    # Write the key completely into a private temporary file, then hard-link it into place: link() fails
    # if the name exists, so the key file appears atomically and complete, and only one creator wins.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        _write_new(temporary, key)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return  # another process won the race; its key is used
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            # No hard links on this filesystem: create the file in place. A concurrent reader may then see
            # it before it is complete, which load_or_create_secret() waits out.
            try:
                _write_new(path, key)
            except FileExistsError:
                return
    except OSError as error:
        raise ConfigurationError(f"cannot create the nbflow secret key file {path}: {error}") from error
    finally:
        try:
            os.unlink(temporary)
        except OSError:
            pass


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
