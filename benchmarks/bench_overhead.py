"""Per-call overhead of a trivial task (miss and hit) next to a plain call and joblib.Memory, and the
fingerprint throughput of a large numpy array next to a plain memory copy — measured in one run, so
the ratios hold even on a noisy machine.

Run with ``make bench`` (or ``python benchmarks/bench_overhead.py [--quick]``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any


def per_call(fn: Callable[[int], Any], inputs: list[int], repeat: int = 5) -> float:
    """Median over ``repeat`` rounds of the mean seconds per call over ``inputs``."""
    rounds = []
    for _ in range(repeat):
        started = time.perf_counter()
        for value in inputs:
            fn(value)
        rounds.append((time.perf_counter() - started) / len(inputs))
    return statistics.median(rounds)


def once_each(fn: Callable[[int], Any], inputs: list[int]) -> float:
    """Mean seconds per call, each input called once (every call a miss)."""
    started = time.perf_counter()
    for value in inputs:
        fn(value)
    return (time.perf_counter() - started) / len(inputs)


def bench_calls(n: int) -> list[tuple[str, float, float]]:
    import joblib

    import nbflow

    rows: list[tuple[str, float, float]] = []

    def plain(x: int) -> int:
        return x + 1

    rows.append(("plain call", per_call(plain, list(range(n))), per_call(plain, list(range(n)))))

    with tempfile.TemporaryDirectory() as directory:
        memory = joblib.Memory(os.path.join(directory, "joblib"), verbose=0)
        cached = memory.cache(plain)
        miss = once_each(cached, list(range(n)))
        hit = per_call(cached, list(range(n)), repeat=3)
        rows.append(("joblib.Memory", miss, hit))

    with tempfile.TemporaryDirectory() as directory:
        nbflow.configure(home=os.path.join(directory, "nbflow"))

        @nbflow.task
        def trivial(x: int) -> int:
            return x + 1

        trivial(-1)  # open the store, compute the code identity once
        miss = once_each(trivial, list(range(n)))
        hit = per_call(trivial, list(range(n)), repeat=3)
        rows.append(("nbflow task", miss, hit))
        nbflow.runs.history().flush()  # before the directory goes away
    return rows


def bench_fingerprint(size_bytes: int) -> tuple[float, float]:
    import numpy as np

    from nbflow.hashing import fingerprint

    array = np.random.default_rng(0).random(size_bytes // 8)
    copies, hashes = [], []
    for _ in range(3):
        started = time.perf_counter()
        array.copy()
        copies.append(time.perf_counter() - started)
        started = time.perf_counter()
        fingerprint(array)
        hashes.append(time.perf_counter() - started)
    gb = array.nbytes / 1e9
    return gb / min(copies), gb / min(hashes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer calls and a 100 MB array (for tests)")
    args = parser.parse_args()
    n = 300 if args.quick else 2000
    size = 100 * 10**6 if args.quick else 10**9
    warnings.simplefilter("ignore")

    rows = bench_calls(n)
    plain_miss, plain_hit = rows[0][1], rows[0][2]
    print(f"per-call overhead of a trivial task ({n} calls, median of rounds; overhead = time - plain call)")
    print(f"{'':16}{'miss µs':>10}{'hit µs':>10}")
    for name, miss, hit in rows:
        print(f"{name:16}{(miss - plain_miss) * 1e6:>10.1f}{(hit - plain_hit) * 1e6:>10.1f}")
    by_name = {name: (miss - plain_miss, hit - plain_hit) for name, miss, hit in rows}
    joblib_miss, joblib_hit = by_name["joblib.Memory"]
    ours_miss, ours_hit = by_name["nbflow task"]
    print(f"ratio joblib/nbflow: miss {joblib_miss / ours_miss:.1f}x, hit {joblib_hit / ours_hit:.1f}x "
          "(> 1 means nbflow is faster)")

    copy_rate, hash_rate = bench_fingerprint(size)
    print(f"\nfingerprint of a {size / 1e9:g} GB float64 array: {hash_rate:.1f} GB/s; "
          f"plain memory copy: {copy_rate:.1f} GB/s; ratio {hash_rate / copy_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
