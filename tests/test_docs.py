"""The README and the documentation site, checked on every ``make test`` so they cannot rot.

- The site builds with ``mkdocs build --strict``: every warning is an error, and mkdocs.yml's ``validation:``
  makes a broken internal link or anchor a warning. External links are not checked (the machines that run
  the suite reach no site but the package index).
- Every fenced code block of README.md and docs/ is run as written, or is explicitly not code:

  - ``python`` blocks of a page are the cells of one notebook, executed in a real kernel (nbclient), so
    magics (``%load_ext``, ``%%task``) and top-level ``await`` work as in Jupyter. A page that says
    ``<!-- notebook: NAME.ipynb -->`` has that notebook saved under NAME for its shell blocks.
  - ``bash`` blocks: ``nbflow …`` lines run against the test's store (``NBFLOW_HOME``) in the page's
    directory and must exit 0; ``pip install`` lines are not run, but the extras they name must exist in
    pyproject.toml; ``make`` lines must name a Makefile target; ``python -m ipykernel install`` lines run
    only in the fresh-venv test below. Any other command fails the test until it is taught here.
  - ``text`` blocks are not code (synopses, output).
  - A block preceded by ``<!-- no-run: why -->`` is not run; keep those few.

- The README's tour runs as a new user would: the wheel built from this checkout (with its long
  description checked for relative links, which the package index cannot show) is installed into a new
  venv, its kernel registered with the README's ``python -m ipykernel install --user`` line (into a
  temporary Jupyter data dir), the tour notebook executed in that kernel, then again after a restart
  (everything served from the cache), then the README's shell lines run with that venv's ``nbflow``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
import tomllib
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
BIN = Path(sys.executable).parent
RUN = {"python", "bash"}
NOT_CODE = {"text"}
MAX_NO_RUN = 4
FENCE = re.compile(r"^(\s*)```(.*)$")
NO_RUN = re.compile(r"^<!-- no-run: \S.* -->$")
NOTEBOOK = re.compile(r"^<!-- notebook: (\S+\.ipynb) -->$", re.M)
# The Material theme prints a notice about its end of life on every build; it is not a build warning.
DOCS_ENV = {"NO_MKDOCS_2_WARNING": "1"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    source: str
    runs: bool

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order."""
    found = []
    lines = page.read_text(encoding="utf-8").splitlines()
    previous = ""
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        indent, language = fence.group(1), fence.group(2).strip()
        start = i + 1
        i += 1
        while i < len(lines) and not lines[i].startswith(indent + "```"):
            i += 1
        body = "\n".join(line[len(indent):] for line in lines[start:i])
        found.append(Block(page, start, language, body, runs=not previous.startswith("<!-- no-run")))
        previous = ""
        i += 1
    return found


def shell_lines(block: Block) -> Iterator[list[str]]:
    for line in block.source.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            yield words


def _ids(pages: list[Path]) -> list[str]:
    return [str(page.relative_to(ROOT)) for page in pages]


# -- every block is run or marked -----------------------------------------------------------------------

def test_every_block_is_run_or_marked() -> None:
    problems, no_run = [], []
    for page in PAGES:
        for block in blocks(page):
            if block.language not in RUN | NOT_CODE:
                problems.append(f"{block}: a block needs a language, one of {sorted(RUN | NOT_CODE)} "
                                f"(not {block.language!r})")
            if not block.runs:
                no_run.append(str(block))
        text = page.read_text(encoding="utf-8")
        for marker in re.findall(r"<!-- no-run.*?-->", text):
            if not NO_RUN.match(marker):
                problems.append(f"{page.relative_to(ROOT)}: write the marker as <!-- no-run: why -->, not {marker}")
    assert not problems, "\n".join(problems)
    assert len(no_run) <= MAX_NO_RUN, f"more blocks than {MAX_NO_RUN} are not run: {no_run}"


