"""String columns: what nbflow costs on the data notebooks hold, next to its peers, with a PASS/MISS mark per
target (issue 24).

1. Fingerprint throughput of a DataFrame of ``rows`` rows x 3 string columns, in pandas' default string dtype
   (``str``, arrow-backed), ``string[pyarrow]`` and ``object``, and of the same columns as a pyarrow Table:
   nbflow computing the digest (its memo of unchanged columns emptied first), nbflow again on the unchanged
   value (remembered), joblib.hash, pickle -> xxh3 and xxh3 over the arrow buffers (the floor). GB/s over the
   arrow buffers' bytes (offsets, data, validity), or for object columns over ``memory_usage(deep=True)``.
   Best of ``rounds``, every variant once per round.
2. A global DataFrame read by a trivial ``%%task`` cell, per hit, in an in-process IPython shell, next to the
   same cell without ``%%task``: ``rows2`` rows of object strings, of ``str``, and an int (best of ``hits``).
3. The notebook of the issue, run headless: a cell that builds a DataFrame of ``nb_rows`` rows x 3 string
   columns and five trivial cells that read it, all ``%%task``: ``nbflow run`` (first run, then cached) against
   ``jupyter execute`` of the same notebook without ``%%task`` (no nbflow at all); per dtype, best of ``reps``.

Run with ``python benchmarks/bench_strings.py [--quick] [--json FILE]`` (``make bench`` runs it after the
others). Exit status: 0 when every target is met, 3 when one is missed, 1 when a section could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_overhead import Report, bench_env, rotated, title  # noqa: E402

EXIT_MISSED = 3
ARROW_GBS = 3.0  # arrow-backed string columns: GB/s, and times joblib.hash
ARROW_VS_JOBLIB = 10.0
OBJECT_GBS = 0.5
DTYPES = ["str", "string[pyarrow]", "object"]
clock = time.perf_counter


def words(rows: int, column: int) -> list[str]:
    return [f"user-{i % 50_000}-{column}-{'x' * (i % 7)}{i}" for i in range(rows)]


def frame_of(rows: int, dtype: str) -> Any:
    import pandas as pd

    return pd.DataFrame({f"s{j}": pd.Series(words(rows, j), dtype=dtype) for j in range(3)})


def arrow_bytes(columns: list[Any]) -> int:
    """Bytes of the arrow buffers behind these (chunked) arrays, each chunk's referenced range only."""
    total = 0
    for column in columns:
        for chunk in getattr(column, "chunks", [column]):
            total += chunk.nbytes
    return total


def forget_memos() -> None:
    """Empty nbflow's memos of unchanged string columns (present from this issue on), so a figure measures
    the digest itself."""
    from nbflow.hashing import _libraries

    getattr(_libraries, "_STRINGS_MEMO", {}).clear()
    memo = getattr(_libraries, "_ObjectsMemo", None)
    if memo is not None:
        memo.table.clear()


# -- 1. fingerprint throughput ---------------------------------------------------------------------------------

def fingerprint_worker(params: dict[str, Any]) -> dict[str, Any]:
    import joblib
    import pyarrow as pa
    import xxhash

    from nbflow.hashing import fingerprint

    rows, rounds = params["rows"], params["rounds"]
    cases: dict[str, tuple[Any, int, list[Any]]] = {}
    for dtype in DTYPES:
        frame = frame_of(rows, dtype)
        if dtype == "object":
            size = int(frame.memory_usage(deep=True, index=False).sum())
            buffers: list[Any] = []
        else:
            buffers = [frame[c].array.__arrow_array__() for c in frame.columns]
            size = arrow_bytes(buffers)
        cases[dtype] = (frame, size, buffers)
    table = pa.Table.from_pandas(cases["str"][0], preserve_index=False)
    cases["pyarrow Table"] = (table, arrow_bytes(table.columns), list(table.columns))

    def floor(buffers: list[Any]) -> None:
        h = xxhash.xxh3_128()
        for column in buffers:
            for chunk in column.chunks:
                for buffer in chunk.buffers():
                    if buffer is not None:
                        h.update(buffer)
        h.digest()

    def cold(value: Any) -> Callable[[], Any]:
        def run() -> Any:
            forget_memos()
            return fingerprint(value)
        return run

    variants: dict[tuple[str, str], Callable[[], Any]] = {}
    for name, (value, _, buffers) in cases.items():
        variants[(name, "nbflow")] = cold(value)
        variants[(name, "nbflow, unchanged value")] = lambda value=value: fingerprint(value)
        if not params["quick"] or name == "object":
            variants[(name, "joblib.hash")] = lambda value=value: joblib.hash(value)
            variants[(name, "pickle->xxh3")] = lambda value=value: xxhash.xxh3_128_digest(pickle.dumps(value, 5))
        if buffers:
            variants[(name, "xxh3 over the arrow buffers")] = lambda buffers=buffers: floor(buffers)
    best: dict[tuple[str, str], float] = {}
    names = list(variants)
    for index in range(rounds):
        for key in names if index % 2 == 0 else names[::-1]:
            started = clock()
            variants[key]()
            seconds = clock() - started
            best[key] = min(best.get(key, seconds), seconds)
    return {"sizes": {name: size for name, (_, size, _) in cases.items()},
            "seconds": [[name, how, seconds] for (name, how), seconds in best.items()]}


