"""nbflow against Prefect 3.8 (its local ephemeral server, results persisted to local disk), side by side in
one run: a trivial task's miss and fresh-process hit, hashing a large array, a 100 MB array result, and
"Restart & Run All" of 20 cached tasks. Medians over interleaved repetitions in fresh processes.

Prefect is optional: ``make bench-prefect`` installs it into the venv (prefect 3.8.x with fastapi <= 0.154)
and runs this. ``python benchmarks/bench_prefect.py [--quick]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _worker import make_array, trivial  # noqa: E402
from bench_overhead import bench_env, med, rotated, wall, worker  # noqa: E402


def prefect_env(home: str) -> dict[str, str]:
    """A private Prefect home per store, results persisted by default, quiet logs, no telemetry."""
    return bench_env(
        PREFECT_HOME=home,
        PREFECT_LOCAL_STORAGE_PATH=os.path.join(home, "storage"),
        PREFECT_RESULTS_PERSIST_BY_DEFAULT="true",
        PREFECT_LOGGING_LEVEL="ERROR",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="true",
    )


def prefect_task(fn: Any) -> Any:
    from prefect import task
    from prefect.cache_policies import INPUTS, TASK_SOURCE

    return task(fn, cache_policy=INPUTS + TASK_SOURCE, persist_result=True)


# -- cases, run in a fresh process by ``--case`` ---------------------------------------------------------

def case_calls(p: dict[str, Any]) -> dict[str, Any]:
    call = prefect_task(trivial)
    # Warm-up (starts the ephemeral server); its state tells whether this process hit an earlier one's entry.
    state = call(-1, return_state=True).name
    started = time.perf_counter()
    for x in range(p["n"]):
        call(x)
    per_call = (time.perf_counter() - started) / p["n"]
    return {"per_call": per_call, "state": state}


def case_big(p: dict[str, Any]) -> dict[str, Any]:
    call = prefect_task(make_array)
    call(0, 16)
    make_array(-1, p["size"])
    started = time.perf_counter()
    make_array(2, p["size"])
    plain = time.perf_counter() - started
    started = time.perf_counter()
    value = call(1, p["size"])
    seconds = time.perf_counter() - started
    assert value.shape == (p["size"],)
    return {"seconds": seconds, "plain": plain}


def case_hash(p: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from prefect.utilities.hashing import hash_objects

    array = np.random.default_rng(0).random(p["size"] // 8)
    best = min(_timed(lambda: hash_objects(array)) for _ in range(p["rounds"]))
    return {"rate": array.nbytes / best}


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


CASES = {"calls": case_calls, "big": case_big, "hash": case_hash}


def run_case(case: str, params: dict[str, Any], home: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--case", case, json.dumps(params)], capture_output=True,
                          text=True, env=prefect_env(home), timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"prefect case {case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rerun_script() -> str:
    steps = "\n".join(f"@cache\ndef step_{i}(x):\n    return x + {i}\n" for i in range(20))
    return ("from prefect import task\nfrom prefect.cache_policies import INPUTS, TASK_SOURCE\n"
            "def cache(fn):\n    return task(fn, cache_policy=INPUTS + TASK_SOURCE, persist_result=True)\n\n"
            + steps + "\nx = 1\n" + "".join(f"x = step_{i}(x)\n" for i in range(20)) + "print(x)\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small run (for the test suite)")
    parser.add_argument("--case", nargs=2, metavar=("CASE", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if importlib.util.find_spec("prefect") is None:
        print("Prefect is not installed: `make bench-prefect` installs prefect 3.8.x (with fastapi<=0.154) into "
              "the venv and runs this comparison.", file=sys.stderr)
        return 2
    if args.case:
        import warnings

        warnings.simplefilter("ignore")
        result = CASES[args.case[0]](json.loads(args.case[1]))
        sys.stdout.write("\n" + json.dumps(result) + "\n")
        return 0
    import prefect

    reps, n = (1, 5) if args.quick else (5, 50)
    size = 10**6 if args.quick else 100 * 10**6 // 8
    print(f"Prefect {prefect.__version__} (local ephemeral server) against nbflow; medians of {reps} interleaved "
          "repetitions, each a fresh process")
    with tempfile.TemporaryDirectory(prefix="nbflow-bench-prefect-") as tmp:
        root = Path(tmp)
        libs = ["nbflow", "floor", "Prefect"]
        miss: dict[str, list[float]] = {lib: [] for lib in libs}
        hit: dict[str, list[float]] = {lib: [] for lib in libs}
        for rep in range(reps):
            for lib in rotated(libs, rep):
                home = str(root / "calls" / f"{lib}-{rep}")
                for into in (miss, hit):
                    if lib == "Prefect":
                        r = run_case("calls", {"n": n}, home)
                        r["plain"] = 0.0
                    else:
                        r = worker("calls", {"lib": lib, "home": home, "n": n})
                    if into is hit and r["state"] not in (None, "Cached"):
                        raise RuntimeError(f"{lib}: a fresh process did not hit the stored entries ({r['state']})")
                    into[lib].append(r["per_call"] - r["plain"])
        print(f"\n== trivial task, per call ({n} calls per process) ==")
        print(f"  {'':24s}{'miss µs':>10s}{'hit µs':>10s}")
        for lib in libs:
            print(f"  {lib:24s}{med(miss[lib]) * 1e6:10.1f}{med(hit[lib]) * 1e6:10.1f}")
        print(f"  Prefect/nbflow: miss {med(miss['Prefect']) / med(miss['nbflow']):.1f}x, "
              f"hit {med(hit['Prefect']) / med(hit['nbflow']):.1f}x")

        if args.quick:
            print("\n(the large-array section is left out of --quick: two more Prefect processes)")
        else:
            print(f"\n== a {size * 8 / 1e6:.0f} MB array result (store less the task's own work; hit in a fresh "
                  "process) ==")
            store: dict[str, list[float]] = {"nbflow": [], "Prefect": []}
            load: dict[str, list[float]] = {"nbflow": [], "Prefect": []}
            for rep in range(reps):
                for lib in rotated(list(store), rep):
                    home = str(root / "big" / f"{lib}-{rep}")
                    if lib == "Prefect":
                        first = run_case("big", {"size": size}, home)
                        store[lib].append(first["seconds"] - first["plain"])
                        load[lib].append(run_case("big", {"size": size}, home)["seconds"])
                    else:
                        store[lib].append(worker("bigstore", {"lib": lib, "home": home, "size": size})["seconds"])
                        load[lib].append(worker("bighit", {"lib": lib, "home": home, "size": size})["seconds"])
            for lib in store:
                print(f"  {lib:24s} store {med(store[lib]) * 1e3:8.1f} ms   hit {med(load[lib]) * 1e3:8.1f} ms")

        hash_size = 20 * 10**6 if args.quick else 10**9
        rate = run_case("hash", {"size": hash_size, "rounds": 1 if args.quick else 2}, str(root / "hash"))["rate"]
        ours = worker("fingerprint", {"size": hash_size, "rounds": 1, "object_rows": 1000, "quick": True})["rates"]
        print(f"\n== hashing a {hash_size / 1e9:g} GB float64 array ==\n  Prefect hash_objects {rate / 1e9:.2f} GB/s, "
              f"nbflow {ours['nbflow ndarray'] / 1e9:.2f} GB/s, memory copy {ours['memory copy'] / 1e9:.2f} GB/s")

        print("\n== 'Restart & Run All' of 20 cached tasks: the whole second process ==")
        script = root / "rerun" / "prefect_run_all.py"
        script.parent.mkdir(parents=True)
        script.write_text(rerun_script())
        env = prefect_env(str(root / "rerun" / "prefect-home"))
        wall([sys.executable, str(script)], env=env)
        from bench_overhead import rerun_script as nbflow_rerun

        ours_script = root / "rerun" / "nbflow_run_all.py"
        ours_script.write_text(nbflow_rerun("nbflow", str(root / "rerun" / "nbflow-store")))
        wall([sys.executable, str(ours_script)])
        times: dict[str, list[float]] = {"nbflow": [], "Prefect": []}
        for rep in range(reps):
            for lib in rotated(list(times), rep):
                if lib == "Prefect":
                    times[lib].append(wall([sys.executable, str(script)], env=env))
                else:
                    times[lib].append(wall([sys.executable, str(ours_script)]))
        for lib, values in times.items():
            print(f"  {lib:24s}{med(values):8.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
