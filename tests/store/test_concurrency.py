"""Threads sharing one store, and one process loading what another saved.

Many processes x threads on one home, and writers killed mid-save: tests/reliability.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

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
        from nbflow.exceptions import NbflowWarning
        warnings.simplefilter("error", NbflowWarning)
        value = store.load("shared", store.probe("shared"))
        assert (value["array"] == np.arange(1_000_000)).all()
        print(value["text"], store.probe("shared").task_name)
        """
    )
    assert output.split() == ["hello", "demo.cross"]
