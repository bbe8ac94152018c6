"""nbflow against its peers and the physical floors, side by side in one run, with the ratios and a
PASS/MISS mark per performance target.

Every figure is a median over interleaved repetitions (each library in turn, the order rotating from one
repetition to the next), and where it says "fresh process" each repetition is a new Python process running
``_worker.py``, which prints its timings as JSON. The machine is shared and noisy: only the ratios measured
in the same run mean much, so compare those, not absolute times across runs.

Run with ``make bench`` (or ``python benchmarks/bench_overhead.py [--quick] [--json FILE]``); the Prefect
comparison is ``make bench-prefect`` (``benchmarks/bench_prefect.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_worker.py"
PEERS = ["nbflow", "joblib", "diskcache", "floor"]
# marimo's persistent_cache (benchmarks/_marimo_cases.py): a peer of the per-call and large-result sections where
# it installs (the bench extra); without it, those tables print "marimo: not installed" in its place.
MARIMO = "marimo"
LABELS = {"nbflow": "nbflow task", "nbflow-aged": "nbflow task, entries older than a minute",
          "joblib": "joblib.Memory", "marimo": "marimo persistent_cache", "diskcache": "diskcache memoize",
          "floor": "bare floor (pickle+xxh3, diskcache get/set)", "np.save": "np.save (+fsync)",
          "np.load": "np.load", "np.load mmap": "np.load(mmap_mode='r')"}


def bench_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmark process: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset together (set on
    some machines for old OpenBLAS builds, they slow a current numpy down)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env.update(extra)
    return env


def worker(case: str, params: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one case of ``_worker.py`` in a fresh process and return its JSON result."""
    done = subprocess.run([sys.executable, str(WORKER), case, json.dumps(params)], capture_output=True,
                          text=True, env=env or bench_env(), timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark case {case} {params} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def wall(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> float:
    """Wall-clock seconds of a whole process, start to exit."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env or bench_env(), cwd=cwd, timeout=900)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return seconds


def marimo_installed() -> bool:
    """Whether marimo is importable here (found without importing it: nbflow's process stays as it was)."""
    return importlib.util.find_spec("marimo") is not None


def with_marimo(libs: list[str], after: str = "joblib") -> list[str]:
    """``libs`` with marimo beside ``after`` when it is installed; ``libs`` as they are when it is not."""
    if not marimo_installed():
        return libs
    at = libs.index(after) + 1
    return [*libs[:at], MARIMO, *libs[at:]]


def not_installed(libs: list[str]) -> None:
    """The row of a peer that is not installed: a line saying so, in place of its figures."""
    if MARIMO not in libs:
        print(f"  {MARIMO}: not installed")


def rotated(items: list[str], rep: int) -> list[str]:
    k = rep % len(items)
    return items[k:] + items[:k]


def med(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class Report:
    """Collects the printed tables and the targets' verdicts."""

    quick: bool
    results: dict[str, Any] = field(default_factory=dict)
    verdicts: list[tuple[str, bool, str]] = field(default_factory=list)

    def target(self, name: str, ok: bool, detail: str) -> None:
        self.verdicts.append((name, ok, detail))

    def print_targets(self) -> None:
        print("\n== targets (issue 9) ==")
        for name, ok, detail in self.verdicts:
            print(f"  {'PASS' if ok else 'MISS'}  {name:58s} {detail}")
        met = sum(ok for _, ok, _ in self.verdicts)
        print(f"  {met} of {len(self.verdicts)} met")


def title(text: str) -> None:
    print(f"\n== {text} ==", flush=True)


# -- 1. a trivial task: miss, and hit in a fresh process ------------------------------------------------

def bench_calls(report: Report, root: Path, reps: int, n: int) -> None:
    title(f"trivial task, per call: miss, and hit in a fresh process ({n} calls per process, "
          f"median of {reps} interleaved repetitions; µs, the plain call's time subtracted)")
    libs = [*with_marimo(PEERS), "nbflow-aged"]
    miss: dict[str, list[float]] = {lib: [] for lib in libs}
    hit: dict[str, list[float]] = {lib: [] for lib in libs}
    for rep in range(reps):
        for lib in rotated(libs, rep):
            home = str(root / "calls" / f"{lib}-{rep}")
            params = {"lib": lib, "home": home, "n": n}
            first = worker("calls", params)
            miss[lib].append(first["per_call"] - first["plain"])
            second = worker("calls", params)
            if second["state"] not in (None, "Cached"):
                raise RuntimeError(f"a fresh process of {lib} did not hit the entries an earlier one stored: "
                                   f"{second['state']}")
            hit[lib].append(second["per_call"] - second["plain"])
    m = {lib: med(v) * 1e6 for lib, v in miss.items()}
    h = {lib: med(v) * 1e6 for lib, v in hit.items()}
    print(f"  {'':46s}{'miss µs':>10s}{'hit µs':>10s}{'miss/nbflow':>13s}{'hit/nbflow':>12s}")
    for lib in libs:
        print(f"  {LABELS[lib]:46s}{m[lib]:10.1f}{h[lib]:10.1f}{m[lib] / m['nbflow']:12.2f}x"
              f"{h[lib] / h['nbflow']:11.2f}x")
    not_installed(libs)
    print("  (a ratio above 1 means nbflow is faster; the floor is the least a durable cache can do; the targets use"
          " the first row: hits on entries a few seconds old, which nbflow's store only reads)")
    report.results["calls"] = {"miss_us": m, "hit_us": h, "n": n, "reps": reps}
    report.target("hit of a trivial task <= 25 µs", h["nbflow"] <= 25, f"{h['nbflow']:.1f} µs")
    report.target("hit >= 12x faster than joblib.Memory", h["joblib"] / h["nbflow"] >= 12,
                  f"{h['joblib'] / h['nbflow']:.1f}x")
    report.target("hit within 1.2x of the bare floor", h["nbflow"] / h["floor"] <= 1.2,
                  f"{h['nbflow'] / h['floor']:.2f}x the floor")
    report.target("miss overhead <= 200 µs", m["nbflow"] <= 200, f"{m['nbflow']:.0f} µs")
    report.target("miss >= 3x faster than joblib.Memory", m["joblib"] / m["nbflow"] >= 3,
                  f"{m['joblib'] / m['nbflow']:.2f}x")


# -- 2. import and the first cached result in a fresh process --------------------------------------------

def bench_first(report: Report, root: Path, reps: int) -> None:
    title(f"a fresh process: `import nbflow`, then the first cached result (median of {reps})")
    home = str(root / "first")
    worker("calls", {"lib": "nbflow", "home": home, "n": 1})  # stores the entry the first call hits
    # Compiled first, as `make bench` does for the whole venv: with PYTHONDONTWRITEBYTECODE=1 set, a module
    # edited since the last compile would otherwise be compiled again by every process.
    import nbflow

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(nbflow.__file__).parent)],
                   capture_output=True, check=False)
    cold_cache = str(root / "no-pycache")
    variants = {
        "compiled (.pyc present)": bench_env(),
        "PYTHONDONTWRITEBYTECODE=1, no .pyc": bench_env(PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=cold_cache),
    }
    found: dict[str, dict[str, list[float]]] = {name: {"import": [], "first": []} for name in variants}
    processes: dict[str, list[float]] = {"python -c pass": [], "python -c 'import nbflow'": []}
    for rep in range(reps):
        for name in rotated(list(variants), rep):
            result = worker("first", {"lib": "nbflow", "home": home}, env=variants[name] | {"NBFLOW_HOME": home})
            found[name]["import"].append(result["import"])
            found[name]["first"].append(result["first"])
        processes["python -c pass"].append(wall([sys.executable, "-c", "pass"]))
        processes["python -c 'import nbflow'"].append(wall([sys.executable, "-c", "import nbflow"]))
    for name, values in found.items():
        print(f"  {name:40s} import nbflow {med(values['import']) * 1e3:7.1f} ms   first cached result "
              f"{med(values['first']) * 1e3:7.1f} ms after it")
    for name, values in processes.items():
        print(f"  whole process {name:27s}{med(values) * 1e3:7.1f} ms")
    compiled = found["compiled (.pyc present)"]
    imp, first = med(compiled["import"]) * 1e3, med(compiled["first"]) * 1e3
    report.results["first"] = {name: {k: med(v) for k, v in values.items()} for name, values in found.items()}
    report.results["first"]["processes"] = {name: med(v) for name, v in processes.items()}
    report.target("import nbflow <= 100 ms", imp <= 100, f"{imp:.1f} ms")
    report.target("first cached result <= 100 ms after the import", first <= 100, f"{first:.1f} ms")


# -- 3. "Restart & Run All" of 20 cached tasks ----------------------------------------------------------

def rerun_script(lib: str, home: str) -> str:
    """A notebook-equivalent script: 20 distinct cached tasks, each fed the previous one's result."""
    steps = "\n".join(f"@cache\ndef step_{i}(x):\n    return x + {i}\n" for i in range(20))
    setup = {
        "nbflow": f"import nbflow\nnbflow.configure(home={home!r})\ncache = nbflow.task\n",
        "joblib": f"import joblib\ncache = joblib.Memory({home!r}, verbose=0).cache\n",
        "diskcache": f"import diskcache\ncache = diskcache.Cache({home!r}).memoize()\n",
        "floor": f"import sys\nsys.path.insert(0, {str(HERE)!r})\nfrom _worker import floor_cached\n"
                 f"def cache(fn):\n    return floor_cached(fn, {home!r})\n",
    }[lib]
    calls = "x = 1\n" + "".join(f"x = step_{i}(x)\n" for i in range(20)) + "print(x)\n"
    return setup + "\n" + steps + "\n" + calls


def rerun_notebook(path: Path) -> None:
    import nbformat

    cells = [nbformat.v4.new_code_cell("import nbflow")]
    cells += [nbformat.v4.new_code_cell(f"@nbflow.task\ndef step_{i}(x):\n    return x + {i}\n") for i in range(20)]
    cells += [nbformat.v4.new_code_cell("x = 1\n" + "".join(f"x = step_{i}(x)\n" for i in range(20)) + "x")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), str(path))


