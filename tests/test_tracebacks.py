"""A failing task's traceback at the terminal: the user's frames, and no more of nbflow's than the call's entry."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nbflow

SCRIPT = textwrap.dedent(
    """
    import nbflow

    @nbflow.task
    def boom(x):
        return 1 / x

    @nbflow.flow
    def pipeline():
        return boom(0)

    class Opaque:
        def __reduce__(self):
            raise TypeError("no pickling")

    @nbflow.task
    def take(value):
        return 1

    take(Opaque())
    {call}
    """
)


def run(tmp_path: Path, call: str, **env: str) -> str:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(call=call))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NBFLOW_DISPLAY": "0", **env}, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    return done.stderr


PACKAGE = os.path.dirname(os.path.abspath(nbflow.__file__))


def frames(stderr: str) -> list[str]:
    """``file name:function`` of each frame of the traceback, nbflow's files by their path in the package."""
    found = []
    for line in stderr.splitlines():
        if line.startswith('  File "'):
            path, function = line.split('"')[1], line.rsplit(" in ", 1)[1]
            # Relative to the package (a checkout may itself sit in a directory called nbflow).
            name = os.path.relpath(path, PACKAGE) if path.startswith(PACKAGE + os.sep) else os.path.basename(path)
            found.append(f"{name}:{function}")
    return found


@pytest.mark.parametrize(("call", "expected"), [
    ("boom(0)", ["script.py:<module>", "tasks.py:__call__", "engine/task_engine.py:run_task", "script.py:boom"]),
    ("pipeline()", ["script.py:<module>", "flows.py:__call__", "engine/flow_engine.py:run_flow",
                    "script.py:pipeline", "script.py:boom"]),
])
def test_a_failure_shows_the_users_frames_and_the_calls_entry_only(tmp_path: Path, call: str,
                                                                   expected: list[str]) -> None:
    stderr = run(tmp_path, call)
    assert frames(stderr) == expected, stderr
    assert stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    # The warning about the unfingerprintable argument names the line of the call.
    assert f"{tmp_path / 'script.py'}:20: NbflowWarning: task 'take' runs uncached" in stderr, stderr


def test_nbflow_debug_keeps_every_frame(tmp_path: Path) -> None:
    shown = frames(run(tmp_path, "pipeline()", NBFLOW_DEBUG="1"))
    # The engine's frames between the user's frames are there: the flow's and the task's call_to_state.
    assert shown.count("engine/task_engine.py:call_to_state") == 2 and shown.count("tasks.py:__call__") == 1
    assert shown[-1] == "script.py:boom"
