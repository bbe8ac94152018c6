"""Tampered, corrupted or foreign entries are detected before anything is unpickled."""

from __future__ import annotations

import json
import os
import pickle
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nbflow
from nbflow.exceptions import ConfigurationError, NbflowWarning
from nbflow.store import FORMAT_VERSION, CacheMiss, ResultStore
from nbflow.store.secret import load_or_create_secret
from tests.store.helpers import blob_files


def M(key: str) -> str:
    """The diskcache key of ``key``'s record row."""
    return f"{FORMAT_VERSION}:{key}:m"


def P(key: str) -> str:
    """The diskcache key of ``key``'s payload row."""
    return f"{FORMAT_VERSION}:{key}:p"


def assert_rejected(store: ResultStore, key: str, task_name: str, *, record: Any = None) -> None:
    """load() warns exactly once naming the task, raises CacheMiss, and the entry is gone."""
    with pytest.warns(NbflowWarning) as caught, pytest.raises(CacheMiss):
        store.load(key, record)
    messages = [str(warning.message) for warning in caught if issubclass(warning.category, NbflowWarning)]
    assert len(messages) == 1, messages
    assert repr(task_name) in messages[0]
    assert "failed verification" in messages[0] and "cache miss" in messages[0]
    assert store.probe(key) is None
    assert store._cache.get(P(key)) is None


def flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