def test_install_and_make_lines_name_what_exists() -> None:
    """`pip install` and `make` lines are not run; what they name must exist."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = set(pyproject["project"]["optional-dependencies"])
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M))
    problems = []
    for page in PAGES:
        for block in blocks(page):
            if block.language != "bash" or not block.runs:
                continue
            for words in shell_lines(block):
                if words[:2] == ["pip", "install"]:
                    for argument in words[2:]:
                        match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", argument)
                        if match is None:
                            problems.append(f"{block}: pip installs {argument!r}, not this checkout (.)")
                        elif match.group(1):
                            problems += [f"{block}: no extra {name!r} in pyproject.toml"
                                         for name in match.group(1).split(",") if name not in extras]
                elif words[0] == "make":
                    problems += [f"{block}: no target {target!r} in the Makefile"
                                 for target in words[1:] if target not in targets]
                elif words[0] != "nbflow" and words[:4] != ["python", "-m", "ipykernel", "install"]:
                    problems.append(f"{block}: the test does not know how to check {' '.join(words)!r}")
    assert not problems, "\n".join(problems)


# -- the site builds strictly ---------------------------------------------------------------------------

def test_docs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          env={**os.environ, **DOCS_ENV}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    assert (site / "index.html").is_file()
    assert (site / "guide" / "coming-from-prefect" / "index.html").is_file()
    # the API reference is generated (not an empty page) and the tutorials are rendered
    reference = (site / "reference" / "core" / "index.html").read_text(encoding="utf-8")
    assert "nbflow.tasks.task" in reference
    assert ":class:" not in reference  # docs/hooks.py turns the docstrings' roles into code
    assert (site / "tutorials" / "quickstart" / "index.html").stat().st_size > 10_000


def test_a_broken_anchor_fails_the_strict_build(tmp_path: Path) -> None:
    """mkdocs.yml's validation settings are what make a broken link fail; a page with one proves it."""
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the other page](other.md#no-such-heading).\n")
    (docs / "other.md").write_text("# Other\n\n## A heading\n")
    small = {"site_name": "check", "docs_dir": str(docs), "site_dir": str(tmp_path / "site"),
             "strict": True, "validation": config["validation"], "markdown_extensions": ["toc"]}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(small))
    done = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "-f", str(tmp_path / "mkdocs.yml")],
                          env={**os.environ, **DOCS_ENV}, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "no-such-heading" in done.stderr


# -- every page's code runs -----------------------------------------------------------------------------

def notebook_of(page: Path, kernel: str = "python3") -> Any:
    cells = [new_code_cell(block.source) for block in blocks(page) if block.language == "python" and block.runs]
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    return notebook


def execute(notebook: Any, workdir: Path, kernel: str = "python3", env: dict[str, str] | None = None) -> Any:
    notebook = nbformat.from_dict(json.loads(json.dumps(notebook)))  # a copy: the source stays unexecuted
    client = NotebookClient(notebook, kernel_name=kernel, timeout=180, allow_errors=False,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env=env or {**os.environ})
    return notebook


def run_shell_lines(page: Path, workdir: Path, bin_dir: Path, env: dict[str, str]) -> list[str]:
    """Run the page's `nbflow …` lines in order with `bin_dir`'s nbflow; return what each printed."""
    outputs = []
    for block in blocks(page):
        if block.language != "bash" or not block.runs:
            continue
        for words in shell_lines(block):
            if words[0] != "nbflow":
                continue
            command = [str(bin_dir / "nbflow"), *words[1:]]
            done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{block}: {' '.join(words)} exited {done.returncode}:\n" \
                                         f"{done.stdout}\n{done.stderr}"
            outputs.append(done.stdout)
    return outputs


RUN_PAGES = [page for page in PAGES if page != README
             and any(block.runs and (block.language == "python" or "nbflow " in block.source)
                     for block in blocks(page))]


