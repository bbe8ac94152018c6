"""Where an nbflow call spends its time: cProfile of the hit path and the miss path of a trivial task, and of
the first cached result in a fresh process (which adds the once-per-definition and once-per-process costs).

``python benchmarks/profile_paths.py [hit|miss|first] [--calls N] [--top K]``. The numbers under a profiler are
inflated; read the shares, not the microseconds.
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


def _print(profiler: cProfile.Profile, top: int) -> None:
    for order in ("tottime", "cumulative"):
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats(order).print_stats(top)
        print(f"-- by {order} --")
        print(stream.getvalue().split("\n", 4)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", choices=["hit", "miss", "first"], nargs="?", default="hit")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if args.path == "first":
        profile_first(args.top)
    else:
        profile_calls(args.path, args.calls, args.top)


if __name__ == "__main__":
    main()
