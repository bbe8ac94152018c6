"""Scripts run in fresh processes: what a user sees on a rerun, a new kernel or ``nbflow run``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def run_script(directory: Path, source: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``source`` as ``script.py`` in ``directory`` in a new interpreter; its stdout (stderr is
    appended after a ``--- stderr`` line). Fails the test if the script fails."""
    script = directory / "script.py"
    script.write_text(textwrap.dedent(source))
    result = subprocess.run(
        [sys.executable, "-W", "always", str(script), *args], cwd=directory, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"script failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + "--- stderr\n" + result.stderr


def lines(output: str) -> list[str]:
    """The script's stdout lines."""
    return output.split("--- stderr\n", 1)[0].splitlines()