@pytest.mark.parametrize("page", RUN_PAGES, ids=_ids(RUN_PAGES))
def test_page_code_runs(page: Path, tmp_path: Path) -> None:
    notebook = notebook_of(page)
    if notebook.cells:
        execute(notebook, tmp_path)
    named = NOTEBOOK.search(page.read_text(encoding="utf-8"))
    if named:
        nbformat.write(notebook, tmp_path / named.group(1))
    run_shell_lines(page, tmp_path, BIN, {**os.environ})


# -- the README's tour, in a fresh venv -----------------------------------------------------------------

def text_of(cell: Any) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(str(output.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_readme_tour_in_a_fresh_venv(tmp_path: Path) -> None:
    # The wheel a `pip install .` builds, and its long description as the package index shows it.
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("nbflow-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        description = archive.read(metadata).decode().partition("\n\n")[2]
    assert "five-minute tour" in description
    relative = re.findall(r"\]\((?!https?://|#)[^)]*\)|src=\"(?!https?://)[^\"]*\"", description)
    assert not relative, f"the package index cannot show relative links or images: {relative}"

    # A new venv with the wheel and its dependencies (the lock keeps their versions those of the suite).
    venv = tmp_path / "venv"
    uv = BIN / "uv"
    subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=300)
    installed = subprocess.run([str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                                "-c", str(ROOT / "constraints.txt"), str(wheel)],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr

    # The README's kernel line registers the venv under --name NAME; the tour notebook is saved with that
    # kernel, as Jupyter saves the kernel a user picked.
    env = {**os.environ, "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"),
           "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    kernel_line = next(words for block in blocks(README) if block.language == "bash"
                       for words in shell_lines(block) if words[:4] == ["python", "-m", "ipykernel", "install"])
    kernel = kernel_line[kernel_line.index("--name") + 1]
    workdir = tmp_path / "work"
    workdir.mkdir()
    named = NOTEBOOK.search(README.read_text(encoding="utf-8"))
    assert named, "the README names its tour notebook: <!-- notebook: NAME.ipynb -->"
    notebook = notebook_of(README, kernel)
    subprocess.run([str(venv / "bin" / "python"), *kernel_line[1:]], cwd=workdir, env=env, check=True,
                   capture_output=True, timeout=120)
    spec = json.loads((tmp_path / "jupyter-data" / "kernels" / kernel / "kernel.json").read_text())
    assert Path(spec["argv"][0]).parent == venv / "bin"

    # Jupyter runs the tour, then Restart & Run All: everything is served from the store.
    script = tmp_path / "execute.py"
    script.write_text(
        "import sys, nbformat\nfrom nbclient import NotebookClient\n"
        "nb = nbformat.read(sys.argv[1], 4)\n"
        "NotebookClient(nb, timeout=180, allow_errors=False, resources={'metadata': {'path': sys.argv[3]}})"
        ".execute()\nnbformat.write(nb, sys.argv[2])\n"
    )
    nbformat.write(notebook, workdir / named.group(1))
    for run in ("first", "again"):
        subprocess.run([str(venv / "bin" / "python"), str(script), str(workdir / named.group(1)),
                        str(tmp_path / f"{run}.ipynb"), str(workdir)], env=env, check=True, timeout=600)
    again = nbformat.read(tmp_path / "again.ipynb", 4)
    task_cells = [cell for cell in again.cells if cell.source.startswith("%%task")]
    assert task_cells and all("restored from the cache" in text_of(cell) for cell in task_cells)
    flow_cell = next(cell for cell in again.cells if "@nbflow.flow" in cell.source)
    assert re.search(r"task graph: \w+ \(Completed\); \d+ cached", text_of(flow_cell)), text_of(flow_cell)

    # The README's shell lines, with the fresh venv's nbflow: the headless run computes nothing.
    outputs = run_shell_lines(README, workdir, venv / "bin", env)
    headless = next(output for output in outputs if "task run(s)" in output)
    assert re.search(r"task run\(s\): \d+ cached, 0 computed, 0 failed", headless), headless
