"""Nothing outside the store directory is ever deleted or written, whatever links or names are planted in it.

The attacker can write the store directory: replace ``blobs/`` or a shard directory with a link to the
user's files, or write a database row whose file name points outside. Every command that deletes or writes
files — clear, prune (also run by a save over the size limit), a load that rejects an entry, a save — must
leave the user's files as they were.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from nbflow.exceptions import NbflowWarning
from nbflow.store import FORMAT_VERSION, CacheMiss, ResultStore
from tests.store.helpers import blob_files

OLD = time.time() - 3600  # older than any age the store waits for before it sweeps a file


def victims(tmp_path: Path) -> Path:
    """A user's directory with files named like the store's own (blob, temporary and diskcache files)."""
    directory = tmp_path / "precious"
    directory.mkdir()
    names = ["notes.txt", "k-0123456789abcdef-0.bin", ".k-0123.tmp", "0123456789abcdef0123456789ab.val"]
    for name in names:
        path = directory / name
        path.write_text(f"the user's {name}")
        os.utime(path, (OLD, OLD))
    return directory


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def open_store(home: Path, secret_file: Path, size_limit: int = 1 << 30) -> ResultStore:
    return ResultStore(home, size_limit=size_limit, secret_file=secret_file)


def cli(command: str, home: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "nbflow.cli", "cache", command, "--home", str(home)],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr


def _clear(store: ResultStore) -> None:
    store.clear()


def _prune(store: ResultStore) -> None:
    store.prune()


def _save_over_the_limit(store: ResultStore) -> None:
    small = open_store(store.home, store.secret_file, size_limit=1)
    small.save("big", np.arange(100_000), task_name="demo.big")  # over the limit: prunes everything else
    small.close()


def _reject_on_load(store: ResultStore) -> None:
    # A tampered payload: the load deletes the entry, its buffer files included.
    with sqlite3.connect(store.directory / "cache.db") as db:
        db.execute("UPDATE Cache SET value = X'00' WHERE key = ?", (f"{FORMAT_VERSION}:arr:p",))
    with pytest.warns(NbflowWarning), pytest.raises(CacheMiss):
        store.load("arr")


def _delete(store: ResultStore) -> None:
    store.delete("arr")


COMMANDS: dict[str, Callable[[ResultStore], None]] = {
    "clear": _clear, "prune": _prune, "save over the limit": _save_over_the_limit,
    "load that rejects": _reject_on_load, "delete": _delete,
    "cli clear": lambda store: cli("clear", store.home), "cli prune": lambda store: cli("prune", store.home),
}


def _link_blobs(store: ResultStore, target: Path) -> None:
    blobs = store.directory / "blobs"
    for path in sorted(blobs.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    blobs.rmdir()
    blobs.symlink_to(target, target_is_directory=True)


def _link_shard(store: ResultStore, target: Path) -> None:
    # The shard of entry "arr" (its buffer file moved to the user's directory, where a delete would go).
    (blob,) = blob_files(store)
    os.replace(blob, target / blob.name)
    os.utime(target / blob.name, (OLD, OLD))
    blob.parent.rmdir()
    blob.parent.symlink_to(target, target_is_directory=True)


def _row_names_outside(store: ResultStore, target: Path) -> None:
    # diskcache rows whose value file is named outside: relative, absolute, and through a linked shard.
    (store.directory / "ab").symlink_to(target, target_is_directory=True)
    inside = "ab/0123456789abcdef0123456789ab.val"
    with sqlite3.connect(store.directory / "cache.db") as db:
        for number, name in enumerate(["../../precious/notes.txt", str(target / "notes.txt"), inside]):
            for suffix in ("p", "m"):
                db.execute(
                    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size,"
                    " mode, filename, value) VALUES (?, 1, 0, NULL, 0, 0, NULL, 10, 2, ?, NULL)",
                    (f"{FORMAT_VERSION}:planted{number}:{suffix}", name),
                )
        # the honest entry's payload kept "in a file" named outside, so deleting it deletes that file
        db.execute("UPDATE Cache SET mode = 2, filename = ?, value = NULL WHERE key = ?",
                   ("../../precious/notes.txt", f"{FORMAT_VERSION}:arr:p"))


PLANTS: dict[str, Callable[[ResultStore, Path], None]] = {
    "blobs is a link": _link_blobs,
    "a shard is a link": _link_shard,
    "rows name files outside": _row_names_outside,
}


@pytest.mark.filterwarnings("ignore:.*was a symbolic link:nbflow.exceptions.NbflowWarning")
@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_nothing_outside_the_store_is_deleted(plant: str, command: str, tmp_path: Path, secret_file: Path) -> None:
    target = victims(tmp_path)
    store = open_store(tmp_path / "home", secret_file)
    store.save("arr", np.arange(100_000), task_name="demo.arr")
    store.save("small", "text", task_name="demo.small")
    PLANTS[plant](store, target)
    before = snapshot(target)
    store.close()
    store = open_store(tmp_path / "home", secret_file)  # as a later process would find it
    try:
        COMMANDS[command](store)
    except CacheMiss:
        pass
    finally:
        store.close()
    assert snapshot(target) == before


def test_a_save_never_writes_through_a_linked_shard(tmp_path: Path, secret_file: Path) -> None:
    target = victims(tmp_path)
    store = open_store(tmp_path / "home", secret_file)
    before = snapshot(target)
    # "arr"'s shard directory is blobs/ar: a link there before the first save of the entry
    (store.directory / "blobs" / "ar").symlink_to(target, target_is_directory=True)
    store.save("arr", np.arange(100_000), task_name="demo.arr")
    assert snapshot(target) == before
    assert (store.load("arr") == np.arange(100_000)).all()
    assert not (store.directory / "blobs" / "ar").is_symlink()
    store.close()


def test_a_linked_blobs_directory_is_replaced_with_a_warning(tmp_path: Path, secret_file: Path) -> None:
    target = victims(tmp_path)
    open_store(tmp_path / "home", secret_file).close()
    blobs = tmp_path / "home" / "store" / "blobs"
    blobs.rmdir()
    blobs.symlink_to(target, target_is_directory=True)
    with pytest.warns(NbflowWarning, match=r"blobs was a symbolic link .*precious.*replaced the link"):
        store = open_store(tmp_path / "home", secret_file)
    assert blobs.is_dir() and not blobs.is_symlink()
    store.save("arr", np.arange(100_000), task_name="demo.arr")
    store.clear()
    store.close()
    assert sorted(snapshot(target)) == [".k-0123.tmp", "0123456789abcdef0123456789ab.val",
                                        "k-0123456789abcdef-0.bin", "notes.txt"]


def test_opening_a_store_sweeps_the_temporary_files_of_killed_writers(tmp_path: Path, secret_file: Path) -> None:
    store = open_store(tmp_path / "home", secret_file)
    store.save("arr", np.arange(100_000), task_name="demo.arr")
    store.close()
    shard = store.directory / "blobs" / "ar"
    stale, fresh = shard / ".arr-dead.1234.tmp", shard / ".arr-live.5678.tmp"
    stale.write_bytes(b"x" * 1000)
    fresh.write_bytes(b"y" * 1000)
    os.utime(stale, (OLD, OLD))
    marker = store.directory / ".swept"
    open_store(tmp_path / "home", secret_file).close()
    assert stale.exists()  # swept within the hour already: opening is not a scan every time
    os.utime(marker, (OLD, OLD))
    store = open_store(tmp_path / "home", secret_file)
    assert not stale.exists() and fresh.exists()  # only files old enough not to be a save in progress
    assert (store.load("arr") == np.arange(100_000)).all()  # an entry's own files stay
    store.close()
