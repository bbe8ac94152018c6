"""Eviction under pressure: within the limit, least recently used first, never from under a reader."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from nbflow.exceptions import NbflowWarning
from nbflow.store import CacheMiss, ResultStore
from nbflow.store.serializers import register_serializer
from tests.reliability.conftest import ROOT, workload_command
from tests.reliability.workload import KINDS, BlockingSerializer, identify, make_value

LIMIT = 1_500_000


def blob_bytes(store: ResultStore) -> int:
    return sum(path.stat().st_size for path in (store.directory / "blobs").rglob("*") if path.is_file())


def test_writing_far_more_than_the_limit_stays_within_it(tmp_path: Path, secret_file: Path) -> None:
    limit = 6_000_000  # the largest entries are 2 MB
    store = ResultStore(tmp_path / "home", size_limit=limit, secret_file=secret_file)
    written = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        for n in range(160):
            key = f"e{n}"
            written += store.save(key, make_value(key, n, KINDS[n % len(KINDS)]), task_name="evict").size
            records = list(store.records())
            assert store.volume() == sum(record.size for record in records) <= limit
            assert blob_bytes(store) <= limit
            assert identify(store.load(key), key)[1] == n  # the entry just saved is never the one evicted
    assert written > 15 * limit
    # What survived reads back exactly.
    for record in store.records():
        identify(store.load(record.key, record), record.key)
    store.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_least_recently_used_entries_go_first(tmp_path: Path, secret_file: Path, seed: int) -> None:
    """Random saves and loads, checked after every step against a model of an LRU cache."""
    store = ResultStore(tmp_path / "home", size_limit=LIMIT, secret_file=secret_file)
    store.touch_interval = 0.0  # every hit counts as a use at once
    rng = random.Random(seed)
    model: OrderedDict[str, int] = OrderedDict()  # key -> bytes on disk, least recently used first
    payloads: dict[str, int] = {}
    evictions = 0
    for step in range(150):
        if model and rng.random() < 0.45:
            key = rng.choice([*model, f"gone{step}"])
            if key in model:
                assert store.load(key) == bytes([len(key)]) * payloads[key]
                model.move_to_end(key)
            else:
                with pytest.raises(CacheMiss):
                    store.load(key)
        else:
            key = f"k{step}"
            size = rng.choice([50_000, 120_000, 300_000])
            payloads[key] = size
            model[key] = store.save(key, bytes([len(key)]) * size, task_name="lru").size
            total = sum(model.values())
            if total > LIMIT:
                while total > int(LIMIT * 0.9):
                    victim = next(k for k in model if k != key)
                    total -= model.pop(victim)
                    evictions += 1
        assert sorted(record.key for record in store.records()) == sorted(model), f"step {step}"
    assert evictions > 20
    store.close()


def test_an_entry_being_read_in_this_process_is_not_evicted(tmp_path: Path, secret_file: Path) -> None:
    store = ResultStore(tmp_path / "home", size_limit=LIMIT, secret_file=secret_file)
    started, release = tmp_path / "started", tmp_path / "release"
    register_serializer(BlockingSerializer(started, release))
    payload = np.arange(100_000, dtype=np.int64).tobytes()  # 800 kB: the only buffer of the entry
    store.save("read", payload, task_name="reader", serializer="blocking")
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(store.load("read")))
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        # "read" is now the least recently used entry, and far over the limit with the others.
        for n in range(10):
            store.save(f"other{n}", bytes([n]) * 300_000, task_name="other")
        assert store.probe("read") is not None
        assert store.prune() >= 0 and store.probe("read") is not None
    finally:
        release.touch()
        reader.join()
    assert result == [payload]
    store.size_limit = 1
    store.prune()  # no longer being read: now it goes
    assert store.probe("read") is None
    register_serializer(BlockingSerializer())
    store.close()


def test_an_entry_being_read_by_another_process_is_not_evicted(
    tmp_path: Path, secret_file: Path, child_env: dict[str, str]
) -> None:
    home = tmp_path / "home"
    store = ResultStore(home, size_limit=LIMIT, secret_file=secret_file)
    register_serializer(BlockingSerializer())
    payload = bytes(range(256)) * 4000  # 1 MB
    store.save("read", payload, task_name="reader", serializer="blocking")
    started, release = tmp_path / "started", tmp_path / "release"
    child = subprocess.Popen(
        workload_command("blocked-reader", str(home), str(secret_file), "read", str(started), str(release)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env, cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert child.poll() is None and time.monotonic() < deadline, child.stderr and child.stderr.read()
            time.sleep(0.005)
        for n in range(10):
            store.save(f"other{n}", bytes([n]) * 300_000, task_name="other")
        assert store.probe("read") is not None  # the least recently used, but being read
        assert store.volume() > LIMIT
    finally:
        release.touch()
        out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err[-4000:]
    assert json.loads(out) == {"size": len(payload), "first": 0, "last": 255}
    store.prune()  # the read is over: the store gets back within its limit
    assert store.probe("read") is None and store.volume() <= LIMIT
    store.close()


def test_readers_and_writers_under_a_small_limit(tmp_path: Path, child_env: dict[str, str]) -> None:
    """2 processes x 2 threads with constant eviction: every read is exact or a clean miss."""
    home, secret = tmp_path / "home", tmp_path / "secret.key"
    children = [
        subprocess.Popen(
            workload_command("hammer", str(home), str(secret), str(process), "2", "2.5", str(LIMIT)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env, cwd=ROOT,
        )
        for process in range(2)
    ]
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-4000:]
        report = json.loads(out)
        assert report["errors"] == []
        for result in report["writers"].values():
            assert result["counts"]["hits"] >= 10 and result["counts"]["saves"] >= 10
    store = ResultStore(home, size_limit=LIMIT, secret_file=secret)
    store.prune()
    assert store.volume() == sum(record.size for record in store.records()) <= LIMIT
    store.close()