def bench_fingerprint(report: Report, rows: int, rounds: int) -> None:
    title(f"fingerprint a DataFrame of {rows:,} rows x 3 string columns (best of {rounds}; GB/s over the arrow "
          "buffers, or the object column's deep memory usage)")
    result = run_worker("fingerprint", {"rows": rows, "rounds": rounds, "quick": report.quick})
    sizes = result["sizes"]
    seconds: dict[str, dict[str, float]] = {}
    for name, how, value in result["seconds"]:
        seconds.setdefault(name, {})[how] = value
    print(f"  {'':30s}{'':32s}{'ms':>10s}{'GB/s':>9s}")
    for name, rows_ in seconds.items():
        label = f"{name} ({sizes[name] / 1e6:.0f} MB)"
        for how, value in rows_.items():
            print(f"  {label:30s}{how:32s}{value * 1e3:10.2f}{sizes[name] / value / 1e9:9.2f}")
            label = ""
    report.results["fingerprint"] = {"sizes": sizes, "seconds": seconds}
    for name in ("str", "string[pyarrow]", "pyarrow Table"):
        ours = sizes[name] / seconds[name]["nbflow"] / 1e9
        detail = f"{ours:.1f} GB/s"
        ok = ours >= ARROW_GBS
        if "joblib.hash" in seconds[name]:
            ratio = seconds[name]["joblib.hash"] / seconds[name]["nbflow"]
            detail += f", {ratio:.0f}x joblib.hash"
            ok = ok and ratio >= ARROW_VS_JOBLIB
        report.target(f"fingerprint {name} strings >= {ARROW_GBS:g} GB/s, >= {ARROW_VS_JOBLIB:g}x joblib", ok, detail)
    ours = sizes["object"] / seconds["object"]["nbflow"] / 1e9
    report.target(f"fingerprint object strings >= {OBJECT_GBS:g} GB/s", ours >= OBJECT_GBS,
                  f"{ours:.2f} GB/s ({sizes['object'] / seconds['object']['joblib.hash'] / 1e9:.2f} joblib.hash)")


# -- 2. a global DataFrame read by a %%task cell ------------------------------------------------------------------

def global_worker(params: dict[str, Any]) -> dict[str, Any]:
    from IPython.core.displaypub import CapturingDisplayPublisher
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.display_pub = CapturingDisplayPublisher()
    shell.run_line_magic("load_ext", "nbflow")
    rows, hits = params["rows"], params["hits"]
    shell.user_ns["g_object"] = frame_of(rows, "object")
    shell.user_ns["g_str"] = frame_of(rows, "str")
    shell.user_ns["g_int"] = 7
    out: dict[str, dict[str, float]] = {}
    for name in ("g_object", "g_str", "g_int"):
        plain = f"r_{name} = len(str({name})[:0]) + 1"
        task = "%%task\n" + plain
        shell.run_cell(task)  # computes, stores
        times: dict[str, list[float]] = {"plain": [], "hit": []}
        for rep in range(hits):
            for kind in rotated(["plain", "hit"], rep):
                started = clock()
                shell.run_cell(plain if kind == "plain" else task)
                times[kind].append(clock() - started)
        out[name] = {kind: min(values) for kind, values in times.items()}
        out[name]["hit_median"] = statistics.median(times["hit"])
    return out


def bench_global(report: Report, rows: int, hits: int) -> None:
    title(f"a trivial %%task cell reading a global DataFrame of {rows:,} rows x 3 string columns, per hit "
          f"(in-process shell; best of {hits}, median in brackets)")
    result = run_worker("global", {"rows": rows, "hits": hits})
    for name, figures in result.items():
        print(f"  {name:10s} plain cell {figures['plain'] * 1e3:8.2f} ms   %%task hit {figures['hit'] * 1e3:8.2f} ms "
              f"({figures['hit_median'] * 1e3:.2f})")
    report.results["global"] = result


# -- 3. the notebook ---------------------------------------------------------------------------------

def notebook(path: Path, rows: int, dtype: str, tasks: bool) -> None:
    import nbformat

    build = (f"import pandas as pd\nrows = {rows}\n"
             "df = pd.DataFrame({f's{j}': pd.Series([f'user-{i % 50_000}-{j}-{i}' for i in range(rows)], "
             f"dtype={dtype!r}) for j in range(3)}})\n")
    cells = [build] + [f"r{i} = len(df) + {i}\n" for i in range(5)]
    if tasks:
        cells = ["%%task\n" + cell for cell in cells]
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), str(path))


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    started = clock()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=str(cwd), timeout=900)
    seconds = clock() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return seconds


