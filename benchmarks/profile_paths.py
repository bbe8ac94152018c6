"""Where an nbflow call spends its time: cProfile of the hit path and the miss path of a trivial task, and of
the first cached result in a fresh process (which adds the once-per-definition and once-per-process costs).

``python benchmarks/profile_paths.py [hit|miss|first] [--calls N] [--top K]``. The numbers under a profiler are
inflated; read the shares, not the microseconds.

``python benchmarks/profile_paths.py steps [--calls N]`` times each step of the engine instead (no profiler): a loop
of hits on entries an earlier process stored, and a loop of misses, each step's microseconds per call next to the
same loop through plain calls. Steps cost more inside such a loop than alone (they share the CPU's caches), which is
what this shows and a profiler does not.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _worker import trivial  # noqa: E402


def profile_calls(path: str, calls: int, top: int) -> None:
    import nbflow

    with tempfile.TemporaryDirectory(prefix="nbflow-profile-") as home:
        nbflow.configure(home=home)
        task = nbflow.task(trivial)
        task(-1)
        if path == "hit":
            for x in range(calls):
                task(x)
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        offset = 0 if path == "hit" else calls
        for x in range(offset, offset + calls):
            task(x)
        profiler.disable()
        print(f"{path}: {(time.perf_counter() - started) / calls * 1e6:.0f} µs per call under the profiler "
              f"({calls} calls)")
        _print(profiler, top)
        nbflow.runs.history().flush()


def profile_first(top: int) -> None:
    with tempfile.TemporaryDirectory(prefix="nbflow-profile-") as home:
        code = (f"import sys; sys.path.insert(0, {str(HERE)!r})\nfrom _worker import trivial\nimport nbflow\n"
                f"nbflow.configure(home={home!r})\nnbflow.task(trivial)(-1)\n")
        subprocess.run([sys.executable, "-c", code], check=True)  # stores the entry
        script = os.path.join(home, "first.py")
        with open(script, "w") as file:
            file.write(code)
        out = os.path.join(home, "first.prof")
        subprocess.run([sys.executable, "-m", "cProfile", "-o", out, script], check=True)
        print("first cached result in a fresh process (import nbflow included):")
        stats = pstats.Stats(out, stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats(top)


def time_steps(calls: int) -> None:
    """Microseconds per call spent in each engine step, over ``calls`` hits and then ``calls`` misses."""
    import nbflow
    from nbflow.engine.task_engine import TaskRunEngine

    with tempfile.TemporaryDirectory(prefix="nbflow-profile-") as home:
        code = (f"import sys; sys.path.insert(0, {str(HERE)!r})\nfrom _worker import trivial\nimport nbflow\n"
                f"nbflow.configure(home={home!r})\nt = nbflow.task(trivial)\nfor x in range(-1, {calls}): t(x)\n")
        subprocess.run([sys.executable, "-c", code], check=True)  # stores the entries the hits read
        nbflow.configure(home=home)
        task = nbflow.task(trivial)
        task(-1)  # opens the store, computes the code identity once
        history = nbflow.runs.history()
        clock = time.perf_counter_ns

        def plain(start: int) -> float:
            began = time.perf_counter()
            for x in range(start, start + calls):
                task(x)
            return (time.perf_counter() - began) / calls * 1e6

        def stepped(start: int) -> tuple[float, dict[str, int]]:
            spent = dict.fromkeys(["engine", "begin", "key", "probe", "call", "persist", "finish"], 0)
            began = time.perf_counter()
            for x in range(start, start + calls):
                t0 = clock()
                engine = TaskRunEngine(task, (x,), {})
                t1 = clock()
                engine.begin()
                t2 = clock()
                engine.compute_key()
                t3 = clock()
                state = engine.probe()
                t4 = clock()
                t5 = t6 = t4
                if state is None:
                    state = engine.call()
                    t5 = clock()
                    state = engine.persist(state)
                    t6 = clock()
                engine.finish(state)
                t7 = clock()
                for step, ns in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
                    spent[step] += ns
            return (time.perf_counter() - began) / calls * 1e6, spent

        # Each loop starts with the run history's batch written (outside the clock), as each process of the
        # benchmark does: a loop this short then leaves its own batch to the idle writer.
        results = []
        for path, start in (("hit", 0), ("miss", calls)):
            history.flush()
            per_call = plain(start if path == "hit" else 2 * calls)
            history.flush()
            stepped_per_call, spent = stepped(start)
            results.append((path, per_call, stepped_per_call, spent))
        history.flush()
        for path, per_call, stepped_per_call, spent in results:
            steps = "  ".join(f"{step} {ns / calls / 1e3:.1f}" for step, ns in spent.items() if ns)
            print(f"{path}: {per_call:.1f} µs per plain call; {stepped_per_call:.1f} with the step timers: {steps}")


def _print(profiler: cProfile.Profile, top: int) -> None:
    for order in ("tottime", "cumulative"):
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats(order).print_stats(top)
        print(f"-- by {order} --")
        print(stream.getvalue().split("\n", 4)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", choices=["hit", "miss", "first", "steps"], nargs="?", default="hit")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if args.path == "first":
        profile_first(args.top)
    elif args.path == "steps":
        time_steps(args.calls)
    else:
        profile_calls(args.path, args.calls, args.top)


if __name__ == "__main__":
    main()