def bench_rerun(report: Report, root: Path, reps: int, with_notebook: bool) -> None:
    title(f"'Restart & Run All' of 20 cached tasks: the whole second process, start to exit (median of {reps})")
    scripts = {}
    for lib in PEERS:
        directory = root / "rerun" / lib
        directory.mkdir(parents=True)
        script = directory / "run_all.py"
        script.write_text(rerun_script(lib, str(directory / "store")))
        wall([sys.executable, str(script)])  # the first run computes and stores
        scripts[lib] = script
    times: dict[str, list[float]] = {lib: [] for lib in [*PEERS, "python -c pass"]}
    for rep in range(reps):
        for lib in rotated(list(times), rep):
            argv = [sys.executable, "-c", "pass"] if lib == "python -c pass" else [sys.executable, str(scripts[lib])]
            times[lib].append(wall(argv))
    t = {lib: med(v) for lib, v in times.items()}
    for lib, seconds in t.items():
        print(f"  {LABELS.get(lib, lib):46s}{seconds:8.3f} s   ({seconds / t['nbflow']:.2f}x nbflow)")
    report.results["rerun"] = t
    if with_notebook:
        notebook = root / "rerun" / "run_all.ipynb"
        rerun_notebook(notebook)
        nbflow_cli = str(Path(sys.executable).with_name("nbflow"))
        env = bench_env(NBFLOW_HOME=str(root / "rerun" / "notebook-store"))
        out = str(root / "rerun" / "out.ipynb")
        wall([nbflow_cli, "run", str(notebook), "-o", out], env=env)
        seconds = wall([nbflow_cli, "run", str(notebook), "-o", out], env=env)
        print(f"  for information: `nbflow run` of the same as a 22-cell notebook, second run {seconds:.2f} s "
              "(a kernel's start included)")
        report.results["rerun"]["nbflow run notebook"] = seconds
    report.target("Restart & Run All of 20 cached tasks <= 0.15 s", t["nbflow"] <= 0.15,
                  f"{t['nbflow']:.3f} s (process start alone {t['python -c pass']:.3f} s)")


