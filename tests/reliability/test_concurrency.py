"""4 processes x 2 threads reading and writing overlapping keys of one NBFLOW_HOME.

No operation may raise (no "database is locked" reaching the user) or warn; every value read must be
exactly one that some writer wrote for that key; a thread reading back its own key always gets its
latest write; and afterwards every key holds the latest write of one of its writers.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

from nbflow.exceptions import NbflowWarning
from nbflow.store import ResultStore
from tests.reliability.conftest import ROOT, workload_command
from tests.reliability.workload import SHARED_KEYS, identify

PROCESSES = 4
THREADS = 2
SECONDS = 4.0


def test_processes_and_threads_share_one_home(tmp_path: Path, child_env: dict[str, str]) -> None:
    home, secret = tmp_path / "home", tmp_path / "secret.key"
    children = [
        subprocess.Popen(
            workload_command("hammer", str(home), str(secret), str(process), str(THREADS), str(SECONDS), str(1 << 34)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env, cwd=ROOT,
        )
        for process in range(PROCESSES)
    ]
    reports = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-4000:]
        reports.append(json.loads(out))

    errors = [error for report in reports for error in report["errors"]]
    assert errors == []
    writers = {int(writer): result for report in reports for writer, result in report["writers"].items()}
    assert len(writers) == PROCESSES * THREADS
    for writer, result in writers.items():
        counts = result["counts"]
        # Everyone really took part: a starved or blocked worker would show here.
        assert counts["saves"] >= 20 and counts["hits"] >= 20, (writer, counts)

    store = ResultStore(home, size_limit=1 << 34, secret_file=secret)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        for index in range(SHARED_KEYS):
            key = f"shared-{index}"
            latest = {(writer, result["last"][key]) for writer, result in writers.items() if key in result["last"]}
            assert latest, key
            # Nothing committed is lost: the entry is the last write of one of its writers.
            assert identify(store.load(key), key) in latest
        own_keys = 0
        for writer, result in writers.items():
            for key, n in result["last"].items():
                if key.startswith("own-"):
                    assert identify(store.load(key), key) == (writer, n)
                    own_keys += 1
        assert own_keys >= PROCESSES * THREADS
    assert store.volume() == sum(record.size for record in store.records())
    store.close()


def test_task_calls_from_processes_and_threads(nbflow_home: Path, child_env: dict[str, str]) -> None:
    """The same through the engine: task calls (store and run history) never raise or warn."""
    children = [
        subprocess.Popen(
            workload_command("task-hammer", str(process), str(THREADS), "3"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env, cwd=ROOT,
        )
        for process in range(PROCESSES)
    ]
    totals: dict[str, int] = {}
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-4000:]
        report = json.loads(out.splitlines()[-1])
        assert report["errors"] == []
        for name, count in report["states"].items():
            totals[name] = totals.get(name, 0) + count
    assert set(totals) <= {"Completed", "Cached"} and totals.get("Cached", 0) > 50, totals

    import nbflow

    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)
        runs = nbflow.runs.list_runs()
        assert len(runs) >= PROCESSES
        from nbflow.engine.runtime import get_store

        store = get_store()
        for record in store.records():
            value = store.load(record.key, record)
            assert bool((value["data"] == value["n"]).all())
