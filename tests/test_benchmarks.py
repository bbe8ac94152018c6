"""The benchmarks run (quick mode) and print their tables, ratios and target marks.

Timings are never asserted here: the machine is shared and noisy, and `make bench` is where the figures are
read. What is checked is that every section ran and printed what a reader compares.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_overhead_benchmark_runs_and_prints_every_section(tmp_path: Path) -> None:
    figures = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_overhead.py"), "--quick", "--json", str(figures)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for heading in ("trivial task, per call", "import nbflow", "Restart & Run All", "fingerprint throughput",
                    "float64 array result", "a flow of", "Task.submit", "targets (issue 9)"):
        assert heading in out, f"section {heading!r} missing from:\n{out}"
    for row in ("joblib.Memory", "diskcache memoize", "bare floor", "np.save", "np.load", "memory copy",
                "live TaskGraph"):
        assert row in out, f"row {row!r} missing from:\n{out}"
    marks = [line for line in out.splitlines() if line.strip().startswith(("PASS", "MISS"))]
    assert len(marks) >= 15, out
    saved = json.loads(figures.read_text())
    assert saved["results"]["calls"]["hit_us"]["nbflow"] > 0
    names = {name for name, _, _ in saved["targets"]}
    assert {"import nbflow <= 100 ms", "submit overhead per task <= 100 µs"} <= names


def test_auto_mode_benchmark_runs_and_prints_every_section(tmp_path: Path) -> None:
    """`bench_auto.py --quick`: a trivial cell's cost in a shell and a real kernel, and a cached re-run of a
    notebook of slow cells. Exit status 3 is a missed target (a timing, not checked here); 1 a broken section."""
    figures = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_auto.py"), "--quick", "--json", str(figures)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode in (0, 3), done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for heading in ("auto mode, a trivial cell", "nbflow run --auto", "targets (auto mode)"):
        assert heading in out, f"section {heading!r} missing from:\n{out}"
    for row in ("in-process shell", "more names", "kernel round trip", "busy to idle", "first run", "second run",
                "empty notebook", "bare kernel"):
        assert row in out, f"row {row!r} missing from:\n{out}"
    marks = [line for line in out.splitlines() if line.strip().startswith(("PASS", "MISS"))]
    assert len(marks) == 9, out  # auto and %%task: miss and hit, in-process and kernel; the re-run
    assert (done.returncode == 3) == any(line.strip().startswith("MISS") for line in marks)
    saved = json.loads(figures.read_text())
    assert saved["results"]["cells"]["kernel round trip (127.0.0.1)"]["best_ms"]["hit"] > 0
    assert saved["results"]["notebook"]["first"] > 0


def test_prefect_benchmark_explains_how_to_install_prefect() -> None:
    """Prefect is optional (`make bench-prefect`); without it the comparison says how to get it."""
    import importlib.util

    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_prefect.py"), "--quick"],
        capture_output=True, text=True, timeout=600,
    )
    if importlib.util.find_spec("prefect") is None:
        assert done.returncode == 2
        assert "make bench-prefect" in done.stderr
    else:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Prefect" in done.stdout


def test_the_step_timings_cover_every_step_of_a_hit_and_a_miss() -> None:
    """`profile_paths.py steps`, which the README's account of where the time goes cites."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "profile_paths.py"), "steps", "--calls", "50"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    hit, miss = (line for line in done.stdout.splitlines() if line.startswith(("hit:", "miss:")))
    for step in ("engine", "begin", "key", "probe", "finish"):
        assert f" {step} " in hit and f" {step} " in miss, done.stdout
    # A hit never runs the task nor writes the store; a miss does both.
    assert " call " not in hit and " persist " not in hit
    assert " call " in miss and " persist " in miss


def test_string_column_benchmark_runs_and_prints_every_section(tmp_path: Path) -> None:
    """`bench_strings.py --quick`: string-column fingerprints beside joblib, pickle and the arrow floor; a global
    read by a %%task hit; the issue's notebook against `jupyter execute`; a DataFrame result stored and loaded
    beside pickle, parquet and joblib. Exit status 3 is a missed target (a
    timing, not checked here); 1 a broken section."""
    figures = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_strings.py"), "--quick", "--json", str(figures)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode in (0, 3), done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for heading in ("fingerprint a DataFrame", "reading a global DataFrame", "a notebook: one cell builds",
                    "a DataFrame result of", "targets (string columns"):
        assert heading in out, f"section {heading!r} missing from:\n{out}"
    for row in ("string[pyarrow]", "pyarrow Table", "joblib.hash", "pickle->xxh3", "xxh3 over the arrow buffers",
                "unchanged value", "g_object", "no nbflow (jupyter execute)", "nbflow run, cached", "parquet"):
        assert row in out, f"row {row!r} missing from:\n{out}"
    marks = [line for line in out.splitlines() if line.strip().startswith(("PASS", "MISS"))]
    assert len(marks) == 8, out
    assert (done.returncode == 3) == any(line.strip().startswith("MISS") for line in marks)
    saved = json.loads(figures.read_text())
    assert saved["results"]["result"]["str"]["nbflow"]["hit"] > 0
    assert saved["results"]["fingerprint"]["seconds"]["str"]["nbflow"] > 0
    assert set(saved["results"]["notebook"]) == {"str", "object"}
