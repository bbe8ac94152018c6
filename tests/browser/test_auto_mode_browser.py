"""Auto mode in a real browser: JupyterLab 4 and Notebook 7, headless Chromium, driven as a user would.

Restart Kernel and Run All Cells from the Kernel menu: every cell shows its status line (computed and
stored, or not cached and why). Editing one cell and running only it marks the later cells that read
its value stale, in place, without running them. Restart and Run All again: what changed is computed,
the rest restored; once more with no edit, every cacheable cell is restored from the cache.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

CELLS = (
    "%load_ext nbflow\n%nbflow auto",
    "a = 2",
    "import time; time.sleep(0.3); b = a * 10",
    "c = b + 1; print(c)",
    "!echo hi",
)
MAGICS, A, B, C, SHELL = range(len(CELLS))

COMPUTED = re.compile(r"^\[nbflow\] computed in .+, stored$")
RESTORED = re.compile(r"^\[nbflow\] restored from the cache in .+ \(saved .+\)$")
SHELL_COMMAND = "[nbflow] not cached: it runs a shell command (!)"
STALE_TAIL = " — run this cell again, or %nbflow run-stale"
OLD = "data-test-old"  # set on the outputs on screen before an action, to tell them from the ones it makes


def write_notebook(path: Path, *sources: str) -> None:
    notebook = new_notebook(cells=[new_code_cell(source) for source in sources])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, str(path))


def _cells(page: Any) -> Any:
    return page.locator(".jp-NotebookPanel:visible .jp-CodeCell")


def _status(page: Any, index: int, *, new: bool = False) -> Any:
    """The cell's status line, drawn from its HTML (a new one, made after the last ``_mark_old``, with ``new``)."""
    outputs = '.jp-OutputArea-output[data-mime-type="text/html"]' + (f":not([{OLD}])" if new else "")
    return _cells(page).nth(index).locator(outputs).filter(has_text="[nbflow]")


def _prompt(page: Any, index: int) -> Any:
    return _cells(page).nth(index).locator(".jp-InputPrompt")


def _wait_for_kernel(page: Any) -> None:
    # The toolbar says "idle" before the kernel is really there; running then opens a kernel dialog.
    page.wait_for_function(
        """() => {
            const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
            const s = w && w.sessionContext;
            return !!(s && s.session && s.session.kernel && s.kernelDisplayStatus === 'idle');
        }""",
        timeout=90_000,
    )


def _mark_old(page: Any) -> None:
    page.evaluate(f"() => document.querySelectorAll('.jp-OutputArea-output').forEach(e => e.setAttribute('{OLD}', ''))")


def _restart_and_run_all(page: Any) -> None:
    """Kernel menu → Restart Kernel and Run All Cells…, confirm; wait until every cell has run again."""
    from playwright.sync_api import expect

    _mark_old(page)
    page.locator(".lm-MenuBar-item", has_text="Kernel").click()
    page.locator(".lm-Menu-item", has_text="Restart Kernel and Run All Cells").click()
    page.get_by_role("button", name="Confirm Kernel Restart").click()
    for index in (A, B, C, SHELL):
        expect(_status(page, index, new=True)).to_have_count(1, timeout=90_000)
    for index in range(len(CELLS)):
        expect(_prompt(page, index)).to_have_text(f"[{index + 1}]:")
    _wait_for_kernel(page)


def _number(prompt_text: str) -> int:
    found = re.fullmatch(r"\[(\d+)\]:", prompt_text.strip())
    assert found, prompt_text
    return int(found.group(1))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["lab", "notebook"])
def test_auto_mode_status_lines_and_stale_marks(kind: str, jupyter: Any, page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    server = jupyter(kind)
    write_notebook(server.root / "auto.ipynb", *CELLS)
    page.goto(server.notebook_url("auto.ipynb"))
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    _wait_for_kernel(page)
    expect(_cells(page)).to_have_count(len(CELLS))

    # 1. Restart and Run All in a fresh store: every data cell computed and stored, the shell cell not cached.
    _restart_and_run_all(page)
    for index in (A, B, C):
        expect(_status(page, index)).to_have_text(COMPUTED)
    expect(_status(page, SHELL)).to_have_text(SHELL_COMMAND)
    expect(_cells(page).nth(MAGICS).locator(".jp-OutputArea")).to_contain_text("[nbflow] auto mode is on")
    expect(_status(page, MAGICS)).to_have_count(0)  # nbflow's own magics get no status line
    expect(_cells(page).nth(C).locator(".jp-OutputArea")).to_contain_text("21")
    expect(_cells(page).nth(SHELL).locator(".jp-OutputArea")).to_contain_text("hi")
    page.screenshot(path=str(tmp_path / f"{kind}-1-computed.png"))

    # 2. Edit `a = 2` to `a = 3` and run that cell only: b (reads a) and c (reads b) turn stale in place.
    _mark_old(page)
    _cells(page).nth(A).locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+a")
    page.keyboard.type("a = 3")
    page.keyboard.press("Shift+Enter")
    expect(_prompt(page, A)).to_have_text(f"[{len(CELLS) + 1}]:", timeout=30_000)
    expect(_status(page, A, new=True)).to_have_text(COMPUTED)
    changed_in = _number(_prompt(page, A).inner_text())
    b_number = _number(_prompt(page, B).inner_text())
    expect(_status(page, B)).to_have_text(f"[nbflow] stale: `a` changed in cell [{changed_in}]{STALE_TAIL}")
    expect(_status(page, C)).to_have_text(f"[nbflow] stale: it reads `b` from stale cell [{b_number}]{STALE_TAIL}")
    expect(_status(page, SHELL)).to_have_text(SHELL_COMMAND)  # reads nothing a changed: not stale
    # Marked, not run: their prompts, outputs and status lines are the ones from before, updated in place.
    for index in (B, C, SHELL):
        expect(_prompt(page, index)).to_have_text(f"[{index + 1}]:")
        expect(_cells(page).nth(index).locator(f".jp-OutputArea-output:not([{OLD}])")).to_have_count(0)
    expect(_cells(page).nth(C).locator(".jp-OutputArea")).to_contain_text("21")
    page.screenshot(path=str(tmp_path / f"{kind}-2-stale.png"))

    # 3. Restart and Run All: a = 3 ran before (restored), b and c are computed anew; nothing is stale.
    _restart_and_run_all(page)
    expect(_status(page, A)).to_have_text(RESTORED)
    expect(_status(page, B)).to_have_text(COMPUTED)
    expect(_status(page, C)).to_have_text(COMPUTED)
    expect(_status(page, SHELL)).to_have_text(SHELL_COMMAND)
    expect(_cells(page).nth(C).locator(".jp-OutputArea")).to_contain_text("31")
    expect(page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output", has_text="stale")).to_have_count(0)
    page.screenshot(path=str(tmp_path / f"{kind}-3-recomputed.png"))

    # 4. Restart and Run All with no edit: every cacheable cell restored from the cache, its print replayed.
    _restart_and_run_all(page)
    for index in (A, B, C):
        expect(_status(page, index)).to_have_text(RESTORED)
    expect(_status(page, SHELL)).to_have_text(SHELL_COMMAND)
    expect(_cells(page).nth(C).locator(".jp-OutputArea")).to_contain_text("31")
    expect(_cells(page).nth(SHELL).locator(".jp-OutputArea")).to_contain_text("hi")
    page.screenshot(path=str(tmp_path / f"{kind}-4-restored.png"))
