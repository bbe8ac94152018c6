"""Auto mode (``%nbflow auto``, ``nbflow run --auto``) and ``%%task``: what they cost a trivial cell, and what
auto mode saves a notebook of slow cells, with a PASS/MISS mark per performance target.

1. A trivial cell (``p_3 = 3``) run plain (the extension loaded, auto mode off), as an auto-mode miss (a new
   cell source each time, so nothing is cached), as an auto-mode hit (the same cell again), and the same
   two with a ``%%task`` line (auto mode off), per cell: in
   an in-process IPython shell (a fresh process, ``--shell-worker``), once with a near-empty namespace and
   once with 2,000 more names in it; and in a real kernel (jupyter_client, 127.0.0.1) as the round trip of
   an execute request, from the request sent to the kernel's idle status, and as the kernel's own
   busy-to-idle time. The three kinds run in interleaved batches (the order rotating from one round to the
   next) in the same shell or kernel; the targets use the best batch of each kind, the medians are printed
   beside them. IPython's ``_iN`` history names are removed between batches (outside the clock), so every
   batch sees the same namespace; the 2,000-names row shows what a bigger one costs.
2. A notebook of cells that each take a second, run by ``nbflow run --auto`` twice against one fresh store:
   the second run is served from the cache, and should cost little more than starting a kernel (the same
   command on an empty notebook).
3. Thousands of hits of one ``%%task`` cell in one shell: the memory nbflow's code holds stays flat (the
   session run keeps its newest task runs; a smaller limit than the default shows it within the run).

Run with ``make bench`` (or ``python benchmarks/bench_auto.py [--quick] [--json FILE]``). Exit status: 0
when every target is met, 3 when a target is missed, 1 when a section could not run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
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

KINDS = ["plain", "miss", "hit", "task miss", "task hit"]
OVERHEADS = [kind for kind in KINDS if kind != "plain"]
EXIT_MISSED = 3  # a target missed (1: a section failed to run)
# The targets (issue: auto mode): the overhead auto mode adds to a trivial cell, and a cached re-run.
MISS_OVERHEAD_MS = 2.0
HIT_OVERHEAD_MS = 1.0
# The targets of issue 24: the overhead a `%%task` line adds to a trivial cell, computed and restored.
TASK_MISS_OVERHEAD_MS = 1.0
TASK_HIT_OVERHEAD_MS = 1.0
RERUN_SHARE = 0.10
# Removes IPython's `_iN` history names (one per executed cell) outside the clock.
PRUNE = "[globals().pop(_k) for _k in [_k for _k in globals() if _k[:2] == '_i' and _k[2:].isdigit()]]\n"


def cell_code(kind: str, index: int, serial: int) -> tuple[str, str]:
    """(source, cell id) of the ``index``-th cell of a batch. A miss is a cell edited since its last run (a new
    constant: a new cache key, the same variable); a hit is the same cell, run again. The ``task`` kinds are
    the same cells under a ``%%task`` line (run with auto mode off)."""
    if kind == "plain":
        return f"p_{index} = {serial}", f"p{index}"
    if kind == "miss":
        return f"m_{index} = {serial}", f"m{index}"
    if kind == "hit":
        return "h_1 = 1", "h"
    if kind == "task miss":
        return f"%%task\nt_{index} = {serial}", f"t{index}"
    return "%%task\nth_1 = 1", "th"


def summarize(batches: dict[str, list[float]]) -> dict[str, Any]:
    """Best and median per-cell seconds of each kind, and the overheads of auto mode and ``%%task`` (each kind -
    plain) in ms."""
    best = {kind: min(values) for kind, values in batches.items()}
    median = {kind: statistics.median(values) for kind, values in batches.items()}
    return {
        "best_ms": {kind: value * 1e3 for kind, value in best.items()},
        "median_ms": {kind: value * 1e3 for kind, value in median.items()},
        "overhead_ms": {kind: (best[kind] - best["plain"]) * 1e3 for kind in OVERHEADS},
        "median_overhead_ms": {kind: (median[kind] - median["plain"]) * 1e3 for kind in OVERHEADS},
        "batches_ms": {kind: [value * 1e3 for value in values] for kind, values in batches.items()},
    }


def check(kind: str, metadata: list[dict[str, Any]], n: int) -> None:
    """Every cell of a batch of ``n`` was what it was meant to be: no status line for a plain cell, "computed"
    for a miss, "cached" for a hit (from the status lines' metadata); a ``%%task`` hit shows its "restored from
    the cache" notice, a ``%%task`` miss (and a plain cell) none."""
    states = [meta.get("nbflow", {}).get("cell_status", {}).get("cell_state") for meta in metadata]
    states = [state for state in states if state is not None]
    notices = sum(bool(meta.get("nbflow", {}).get("cache_notice")) for meta in metadata)
    expected = {"miss": ["computed"], "hit": ["cached"]}.get(kind, [])
    if sorted(set(states)) != expected:
        raise RuntimeError(f"{kind} cells showed the states {sorted(set(map(str, states)))}, not {expected}")
    if notices != (n if kind == "task hit" else 0):
        raise RuntimeError(f"{kind} cells showed {notices} cache notices for {n} cells")


# -- 1a. the in-process shell (in a fresh process: python bench_auto.py --shell-worker JSON) -----------------

def shell_worker(params: dict[str, Any]) -> dict[str, Any]:
    """Batches of trivial cells in an in-process IPython shell; per-cell seconds of every batch, by kind."""
    from IPython.core.displaypub import CapturingDisplayPublisher
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.display_pub = CapturingDisplayPublisher()
    shell.run_line_magic("load_ext", "nbflow")
    from nbflow.ipython import auto_mode

    mode = auto_mode(shell, create=True)
    namespace = shell.user_ns
    namespace.update({f"v_{k}": k for k in range(params["names"])})
    n, rounds = params["n"], params["rounds"]
    serial = iter(range(10**9))

    def batch(kind: str) -> float:
        if kind in ("miss", "hit"):
            mode.enable()
        else:
            mode.disable()
        cells = [cell_code(kind, i, next(serial)) for i in range(n)]
        shell.run_cell(PRUNE, silent=True)
        shell.display_pub.outputs.clear()
        gc.collect()
        run = shell.run_cell
        started = time.perf_counter()
        for source, cell_id in cells:
            run(source, store_history=True, cell_id=cell_id)
        seconds = (time.perf_counter() - started) / n
        check(kind, [output["metadata"] for output in shell.display_pub.outputs], n)
        return seconds

    mode.enable()
    source, cell_id = cell_code("hit", 0, 0)
    shell.run_cell(source, store_history=True, cell_id=cell_id)  # stores the entry every hit then restores
    mode.disable()
    source, cell_id = cell_code("task hit", 0, 0)
    shell.run_cell(source, store_history=True, cell_id=cell_id)  # the same for the %%task hits
    for kind in KINDS:  # warm-up: imports, the store, the hit cell's entry
        for _ in range(3):
            batch(kind)
    batches: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for rep in range(rounds):
        for kind in rotated(KINDS, rep):
            batches[kind].append(batch(kind))
    return {"batches": batches, "namespace": len(namespace)}


def memory_worker(params: dict[str, Any]) -> dict[str, Any]:
    """``cells`` hits of one trivial ``%%task`` cell in an in-process shell, run as a kernel runs cells (with
    history), the session run keeping ``limit`` task runs in memory (nbflow's default is 10,000; a smaller
    limit shows the steady state within the run: the samples fall at the same point of its keep-and-drop
    cycle). From the first tenth on, tracemalloc notes where memory is allocated; after each tenth, what code
    of nbflow allocated and still holds, and the process's private memory (anonymous RSS, kB). IPython keeps
    every cell's source, compiled code and history in memory (about half a kilobyte per cell here, whatever
    the cell): its ``_iN`` names and captured displays are cleared as the loop goes, the rest is IPython's."""
    import tracemalloc

    from IPython.core.displaypub import CapturingDisplayPublisher
    from IPython.testing.globalipapp import get_ipython

    import nbflow.runs

    nbflow.runs._IN_MEMORY = params["limit"]
    shell = get_ipython()
    shell.display_pub = CapturingDisplayPublisher()
    shell.run_line_magic("load_ext", "nbflow")
    cells, tenth = params["cells"], params["cells"] // 10
    rss: list[int] = []
    held: list[int] = []
    ours = [tracemalloc.Filter(True, "*/nbflow/*", all_frames=True)]
    for i in range(cells):
        shell.run_cell("%%task\nmemory_x = 1", store_history=True)
        if i % 100 == 99:
            shell.run_cell(PRUNE, silent=True)
            shell.display_pub.outputs.clear()
            outputs = getattr(shell.history_manager, "outputs", None)
            if outputs is not None:
                outputs.clear()
        if (i + 1) % tenth == 0:
            gc.collect()
            with open("/proc/self/status") as status:
                rss.append(next(int(line.split()[1]) for line in status if line.startswith("RssAnon:")))
            if tracemalloc.is_tracing():
                held.append(sum(trace.size for trace in tracemalloc.take_snapshot().filter_traces(ours).traces))
            else:
                tracemalloc.start(10)
    tracemalloc.stop()
    return {"rss_kb": rss, "nbflow_held": held}


def run_shell_worker(params: dict[str, Any], env: dict[str, str], flag: str = "--shell-worker") -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, flag, json.dumps(params)], capture_output=True,
                          text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the in-process shell benchmark failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- 1b. a real kernel ------------------------------------------------------------------------------------

