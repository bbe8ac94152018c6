"""Several processes and threads sharing one store; processes killed in the middle of a save."""

from __future__ import annotations

import multiprocessing
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nbflow.exceptions import NbflowWarning
from nbflow.store import CacheMiss, ResultStore

KEYS = 6
BIG = 20_000  # int64 elements: 160 kB, stored out-of-band


def make_value(worker: int, n: int, big: bool) -> Any:
    if big:
        return {"worker": worker, "n": n, "data": np.full(BIG, n, dtype=np.int64)}
    return ("small", worker, n)


def check_value(value: Any) -> None:
    """Every value read must be exactly one of the values some worker wrote."""
    if isinstance(value, tuple):
        kind, worker, n = value
        assert kind == "small" and 0 <= worker < 8 and 0 <= n < 10**9
    else:
        assert set(value) == {"worker", "n", "data"}
        assert value["data"].shape == (BIG,) and bool(np.all(value["data"] == value["n"]))


def hammer(home: str, secret: str, worker: int, seconds: float, size_limit: int) -> dict[str, int]:
    # A spurious "failed verification" (e.g. from a race between a save and a load) fails the test.
    warnings.simplefilter("error", NbflowWarning)
    store = ResultStore(Path(home), size_limit=size_limit, secret_file=Path(secret))
    store.touch_interval = 0.0 if worker % 2 else 60.0  # half the workers rewrite records on every hit
    rng = random.Random(worker)
    counts = {"saves": 0, "hits": 0, "misses": 0, "prunes": 0}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        key = f"key-{rng.randrange(KEYS)}"
        roll = rng.random()
        if roll < 0.4:
            store.save(key, make_value(worker, rng.randrange(10**9), rng.random() < 0.5), task_name=key)
            counts["saves"] += 1
        elif roll < 0.97:
            try:
                value = store.load(key, store.probe(key)) if rng.random() < 0.5 else store.load(key)
            except CacheMiss:
                counts["misses"] += 1
                continue
            check_value(value)
            counts["hits"] += 1
        else:
            store.prune()
            counts["prunes"] += 1
    store.close()
    return counts


def test_processes_share_a_store(tmp_path: Path) -> None:
    home, secret = str(tmp_path / "home"), str(tmp_path / "secret.key")
    # Small enough that saves keep evicting entries other workers are reading.
    size_limit = 4 * BIG * 8
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(hammer, [(home, secret, worker, 2.0, size_limit) for worker in range(4)])
    assert all(result["saves"] > 10 and result["hits"] > 10 for result in results), results

    store = ResultStore(Path(home), size_limit=size_limit, secret_file=Path(secret))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        for record in store.records():
            check_value(store.load(record.key, record))
    store.prune()
    assert store.volume() == sum(record.size for record in store.records()) <= size_limit


def test_threads_share_a_store(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "home", size_limit=1 << 30, secret_file=tmp_path / "secret.key")
    errors: list[BaseException] = []

    def run(worker: int) -> None:
        rng = random.Random(worker)
        try:
            for _ in range(150):
                key = f"key-{rng.randrange(KEYS)}"
                if rng.random() < 0.4:
                    store.save(key, make_value(worker, rng.randrange(10**9), rng.random() < 0.3), task_name=key)
                else:
                    try:
                        check_value(store.load(key))
                    except CacheMiss:
                        pass
        except BaseException as error:
            errors.append(error)

    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        threads = [threading.Thread(target=run, args=(worker,)) for worker in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_one_process_saves_another_loads(tmp_path: Path) -> None:
    setup = f"""
        import numpy as np
        from pathlib import Path
        from nbflow.store import ResultStore
        store = ResultStore(Path({str(tmp_path / "home")!r}), size_limit=1 << 30,
                            secret_file=Path({str(tmp_path / "secret.key")!r}))
    """
    run_python(
        setup
        + """
        store.save("shared", {"array": np.arange(1_000_000), "text": "hello"}, task_name="demo.cross")
        """
    )
    output = run_python(
        setup
        + """
        import warnings
        warnings.simplefilter("error")
        value = store.load("shared", store.probe("shared"))
        assert (value["array"] == np.arange(1_000_000)).all()
        print(value["text"], store.probe("shared").task_name)
        """
    )
    assert output.split() == ["hello", "demo.cross"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_writer_leaves_old_or_new_entry(tmp_path: Path) -> None:
    home, secret = tmp_path / "home", tmp_path / "secret.key"
    store = ResultStore(home, size_limit=1 << 34, secret_file=secret)
    store.save("k", make_value(9, 0, True), task_name="demo.kill")
    writer = textwrap.dedent(
        f"""
        import numpy as np
        from pathlib import Path
        from nbflow.store import ResultStore
        store = ResultStore(Path({str(home)!r}), size_limit=1 << 34, secret_file=Path({str(secret)!r}))
        n = 0
        print("ready", flush=True)
        while True:
            n += 1
            data = np.full(2_000_000, n, dtype=np.int64)  # 16 MB, so kills land inside blob writes too
            store.save("k", {{"worker": 1, "n": n, "data": data}} if n % 2 else ("small", 1, n),
                       task_name="demo.kill")
        """
    )
    rng = random.Random(0)
    for _ in range(6):
        process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
        with warnings.catch_warnings():
            warnings.simplefilter("error", NbflowWarning)
            value = store.load("k")
        if isinstance(value, dict):
            assert value["data"].shape == (2_000_000,) and bool(np.all(value["data"] == value["n"]))
        else:
            check_value(value)
