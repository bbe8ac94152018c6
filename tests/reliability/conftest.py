"""Helpers shared by the reliability tests: stores on temporary homes, and child processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.store.conftest import secret_file, store  # noqa: F401 - the same store fixtures

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def child_env() -> dict[str, str]:
    """Environment for child processes: they import ``tests.reliability.workload`` from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def workload_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "tests.reliability.workload", *arguments]


def run_child(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; fail the test with its stderr if it fails."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                            env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result




@pytest.fixture
def shell() -> Iterator[object]:
    """A real in-process IPython shell with the nbflow extension loaded."""
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    ip.reset(new_session=False)
    ip.run_line_magic("load_ext", "nbflow")
    yield ip
    if "nbflow" in ip.extension_manager.loaded:
        ip.run_line_magic("unload_ext", "nbflow")
    ip.reset(new_session=False)