class Kernel:
    """A kernel started by jupyter_client on 127.0.0.1, sent execute requests as JupyterLab sends them."""

    def __init__(self, env: dict[str, str], cwd: str) -> None:
        from jupyter_client.manager import KernelManager

        self.manager = KernelManager(kernel_name="python3", ip="127.0.0.1")
        self.manager.start_kernel(env=env, cwd=cwd, stderr=subprocess.DEVNULL)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=120)
        self.busy_seconds = 0.0  # the sum of the requests' busy-to-idle times, by the kernel's clock

    def execute(self, code: str, cell_id: str | None = None, silent: bool = False) -> list[dict[str, Any]]:
        """Run ``code`` and wait for the reply and the kernel's idle status; the outputs' metadata."""
        client = self.client
        content = {"code": code, "silent": silent, "store_history": not silent, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": True}
        message = client.session.msg("execute_request", content, metadata={"cellId": cell_id} if cell_id else {})
        msg_id = message["header"]["msg_id"]
        client.shell_channel.send(message)
        metadata: list[dict[str, Any]] = []
        error = None
        busy = None
        while True:
            found = client.get_iopub_msg(timeout=60)
            if found["parent_header"].get("msg_id") != msg_id:
                continue
            kind = found["msg_type"]
            if kind in ("display_data", "update_display_data", "execute_result"):
                metadata.append(found["content"].get("metadata", {}))
            elif kind == "error":
                error = f"{found['content']['ename']}: {found['content']['evalue']}"
            elif kind == "status" and found["content"]["execution_state"] == "busy":
                busy = found["header"]["date"]
            elif kind == "status" and found["content"]["execution_state"] == "idle":
                if busy is not None:  # the kernel's own clock: its busy and idle messages' timestamps
                    self.busy_seconds += (found["header"]["date"] - busy).total_seconds()
                break
        reply = client.get_shell_msg(timeout=60)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = client.get_shell_msg(timeout=60)
        if error or reply["content"]["status"] != "ok":
            raise RuntimeError(f"kernel cell {code!r} failed: {error or reply['content']}")
        return metadata

    def shutdown(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=False)


def kernel_batches(env: dict[str, str], cwd: str, n: int, rounds: int) -> dict[str, Any]:
    kernel = Kernel(env, cwd)
    try:
        kernel.execute("%load_ext nbflow", "load")
        serial = iter(range(10**9))
        busy: dict[str, list[float]] = {kind: [] for kind in KINDS}

        def batch(kind: str) -> float:
            auto = "nbflow.ipython.auto_mode(get_ipython(), create=True)"
            switch = f"{auto}.enable()" if kind in ("miss", "hit") else f"{auto}.disable()"
            kernel.execute(f"import nbflow.ipython\n{switch}\n{PRUNE}import gc\ngc.collect()\n", silent=True)
            cells = [cell_code(kind, i, next(serial)) for i in range(n)]
            metadata: list[dict[str, Any]] = []
            execute = kernel.execute
            kernel.busy_seconds = 0.0
            started = time.perf_counter()
            for source, cell_id in cells:
                metadata += execute(source, cell_id)
            seconds = (time.perf_counter() - started) / n
            check(kind, metadata, n)
            busy[kind].append(kernel.busy_seconds / n)
            return seconds

        kernel.execute("import nbflow.ipython\nnbflow.ipython.auto_mode(get_ipython(), create=True).enable()",
                       silent=True)
        kernel.execute(*cell_code("hit", 0, 0))  # stores the entry every hit then restores
        kernel.execute("nbflow.ipython.auto_mode(get_ipython()).disable()", silent=True)
        kernel.execute(*cell_code("task hit", 0, 0))  # the same for the %%task hits
        for kind in KINDS:  # warm-up
            for _ in range(2):
                batch(kind)
        batches: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for values in busy.values():  # the warm-up's are dropped
            values.clear()
        for rep in range(rounds):
            for kind in rotated(KINDS, rep):
                batches[kind].append(batch(kind))
        return {"batches": batches, "busy": busy}
    finally:
        kernel.shutdown()


def bench_cells(report: Report, root: Path, n: int, rounds: int, names: int) -> None:
    title(f"auto mode, a trivial cell (`p_3 = 3`): plain, auto miss, auto hit; %%task miss, %%task hit; per cell "
          f"(ms; best of {rounds} interleaved batches of {n} cells, medians in brackets)")
    env = bench_env(NBFLOW_HOME=str(root / "cells-store"), NBFLOW_SECRET_FILE=str(root / "secret.key"),
                    IPYTHONDIR=str(root / "ipython"))
    rows: dict[str, dict[str, Any]] = {}
    shell = run_shell_worker({"n": n, "rounds": rounds, "names": 0}, env)
    rows["in-process shell"] = summarize(shell["batches"]) | {"namespace": shell["namespace"]}
    bigger = run_shell_worker({"n": n, "rounds": rounds, "names": names},
                              env | {"NBFLOW_HOME": str(root / "cells-store-names")})
    rows[f"in-process, {names:,} more names"] = summarize(bigger["batches"]) | {"namespace": bigger["namespace"]}
    (root / "kernel-cwd").mkdir()
    kernel = kernel_batches(env | {"NBFLOW_HOME": str(root / "cells-store-kernel")}, str(root / "kernel-cwd"),
                            n, rounds)
    rows["kernel round trip (127.0.0.1)"] = summarize(kernel["batches"])
    rows["kernel, busy to idle (its clock)"] = summarize(kernel["busy"])

    def cell(name: str, figures: dict[str, Any], kind: str) -> str:
        best = figures["overhead_ms" if name == "over" else "best_ms"][kind]
        median = figures["median_overhead_ms" if name == "over" else "median_ms"][kind]
        return f"{best:6.2f} ({median:5.2f})"

    small, big = rows["in-process shell"], rows[f"in-process, {names:,} more names"]
    per_k = {kind: (big["overhead_ms"][kind] - small["overhead_ms"][kind]) * 1e3
             / ((big["namespace"] - small["namespace"]) / 1000) for kind in OVERHEADS}
    for how, miss, hit in (("auto", "miss", "hit"), ("%%task", "task miss", "task hit")):
        print(f"  {'':32s}{'plain':>15s}{how + ' miss':>15s}{how + ' hit':>15s}{'miss overhead':>16s}"
              f"{'hit overhead':>15s}")
        for label, figures in rows.items():
            print(f"  {label:32s}{cell('t', figures, 'plain'):>15s}{cell('t', figures, miss):>15s}"
                  f"{cell('t', figures, hit):>15s}{cell('over', figures, miss):>16s}"
                  f"{cell('over', figures, hit):>15s}")
        print(f"  (overhead = {how} - plain, same shell or kernel; namespace {small['namespace']:,} names, then "
              f"{big['namespace']:,}: each 1,000 names more add {per_k[miss]:.0f} µs to a miss, {per_k[hit]:.0f} "
              "µs to a hit)")
    print("  (kernel round trip: from the execute request sent to the kernel's idle status received, as a front-end"
          " sees it;\n   busy to idle: the kernel's own time for the request, from its status messages' timestamps)")
    report.results["cells"] = rows
    for label in ("in-process shell", "kernel round trip (127.0.0.1)"):
        where = "in-process" if label.startswith("in-process") else "kernel"
        over = rows[label]["overhead_ms"]
        report.target(f"auto miss overhead ({where}) < {MISS_OVERHEAD_MS:g} ms", over["miss"] < MISS_OVERHEAD_MS,
                      f"{over['miss']:.2f} ms")
        report.target(f"auto hit overhead ({where}) < {HIT_OVERHEAD_MS:g} ms", over["hit"] < HIT_OVERHEAD_MS,
                      f"{over['hit']:.2f} ms")
    for label in ("in-process shell", "kernel round trip (127.0.0.1)"):
        where = "in-process" if label.startswith("in-process") else "kernel"
        over = rows[label]["overhead_ms"]
        report.target(f"%%task miss overhead ({where}) <= {TASK_MISS_OVERHEAD_MS:g} ms",
                      over["task miss"] <= TASK_MISS_OVERHEAD_MS, f"{over['task miss']:.2f} ms")
        report.target(f"%%task hit overhead ({where}) <= {TASK_HIT_OVERHEAD_MS:g} ms",
                      over["task hit"] <= TASK_HIT_OVERHEAD_MS, f"{over['task hit']:.2f} ms")


# -- 2. a notebook of slow cells, run twice by `nbflow run --auto` -------------------------------------------

def slow_notebook(path: Path, cells: int, seconds: float) -> None:
    import nbformat

    sources = [f"import time\ntime.sleep({seconds})\nx{k} = {k}" for k in range(1, cells + 1)]
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources]), str(path))


