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
4. A task returning a DataFrame with string columns (``str`` or ``object``) and two float64 columns: the time
   storing it adds to the call, and a fresh process's hit, next to pickle (dump + fsync, load), parquet via
   pyarrow (write + fsync, read + to_pandas), joblib.Memory and marimo's persistent_cache. Every measurement
   in a fresh process.

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

from _marimo_cases import NOT_INSTALLED, frame_result  # noqa: E402
from _marimo_cases import installed as marimo_installed  # noqa: E402
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


# -- 4. a DataFrame result with string columns: store, and a fresh process's hit --------------------------------

# marimo's persistent_cache where it installs (the bench extra): benchmarks/_marimo_cases.py
RESULT_LIBS = ["nbflow", "pickle", "parquet", "joblib", *(["marimo"] if marimo_installed() else [])]


def make_frame(seed: int, rows: int, dtype: str) -> Any:
    """The result: ``rows`` rows, three string columns of ``dtype`` and two float64 columns."""
    import numpy as np

    frame = frame_of(rows, dtype)
    frame["x"] = np.arange(rows, dtype=np.float64) + seed
    frame["y"] = np.full(rows, float(seed))
    return frame


_FRAMES: dict[int, Any] = {}


def stored_frame(seed: int) -> Any:
    """The task whose result is stored: a frame built before the clock started (its own work: a lookup)."""
    return _FRAMES[seed]


def result_worker(params: dict[str, Any]) -> dict[str, Any]:
    """One store or one fresh-process load of the result by one library (this process is new)."""
    import pandas  # noqa: F401 (imported before any clock starts, as a task's warm-up call imports it)
    import pyarrow as pa
    import pyarrow.parquet as pq

    lib, home, rows, dtype, step = params["lib"], params["home"], params["rows"], params["dtype"], params["step"]
    if lib == "marimo":
        return frame_result(params)
    os.makedirs(home, exist_ok=True)
    path = os.path.join(home, "frame." + ("parquet" if lib == "parquet" else "pkl"))
    if step == "store":
        _FRAMES.update({0: make_frame(0, 10, dtype), 1: make_frame(1, rows, dtype)})
    if lib in ("pickle", "parquet"):
        if step == "store":
            started = clock()
            with open(path, "wb") as file:
                if lib == "pickle":
                    pickle.dump(_FRAMES[1], file, protocol=5)
                else:
                    pq.write_table(pa.Table.from_pandas(_FRAMES[1]), file)
                file.flush()
                os.fsync(file.fileno())
            return {"seconds": clock() - started}
        started = clock()
        if lib == "pickle":
            with open(path, "rb") as file:
                frame = pickle.load(file)
        else:
            frame = pq.read_table(path).to_pandas()
        return {"seconds": clock() - started, "rows": len(frame)}
    if lib == "nbflow":
        import nbflow

        nbflow.configure(home=home)
        # A key of the seed alone: what is measured is storing and loading the result, not fingerprinting it.
        call = nbflow.task(cache_key_fn=lambda context, parameters: f"frame-{parameters['seed']}")(stored_frame)
    else:
        import joblib

        call = joblib.Memory(home, verbose=0).cache(stored_frame)
    call(0)  # warm-up: imports, the store, a tiny entry of the same task
    started = clock()
    frame = call(1)
    return {"seconds": clock() - started, "rows": len(frame)}


def bench_result(report: Report, root: Path, rows: int, reps: int) -> None:
    title(f"a DataFrame result of {rows:,} rows (3 string columns, 2 float64), built before the clock starts: "
          f"store (files fsynced; a task returning it, its key the seed alone) and a fresh process's hit (best of "
          f"{reps})")
    results: dict[str, Any] = {}
    for dtype in ("str", "object"):
        times: dict[str, dict[str, list[float]]] = {lib: {"store": [], "hit": []} for lib in RESULT_LIBS}
        for rep in range(reps):
            for lib in rotated(RESULT_LIBS, rep):
                home = str(root / "result" / f"{dtype}-{lib}-{rep}")
                for step in ("store", "hit"):
                    params = {"lib": lib, "home": home, "rows": rows, "dtype": dtype, "step": step}
                    times[lib][step].append(run_worker("result", params)["seconds"])
        best = {lib: {step: min(values) for step, values in steps.items()} for lib, steps in times.items()}
        print(f"  {dtype!r} strings{'':26s}{'store':>10s}{'hit':>10s}")
        for lib in RESULT_LIBS:
            print(f"    {lib:36s}{best[lib]['store']:9.2f}s{best[lib]['hit']:9.2f}s")
        if "marimo" not in RESULT_LIBS:
            print(f"    {NOT_INSTALLED}")
        results[dtype] = best
        ours, pickled = best["nbflow"], best["pickle"]
        report.target(f"{dtype} DataFrame result: store and hit no slower than pickle",
                      ours["store"] <= pickled["store"] and ours["hit"] <= pickled["hit"],
                      f"store {best['nbflow']['store']:.2f} s vs {best['pickle']['store']:.2f}, hit "
                      f"{best['nbflow']['hit']:.2f} s vs {best['pickle']['hit']:.2f}")
    report.results["result"] = results


# -- driver ------------------------------------------------------------------------------------------------

WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "fingerprint": fingerprint_worker,
    "global": global_worker,
    "result": result_worker,
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
            (bench_result, {"root": root, "rows": 20_000, "reps": 1} if quick
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