def test_flipped_byte_in_stream(store: ResultStore) -> None:
    store.save("k", {"numbers": list(range(100))}, task_name="demo.flip")
    stream = store._cache.get(P("k"))
    store._cache.set(P("k"), flip(stream, len(stream) // 2))
    assert_rejected(store, "k", "demo.flip")


def test_flipped_byte_in_a_large_stream(store: ResultStore) -> None:
    # A large stream (it is kept in the database row too).
    store.save("k", list(range(50_000)), task_name="demo.flip")
    stream = store._cache.get(P("k"))
    assert len(stream) > 100_000
    store._cache.set(P("k"), flip(stream, 12345))
    assert_rejected(store, "k", "demo.flip", record=store.probe("k"))


def test_flipped_byte_in_blob(store: ResultStore) -> None:
    store.save("k", np.arange(1_000_000, dtype=np.float64), task_name="demo.blob")
    (blob,) = blob_files(store)
    data = blob.read_bytes()
    blob.write_bytes(flip(data, 4_000_000))
    assert_rejected(store, "k", "demo.blob")
    assert blob_files(store) == []


def test_truncated_and_missing_blob(store: ResultStore) -> None:
    store.save("a", np.ones(100_000), task_name="demo.truncated")
    store.save("b", np.ones(100_000), task_name="demo.missing")
    blob_a = next(path for path in blob_files(store) if path.name.startswith("a-"))
    blob_b = next(path for path in blob_files(store) if path.name.startswith("b-"))
    blob_a.write_bytes(blob_a.read_bytes()[:1000])
    blob_b.unlink()
    assert_rejected(store, "a", "demo.truncated")
    assert_rejected(store, "b", "demo.missing")


def test_swapped_payloads(store: ResultStore) -> None:
    store.save("a", "value of a", task_name="demo.a")
    store.save("b", "value of b", task_name="demo.b")
    stream_a, stream_b = store._cache.get(P("a")), store._cache.get(P("b"))
    # Each payload is authentic and carries its own sizes: only the key it is signed for can tell.
    store._cache.set(P("a"), stream_b)
    store._cache.set(P("b"), stream_a)
    assert_rejected(store, "a", "demo.a")
    assert_rejected(store, "b", "demo.b")


def test_swapped_blobs(store: ResultStore) -> None:
    store.save("a", np.zeros(100_000), task_name="demo.a")
    store.save("b", np.ones(100_000), task_name="demo.b")
    blob_a = next(path for path in blob_files(store) if path.name.startswith("a-"))
    blob_b = next(path for path in blob_files(store) if path.name.startswith("b-"))
    data_a, data_b = blob_a.read_bytes(), blob_b.read_bytes()
    blob_a.write_bytes(data_b)
    blob_b.write_bytes(data_a)
    assert_rejected(store, "a", "demo.a")
    assert_rejected(store, "b", "demo.b")


def test_whole_entries_moved_to_other_keys(store: ResultStore) -> None:
    store.save("a", "value of a", task_name="demo.a")
    store.save("b", "value of b", task_name="demo.b")
    cache = store._cache
    record_a, record_b = cache.get(M("a")), cache.get(M("b"))
    stream_a, stream_b = cache.get(P("a")), cache.get(P("b"))
    cache.set(M("a"), record_b)
    cache.set(P("a"), stream_b)
    cache.set(M("b"), record_a)
    cache.set(P("b"), stream_a)
    with pytest.warns(NbflowWarning, match="belongs to another entry"):
        assert store.probe("a") is None
    with pytest.warns(NbflowWarning, match="belongs to another entry"), pytest.raises(CacheMiss):
        store.load("b")


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fix_sizes", [False, True])
def test_code_running_pickle_is_never_unpickled(store: ResultStore, tmp_path: Path, fix_sizes: bool) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Exploit(marker), protocol=5)
    pickle.loads(pickle.dumps(Exploit(tmp_path / "check")))  # the exploit does work when unpickled...
    assert (tmp_path / "check").exists()

    store.save("k", "innocent", task_name="demo.target")
    store._cache.set(P("k"), evil)
    if fix_sizes:
        # Make the metadata consistent with the planted stream, so that only the MAC can catch it.
        record = json.loads(store._cache.get(M("k")))
        record["stream_size"] = record["size"] = len(evil)
        store._cache.set(M("k"), json.dumps(record))
    assert_rejected(store, "k", "demo.target")
    assert not marker.exists()  # ...but it was never unpickled


def test_tampered_metadata_does_not_change_what_a_load_trusts(store: ResultStore) -> None:
    # The record is an unauthenticated index for listings and eviction; a load goes by the signed fields
    # carried in the payload row, so rewriting the record can neither extend an expiry nor change how the
    # value is read.
    expires = time.time() + 1.5
    store.save("k", {"n": 1}, task_name="demo.meta", expires=expires)
    record = json.loads(store._cache.get(M("k")))
    record["expires"] = time.time() + 10**6
    record["serializer"] = "json"
    record["stream_size"] = record["size"] = 3
    store._cache.set(M("k"), json.dumps(record))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        assert store.load("k") == {"n": 1}
        time.sleep(max(0.0, expires - time.time()) + 0.1)
        with pytest.raises(CacheMiss, match="expired"):
            store.load("k")
    assert store.probe("k") is None  # deleted as expired, not kept by the record's later expiry
    assert store._cache.get(P("k")) is None


def test_lru_fields_are_not_authenticated(store: ResultStore) -> None:
    store.save("k", 1, task_name="t")
    record = json.loads(store._cache.get(M("k")))
    record["last_used"] += 5
    record["hits"] = 12
    store._cache.set(M("k"), json.dumps(record))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        assert store.load("k") == 1


def test_unreadable_metadata(store: ResultStore) -> None:
    store.save("k", 1, task_name="t")
    store._cache.set(M("k"), '{"key": "k", "truncated')
    with pytest.warns(NbflowWarning, match="unknown task.*unreadable metadata.*failed verification"):
        assert store.probe("k") is None
    store._cache.set(M("j"), "[]")
    with pytest.warns(NbflowWarning, match="unreadable"), pytest.raises(CacheMiss):
        store.load("j")
    assert store._cache.get(M("j")) is None


def test_a_bad_payload_without_a_record_warns_once(store: ResultStore) -> None:
    store.save("k", "value", task_name="demo.orphan")
    stream = store._cache.get(P("k"))
    store._cache.delete(M("k"))
    store._cache.set(P("k"), flip(stream, len(stream) // 2))
    warning = "unknown task.*authentication code.*failed verification"
    with pytest.warns(NbflowWarning, match=warning), pytest.raises(CacheMiss):
        store.load("k")
    assert store._cache.get(P("k")) is None  # removed: the next load is a quiet miss
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        with pytest.raises(CacheMiss):
            store.load("k")


def test_entry_written_with_another_users_secret(tmp_path: Path, secret_file: Path) -> None:
    home = tmp_path / "shared"
    ResultStore(home, size_limit=1 << 30, secret_file=secret_file).close()
    alices_key_id = (home / "store" / "key-id").read_bytes()
    mallory = ResultStore(home, size_limit=1 << 30, secret_file=tmp_path / "mallory" / "secret.key")
    mallory.save("k", "planted", task_name="demo.shared")
    mallory.save("arr", np.ones(100_000), task_name="demo.shared")
    mallory.close()
    (home / "store" / "key-id").write_bytes(alices_key_id)  # copied back, so that nothing looks changed

    alice = ResultStore(home, size_limit=1 << 30, secret_file=secret_file)
    assert_rejected(alice, "k", "demo.shared")
    assert_rejected(alice, "arr", "demo.shared")


def test_a_lost_key_gives_one_warning_for_the_store_not_one_per_entry(tmp_path: Path, secret_file: Path) -> None:
    store = ResultStore(tmp_path / "home", size_limit=1 << 30, secret_file=secret_file)
    for n in range(20):
        store.save(f"k{n}", np.full(1000, n), task_name="demo.lost")
    store.close()
    secret_file.unlink()  # lost: a new key is made
    with pytest.warns(NbflowWarning) as caught:
        store = ResultStore(tmp_path / "home", size_limit=1 << 30, secret_file=secret_file)
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 1 and "not the key" in messages[0] and str(secret_file) in messages[0], messages
    assert len(list(store.records())) == 20  # nothing removed on opening: another key file may just be set here
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        for n in range(20):
            with pytest.raises(CacheMiss):
                store.load(f"k{n}")  # quietly: said once already
        assert list(store.records()) == []  # removed as they were met
        store.save("k0", "new", task_name="demo.lost")
        assert store.load("k0") == "new"
    store.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        ResultStore(tmp_path / "home", size_limit=1 << 30, secret_file=secret_file).close()  # the key owns it now


def test_strict_buffers(tmp_path: Path, secret_file: Path) -> None:
    home = tmp_path / "home"
    strict = ResultStore(home, size_limit=1 << 30, secret_file=secret_file, strict_buffers=True)
    record = strict.save("k", np.arange(100_000), task_name="demo.strict")
    assert record.buffers[0][1].startswith("b2k:")
    np.testing.assert_array_equal(strict.load("k"), np.arange(100_000))

    # A non-strict store still verifies (and accepts) keyed checksums.
    relaxed = ResultStore(home, size_limit=1 << 30, secret_file=secret_file)
    np.testing.assert_array_equal(relaxed.load("k"), np.arange(100_000))

    # Entries with plain checksums are misses in strict mode (without a warning: nothing is corrupt).
    relaxed.save("plain", np.arange(100_000), task_name="demo.plain")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        with pytest.raises(CacheMiss):
            strict.load("plain")

    (blob,) = [path for path in blob_files(strict) if path.name.startswith("k-")]
    blob.write_bytes(flip(blob.read_bytes(), 100))
    assert_rejected(strict, "k", "demo.strict")


# -- the secret key file ---------------------------------------------------------------------------


def test_secret_file_creation(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "secret.key"
    key = load_or_create_secret(path)
    assert len(key) == 32 and path.read_bytes() == key
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert load_or_create_secret(path) == key
    assert [entry.name for entry in path.parent.iterdir()] == ["secret.key"]  # no temporary files left


def test_damaged_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_bytes(b"short")
    os.chmod(path, 0o600)
    long_ago = time.time() - 3600
    os.utime(path, (long_ago, long_ago))
    with pytest.raises(ConfigurationError, match=r"damaged.*delete it"):
        load_or_create_secret(path)


def test_readable_secret_file_warns(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    key = load_or_create_secret(path)
    os.chmod(path, 0o644)
    with pytest.warns(NbflowWarning, match="chmod 600"):
        assert load_or_create_secret(path) == key


def _create_secret(path: str) -> bytes:
    return load_or_create_secret(Path(path))


def test_concurrent_secret_creation(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "race" / "secret.key"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        keys = pool.map(_create_secret, [str(path)] * 16)
    assert len(set(keys)) == 1 and keys[0] == path.read_bytes()


# -- permissions of the store and the key ------------------------------------------------------------


def test_directories_and_secret_are_private(store: ResultStore, secret_file: Path) -> None:
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert secret_file.parent.stat().st_mode & 0o777 == 0o700
    assert len(secret_file.read_bytes()) == 32
    assert store.home.stat().st_mode & 0o777 == 0o700
    assert store.directory.stat().st_mode & 0o777 == 0o700
    store.save("k", np.ones(20_000), task_name="t")
    (blob,) = blob_files(store)
    assert blob.stat().st_mode & 0o077 == 0
    assert blob.parent.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o703])
@pytest.mark.parametrize("where", ["store", "store/blobs"])
def test_a_store_directory_others_can_write_to_warns(tmp_path: Path, secret_file: Path, mode: int,
                                                     where: str) -> None:
    home = tmp_path / "home"
    ResultStore(home, size_limit=1 << 20, secret_file=secret_file).close()
    os.chmod(home / where, mode)
    with pytest.warns(NbflowWarning) as caught:
        ResultStore(home, size_limit=1 << 20, secret_file=secret_file).close()
    assert len(caught) == 1
    message = str(caught[0].message)
    assert str(home / where) in message and "chmod 700" in message
    os.chmod(home / where, 0o700)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        ResultStore(home, size_limit=1 << 20, secret_file=secret_file).close()


def test_the_engine_creates_home_and_key_private(nbflow_home: Path) -> None:
    assert make(0) is not None
    secret = Path(os.environ["NBFLOW_SECRET_FILE"])
    assert secret.stat().st_mode & 0o777 == 0o600
    assert nbflow_home.stat().st_mode & 0o777 == 0o700
    assert (nbflow_home / "store").stat().st_mode & 0o777 == 0o700


# -- through the engine: a tampered entry is a miss, the task runs again and stores a good entry -----


@nbflow.task
def make(n: int) -> dict[str, Any]:
    return {"n": n, "data": np.arange(100_000) + n}


def entry_key(n: int) -> str:
    """The cache key of ``make(n)``, as recorded by its latest run."""
    state = make(n, return_state=True)
    assert state.is_completed()
    from nbflow.engine.runtime import session_run

    key = session_run().task_runs[-1].cache_key
    assert key is not None
    return key


def copy_entry(source: ResultStore, target: ResultStore, key: str) -> None:
    """Copy one entry, record, stream and buffer files, from one store into another."""
    record = source.probe(key)
    assert record is not None
    target._cache.set(M(key), source._cache.get(M(key)))
    target._cache.set(P(key), source._cache.get(P(key)))
    for index in range(len(record.buffers)):
        path = Path(target._files.path(key, record.blob_id, index))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(Path(source._files.path(key, record.blob_id, index)).read_bytes())


@pytest.mark.parametrize("tampering", ["flip-stream", "flip-buffer", "swap", "code", "foreign"])
def test_a_tampered_entry_warns_once_and_the_task_runs_again(tmp_path: Path, tampering: str) -> None:
    from nbflow.engine.runtime import get_store

    store = get_store()
    key = entry_key(1)
    record = store.probe(key)
    assert record is not None and record.buffers
    marker = tmp_path / "pwned"
    if tampering == "flip-stream":
        stream = store._cache.get(P(key))
        store._cache.set(P(key), flip(stream, len(stream) // 2))
    elif tampering == "flip-buffer":
        blob = Path(store._files.path(key, record.blob_id, 0))
        blob.write_bytes(flip(blob.read_bytes(), 12345))
    elif tampering == "swap":
        other = entry_key(2)
        stream, other_stream = store._cache.get(P(key)), store._cache.get(P(other))
        # Authentic payloads, each signed for the other key.
        store._cache.set(P(key), other_stream)
        store._cache.set(P(other), stream)
    elif tampering == "code":
        evil = pickle.dumps(Exploit(marker), protocol=5)
        store._cache.set(P(key), evil)
        raw = json.loads(store._cache.get(M(key)))
        # Sizes made consistent with the planted stream, so that only the MAC can tell.
        raw["size"] += len(evil) - raw["stream_size"]
        raw["stream_size"] = len(evil)
        store._cache.set(M(key), json.dumps(raw))
    else:
        # The same task run by another user, whose entry is copied in: same key, other secret.
        other_user = ResultStore(tmp_path / "other", size_limit=1 << 30, secret_file=tmp_path / "other.key")
        other_user.save(key, {"n": 1, "data": np.zeros(100_000)}, task_name="make")
        store.delete(key)
        copy_entry(other_user, store, key)
        other_user.close()

    with pytest.warns(NbflowWarning) as caught:
        state = make(1, return_state=True)
    messages = [str(warning.message) for warning in caught if issubclass(warning.category, NbflowWarning)]
    assert len(messages) == 1, messages
    assert "'make'" in messages[0] and "failed verification" in messages[0]
    assert state.name == "Completed" and state.persisted  # computed again, not served from the bad entry
    np.testing.assert_array_equal(state.result()["data"], np.arange(100_000) + 1)
    assert not marker.exists()

    # The bad entry is gone, replaced by a good one: the next call is a hit, and no stray files remain.
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        again = make(1, return_state=True)
    assert again.name == "Cached"
    np.testing.assert_array_equal(again.result()["data"], np.arange(100_000) + 1)
    referenced = {
        Path(store._files.path(r.key, r.blob_id, i)) for r in store.records() for i in range(len(r.buffers))
    }
    assert set(blob_files(store)) == referenced
