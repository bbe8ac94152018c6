"""The agent tests again, against the oldest pydantic-ai the `ai` extra admits.

The suite's venv holds the locked (newest tested) release; `make install` puts the oldest supported one
beside it, in ``<venv>/pydantic-ai-oldest/site-packages`` (a ``site-packages`` directory, so code identity
treats it as an installed library, as a user's environment would). A second pytest runs
test_pydantic_ai.py with that directory first on the path.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
OLDEST = Path(sys.prefix) / "pydantic-ai-oldest" / "site-packages"


def _floor() -> Version:
    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'"pydantic-ai-slim>=([0-9.]+)', text)
    assert found, "pyproject.toml: the ai extra names no lower bound for pydantic-ai-slim"
    return Version(found.group(1))


def test_the_agent_tests_pass_on_the_oldest_supported_pydantic_ai(subprocess_env: dict[str, str]) -> None:
    assert OLDEST.is_dir(), f"{OLDEST} is missing: run `make install` (it installs the oldest pydantic-ai there)"
    env = {**subprocess_env, "PYTHONPATH": os.pathsep.join(filter(None, [str(OLDEST), os.environ.get("PYTHONPATH")]))}
    version = subprocess.run([sys.executable, "-c", "import pydantic_ai; print(pydantic_ai.__version__)"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert version.returncode == 0, version.stderr
    assert Version(version.stdout.strip()) == _floor(), (
        f"{OLDEST} holds pydantic-ai {version.stdout.strip()}, the extra's floor is {_floor()}: run `make install`")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/integrations/test_pydantic_ai.py"],
        capture_output=True, text=True, env=env, timeout=280, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", done.stdout) and " failed" not in done.stdout, done.stdout[-2000:]