# -- 4. fingerprints of large inputs ---------------------------------------------------------------------

def bench_fingerprint(report: Report, size: int, rounds: int, object_rows: int) -> None:
    title(f"fingerprint throughput of large inputs, in one process (best of {rounds} interleaved rounds)")
    result = worker("fingerprint", {"size": size, "rounds": rounds, "object_rows": object_rows,
                                    "quick": report.quick})
    rates = result["rates"]
    copy = rates["memory copy"]
    print(f"  {'':36s}{'GB/s':>8s}{'of copy':>10s}")
    for name, rate in rates.items():
        what = (f"{name} ({result['object_bytes'] / 1e6:.0f} MB)" if "object" in name
                else f"{name} ({result.get('str_bytes', 0) / 1e6:.0f} MB)" if "str column" in name
                else f"{name} ({result['size'] / 1e9:g} GB)")
        print(f"  {what:36s}{rate / 1e9:8.2f}{rate / copy:9.0%}")
    print("  (a copy reads and writes every byte, a hash only reads it; xxh3 over the raw buffer is the ceiling "
          "for a fingerprint)")
    print(f"  peak memory allocated while fingerprinting the array and its DataFrame: "
          f"{result['peak_alloc'] / 1e6:.2f} MB (the data is {result['size'] / 1e9:g} GB: no copy)")
    print(f"  object column hashed by value (equal strings alike, a changed one not): {result['object_by_value']}")
    report.results["fingerprint"] = result
    ours = min(rates["nbflow ndarray"], rates["nbflow DataFrame"], rates["nbflow arrow Table"])
    report.target("fingerprint numeric inputs >= 60% of memory copy", ours >= 0.6 * copy,
                  f"slowest of ndarray/DataFrame/arrow {ours / copy:.0%} of copy")
    report.target("fingerprint numeric inputs >= 10 GB/s", ours >= 10e9,
                  f"{ours / 1e9:.1f} GB/s (xxh3 over the raw buffer: {rates['xxh3 raw buffer'] / 1e9:.1f} GB/s)")
    report.target("no copy of the data while fingerprinting", result["peak_alloc"] < 0.01 * result["size"],
                  f"peak {result['peak_alloc'] / 1e6:.2f} MB")
    report.target("object-dtype columns hashed by value", bool(result["object_by_value"]),
                  f"at {rates['nbflow object column'] / 1e9:.2f} GB/s")


