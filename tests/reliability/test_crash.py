"""A writer killed with SIGKILL at random moments never leaves a torn, wrong or wedged store.

One writer process saves, deletes and prunes entries of every kind (payload in the SQLite row, in
diskcache's files, in nbflow's buffer files) and logs each operation once it has returned. It is killed
at a random moment, 50 times over. After each kill, the test checks that every entry reads back
exactly the value of its last logged write (or, for the one operation in flight, the value before or
after it; small values are saved deferred, so for those any deferred save since the key's last other
operation may be the one committed), that nothing raises or warns, that the store is usable at once, and that its size
accounting is exact.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest

from nbflow.exceptions import NbflowWarning
from nbflow.store import CacheMiss, ResultStore
from nbflow.store.blobs import BlobFiles
from tests.reliability.conftest import ROOT, workload_command
from tests.reliability.workload import CRASH_KEYS, crash_op, identify

KILLS = 50

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX only")


def leftovers(store: ResultStore) -> tuple[int, int]:
    """(temporary files, buffer files no record refers to) under the store's blobs directory."""
    referenced = {
        f"{BlobFiles.name(record.key)}-{record.blob_id}-{index}.bin"
        for record in store.records()
        for index in range(len(record.buffers))
    }
    temporary = orphans = 0
    for path in (store.directory / "blobs").rglob("*"):
        if path.is_file():
            if path.name.endswith(".tmp"):
                temporary += 1
            elif path.name not in referenced:
                orphans += 1
    return temporary, orphans


def test_sigkill_at_random_moments_leaves_old_or_new_entries(tmp_path: Path, child_env: dict[str, str]) -> None:
    home, secret = tmp_path / "home", tmp_path / "secret.key"
    store = ResultStore(home, size_limit=1 << 34, secret_file=secret)
    rng = random.Random(20261130)
    # key -> the n of the values it may hold (None: no entry), and of the last value written
    state: dict[str, set[int | None]] = {f"k{i}": {None} for i in range(CRASH_KEYS)}
    latest: dict[str, int | None] = dict.fromkeys(state)
    start = 1
    delays: set[float] = set()
    in_flight_ops: set[str] = set()
    kills_mid_write = 0
    for run in range(KILLS):
        log = tmp_path / f"log-{run}"
        process = subprocess.Popen(
            workload_command("crash-writer", str(home), str(secret), str(log), str(start)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env, cwd=ROOT,
        )
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline().split()
        assert line[:1] == ["ready"], process.stderr.read()
        # The store is usable at once after the previous kill: no lock left behind to wait for.
        assert float(line[1]) < 15.0, f"opening the store after a kill took {line[1]} s"
        delay = rng.uniform(0.0, 0.4)
        delays.add(delay)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
        process.stderr.close()

        logged = [int(text) for text in log.read_text().split("\n")[:-1]] if log.exists() else []
        for n in logged:  # these operations returned: they are committed, or deferred
            op, key, _kind = crash_op(n)
            if op == "save":
                latest[key] = n
                # A deferred save is committed with a later batch, or lost with the process.
                state[key] = state[key] | {n} if _kind == "row" else {n}
            elif op == "delete":  # which commits a deferred save of the key first
                latest[key] = None
                state[key] = {None}
            else:  # a prune commits every deferred save first
                state = {k: {latest[k]} for k in state}
        in_flight = (logged[-1] if logged else start - 1) + 1
        op, in_flight_key, _kind = crash_op(in_flight)
        in_flight_ops.add(op if op != "save" else f"save-{_kind}")

        temporary, orphans = leftovers(store)
        kills_mid_write += bool(temporary or orphans)
        with warnings.catch_warnings():
            warnings.simplefilter("error", NbflowWarning)
            for key, committed in state.items():
                allowed = set(committed)
                if key == in_flight_key:
                    allowed.add(in_flight if op == "save" else None)
                try:
                    _writer, n = identify(store.load(key), key)
                except CacheMiss:
                    found: int | None = None
                    assert store.probe(key) is None
                else:
                    found = n
                assert found in allowed, f"run {run}: {key} holds write {found}, expected one of {allowed}"
                state[key] = {found}
                latest[key] = found
            # Size accounting committed together with the entries.
            assert store.volume() == sum(record.size for record in store.records())
            # Usable at once by this process too.
            store.save("after-kill", run, task_name="crash.after")
            assert store.load("after-kill") == run
        start = in_flight + 1

    assert len(delays) == KILLS
    # The kills landed in different operations, some of them inside buffer-file writes.
    assert len(in_flight_ops) >= 3, in_flight_ops
    assert kills_mid_write >= 1

    # Leftovers of killed writes are garbage-collected once they are old enough to be no save's.
    an_hour_ago = time.time() - 3600
    for path in (store.directory / "blobs").rglob("*"):
        os.utime(path, (an_hour_ago, an_hour_ago))
    store.prune()
    assert leftovers(store) == (0, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        for key, committed in state.items():
            (value,) = committed
            if value is None:
                with pytest.raises(CacheMiss):
                    store.load(key)
            else:
                assert identify(store.load(key), key)[1] == value
    store.close()