def bench_notebook(report: Report, root: Path, rows: int, reps: int) -> None:
    title(f"a notebook: one cell builds a DataFrame of {rows:,} rows x 3 string columns, five trivial cells read "
          f"it, every cell %%task; whole process, start to exit (best of {reps}, medians in brackets)")
    bindir = Path(sys.executable).parent
    results: dict[str, Any] = {}
    for dtype in ("str", "object"):
        work = root / f"notebook-{dtype}"
        work.mkdir()
        env = bench_env(NBFLOW_HOME=str(work / "store"), NBFLOW_SECRET_FILE=str(work / "secret.key"),
                        IPYTHONDIR=str(work / "ipython"))
        notebook(work / "tasks.ipynb", rows, dtype, True)
        notebook(work / "plain.ipynb", rows, dtype, False)
        run = [str(bindir / "nbflow"), "run", "tasks.ipynb", "-o", "out.ipynb"]
        plain = [str(bindir / "jupyter"), "execute", "--output=plain-out.ipynb", "plain.ipynb"]
        first = timed(run, env, work)
        times: dict[str, list[float]] = {"no nbflow (jupyter execute)": [], "nbflow run, cached": []}
        for rep in range(reps):
            for name in rotated(list(times), rep):
                times[name].append(timed(plain if name.startswith("no") else run, env, work))
        out = (work / "out.ipynb").read_text()
        per_cell = [part.split(" (saved")[0] for part in out.split("restored from the cache in ")[1:]]
        print(f"  {dtype!r} strings")
        print(f"    {'nbflow run, first (computes, stores)':44s}{first:8.2f} s")
        for name, values in times.items():
            print(f"    {name:44s}{min(values):8.2f} s  ({statistics.median(values):.2f})")
        print(f"    each cell of the cached run: restored from the cache in {', '.join(per_cell)}")
        best = {name: min(values) for name, values in times.items()}
        results[dtype] = {"first": first, "best": best, "runs": times, "per_cell": per_cell}
        report.target(f"cached notebook ({dtype} strings) faster than no nbflow",
                      best["nbflow run, cached"] < best["no nbflow (jupyter execute)"],
                      f"{best['nbflow run, cached']:.2f} s vs {best['no nbflow (jupyter execute)']:.2f} s")
    report.results["notebook"] = results


# -- driver ------------------------------------------------------------------------------------------------

WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "fingerprint": fingerprint_worker,
    "global": global_worker,
}


def run_worker(case: str, params: dict[str, Any]) -> dict[str, Any]:
    """One section in a fresh process (its memory, its imports)."""
    done = subprocess.run([sys.executable, __file__, "--worker", case, json.dumps(params)], capture_output=True,
                          text=True, env=bench_env(), timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"worker {case} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small, fast run (the test suite's)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    parser.add_argument("--only", metavar="SECTION", action="append", help="run only these sections")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "PARAMS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        case, params = args.worker
        print(json.dumps(WORKERS[case](json.loads(params))))
        return 0
    quick = args.quick
    report = Report(quick=quick)
    started = clock()
    failed: list[str] = []
    print(textwrap.fill(f"nbflow string-column benchmarks ({'quick' if quick else 'full'} run), Python "
                        f"{sys.version.split()[0]}, {os.cpu_count()} cores.", 110))
    with tempfile.TemporaryDirectory(prefix="nbflow-bench-strings-", dir=os.environ.get("NBFLOW_BENCH_DIR")) as tmp:
        root = Path(tmp)
        sections: list[tuple[Callable[..., None], dict[str, Any]]] = [
            (bench_fingerprint, {"rows": 20_000, "rounds": 2} if quick else {"rows": 2_000_000, "rounds": 5}),
            (bench_global, {"rows": 5_000, "hits": 5} if quick else {"rows": 500_000, "hits": 15}),
            (bench_notebook, {"root": root, "rows": 20_000, "reps": 1} if quick
             else {"root": root, "rows": 2_000_000, "reps": 3}),
        ]
        for section, params in sections:
            if args.only and section.__name__.removeprefix("bench_") not in args.only:
                continue
            try:
                section(report, **params)
            except Exception as error:  # one broken section must not hide the others' figures
                failed.append(section.__name__)
                print(f"  FAILED: {error}", flush=True)
                report.target(f"{section.__name__} ran", False, "failed (see above)")
    print("\n== targets (string columns, issue 24) ==")
    for name, ok, detail in report.verdicts:
        print(f"  {'PASS' if ok else 'MISS'}  {name:62s} {detail}")
    met = sum(ok for _, ok, _ in report.verdicts)
    print(f"  {met} of {len(report.verdicts)} met")
    print(f"\n(total {clock() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": report.results, "targets": report.verdicts}, indent=1))
    if failed:
        print(f"sections that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if met < len(report.verdicts):
        print("string-column targets missed (see the MISS lines)", file=sys.stderr)
        return EXIT_MISSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