def nbflow_run(notebook: Path, home: Path, out_dir: Path, expected: dict[str, int]) -> float:
    """Wall seconds of ``nbflow run --auto NOTEBOOK`` (start to exit); its cells' states must be ``expected``."""
    argv = [str(Path(sys.executable).with_name("nbflow")), "run", "--auto", "--json", str(notebook)]
    env = bench_env(NBFLOW_HOME=str(home), NBFLOW_SECRET_FILE=str(out_dir / "secret.key"),
                    IPYTHONDIR=str(out_dir / "ipython"))
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=str(out_dir), timeout=600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    states: dict[str, int] = {}
    for row in json.loads(done.stdout)["cells"] or []:
        states[row["state"]] = states.get(row["state"], 0) + 1
    if states != expected:
        raise RuntimeError(f"`nbflow run --auto {notebook.name}`: the cells were {states}, not {expected}\n"
                           f"{done.stderr[-3000:]}")
    return seconds


def bare_kernel(env: dict[str, str], cwd: str) -> float:
    """Seconds to start a kernel, run a first cell and shut it down, as jupyter_client does."""
    started = time.perf_counter()
    kernel = Kernel(env, cwd)
    kernel.execute("pass")
    kernel.shutdown()
    return time.perf_counter() - started


def bench_notebook(report: Report, root: Path, cells: int, seconds: float, reps: int) -> None:
    title(f"a notebook of {cells} cells of {seconds:g} s each, `nbflow run --auto` twice on a fresh store, against "
          f"the same command on an empty notebook (whole process, start to exit; best of {reps}, medians in brackets)")
    work = root / "notebook"
    work.mkdir()
    notebook, empty = work / "slow.ipynb", work / "empty.ipynb"
    slow_notebook(notebook, cells, seconds)
    slow_notebook(empty, 0, 0)
    home = work / "store"
    first = nbflow_run(notebook, home, work, {"computed": cells})
    runs: dict[str, list[float]] = {"second run": [], "empty notebook": [], "bare kernel": []}
    kernel_env = bench_env(NBFLOW_HOME=str(work / "bare-store"), NBFLOW_SECRET_FILE=str(work / "secret.key"),
                           IPYTHONDIR=str(work / "ipython"))
    for rep in range(reps):
        for name in rotated(list(runs), rep):
            if name == "second run":
                took = nbflow_run(notebook, home, work, {"cached": cells})
            elif name == "empty notebook":
                took = nbflow_run(empty, work / "empty-store", work, {})
            else:
                took = bare_kernel(kernel_env, str(work))
            runs[name].append(took)
    best = {name: min(values) for name, values in runs.items()}
    median = {name: statistics.median(values) for name, values in runs.items()}
    limit = best["empty notebook"] + RERUN_SHARE * first
    rows = [("first run (computes, stores)", first, first),
            *((f"{name}{' (cached)' if name == 'second run' else ''}", best[name], median[name]) for name in runs)]
    labels = {"empty notebook": "empty notebook (kernel start-up)",
              "bare kernel": "bare kernel: start, one cell, shutdown"}
    for label, value, middle in rows:
        print(f"  {labels.get(label, label):46s}{value:8.2f} s  ({middle:.2f})")
    print(f"  second run - empty notebook: {best['second run'] - best['empty notebook']:+.3f} s for {cells} cached "
          f"cells; the target's limit: {best['empty notebook']:.2f} + {RERUN_SHARE:.0%} of {first:.2f} = {limit:.2f} s")
    report.results["notebook"] = {"first": first, "best": best, "median": median, "runs": runs, "limit": limit,
                                  "cells": cells, "seconds": seconds}
    report.target(f"cached re-run < kernel start-up + {RERUN_SHARE:.0%} of the first run",
                  best["second run"] < limit, f"{best['second run']:.2f} s < {limit:.2f} s")


