"""Scale-out and submit overhead, measured side by side in one run.

1. CPU-bound pure-Python tasks (counting primes by trial division) on ``DaskTaskRunner`` with 2 worker
   processes, against the same function called sequentially in this process. The cluster is started once
   and reused (``address=``), so the ratio is the steady state; starting a ``LocalCluster`` for a flow
   (``DaskTaskRunner()``) is shown on its own line, and so is a second, fully cached run (nothing shipped).
2. ``Task.submit`` overhead per task on the default thread pool: a trivial task submitted N times and
   waited for, against the same number of plain task calls and of bare function calls.

Every figure is a median over interleaved repetitions. The machine is shared and noisy: compare the ratios
measured in the same run, not absolute times across runs. Run with ``make bench`` or
``python benchmarks/bench_dask.py [--quick]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any


def count_primes(lo: int, hi: int) -> int:
    return sum(1 for n in range(max(lo, 2), hi) if all(n % d for d in range(2, int(n**0.5) + 1)))


def trivial(x: int) -> int:
    return x + 1


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))


def bench_dask(quick: bool) -> dict[str, float]:
    import distributed

    import nbflow
    from nbflow.cache_policies import NONE
    from nbflow.integrations.dask import DaskTaskRunner

    n_tasks, limit, reps = (4, 60_000, 1) if quick else (8, 600_000, 3)
    bounds = [limit * i // n_tasks for i in range(n_tasks + 1)]
    chunks = list(itertools.pairwise(bounds))
    primes = nbflow.task(name="count_primes", cache_policy=NONE)(count_primes)
    cached_primes = nbflow.task(name="count_primes_cached")(count_primes)

    def sequential() -> int:
        return sum(count_primes(lo, hi) for lo, hi in chunks)

    results: dict[str, list[float]] = {"sequential": [], "dask": []}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=":0") as cluster:
        runner = DaskTaskRunner(address=cluster.scheduler_address)

        @nbflow.flow(task_runner=runner)
        def on_dask(pairs: list[tuple[int, int]]) -> int:
            futures = primes.map([lo for lo, _ in pairs], [hi for _, hi in pairs])
            return sum(future.result() for future in futures)

        expected = sequential()
        assert on_dask(chunks) == expected  # warm the workers (imports, the function's first shipping)
        for rep in range(reps):
            order = ["sequential", "dask"] if rep % 2 == 0 else ["dask", "sequential"]
            for name in order:
                results[name].append(timed(sequential if name == "sequential" else lambda: on_dask(chunks)))

    @nbflow.flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 2}))
    def fresh_cluster(pairs: list[tuple[int, int]]) -> list[Any]:
        return cached_primes.map([lo for lo, _ in pairs], [hi for _, hi in pairs])  # type: ignore[arg-type]

    with_start = timed(lambda: fresh_cluster(chunks))
    cached = timed(lambda: fresh_cluster(chunks))
    seq, dask = statistics.median(results["sequential"]), statistics.median(results["dask"])
    print(f"\n== {n_tasks} CPU-bound pure-Python tasks (primes below {limit:,}), median of {reps} ==")
    table([
        ("sequential plain calls (this process)", f"{seq:.2f} s", "1.00x"),
        ("DaskTaskRunner, 2 worker processes (running cluster)", f"{dask:.2f} s", f"{seq / dask:.2f}x"),
        ("DaskTaskRunner() incl. starting a LocalCluster", f"{with_start:.2f} s", f"{seq / with_start:.2f}x"),
        ("the same flow again, all cache hits (no cluster)", f"{cached * 1000:.0f} ms", f"{seq / cached:.0f}x"),
    ], ("", "wall", "speed-up"))
    print(f"speed-up on Dask with 2 workers: {seq / dask:.2f}x (machine: {os.cpu_count()} cores)")
    return {"sequential_s": seq, "dask_s": dask, "speedup": seq / dask, "with_start_s": with_start,
            "cached_s": cached}


def bench_submit(quick: bool) -> dict[str, float]:
    import nbflow
    from nbflow.cache_policies import NONE

    n, reps = (300, 3) if quick else (2000, 5)
    task = nbflow.task(name="trivial", cache_policy=NONE)(trivial)
    values = list(range(n))

    def bare() -> None:
        for i in values:
            trivial(i)

    def plain() -> None:
        for i in values:
            task(i)

    def submitted() -> None:
        nbflow.wait([task.submit(i) for i in values])

    cases = {"bare": bare, "plain": plain, "submit": submitted}
    submitted()  # start the pool's threads
    results: dict[str, list[float]] = {name: [] for name in cases}
    for rep in range(reps):
        names = list(cases)
        names = names[rep % len(names):] + names[:rep % len(names)]
        for name in names:
            results[name].append(timed(cases[name]) / n * 1e6)
    bare_us, plain_us, submit_us = (statistics.median(results[name]) for name in ("bare", "plain", "submit"))
    print(f"\n== Task.submit overhead on the default thread pool, {n} trivial tasks, median of {reps} ==")
    table([
        ("bare function call", f"{bare_us:.2f} µs", ""),
        ("plain task call (uncached)", f"{plain_us:.1f} µs", "1.00x"),
        ("Task.submit + wait (thread pool)", f"{submit_us:.1f} µs", f"{submit_us / plain_us:.2f}x"),
    ], ("per task", "time", "vs plain call"))
    print(f"submit overhead per task: {submit_us - plain_us:.1f} µs over a plain task call")
    return {"bare_us": bare_us, "plain_us": plain_us, "submit_us": submit_us}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller repetitions (for the tests)")
    args = parser.parse_args(argv)
    # A store of its own, so the benchmark neither reads nor fills the user's cache.
    with tempfile.TemporaryDirectory(prefix="nbflow-bench-dask-") as home:
        os.environ["NBFLOW_HOME"] = home
        os.environ.setdefault("NBFLOW_SECRET_FILE", os.path.join(home, "secret.key"))
        from nbflow import settings

        settings.reset()
        bench_dask(args.quick)
        bench_submit(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
