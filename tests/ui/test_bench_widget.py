"""The widget benchmark runs (quick mode) and prints its ratio; timings are not asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_widget_benchmark_runs_and_reports_the_ratio() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_widget.py"), "--quick"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ratio live/no-graph" in done.stdout and "messages sent" in done.stdout
