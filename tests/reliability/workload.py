"""Values and worker loops shared by the reliability tests, importable in child processes.

Every value written by a worker is a pure function of ``(key, n)`` (and for the concurrency test the
writer's id), so a reader can check that what it got is exactly one of the values written, never a
mixture of two writes or a torn one.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import nbflow
from nbflow.exceptions import NbflowWarning
from nbflow.store import CacheMiss, ResultStore

#: Kinds of entries the writers cycle through: the three places a payload can live.
#: ``row``: a small stream inside the SQLite row; ``file``: a stream large enough for diskcache to keep
#: in a file of its own; ``blob``: an array written out-of-band to nbflow's buffer files.
KINDS = ("row", "file", "blob", "blobs")


def make_value(key: str, n: int, kind: str, writer: int = 0) -> Any:
    """The value written under ``key`` by write number ``n`` of ``writer``."""
    if kind == "row":
        return ("row", key, writer, n)
    if kind == "file":
        return ("file", key, writer, n, bytes([n % 251]) * 200_000)
    if kind == "blob":
        return {"kind": "blob", "key": key, "writer": writer, "n": n, "data": np.full(250_000, n, dtype=np.int64)}
    return {
        "kind": "blobs",
        "key": key,
        "writer": writer,
        "n": n,
        "a": np.full(40_000, n, dtype=np.float64),
        "b": np.full(30_000, -n, dtype=np.int32),
    }


def identify(value: Any, key: str) -> tuple[int, int]:
    """``(writer, n)`` of a value read under ``key``, after checking it is exactly such a value."""
    if isinstance(value, tuple):
        kind, stored_key, writer, n = value[:4]
        assert stored_key == key, (stored_key, key)
        expected = make_value(key, n, kind, writer)
        assert value[:4] == expected[:4] and (kind == "row" or value[4] == expected[4])
        return writer, n
    assert isinstance(value, dict) and value["key"] == key, (type(value), key)
    writer, n = value["writer"], value["n"]
    expected = make_value(key, n, value["kind"], writer)
    assert set(value) == set(expected)
    for name, part in expected.items():
        if isinstance(part, np.ndarray):
            assert value[name].dtype == part.dtype and value[name].shape == part.shape
            assert bool(np.array_equal(value[name], part)), f"{key}: {name} differs from write {n}"
        else:
            assert value[name] == part
    return writer, n


# -- crash test: one writer, killed at a random moment ---------------------------------------------

CRASH_KEYS = 5


def crash_op(n: int) -> tuple[str, str, str]:
    """Operation number ``n`` of the crash writer: ``(op, key, kind)``; op is save, delete or prune."""
    key = f"k{n % CRASH_KEYS}"
    if n % 13 == 0:
        return "delete", key, ""
    if n % 17 == 0:
        return "prune", "", ""
    return "save", key, KINDS[(n // CRASH_KEYS) % len(KINDS)]


def crash_writer(home: str, secret: str, log: str, start: int) -> None:
    """Open the store, say how long a first save and load took, then write until killed.

    After each operation completes, its number is appended to ``log``: the parent then knows every
    operation up to that one is committed, and at most the next one was in flight when it was killed, but
    for the small ``row`` values, saved deferred as a quick task's result is (``defer=True``): committed in
    batches, so any of those since the key's last other operation may be the one in the store.
    """
    began = time.monotonic()
    store = ResultStore(Path(home), size_limit=1 << 34, secret_file=Path(secret))
    store.save("health", ("health", os.getpid()), task_name="crash.health")
    assert store.load("health") == ("health", os.getpid())
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    print(f"ready {time.monotonic() - began:.3f}", flush=True)
    n = start
    while True:
        op, key, kind = crash_op(n)
        if op == "save":
            store.save(key, make_value(key, n, kind), task_name=f"crash.{key}", defer=kind == "row")
        elif op == "delete":
            store.delete(key)
        else:
            store.prune()
        os.write(fd, b"%d\n" % n)
        n += 1


# -- concurrency test: processes x threads on overlapping keys --------------------------------------

SHARED_KEYS = 4


def _run_threads(run: Any, threads: int) -> None:
    """Run ``run(thread)`` for each thread number at once and wait for them all."""
    workers = [threading.Thread(target=run, args=(thread,)) for thread in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def hammer(home: str, secret: str, process: int, threads: int, seconds: float,
           size_limit: int = 1 << 34) -> dict[str, Any]:
    """Run ``threads`` threads reading and writing one store for ``seconds``; report what happened.

    Keys ``shared-*`` are written by every thread of every process; keys ``own-<writer>-*`` only by
    one thread, which reads each of its writes straight back (unless ``size_limit`` is small enough
    for entries to be evicted). Any exception or NbflowWarning (e.g. a spurious "failed verification")
    is reported as an error.
    """
    warnings.simplefilter("error", NbflowWarning)
    store = ResultStore(Path(home), size_limit=size_limit, secret_file=Path(secret))
    lossless = size_limit >= 1 << 34
    errors: list[str] = []
    results: dict[int, dict[str, Any]] = {}

    def run(thread: int) -> None:
        writer = process * 10 + thread
        rng = random.Random(writer)
        last: dict[str, int] = {}  # key -> n of this thread's latest completed save
        counts = {"saves": 0, "hits": 0, "misses": 0, "prunes": 0}
        n = 0
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                n += 1
                roll = rng.random()
                own = rng.random() < 0.3
                key = f"own-{writer}-{rng.randrange(2)}" if own else f"shared-{rng.randrange(SHARED_KEYS)}"
                if roll < 0.45:
                    kind = KINDS[n % len(KINDS)]
                    # Small values deferred, as a quick task's result is: batches from several threads.
                    store.save(key, make_value(key, n, kind, writer), task_name=key, defer=kind == "row")
                    last[key] = n
                    counts["saves"] += 1
                    if own and lossless:  # nobody else writes it: reading it back gives exactly this write
                        assert identify(store.load(key), key) == (writer, n)
                elif roll < 0.98:
                    try:
                        value = store.load(key, store.probe(key)) if rng.random() < 0.5 else store.load(key)
                    except CacheMiss:
                        assert not (own and lossless) or key not in last, f"{key}: a committed write was lost"
                        counts["misses"] += 1
                        continue
                    got_writer, got_n = identify(value, key)
                    if own and lossless:
                        assert (got_writer, got_n) == (writer, last[key]), f"{key}: stale or lost write"
                    counts["hits"] += 1
                else:
                    store.prune()
                    counts["prunes"] += 1
        except BaseException as error:  # everything is reported, nothing may escape
            errors.append(f"writer {writer}: {type(error).__name__}: {error}")
        results[writer] = {"counts": counts, "last": last}

    _run_threads(run, threads)
    try:
        store.close()
    except BaseException as error:
        errors.append(f"close: {type(error).__name__}: {error}")
    return {"errors": errors, "writers": {str(writer): result for writer, result in results.items()}}


# -- concurrency through the engine: task calls from processes x threads ---------------------------

@nbflow.task
def work(n: int, size: int) -> dict[str, Any]:
    """A task whose result is a pure function of its inputs, small or with an out-of-band buffer (it is
    defined at module level, so its code identity is the same in every process)."""
    return {"n": n, "size": size, "data": np.full(size, n, dtype=np.int64)}


def task_hammer(process: int, threads: int, seconds: float) -> dict[str, Any]:
    """Call :func:`work` with overlapping inputs from ``threads`` threads for ``seconds`` (the store and
    the run history are those of ``NBFLOW_HOME``); report the states seen and every error or warning."""
    warnings.simplefilter("error", NbflowWarning)
    errors: list[str] = []
    states: dict[str, int] = {}
    lock = threading.Lock()

    def run(thread: int) -> None:
        rng = random.Random(process * 10 + thread)
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                n, size = rng.randrange(6), rng.choice([10, 40_000])
                task = work.with_options(refresh_cache=True) if rng.random() < 0.2 else work
                state = task(n, size, return_state=True)
                value = state.result()
                assert value["n"] == n and value["size"] == size and bool(np.all(value["data"] == n))
                with lock:
                    states[state.name] = states.get(state.name, 0) + 1
        except BaseException as error:
            errors.append(f"thread {thread}: {type(error).__name__}: {error}")

    _run_threads(run, threads)
    try:
        from nbflow.engine.runtime import finish_session

        finish_session()
    except BaseException as error:
        errors.append(f"finish: {type(error).__name__}: {error}")
    return {"errors": errors, "states": states}


# -- eviction test: a load held up inside the serializer, while the store is pruned ------------------


class BlockingSerializer:
    """Keeps the payload in one out-of-band buffer; ``loads`` waits until a release file exists.

    Registered under the name ``"blocking"``: a load of such an entry stays in progress, with its
    buffer file already read, for as long as the test wants.
    """

    name = "blocking"

    def __init__(self, started: Path | None = None, release: Path | None = None) -> None:
        self.started = started
        self.release = release

    def dumps(self, value: Any) -> tuple[bytes, list[memoryview]]:
        return b"blocking", [memoryview(value)]

    def loads(self, stream: bytes, buffers: list[Any], type_hint: Any = None) -> Any:
        if self.started is not None and self.release is not None:
            self.started.touch()
            deadline = time.monotonic() + 60
            while not self.release.exists():
                assert time.monotonic() < deadline, "never released"
                time.sleep(0.005)
        return bytes(buffers[0])


def blocked_reader(home: str, secret: str, key: str, started: str, release: str) -> None:
    """Load ``key`` with a :class:`BlockingSerializer` that waits for ``release``; print what came back."""
    from nbflow.store.serializers import register_serializer

    warnings.simplefilter("error", NbflowWarning)
    register_serializer(BlockingSerializer(Path(started), Path(release)))
    store = ResultStore(Path(home), size_limit=1 << 34, secret_file=Path(secret))
    value = store.load(key)
    print(json.dumps({"size": len(value), "first": value[0], "last": value[-1]}))


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command == "crash-writer":
        crash_writer(arguments[0], arguments[1], arguments[2], int(arguments[3]))
    elif command == "hammer":
        print(json.dumps(hammer(arguments[0], arguments[1], int(arguments[2]), int(arguments[3]),
                                float(arguments[4]), int(arguments[5]))))
    elif command == "task-hammer":
        print(json.dumps(task_hammer(int(arguments[0]), int(arguments[1]), float(arguments[2]))))
    elif command == "blocked-reader":
        blocked_reader(*arguments)
    else:
        raise SystemExit(f"unknown command {command!r}")