# -- 5. a large array result: store and fresh-process hit ------------------------------------------------

def bench_big(report: Report, root: Path, reps: int, size: int) -> None:
    mb = size * 8 / 1e6
    title(f"a {mb:.0f} MB float64 array result: store, and hit in a fresh process (median of {reps}; every "
          "store fsyncs its file only where the library does: nbflow and np.save here; joblib, marimo and diskcache "
          "don't)")
    libs = with_marimo(["nbflow", "np.save", "joblib", "floor"])
    store: dict[str, list[float]] = {lib: [] for lib in libs}
    hits: dict[str, list[float]] = {lib: [] for lib in [*libs, "np.load mmap"]}
    touch: dict[str, list[float]] = {lib: [] for lib in hits}
    mapped: dict[str, bool] = {}
    for rep in range(reps):
        homes = {}
        for lib in rotated(libs, rep):
            homes[lib] = str(root / "big" / f"{lib}-{rep}")
            store[lib].append(worker("bigstore", {"lib": lib, "home": homes[lib], "size": size})["seconds"])
        for lib in rotated([*libs, "np.load mmap"], rep):
            name = {"np.save": "np.load"}.get(lib, lib)
            home = homes["np.save" if lib == "np.load mmap" else lib]
            result = worker("bighit", {"lib": name, "home": home, "size": size})
            hits[lib].append(result["seconds"])
            touch[lib].append(result["touch"])
            mapped[lib] = result["no_own_data"]
        shutil.rmtree(root / "big")
    s = {lib: med(v) for lib, v in store.items()}
    h = {lib: med(v) for lib, v in hits.items()}
    tt = {lib: med(v) for lib, v in touch.items()}
    print(f"  {'':46s}{'store ms':>10s}{'hit ms':>9s}{'+ read ms':>11s}")
    for lib in hits:
        label = {"np.save": "np.save (+fsync) / np.load"}.get(lib, LABELS.get(lib, lib))
        stored = f"{s[lib] * 1e3:10.1f}" if lib in s else f"{'':10s}"
        print(f"  {label:46s}{stored}{h[lib] * 1e3:9.1f}{tt[lib] * 1e3:11.1f}")
    not_installed(libs)
    print("  (hit: the call or load; + read: then reading one value per page of the result, which a memory-mapped"
          " load pays there)")
    report.results["big"] = {"store": s, "hit": h, "touch": tt, "mapped": mapped, "mb": mb}
    report.target("large result: store <= 1.3x np.save (both fsync)", s["nbflow"] <= 1.3 * s["np.save"],
                  f"{s['nbflow'] / s['np.save']:.2f}x")
    ours, numpy_load = h["nbflow"] + tt["nbflow"], h["np.save"] + tt["np.save"]
    report.target("large result: fresh-process hit <= 1.3x np.load", ours <= 1.3 * numpy_load,
                  f"{ours / numpy_load:.2f}x (load + first read of every page)")


