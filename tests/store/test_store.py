"""ResultStore: round trips, probing, expiry, eviction, errors and the on-disk layout."""

from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import os
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydantic
import pytest

import nbflow.store.store as store_module
from nbflow.exceptions import (
    ConfigurationError,
    NbflowError,
    NbflowWarning,
    PersistError,
    SerializationError,
)
from nbflow.settings import Settings
from nbflow.store import FORMAT_VERSION, CacheMiss, Record, ResultStore, eviction, sealing, serializers, sql
from nbflow.store.eviction import flush_touches
from tests.store.helpers import blob_files


class Point(pydantic.BaseModel):
    x: int
    y: float
    label: str
    when: datetime.datetime


@dataclasses.dataclass
class Box:
    width: int
    tags: list[str]


# -- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        0,
        -(2**70),
        3.5,
        "text with ünicode",
        b"raw bytes",
        None,
        {"a": 1, "b": [1, 2, 3]},
        {"nested": {"list": [1, {"deep": (1, 2)}], "set": {1, 2}}, "none": None},
        [Box(3, ["x"]), Box(4, [])],
    ],
)
def test_round_trip_plain_values(store: ResultStore, value: Any) -> None:
    record = store.save("k", value, task_name="demo.task")
    assert store.load("k") == value
    assert store.load("k", record) == value
    assert store.load("k", store.probe("k")) == value
    assert record.stream_size == record.size and record.buffers == [] and record.blob_id == ""
    assert blob_files(store) == []


