"""What a failing task shows in IPython: the user's frames and lines, not nbflow's; warnings at the user's line."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@pytest.fixture
def kernel_names(shell: Any) -> Iterator[Any]:
    """The shell naming cells as a Jupyter kernel does (``/tmp/ipykernel_<pid>/<hash>.py``, a file that does
    not exist), with IPython's context traceback mode (a kernel's default)."""
    from ipykernel.compiler import XCachingCompiler

    saved, mode = shell.compile, shell.InteractiveTB.mode
    shell.compile = XCachingCompiler()
    shell.InteractiveTB.set_mode("Context")
    yield shell
    shell.compile = saved
    shell.InteractiveTB.set_mode(mode)


def test_a_failure_inside_a_comprehension_shows_the_failing_line(kernel_names: Any, capsys: Any) -> None:
    shell = kernel_names
    result = shell.run_cell("%%task\nimport math\nws = {k: 1 / k for k in range(-1, 2)}\n", store_history=True)
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    text = _plain(capsys.readouterr().out)
    frames = text.split("\n\n")
    comprehension = next(frame for frame in frames if "in <dictcomp>" in frame)
    assert "----> 2 ws = {k: 1 / k for k in range(-1, 2)}" in comprehension, text
    assert "import math" not in comprehension.split("---->")[1]


def test_a_hits_saved_time_is_the_same_on_its_line_and_in_status(shell: Any, capsys: Any) -> None:
    cell = "%%task slow\nimport time\ntime.sleep(0.3)\nslow = 1\n"
    for _ in range(2):
        assert shell.run_cell(cell).success
    notices = [o["data"]["text/plain"] for o in shell.display_pub.outputs
               if o["metadata"].get("nbflow", {}).get("cache_notice")]
    [said] = re.findall(r"\(saved ([^)]+)\)", notices[-1])
    capsys.readouterr()
    assert shell.run_cell("%nbflow status").success
    status = capsys.readouterr().out
    row = next(line for line in status.splitlines() if line.startswith("slow "))
    assert said in row, (said, row)
    assert status.rstrip().endswith(f"time saved by the cache in this session: {said}"), status


DEFINITIONS = """\
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
"""


def _frames(text: str) -> list[str]:
    """The frame headers of an IPython traceback: ``Cell In[1], line 4, in boom(x)``, file paths..."""
    lines = _plain(text).splitlines()
    # (cell numbers vary with the tests run before)
    return [re.sub(r"^Cell In\[\d+\]", "Cell", line) for line in lines
            if line.startswith(("Cell In", "File ")) or line.lstrip().startswith("[... skipping hidden")]


@pytest.mark.parametrize("call", ["boom(0)", "pipeline()"])
def test_a_task_failure_shows_the_users_frames_only(shell: Any, capsys: Any, call: str) -> None:
    shell.InteractiveTB.set_mode("Context")
    try:
        assert shell.run_cell(DEFINITIONS).success
        result = shell.run_cell(call)
    finally:
        shell.InteractiveTB.set_mode("Plain")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    frames = _frames(capsys.readouterr().out)
    expected = ["Cell, line 1", "    [... skipping hidden 2 frame]"]
    if call == "pipeline()":
        expected.append("Cell, line 9, in pipeline()")  # the flow's body: the user's code too
    expected.append("Cell, line 5, in boom(x)")
    assert frames == expected


def test_a_warning_about_a_call_points_at_the_call(shell: Any) -> None:
    import warnings

    from nbflow.exceptions import NbflowWarning

    assert shell.run_cell(DEFINITIONS).success
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert shell.run_cell("x = 1\ntake(Opaque())\n").success
        assert shell.run_cell("@nbflow.flow\ndef outer():\n    return take(Opaque())\nouter()\n").success
    found = [warning for warning in caught if issubclass(warning.category, NbflowWarning)]
    assert len(found) == 2, [str(warning.message) for warning in caught]
    assert all("cannot be fingerprinted" in str(warning.message) for warning in found)
    assert [warning.lineno for warning in found] == [2, 3]  # the call in the cell; the call in the flow's body
    assert all(warning.filename.startswith("<ipython-input-") for warning in found), [w.filename for w in found]


def test_a_warning_about_a_task_cell_points_at_the_cell(shell: Any, tmp_path: Any) -> None:
    import warnings

    from nbflow.exceptions import NbflowWarning

    (tmp_path / "log").write_text("start ")
    shell.user_ns["log"] = str(tmp_path / "log")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # The cell reads a file it also writes: not cached, with a warning.
        assert shell.run_cell("%%task appended\nsize = len(open(log).read())\nopen(log, 'a').write('x')\n").success
    [found] = [warning for warning in caught if issubclass(warning.category, NbflowWarning)]
    assert "changed while it ran" in str(found.message)
    assert found.filename.startswith("<ipython-input-"), found.filename  # the cell, not IPython's machinery