# -- 6. a flow of many trivial tasks, with and without a live graph --------------------------------------

def bench_flow(report: Report, root: Path, reps: int, n: int, memory_n: int) -> None:
    title(f"a flow of {n:,} trivial cached tasks (all misses), fresh process per run (median of {reps} "
          "interleaved)")
    variants = {"no graph": False, "live TaskGraph": True}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for rep in range(reps):
        for name in rotated(list(variants), rep):
            home = str(root / "flow" / f"{rep}-{variants[name]}")
            runs[name].append(worker("flow", {"lib": "nbflow", "home": home, "n": n, "live": variants[name]}))
        shutil.rmtree(root / "flow")
    traced = worker("flow", {"lib": "nbflow", "home": str(root / "flow-traced"), "n": n, "live": False,
                             "trace": True})
    per_task = {name: med([r["per_task"] for r in rs]) for name, rs in runs.items()}
    for name, value in per_task.items():
        print(f"  {name:46s}{value * 1e6:8.1f} µs per task")
    plain = runs["no graph"]
    tenths = [med([r["tenths"][i] for r in plain]) for i in range(len(plain[0]["tenths"]))]
    per_tenth = [t / (n / len(tenths)) * 1e6 for t in tenths]
    # Growth as the second half against the first: a tenth is the cost of its calls plus whichever of the run
    # history's batch writes (one per 2,000 task runs, or a quarter second) fall in it, so single tenths
    # saw-tooth, and the first has none; halves each hold a share of them. For a cost rising steadily, a
    # second half 1.25x the first is the slope of a last tenth 1.5x the first.
    half = len(per_tenth) // 2
    growth = statistics.fmean(per_tenth[half:]) / statistics.fmean(per_tenth[:half])
    print(f"  per tenth of the flow, µs per task: {' '.join(f'{v:.0f}' for v in per_tenth)}"
          f"  (second half / first half {growth:.2f}; last/first tenth {per_tenth[-1] / per_tenth[0]:.2f})")
    rss = med([r["rss_growth"] for r in plain]) / n
    kept = traced["traced_kept"] / n
    peak = traced["traced_peak"] / n
    print(f"  memory kept per task: {kept:,.0f} B (tracemalloc, after the flow; peak during it {peak:,.0f} B per task),"
          f" RSS growth {rss:,.0f} B per task")
    miss = report.results.get("calls", {}).get("miss_us", {}).get("nbflow")
    paired = med([a["seconds"] / b["seconds"] for a, b in zip(runs["live TaskGraph"], plain)])
    paired_cpu = med([a["cpu"] / b["cpu"] for a, b in zip(runs["live TaskGraph"], plain)])
    print(f"  live graph / no graph: wall {paired:.3f}, process CPU time {paired_cpu:.3f} (medians of the "
          "repetitions' ratios; the CPU ratio, all threads, is the steadier one: every miss writes to disk)")
    report.results["flow"] = {"per_task_us": {k: v * 1e6 for k, v in per_task.items()}, "per_tenth_us": per_tenth,
                              "kept_bytes_per_task": kept, "peak_bytes_per_task": peak, "rss_bytes_per_task": rss,
                              "growth_halves": growth, "live_ratio": paired, "live_cpu_ratio": paired_cpu}
    if miss:
        ratio = per_task["no graph"] * 1e6 / miss
        print(f"  per task / single-call miss overhead ({miss:.0f} µs): {ratio:.2f}")
        report.target("flow: per-task overhead within 2x of a single-call miss", ratio <= 2, f"{ratio:.2f}x")
    report.target("flow: no growth of the per-task cost (second half <= 1.25x first)", growth <= 1.25,
                  f"{growth:.2f}")
    report.target("flow: memory kept per task bounded (<= 10 kB)", kept <= 10_000, f"{kept:,.0f} B per task")
    # A long flow, alone in its process: the most private memory it used (a run keeps its newest 10,000 task
    # runs in memory; RSS also counts the store database's pages SQLite maps, which are the file's).
    big = worker("flow", {"lib": "nbflow", "home": str(root / "flow-memory"), "n": memory_n, "live": False})
    private, resident = big["anon_peak_growth"] / memory_n, big["rss_peak_growth"] / memory_n
    print(f"  a flow of {memory_n:,} calls: peak private memory {private:,.0f} B per call (anonymous RSS, sampled "
          f"every tenth); peak RSS {resident:,.0f} B per call (with the store's memory-mapped database)")
    report.results["flow"] |= {"memory_calls": memory_n, "private_peak_bytes_per_call": private,
                               "rss_peak_bytes_per_call": resident}
    if memory_n >= 100_000:  # fewer calls measure the process's fixed costs, not what each call keeps
        report.target(f"flow of {memory_n:,} calls: peak private memory <= 1 kB per call", private <= 1000,
                      f"{private:,.0f} B per call")
    report.target("flow: a live TaskGraph costs <= 10% (CPU time)", paired_cpu <= 1.10,
                  f"{(paired_cpu - 1) * 100:+.1f} % CPU, {(paired - 1) * 100:+.1f} % wall")


