"""The store's buffer files: large arrays written out of band under ``blobs/``, raw, one file per buffer.

``blobs/<aa>/<name>-<blob_id>-<i>.bin`` holds buffer ``i`` of an entry, where ``<name>`` is the key (or its
xxh3-128 hex digest when the key is not a safe file name) and ``<aa>`` its first two characters. A file is
written to a temporary name, fsynced and renamed, before the entry's rows commit; it is read into memory
that the value is rebuilt on, hashed chunk by chunk as it is read. Every path goes through
:mod:`nbflow.store.paths`, so no link planted under the store sends a read, write or delete outside it.

A load holds a shared lock on an entry's first file while it reads (:meth:`BlobFiles.lease`); eviction
takes an exclusive one (:meth:`BlobFiles.claim`) and skips an entry a load is reading.
"""

from __future__ import annotations

import hashlib
import hmac
import mmap
import os
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import xxhash

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so eviction cannot see which entries are being read
    fcntl = None  # type: ignore[assignment]

from nbflow.store.interface import Invalid
from nbflow.store.paths import directory_fd, open_inside, replace_inside, unlink_inside
from nbflow.store.record import Record
from nbflow.store.serializers import WritableBuffer

__all__ = ["CHUNK", "IN_USE", "KEYED", "ORPHAN_AGE", "BlobFiles", "release"]

# Buffers are written and read in chunks of this size, and each chunk is hashed right after it is
# written or read, while it is still in the CPU cache, instead of in a second pass over the whole buffer.
CHUNK = 1 << 20
# Buffers from this size up are read into memory maps rather than bytearrays (see _allocate).
MAP_MIN_SIZE = 1 << 20
# Checksum algorithm tags, stored with each buffer checksum so a store can tell how it was computed.
FAST = "xxh3:"
KEYED = "b2k:"
# Blob files and temporary files this old that no record refers to are garbage (a save refreshes its
# files' mtime right before committing, so files of an in-flight save are always younger than this).
ORPHAN_AGE = 60.0
# How often opening a store sweeps the temporary files of killed writers (see BlobFiles.sweep_if_due).
SWEEP_INTERVAL = 3600.0
# Keys that can be used directly in a blob file name.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")
# What BlobFiles.claim returns for an entry a load is reading (never a file descriptor).
IN_USE = -1


def allocate(size: int) -> WritableBuffer:
    """Writable memory for a buffer of ``size`` bytes, to read a blob file into.

    Large buffers get an anonymous private memory map advised to use transparent huge pages: unlike
    ``bytearray(size)`` it is not zero-filled first, and it takes a few hundred page faults instead of tens
    of thousands, which makes reading a 100 MB array several times faster (as fast as ``np.load``, which
    does the same through numpy's allocator). Arrays unpickled from it use it directly and stay writable.
    """
    if size >= MAP_MIN_SIZE:
        try:
            memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
        except (AttributeError, TypeError, ValueError, OSError):  # e.g. Windows: no MAP_PRIVATE
            return bytearray(size)
        advice = getattr(mmap, "MADV_HUGEPAGE", None)
        if advice is not None:
            try:
                memory.madvise(advice)
            except OSError:
                pass
        return memory
    return bytearray(size)


def release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