# -- 3. a kernel's memory over many %%task hits ----------------------------------------------------------------

def bench_memory(report: Report, root: Path, cells: int, limit: int) -> None:
    title(f"{cells:,} hits of a trivial %%task cell in one in-process shell, with history: the memory nbflow holds "
          f"(the session run keeping {limit:,} task runs in memory)")
    env = bench_env(NBFLOW_HOME=str(root / "memory-store"), NBFLOW_SECRET_FILE=str(root / "secret.key"),
                    IPYTHONDIR=str(root / "ipython"))
    figures = run_shell_worker({"cells": cells, "limit": limit}, env, "--memory-worker")
    held, rss = figures["nbflow_held"], figures["rss_kb"]
    # From the middle of the run to its end (the first tenths include the session run filling up to its limit).
    middle = len(held) // 2
    growth = (held[-1] - held[middle - 1]) / ((len(held) - middle) * (cells // 10))
    print("  held by nbflow's code after each tenth from the second (tracemalloc, MB): "
          + " ".join(f"{size / 2**20:.2f}" for size in held))
    print(f"  growth over the second half: {growth:+,.1f} B per cell")
    print("  the whole process's private memory after each tenth (MB): " + " ".join(f"{kb / 1024:.0f}" for kb in rss))
    print("  (IPython keeps every cell's source, code and history, ~0.5 kB per cell with or without %%task; "
          "tracing adds its own)")
    report.results["memory"] = {"cells": cells, "limit": limit, "nbflow_held": held, "rss_kb": rss,
                                "nbflow_bytes_per_cell": growth}
    if cells >= 20 * limit:
        report.target("%%task hits: memory nbflow holds is bounded (<= 20 B/cell)", growth <= 20,
                      f"{growth:+,.1f} B per cell over the second half")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small, fast run (the test suite's)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    parser.add_argument("--shell-worker", metavar="PARAMS", help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", metavar="PARAMS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.shell_worker:
        print(json.dumps(shell_worker(json.loads(args.shell_worker))))
        return 0
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return 0
    quick = args.quick
    report = Report(quick=quick)
    started = time.perf_counter()
    failed: list[str] = []
    print(textwrap.fill(f"nbflow auto-mode benchmarks ({'quick' if quick else 'full'} run), Python "
                        f"{sys.version.split()[0]}, {os.cpu_count()} cores; best of interleaved batches, medians "
                        "in brackets.", 110))
    with tempfile.TemporaryDirectory(prefix="nbflow-bench-auto-", dir=os.environ.get("NBFLOW_BENCH_DIR")) as tmp:
        root = Path(tmp)
        sections: list[tuple[Callable[..., None], dict[str, Any]]] = [
            (bench_cells, {"n": 20, "rounds": 3, "names": 2000} if quick else {"n": 30, "rounds": 20, "names": 2000}),
            (bench_notebook, {"cells": 3, "seconds": 0.3, "reps": 1} if quick
             else {"cells": 6, "seconds": 1.0, "reps": 3}),
            (bench_memory, {"cells": 400, "limit": 100} if quick else {"cells": 8000, "limit": 400}),
        ]
        for section, params in sections:
            try:
                section(report, root, **params)
            except Exception as error:  # one broken section must not hide the others' figures
                failed.append(section.__name__)
                print(f"  FAILED: {error}", flush=True)
                report.target(f"{section.__name__} ran", False, "failed (see above)")
    print("\n== targets (auto mode) and %%task ==")
    for name, ok, detail in report.verdicts:
        print(f"  {'PASS' if ok else 'MISS'}  {name:58s} {detail}")
    met = sum(ok for _, ok, _ in report.verdicts)
    print(f"  {met} of {len(report.verdicts)} met")
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": report.results, "targets": report.verdicts}, indent=1))
    if failed:
        print(f"sections that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if met < len(report.verdicts):
        print("auto-mode targets missed (see the MISS lines)", file=sys.stderr)
        return EXIT_MISSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