# -- 7. Task.submit on the default thread pool ------------------------------------------------------------

def bench_submit(report: Report, root: Path, n: int, rounds: int) -> None:
    title(f"Task.submit on the default thread pool: {n} submits then a wait, against {n} direct calls in the "
          f"same flow (an uncached task; median of {rounds} interleaved rounds)")
    result = worker("submit", {"lib": "nbflow", "home": str(root / "submit"), "n": n, "rounds": rounds})
    direct, submitted = result["direct"] * 1e6, result["submit"] * 1e6
    overhead = submitted - direct
    print(f"  direct call {direct:.1f} µs per task, submit + result {submitted:.1f} µs per task: "
          f"submit overhead {overhead:.1f} µs")
    report.results["submit"] = {"direct_us": direct, "submit_us": submitted}
    report.target("submit overhead per task <= 100 µs", overhead <= 100, f"{overhead:.1f} µs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small, fast run (the test suite's: under a minute)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    args = parser.parse_args()
    quick = args.quick
    report = Report(quick=quick)
    started = time.perf_counter()
    failed: list[str] = []
    print(textwrap.fill(f"nbflow benchmarks ({'quick' if quick else 'full'} run), Python "
                        f"{sys.version.split()[0]}, {os.cpu_count()} cores; medians over interleaved "
                        "repetitions; compare the ratios, which are measured side by side in this run.", 110))
    with tempfile.TemporaryDirectory(prefix="nbflow-bench-", dir=os.environ.get("NBFLOW_BENCH_DIR")) as tmp:
        root = Path(tmp)
        sections: list[tuple[Callable[..., None], dict[str, Any]]] = [
            (bench_calls, {"reps": 1, "n": 100} if quick else {"reps": 7, "n": 1000}),
            (bench_first, {"reps": 1} if quick else {"reps": 7}),
            (bench_rerun, {"reps": 1, "with_notebook": False} if quick else {"reps": 7, "with_notebook": True}),
            (bench_fingerprint, {"size": 20 * 10**6, "rounds": 1, "object_rows": 20_000} if quick
             else {"size": 10**9, "rounds": 3, "object_rows": 1_000_000}),
            (bench_big, {"reps": 1, "size": 10**6} if quick else {"reps": 5, "size": 100 * 10**6 // 8}),
            (bench_flow, {"reps": 1, "n": 300, "memory_n": 3000} if quick
             else {"reps": 5, "n": 10_000, "memory_n": 100_000}),
            (bench_submit, {"n": 100, "rounds": 1} if quick else {"n": 1000, "rounds": 5}),
        ]
        for section, params in sections:
            try:
                if section is bench_fingerprint:
                    section(report, **params)
                else:
                    section(report, root, **params)
            except Exception as error:  # one broken section must not hide the others' figures
                failed.append(section.__name__)
                print(f"  FAILED: {error}", flush=True)
                report.target(f"{section.__name__} ran", False, "failed (see above)")
    report.print_targets()
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": report.results, "targets": report.verdicts}, indent=1))
    if failed:
        print(f"sections that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