class BlobFiles:
    """The buffer files of one store (see the module documentation)."""

    def __init__(self, root: str, secret: bytes, *, strict: bool) -> None:
        self.root = root
        self.directory = os.path.join(root, "blobs")
        self.secret = secret
        # Keyed checksums (BLAKE2b under the secret) rather than xxh3: see Settings.strict_buffers.
        self.strict = strict

    def read(self, path: str, size: int, checksum: str) -> WritableBuffer:
        hasher = self.hasher_for(checksum)
        buffer = allocate(size)
        view = memoryview(buffer)
        try:
            with open(open_inside(self.root, path, os.O_RDONLY), "rb", buffering=0) as file:
                if os.fstat(file.fileno()).st_size != size:
                    raise Invalid("has a buffer file of the wrong size")
                position = 0
                while position < size:
                    count = file.readinto(view[position : position + CHUNK])
                    if not count:
                        raise Invalid("has a truncated buffer file")
                    hasher.update(view[position : position + count])
                    position += count
        except FileNotFoundError:
            raise Invalid("is missing a buffer file") from None
        except OSError as error:
            raise Invalid(f"has an unreadable buffer file ({error})") from None
        finally:
            view.release()
        if not hmac.compare_digest(checksum, f"{checksum[: checksum.index(':') + 1]}{hasher.hexdigest()}"):
            raise Invalid("has a buffer that does not match its checksum")
        return buffer

    def write(self, path: str, view: memoryview, written: list[str]) -> str:
        directory, name = os.path.split(path)
        temporary = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        # Listed before they exist, so that a save interrupted at any point removes them.
        written.append(temporary)
        try:
            fd = open_inside(self.root, temporary, flags)
        except OSError:
            # The shard directory is created on demand rather than checked on every save (and a link in
            # its place replaced by a directory).
            fd = open_inside(self.root, temporary, flags, create_dirs=True)
        hasher = self.new_hasher()
        try:
            for start in range(0, view.nbytes, CHUNK):
                chunk = view[start : start + CHUNK]
                hasher.update(chunk)
                write_all(fd, chunk)
            # Data must be on disk before the record that vouches for it is committed.
            os.fsync(fd)
        finally:
            os.close(fd)
        written.append(path)
        replace_inside(self.root, temporary, path)
        written.remove(temporary)
        return (KEYED if self.strict else FAST) + hasher.hexdigest()

    def new_hasher(self) -> Any:
        if self.strict:
            return hashlib.blake2b(key=self.secret[:64], digest_size=32)
        return xxhash.xxh3_128()

    def hasher_for(self, checksum: str) -> Any:
        if checksum.startswith(KEYED):
            return hashlib.blake2b(key=self.secret[:64], digest_size=32)
        if checksum.startswith(FAST):
            return xxhash.xxh3_128()
        raise Invalid("has a buffer checksum of an unknown kind")

    @staticmethod
    def name(key: str) -> str:
        if SAFE_NAME.fullmatch(key):
            return key
        return xxhash.xxh3_128_hexdigest(key.encode("utf-8", "surrogatepass"))

    def path(self, key: str, blob_id: str, index: int) -> str:
        name = self.name(key)
        return os.path.join(self.directory, name[:2], f"{name}-{blob_id}-{index}.bin")

    def remove_entry_files(self, record: Record) -> None:
        for index in range(len(record.buffers)):
            try:
                self.remove(self.path(record.key, record.blob_id, index))
            except OSError:
                pass  # left for prune()'s garbage collection

    def lease(self, path: str) -> int | None:
        """Open a buffer file with a shared lock, marking its entry as being read (see :meth:`claim`)."""
        if fcntl is None:
            return None
        try:
            fd = open_inside(self.root, path, os.O_RDONLY)
        except FileNotFoundError:
            raise Invalid("is missing a buffer file") from None
        except OSError as error:
            raise Invalid(f"has an unreadable buffer file ({error})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def claim(self, record: Record) -> int | None:
        """Lock an entry's first buffer file for eviction: :data:`IN_USE` if a load is reading the entry.

        Otherwise an open descriptor holding the lock (``None`` when there is nothing to lock), to be
        closed with :func:`release` once the entry's files are deleted.
        """
        if fcntl is None or not record.buffers:
            return None
        try:
            fd = open_inside(self.root, self.path(record.key, record.blob_id, 0), os.O_RDONLY)
        except OSError:
            return None  # already gone (or unreadable): nothing to protect
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return IN_USE
        except BaseException:
            os.close(fd)
            raise
        return fd

    def files(self) -> Iterator[tuple[str, str, str, float]]:
        """``(path, name, blob_id, mtime)`` of every file under ``blobs/`` (temporary files: empty ids).

        Listed through descriptors opened without following links (nbflow.store.paths): a ``blobs/`` or
        shard directory replaced by a link lists nothing, so nothing outside the store is ever deleted.
        """
        try:
            with directory_fd(self.root, ["blobs"]) as blobs:
                shards = [entry.name for entry in os.scandir(blobs) if entry.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for shard in shards:
            files: list[tuple[str, float]] = []
            try:
                with directory_fd(self.root, ["blobs", shard]) as directory:
                    for entry in os.scandir(directory):
                        try:
                            files.append((entry.name, entry.stat(follow_symlinks=False).st_mtime))
                        except FileNotFoundError:
                            continue
            except OSError:
                continue
            for file_name, mtime in files:
                name, blob_id = "", ""
                if file_name.endswith(".bin") and not file_name.startswith("."):
                    parts = file_name[:-4].rsplit("-", 2)
                    if len(parts) == 3:
                        name, blob_id = parts[0], parts[1]
                yield os.path.join(self.directory, shard, file_name), name, blob_id, mtime

    def remove(self, path: str) -> None:
        """Delete a file of the store's, never one outside it (see nbflow.store.paths)."""
        unlink_inside(self.root, path)

    def sweep_if_due(self, read_only: bool) -> None:
        """Remove the temporary files of writers killed mid-save, at most every SWEEP_INTERVAL seconds per
        store (whichever process opens it then): nothing counts them, and only a prune would remove them."""
        if read_only:
            return
        marker = os.path.join(self.root, ".swept")
        try:
            if time.time() - os.stat(marker).st_mtime < SWEEP_INTERVAL:
                return
        except FileNotFoundError:
            pass
        except OSError:
            return
        try:
            os.close(open_inside(self.root, ".swept", os.O_WRONLY | os.O_CREAT))
            os.utime(marker)
        except OSError:
            return
        now = time.time()
        for path, _name, blob_id, mtime in self.files():
            if not blob_id and now - mtime > ORPHAN_AGE:  # not an entry's file: a temporary one
                self.remove(path)