def test_large_array_goes_out_of_band(store: ResultStore) -> None:
    array = np.random.default_rng(1).random(50 * 2**20 // 8)  # 50 MB
    record = store.save("big", array, task_name="demo.big")

    assert len(record.buffers) == 1
    assert record.buffers[0][0] == array.nbytes
    assert record.stream_size < 1024  # the stream holds no array data
    assert record.size == record.stream_size + array.nbytes
    (blob,) = blob_files(store)
    assert blob.stat().st_size == array.nbytes
    assert blob.parent.parent == store.directory / "blobs"
    assert blob.name == f"big-{record.blob_id}-0.bin"

    loaded = store.load("big")
    assert isinstance(loaded, np.ndarray)
    np.testing.assert_array_equal(loaded, array)
    loaded[0] = -1.0  # arrays come back writable, like np.load's
    assert store.load("big")[0] == array[0]


def test_small_buffers_stay_in_band(store: ResultStore) -> None:
    small = np.arange(1000)  # 8 kB < 64 KiB
    record = store.save("small", small, task_name="t")
    assert record.buffers == []
    np.testing.assert_array_equal(store.load("small"), small)


def test_dataframe_round_trip(store: ResultStore) -> None:
    frame = pd.DataFrame(
        {
            "a": np.arange(200_000, dtype=np.int64),
            "b": np.linspace(0, 1, 200_000),
            "c": pd.Categorical(["x", "y"] * 100_000),
            "d": ["s"] * 200_000,
        }
    )
    record = store.save("frame", frame, task_name="demo.frame")
    assert record.buffers  # the numeric blocks are out-of-band
    pd.testing.assert_frame_equal(store.load("frame"), frame)


def test_json_serializer_with_type_hint_gives_the_model(store: ResultStore) -> None:
    point = Point(x=1, y=2.5, label="p", when=datetime.datetime(2024, 5, 1, 12, 30))
    record = store.save("point", point, task_name="demo.point", serializer="json")
    assert record.serializer == "json"
    assert store.load("point", type_hint=Point) == point
    with pytest.raises(CacheMiss):
        store.load("points", type_hint=list[Point])


def test_json_serializer_without_type_hint_gives_plain_data(store: ResultStore) -> None:
    point = Point(x=1, y=2.5, label="p", when=datetime.datetime(2024, 5, 1, 12, 30))
    store.save("point", point, task_name="demo.point", serializer="json")
    assert store.load("point") == {"x": 1, "y": 2.5, "label": "p", "when": "2024-05-01T12:30:00"}
    assert store.load("point", type_hint=Any) == store.load("point")

    store.save("box", Box(2, ["a"]), task_name="t", serializer=serializers.JsonSerializer())
    assert store.load("box") == {"width": 2, "tags": ["a"]}
    assert store.load("box", type_hint=Box) == Box(2, ["a"])


def test_json_type_hint_mismatch_is_a_miss_with_warning(store: ResultStore) -> None:
    store.save("k", {"x": "not a number"}, task_name="demo.json", serializer="json")
    with pytest.warns(NbflowWarning, match="demo.json.*could not be deserialized"), pytest.raises(CacheMiss):
        store.load("k", type_hint=Point)
    assert store.probe("k") is None


def test_custom_serializer(store: ResultStore) -> None:
    class Reversed:
        name = "reversed-text"

        def dumps(self, value: Any) -> tuple[bytes, list[memoryview]]:
            return value[::-1].encode(), []

        def loads(self, stream: bytes, buffers: list[Any], type_hint: Any = None) -> Any:
            return stream.decode()[::-1]

    record = store.save("k", "hello", task_name="t", serializer=Reversed())
    assert record.serializer == "reversed-text"
    assert store.load("k") == "hello"  # registered by save, for this process
    assert "reversed-text" in serializers.known_serializers()


def test_unknown_serializer_name(store: ResultStore) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown serializer 'yaml'.*'json'.*'pickle'"):
        store.save("k", 1, task_name="t", serializer="yaml")
    with pytest.raises(ConfigurationError, match="unknown serializer"):
        serializers.get_serializer("yaml")
    with pytest.raises(ConfigurationError, match="not a serializer"):
        serializers.get_serializer(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="reserved"):
        serializers.register_serializer(
            type("Fake", (), {"name": "pickle", "dumps": lambda s, v: (b"", []), "loads": lambda s, *a: 0})()
        )


def test_entry_of_an_unregistered_serializer_is_a_miss_but_kept(store: ResultStore) -> None:
    class Custom:
        name = "custom-unregistered"

        def dumps(self, value: Any) -> tuple[bytes, list[memoryview]]:
            return b"x", []

        def loads(self, stream: bytes, buffers: list[Any], type_hint: Any = None) -> Any:
            return "x"

    store.save("k", "x", task_name="demo.custom", serializer=Custom())
    del serializers._registry["custom-unregistered"]  # as in a fresh process that did not register it
    with pytest.warns(NbflowWarning, match="not registered"), pytest.raises(CacheMiss):
        store.load("k")
    assert store.probe("k") is not None
    serializers.register_serializer(Custom())
    assert store.load("k") == "x"


# -- probe, records, metadata ----------------------------------------------------------------------


def test_probe_returns_the_saved_record(store: ResultStore) -> None:
    assert store.probe("missing") is None
    record = store.save("k", [1, 2], task_name="demo.task", run_id="run-7")
    probed = store.probe("k")
    assert probed == record
    assert probed is not None
    assert (probed.task_name, probed.run_id, probed.serializer) == ("demo.task", "run-7", "pickle")
    assert probed.format_version == FORMAT_VERSION
    assert abs(probed.created - time.time()) < 60 and probed.last_used == probed.created
    assert len(probed.mac) == 64


def test_probe_and_records_never_read_payloads(store: ResultStore) -> None:
    array = np.ones(100_000)  # 800 kB: one blob
    store.save("a", array, task_name="demo.a")
    store.save("b", 5, task_name="demo.b")
    for path in blob_files(store):
        path.unlink()
    store._cache.delete(f"{FORMAT_VERSION}:a:p")
    store._cache.delete(f"{FORMAT_VERSION}:b:p")

    assert store.probe("a") is not None
    assert store.probe("b") is not None
    assert sorted(record.key for record in store.records()) == ["a", "b"]

    with pytest.warns(NbflowWarning) as caught, pytest.raises(CacheMiss):
        store.load("a")
    assert len(caught) == 1
    assert "demo.a" in str(caught[0].message) and "failed verification" in str(caught[0].message)
    assert "cache miss" in str(caught[0].message)
    assert store.probe("a") is None

    with pytest.warns(NbflowWarning, match="demo.b"), pytest.raises(CacheMiss):
        store.load("b", store.probe("b"))
    assert list(store.records()) == []


def test_missing_key_is_a_quiet_miss(store: ResultStore) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        with pytest.raises(CacheMiss) as caught:
            store.load("nothing")
    assert caught.value.key == "nothing"
    assert not issubclass(CacheMiss, NbflowError)


def test_record_json_round_trip(store: ResultStore) -> None:
    store.save("big", np.ones(20_000), task_name="t", run_id="r", expires=time.time() + 100)
    record = store.probe("big")
    assert record is not None and record.buffers
    assert Record.from_json(record.to_json()) == record
    assert Record.from_dict(record.to_dict()) == record
    with pytest.raises(ValueError):
        Record.from_json('{"key": "x"}')
    with pytest.raises(ValueError):
        Record.from_json("[1, 2]")


def test_overwrite_replaces_and_cleans_old_blobs(store: ResultStore) -> None:
    store.save("k", np.zeros(20_000), task_name="t")
    first_blobs = blob_files(store)
    store.save("k", np.ones(30_000), task_name="t")
    second_blobs = blob_files(store)
    assert len(first_blobs) == len(second_blobs) == 1 and first_blobs != second_blobs
    np.testing.assert_array_equal(store.load("k"), np.ones(30_000))
    store.save("k", "now small", task_name="t")
    assert blob_files(store) == []
    assert store.load("k") == "now small"


def test_load_with_a_stale_record_follows_the_new_entry(store: ResultStore) -> None:
    store.save("k", np.zeros(20_000), task_name="t")
    stale = store.probe("k")
    store.save("k", np.full(20_000, 7.0), task_name="t")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        np.testing.assert_array_equal(store.load("k", stale), np.full(20_000, 7.0))


def test_delete_and_clear(store: ResultStore) -> None:
    store.save("a", np.ones(20_000), task_name="t")
    store.save("b", 2, task_name="t")
    assert store.delete("a") is True
    assert store.delete("a") is False
    assert blob_files(store) == []
    assert store.probe("a") is None and store.load("b") == 2
    store.save("c", np.ones(20_000), task_name="t")
    assert store.clear() == 2
    assert list(store.records()) == [] and blob_files(store) == [] and store.volume() == 0


def test_keys_that_are_not_file_names(store: ResultStore) -> None:
    for key in ["a/b/../c", "x" * 500, "spaces and: colons", "ключ", "../../etc/passwd"]:
        store.save(key, np.full(10_000, 3.0), task_name="t")
        np.testing.assert_array_equal(store.load(key), np.full(10_000, 3.0))
    for path in blob_files(store):
        assert path.parent.parent == store.directory / "blobs"
    with pytest.raises(ValueError):
        store.save("", 1, task_name="t")


# -- hits are read-only ----------------------------------------------------------------------------


def test_a_hit_does_not_write(store: ResultStore) -> None:
    store.save("k", 1, task_name="t")
    raw = store._cache.get(f"{FORMAT_VERSION}:k:m")
    for _ in range(5):
        store.load("k", store.probe("k"))
    assert store._cache.get(f"{FORMAT_VERSION}:k:m") == raw


def test_last_used_and_hits_are_updated_after_the_interval(store: ResultStore) -> None:
    saved = store.save("k", 1, task_name="t")
    store.load("k")
    store.load("k")
    store.touch_interval = 0.0
    store.load("k")
    # The new last_used time is batched with others (a hit stays read-only), written before this
    # process prunes, when enough are due, a few seconds later, or at close().
    raw = store._cache.get(f"{FORMAT_VERSION}:k:m")
    assert store.probe("k").hits == 0  # type: ignore[union-attr]
    flush_touches(store)
    assert store._cache.get(f"{FORMAT_VERSION}:k:m") != raw
    record = store.probe("k")
    assert record is not None
    assert record.hits == 3 and record.last_used > saved.last_used
    assert record.mac == saved.mac  # the MAC does not cover the LRU bookkeeping
    assert store.load("k") == 1


@pytest.mark.parametrize("in_sqlite", [True, False], ids=["sqlite-json", "python"])
def test_a_touch_updates_only_the_bookkeeping_of_the_entry_that_was_read(store: ResultStore, in_sqlite: bool) -> None:
    # Touches rewrite the record inside SQLite (JSON functions) where it can, in Python otherwise: both leave
    # every other field as it was, and neither touches an entry saved again since the hit.
    store._json_touches = in_sqlite
    saved = {key: store.save(key, key, task_name="t", run_id="r") for key in "ab"}
    store.touch_interval = 0.0
    store.load("a")
    store.load("b")
    replaced = store.save("b", "new", task_name="t")  # after the hit, before its touch is written
    touched_at = store._pending_touches["a"][1]
    flush_touches(store)
    record = store.probe("a")
    assert record is not None and record.hits == 1
    assert record.last_used == touched_at  # exactly: not rounded on the way
    assert {**record.to_dict(), "hits": 0, "last_used": 0} == {**saved["a"].to_dict(), "last_used": 0}
    assert store.probe("b") == replaced  # the hit was on the entry it replaced
    store.touch_interval = 3600.0
    assert store.load("a") == "a" and store.load("b") == "new"
    # Hit counts alone (written at close) leave last_used exactly as it was.
    store.close()
    record = store.probe("a")
    assert record is not None and record.hits == 2 and record.last_used == touched_at


def test_due_touches_are_written_in_batches(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setattr(eviction, "TOUCH_BATCH", 3)
    for key in "abc":
        store.save(key, key, task_name="t")
    store.touch_interval = 0.0
    store.load("a")
    store.load("b")
    assert [store.probe(key).hits for key in "ab"] == [0, 0]  # type: ignore[union-attr]
    store.load("c")  # the third due touch writes all three in one transaction
    assert [store.probe(key).hits for key in "abc"] == [1, 1, 1]  # type: ignore[union-attr]


def test_a_touch_is_seen_by_other_processes(tmp_path: Path, secret_file: Path) -> None:
    # A hit decides whether a touch is due from the entry's rows alone, so once one process has
    # refreshed last_used, hits in another process (a restarted kernel) stay read-only.
    home = tmp_path / "home"
    first = ResultStore(home, size_limit=1 << 30, secret_file=secret_file)
    first.save("k", 1, task_name="t")
    time.sleep(1.0)
    first.touch_interval = 0.5
    assert first.load("k") == 1
    first.close()  # writes the touch
    record = first.probe("k")
    assert record is not None and record.hits == 1
    touched = first._cache.get(f"{FORMAT_VERSION}:k:m")

    second = ResultStore(home, size_limit=1 << 30, secret_file=secret_file)
    second.touch_interval = 0.8  # the save is older than that, the touch is not
    for _ in range(3):
        assert second.load("k") == 1
    flush_touches(second)  # nothing due: the record is not rewritten
    assert second._cache.get(f"{FORMAT_VERSION}:k:m") == touched
    time.sleep(0.2)
    second.touch_interval = 0.1  # now it is due again
    assert second.load("k") == 1
    flush_touches(second)
    record = second.probe("k")
    assert record is not None and record.last_used > json.loads(touched)["last_used"]
    second.close()


def test_pending_hits_are_written_on_close(store: ResultStore) -> None:
    store.save("k", 1, task_name="t")
    store.load("k")
    store.load("k")
    store.close()
    record = store.probe("k")
    assert record is not None and record.hits == 2


# -- expiry ----------------------------------------------------------------------------------------


def test_expired_entries_are_misses_and_deleted(store: ResultStore) -> None:
    store.save("old", np.ones(20_000), task_name="t", expires=time.time() - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        assert store.probe("old") is None
        with pytest.raises(CacheMiss):
            store.load("old")
    assert blob_files(store) == []
    assert store.volume() == 0


def test_expiry_between_probe_and_load(store: ResultStore) -> None:
    store.save("soon", 1, task_name="t", expires=time.time() + 0.3)
    record = store.probe("soon")
    assert record is not None and store.load("soon", record) == 1
    time.sleep(0.4)
    with pytest.raises(CacheMiss):
        store.load("soon", record)
    assert store.probe("soon") is None


# -- errors ----------------------------------------------------------------------------------------


def _generator() -> Iterator[int]:
    yield 1


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(lambda: 1, "function"), (_generator(), "generator"), ({"a": np.ones(100_000), "f": lambda: 1}, "dict")],
)
def test_unserializable_value(store: ResultStore, value: Any, type_name: str) -> None:
    with pytest.raises(SerializationError) as caught:
        store.save("k", value, task_name="demo.bad")
    message = str(caught.value)
    assert "demo.bad" in message and type_name in message
    assert "persist_result=False" in message and "result_serializer='json'" in message
    assert store.probe("k") is None
    assert list(store.records()) == [] and blob_files(store) == [] and store.volume() == 0


def test_unserializable_as_json(store: ResultStore) -> None:
    with pytest.raises(SerializationError, match=r"demo\.bad.*object.*JSON"):
        store.save("k", object(), task_name="demo.bad", serializer="json")
    assert store.probe("k") is None


def test_disk_full_while_writing_a_blob(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.save("k", np.zeros(20_000), task_name="demo.write")
    before = blob_files(store)

    def no_space(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(PersistError) as caught:
        store.save("k", np.ones(40_000), task_name="demo.write")
    assert caught.value.errno == errno.ENOSPC
    assert isinstance(caught.value, OSError)
    assert "demo.write" in str(caught.value) and "not persisted" in str(caught.value)
    assert "No space left" in str(caught.value)
    with pytest.raises(PersistError):
        store.save("new", np.ones(40_000), task_name="demo.write")
    monkeypatch.undo()

    # Nothing of the failed writes is left (no temporary files either); the old entry is intact.
    assert blob_files(store) == before
    np.testing.assert_array_equal(store.load("k"), np.zeros(20_000))
    assert store.probe("new") is None


def test_failed_commit_leaves_nothing(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sql, "commit", full)
    with pytest.raises(PersistError, match=r"demo\.commit.*not persisted.*disk is full"):
        store.save("k", np.ones(40_000), task_name="demo.commit")
    monkeypatch.undo()
    assert store.probe("k") is None and blob_files(store) == []


# -- eviction --------------------------------------------------------------------------------------

ENTRY = 100_000  # payload bytes of one entry in the eviction tests


def entry(tag: int) -> bytes:
    return bytes([tag]) * ENTRY


def test_prune_evicts_least_recently_used(store: ResultStore) -> None:
    for name in "abcde":
        store.save(name, entry(ord(name)), task_name="t")
    store.touch_interval = 0.0
    store.load("a")  # "a" becomes the most recently used
    store.size_limit = 2 * ENTRY + 100
    assert store.prune() == 3
    assert sorted(record.key for record in store.records()) == ["a", "e"]
    assert store.load("a") == entry(ord("a"))
    assert store.volume() <= store.size_limit
    assert store.volume() == sum(record.size for record in store.records())


def test_save_evicts_but_never_the_new_or_touched_entry(tmp_path: Path, secret_file: Path) -> None:
    # Room for three and a half entries (a save that overflows prunes down to 90% of the limit).
    store = ResultStore(tmp_path / "home", size_limit=3 * ENTRY + ENTRY // 2, secret_file=secret_file)
    store.touch_interval = 0.0
    store.save("a", entry(1), task_name="t")
    store.save("b", entry(2), task_name="t")
    store.save("c", entry(3), task_name="t")
    store.load("a")
    store.save("d", entry(4), task_name="t")  # over the limit: "b" is the least recently used
    assert sorted(record.key for record in store.records()) == ["a", "c", "d"]
    store.size_limit = 10  # smaller than any entry: the one being saved still stays
    store.save("e", entry(5), task_name="t")
    assert [record.key for record in store.records()] == ["e"]
    assert store.load("e") == entry(5)


def test_prune_removes_expired_first(store: ResultStore) -> None:
    store.save("gone", 1, task_name="t", expires=time.time() - 1)
    store.save("kept", 2, task_name="t", expires=time.time() + 100)
    assert store.prune() == 1
    assert [record.key for record in store.records()] == ["kept"]


def test_volume_tracks_saves_and_deletes(store: ResultStore) -> None:
    assert store.volume() == 0
    first = store.save("a", np.ones(20_000), task_name="t")
    second = store.save("b", "x", task_name="t")
    assert store.volume() == first.size + second.size
    third = store.save("a", "smaller now", task_name="t")
    assert store.volume() == third.size + second.size
    store.delete("b")
    assert store.volume() == third.size
    # The total is diskcache's, kept by its triggers in the same transactions as the rows: it holds across
    # both ways of writing; a total that drifted anyway (a row written by hand) is set right by prune().
    store._fast_writes = False
    fourth = store.save("b", "via diskcache's API", task_name="t")
    store.touch_interval = 0.0
    assert store.load("b") == "via diskcache's API"
    flush_touches(store)  # a touch through diskcache's API rewrites the record row too
    assert store.probe("b").hits == 1  # type: ignore[union-attr]
    assert store.volume() == third.size + fourth.size
    store._cache._sql("UPDATE Settings SET value = 123456789 WHERE key = 'size'")  # drifted
    store.prune()
    assert store.volume() == third.size + fourth.size


def test_direct_writes_match_diskcache_own(store: ResultStore) -> None:
    # Saves write diskcache's table directly; what they write must read back through diskcache's own API
    # exactly as if it had written it, and entries written through that API (the fallback) must load.
    cache = store._cache
    store.save("fast", {"n": 1}, task_name="t")
    store._fast_writes = False
    store.save("public", {"n": 2}, task_name="t")
    store.save("fast", {"n": 3}, task_name="t")  # the public API replacing a directly written entry
    store._fast_writes = True
    store.save("public", {"n": 4}, task_name="t")  # and the other way round
    store.save("new", np.ones(20_000), task_name="t")
    assert [store.load(key) for key in ("fast", "public")] == [{"n": 3}, {"n": 4}]
    for key in ("fast", "public", "new"):
        assert cache.get(f"{FORMAT_VERSION}:{key}:p")[:4] == sealing.MAGIC
        assert Record.from_json(cache.get(f"{FORMAT_VERSION}:{key}:m")) == store.probe(key)
    (rows,) = cache._sql("SELECT COUNT(*) FROM Cache").fetchone()
    assert len(cache) == rows == 6  # diskcache's row count (kept by its triggers) is right
    assert store.volume() == sum(record.size for record in store.records())
    assert store.prune() == 0 and store.delete("fast") and store.delete("new")
    assert len(cache) == 2 and store.volume() == store.probe("public").size  # type: ignore[union-attr]


def test_a_diskcache_of_another_layout_is_used_through_its_api(store: ResultStore) -> None:
    # What the store does when diskcache's table is not what its direct SQL expects: the same entries,
    # the same verification, through diskcache's public API only.
    store._fast_reads = store._fast_writes = False
    store.save("k", {"n": 1}, task_name="demo.api")
    store.save("a", np.arange(20_000), task_name="demo.api")
    assert store.load("k") == {"n": 1}
    np.testing.assert_array_equal(store.load("a"), np.arange(20_000))
    store.touch_interval = 0.0
    store.load("k")
    store.close()
    assert store.probe("k").hits == 2  # type: ignore[union-attr]
    assert store.volume() == sum(record.size for record in store.records())
    stream = store._cache.get(f"{FORMAT_VERSION}:k:p")
    store._cache.set(f"{FORMAT_VERSION}:k:p", stream[:-1] + bytes([stream[-1] ^ 1]))
    with pytest.warns(NbflowWarning, match="demo.api.*failed verification"), pytest.raises(CacheMiss):
        store.load("k")
    assert store.probe("k") is None
    with pytest.raises(CacheMiss):
        store.load("missing")


def test_an_interrupted_direct_commit_leaves_the_old_entry(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save("k", "old", task_name="t")
    volume = store.volume()

    def interrupted(self: Record) -> str:
        raise KeyboardInterrupt  # inside the transaction, between reading the old record and writing

    monkeypatch.setattr(Record, "to_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.save("k", "new", task_name="t")
    monkeypatch.undo()
    assert store.load("k") == "old" and store.volume() == volume
    store.save("k", "new", task_name="t")  # the connection is usable again: no transaction left open
    assert store.load("k") == "new"


def test_prune_collects_orphans(store: ResultStore) -> None:
    store.save("live", np.ones(20_000), task_name="t")
    live_blobs = blob_files(store)
    shard = store.directory / "blobs" / "or"
    shard.mkdir()
    old_orphan = shard / "orphan-0123456789abcdef-0.bin"
    old_temporary = shard / ".orphan-0123456789abcdef-0.bin.abcd.tmp"
    young_orphan = shard / "orphan-fedcba9876543210-0.bin"
    for path in (old_orphan, old_temporary, young_orphan):
        path.write_bytes(b"x" * 10)
    an_hour_ago = time.time() - 3600
    os.utime(old_orphan, (an_hour_ago, an_hour_ago))
    os.utime(old_temporary, (an_hour_ago, an_hour_ago))
    store._cache.set(f"{FORMAT_VERSION}:stray:p", b"payload without record")
    store._cache.set(f"{FORMAT_VERSION}:broken:m", "{not json")
    store.save("edited", 1, task_name="t")
    edited = json.loads(store._cache.get(f"{FORMAT_VERSION}:edited:m"))
    store._cache.set(f"{FORMAT_VERSION}:edited:m", json.dumps({**edited, "size": "5"}))  # not a byte count

    assert store.prune() == 2  # the unreadable record and the edited one (no TypeError adding sizes up)
    assert sorted(blob_files(store)) == sorted([*live_blobs, young_orphan])
    assert store._cache.get(f"{FORMAT_VERSION}:stray:p") is None
    assert store._cache.get(f"{FORMAT_VERSION}:broken:m") is None
    assert store.probe("edited") is None
    np.testing.assert_array_equal(store.load("live"), np.ones(20_000))


# -- format version --------------------------------------------------------------------------------


def test_other_format_versions_are_invisible(
    tmp_path: Path, secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setattr(store_module, "FORMAT_VERSION", FORMAT_VERSION + 1)
    future = ResultStore(home, size_limit=1 << 30, secret_file=secret_file)
    future.save("k", "from the future", task_name="t")
    assert future.load("k") == "from the future"
    future.close()
    monkeypatch.undo()

    current = ResultStore(home, size_limit=1 << 30, secret_file=secret_file)
    assert current.probe("k") is None
    assert list(current.records()) == []
    with pytest.raises(CacheMiss):
        current.load("k")
    current.save("k", "current", task_name="t")
    assert current.load("k") == "current"
    assert current.prune() == 1  # the other version's entry
    assert current.load("k") == "current"


# -- configuration, layout, permissions ------------------------------------------------------------


def test_from_settings(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "h", size_limit="1MiB", secret_file=tmp_path / "s.key", strict_buffers=True
    )
    store = ResultStore.from_settings(settings)
    assert store.home == tmp_path / "h" and store.size_limit == 2**20 and store.strict_buffers
    store.save("k", 1, task_name="t")
    assert store.load("k") == 1


def test_secret_is_reused(tmp_path: Path, secret_file: Path) -> None:
    first = ResultStore(tmp_path / "one", size_limit=1 << 20, secret_file=secret_file)
    key = secret_file.read_bytes()
    second = ResultStore(tmp_path / "two", size_limit=1 << 20, secret_file=secret_file)
    assert secret_file.read_bytes() == key
    assert first._secret == second._secret == key


def test_import_is_cheap() -> None:
    code = "import sys, nbflow.store; print('diskcache' in sys.modules, 'numpy' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert output.stdout.split()[0] == "False"


def test_signed_bytes_is_canonical_json() -> None:
    from nbflow.store.record import SIGNED_FIELDS

    for record in [
        Record("k", "t", None, 1.5, None, 1.5, 5, "pickle", 1, [], 5, "m" * 64),
        Record("ключ\n", 'task "q"', "run", 1795265149.2176783, 1e-07, 2.0, 10**12, "json", 1,
               [(70_000, "xxh3:ab"), (80_000, "b2k:cd")], 3, "m", 4, "0123456789abcdef"),
    ]:
        values = [getattr(record, name) for name in SIGNED_FIELDS]
        expected = json.dumps(values, separators=(",", ":"), ensure_ascii=True).encode()
        assert record.signed_bytes() == expected
    # A changed type changes the encoding (so the MAC), even when the value "looks" the same.
    base = Record("k", "t", None, 1.0, None, 1.0, 5, "pickle", 1, [], 5, "m")
    for changed in [
        dataclasses.replace(base, size="5"),  # type: ignore[arg-type]
        dataclasses.replace(base, created=1),
        dataclasses.replace(base, size=True),  # type: ignore[arg-type]
    ]:
        assert changed.signed_bytes() != base.signed_bytes()


def test_record_json_is_what_the_json_module_writes() -> None:
    # Records are written by hand for speed; SQLite's JSON functions (touches) and the CLI read them.
    base = Record("k", "t", None, 1.5, None, 1.5, 5, "pickle", 1, [], 5, "m" * 64)
    for record in [
        base,
        Record("ключ\n", 'task "q" \\ ✓', "run", 1795265149.2176783, 1e-07, 2.0, 10**30, "json", 4,
               [(70_000, "xxh3:ab"), (80_000, "b2k:cd")], 3, "m", 4, "0123456789abcdef"),
        # Odd types from an edited or foreign record: still exactly what the json module writes.
        dataclasses.replace(base, created=1),
        dataclasses.replace(base, size=True),  # type: ignore[arg-type]
        dataclasses.replace(base, hits=2.5),  # type: ignore[arg-type]
    ]:
        expected = json.dumps(record.to_dict(), separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        assert record.to_json() == expected
        assert Record.from_json(record.to_json()) == record
    with pytest.raises(ValueError):
        dataclasses.replace(base, expires=float("nan")).to_json()


def test_hit_bookkeeping_stays_bounded_over_many_distinct_keys(store: ResultStore,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # A long kernel hits many keys once each: their counts are written as they pile up (none is lost), and
    # the times of past touches are thinned out once they mean nothing.
    monkeypatch.setattr(eviction, "PENDING_HITS_MAX", 50)
    monkeypatch.setattr(eviction, "TOUCHED_MAX", 40)
    for index in range(120):
        store.save(f"k{index}", index, task_name="t")
    most_pending = 0
    for index in range(120):
        assert store.load(f"k{index}") == index
        most_pending = max(most_pending, len(store._pending_hits))
    assert most_pending <= 50
    assert store.load("k0") == 0  # a second hit
    flush_touches(store, all_hits=True)
    hits = {record.key: record.hits for record in store.records()}
    assert hits["k0"] == 2 and all(hits[f"k{index}"] == 1 for index in range(1, 120))

    store.touch_interval = 0.5  # every entry is due a touch from now on
    time.sleep(0.6)
    for index in range(120):
        store.load(f"k{index}")
    assert len(store._touched) == 120  # all touched within one interval: each still stops a second touch
    time.sleep(0.6)  # now past the interval: the next touch drops them
    store.load("k0")
    store.load("k1")
    assert len(store._touched) <= 2
    store.close()
    expected = {"k0": 4, "k1": 3}
    assert all(record.hits == expected.get(record.key, 2) for record in store.records())
