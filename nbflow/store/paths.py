"""Files inside the store directory, reached through no symbolic link.

Someone who can write the store directory could replace ``blobs/``, a shard directory under it, or a file
name in a database row with a link (or a ``..``) pointing at the user's own files, which the store would
then read, overwrite or delete. Every path the store opens, writes or deletes below its directory goes
through these helpers instead: each directory on the way is opened with ``O_NOFOLLOW | O_DIRECTORY``
relative to the one above it, and the file itself relative to its directory, so a link anywhere below the
store directory fails the operation (``OSError``) instead of leaving the store — with no window between a
check and its use. The store directory itself may be a link (a user's choice of ``NBFLOW_HOME``).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

__all__ = ["directory_fd", "open_inside", "relative_parts", "replace_inside", "tree_size", "unlink_inside"]

_DIRECTORY = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def relative_parts(root: str, path: str) -> list[str] | None:
    """The components of ``path`` below ``root`` (an absolute path under it, or a relative one), or None
    when it is not strictly below ``root`` or has an empty, ``.`` or ``..`` component."""
    if os.path.isabs(path):
        prefix = root.rstrip(os.sep) + os.sep
        if not path.startswith(prefix):
            return None
        path = path[len(prefix) :]
    parts = path.split(os.sep)
    if os.altsep:
        parts = [piece for part in parts for piece in part.split(os.altsep)]
    if not parts or any(part in ("", ".", "..") for part in parts):
        return None
    return parts


@contextlib.contextmanager
def directory_fd(root: str, parts: list[str], *, create: bool = False) -> Iterator[int]:
    """A descriptor of the directory ``root/parts...``, each part opened without following a link.

    With ``create``, missing directories are made (mode 0700), and a link or other non-directory in a
    part's place is removed first: it is inside the store, and whatever it points at is left alone.
    """
    # Every descriptor open at any moment is in the list, so an interrupt at any point closes each once.
    fds = [os.open(root, _DIRECTORY)]
    try:
        for part in parts:
            fds.append(_open_child(fds[-1], part, create))
            os.close(fds.pop(-2))
        yield fds[-1]
    finally:
        for fd in fds:
            os.close(fd)


def _open_child(parent: int, name: str, create: bool) -> int:
    try:
        return os.open(name, _DIRECTORY | _NOFOLLOW, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as error:
        # ELOOP: a link (O_NOFOLLOW); ENOTDIR: a file, or a link on systems that report it so.
        if not create or error.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        os.unlink(name, dir_fd=parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent)
    return os.open(name, _DIRECTORY | _NOFOLLOW, dir_fd=parent)


def open_inside(root: str, path: str, flags: int, mode: int = 0o600, *, create_dirs: bool = False) -> int:
    """``os.open`` of ``path`` (absolute under ``root``, or relative to it) through no link; the file
    itself is opened with ``O_NOFOLLOW`` too. Raises ``OSError`` (``EPERM``) for a path outside ``root``."""
    parts = relative_parts(root, path)
    if parts is None:
        raise OSError(errno.EPERM, "not a path inside the nbflow store", path)
    with directory_fd(root, parts[:-1], create=create_dirs) as directory:
        return os.open(parts[-1], flags | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode, dir_fd=directory)


def unlink_inside(root: str, path: str) -> bool:
    """Delete the file ``path`` (absolute under ``root``, or relative to it), reached through no link.

    Returns whether a file was deleted; a path outside ``root``, through a link, or already gone deletes
    nothing. A link at the end of the path is itself deleted (it is inside the store), never its target.
    """
    parts = relative_parts(root, path)
    if parts is None:
        return False
    try:
        with directory_fd(root, parts[:-1]) as directory:
            os.unlink(parts[-1], dir_fd=directory)
    except OSError:
        return False
    return True


def replace_inside(root: str, source: str, target: str) -> None:
    """``os.replace(source, target)`` for two files of one directory under ``root``, through no link."""
    source_parts, target_parts = relative_parts(root, source), relative_parts(root, target)
    if source_parts is None or target_parts is None or source_parts[:-1] != target_parts[:-1]:
        raise OSError(errno.EPERM, "not a rename inside one directory of the nbflow store", target)
    with directory_fd(root, source_parts[:-1]) as directory:
        os.replace(source_parts[-1], target_parts[-1], src_dir_fd=directory, dst_dir_fd=directory)


def tree_size(root: str) -> int:
    """Bytes the files under ``root`` take, summed from their sizes (links counted as links, not followed)."""
    total = 0
    for directory, _directories, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except FileNotFoundError:  # removed by another process meanwhile
                continue
    return total
