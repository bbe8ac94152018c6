"""On-disk format versions: committed stores keep loading; entries of an older format are clean misses."""

from __future__ import annotations

import os
import pickle
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

import nbflow.store.store as store_module
from nbflow.exceptions import NbflowWarning
from nbflow.store import FORMAT_VERSION, CacheMiss, ResultStore
from tests.reliability.fixture_store import EXPIRES, entries, same

STORES = Path(__file__).parent / "stores"
FIXTURES = sorted(STORES.glob("format-*"), key=lambda path: int(path.name.split("-")[1]))


def open_copy(fixture: Path, tmp_path: Path) -> ResultStore:
    """The fixture store, copied so the test never changes it (git keeps no file modes: restore them)."""
    copy = tmp_path / fixture.name
    shutil.copytree(fixture, copy)
    os.chmod(copy / "secret.key", 0o600)
    for directory in (copy / "home", copy / "home" / "store"):
        os.chmod(directory, 0o700)
    return ResultStore(copy / "home", size_limit=1 << 30, secret_file=copy / "secret.key")


def test_a_fixture_store_of_the_current_format_is_committed() -> None:
    # Changing FORMAT_VERSION means writing a new fixture store (see tests/reliability/fixture_store.py).
    assert (STORES / f"format-{FORMAT_VERSION}").is_dir()


@pytest.mark.parametrize("fixture", FIXTURES, ids=[path.name for path in FIXTURES])
def test_committed_stores_keep_loading(fixture: Path, tmp_path: Path) -> None:
    version = int(fixture.name.split("-")[1])
    store = open_copy(fixture, tmp_path)
    expected = entries()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)  # none, not even "secret readable by others"
        if version == FORMAT_VERSION:
            assert sorted(record.key for record in store.records()) == sorted(expected)
            for key, (value, serializer, task_name, run_id, expires) in expected.items():
                record = store.probe(key)
                assert record is not None, key
                assert (record.task_name, record.serializer, record.run_id, record.expires) == (
                    task_name, serializer, run_id, expires,
                )
                assert record.format_version == FORMAT_VERSION
                loaded = store.load(key, record)
                assert same(loaded, value), (key, loaded)
            assert store.probe("expires").expires == EXPIRES  # type: ignore[union-attr]
            assert store.prune() == 0  # nothing in it is garbage
        else:
            # An older format: never misread, never reported as tampering, simply not there.
            assert list(store.records()) == []
            for key in expected:
                assert store.probe(key) is None
                with pytest.raises(CacheMiss):
                    store.load(key)
            assert store.prune() == len(expected)
            # Their buffer files go once old enough to belong to no save in progress.
            an_hour_ago = time.time() - 3600
            for path in (store.directory / "blobs").rglob("*.bin"):
                os.utime(path, (an_hour_ago, an_hour_ago))
            store.prune()
            assert list((store.directory / "blobs").rglob("*.bin")) == []
        # Either way the store takes new entries.
        store.save("new", [1, 2, 3], task_name="t")
        assert store.load("new") == [1, 2, 3]
    store.close()


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_entries_of_an_older_format_are_clean_misses(
    tmp_path: Path, secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    # What an older nbflow with this layout wrote: the same keys, under its own version's namespace.
    monkeypatch.setattr(store_module, "FORMAT_VERSION", FORMAT_VERSION - 1)
    older = ResultStore(home, size_limit=1 << 30, secret_file=secret_file)
    older.save("k", "from the older format", task_name="t")
    older.save("a", entries()["array"][0], task_name="t")
    marker = tmp_path / "pwned"
    # And entries that only look like ours: a bare pickle under the plain key, and an older record
    # whose payload would run code if anything unpickled it.
    older._cache.set("k", pickle.dumps(Exploit(marker)))
    older._cache.set(f"m:{FORMAT_VERSION - 1}:j", '{"key": "j", "format_version": 0}')
    older._cache.set(f"p:{FORMAT_VERSION - 1}:j", pickle.dumps(Exploit(marker)))
    older.close()
    monkeypatch.undo()

    current = ResultStore(home, size_limit=1 << 30, secret_file=secret_file)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        assert list(current.records()) == []
        for key in ("k", "a", "j"):
            assert current.probe(key) is None
            with pytest.raises(CacheMiss):
                current.load(key)
        assert not marker.exists()
        current.save("k", "current", task_name="t")
        assert current.load("k") == "current"
        assert current.prune() == 3  # the older format's records go, with their buffer files
        assert current.load("k") == "current"
    # Their buffer files are garbage once old enough to belong to no save in progress.
    an_hour_ago = time.time() - 3600
    for path in (current.directory / "blobs").rglob("*.bin"):
        os.utime(path, (an_hour_ago, an_hour_ago))
    current.prune()
    assert list((current.directory / "blobs").rglob("*.bin")) == []
    assert not marker.exists()
    current.close()
