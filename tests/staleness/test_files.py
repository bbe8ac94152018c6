"""Files a task reads are part of what a hit must match (issue: stale results after a file changed)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.staleness.helpers import lines, run_script

READERS = """
import sys, pathlib
import numpy as np, pandas as pd
import nbflow

@nbflow.task
def with_open(path):
    with open(path) as handle:
        return handle.read().strip()

@nbflow.task
def with_pathlib(path):
    return pathlib.Path(path).read_text().strip()

@nbflow.task
def with_pandas(path):
    return int(pd.read_csv(path)["a"].sum())

@nbflow.task
def with_numpy(path):
    return int(np.load(path).sum())

for task, path in ((with_open, "notes.txt"), (with_pathlib, pathlib.Path("notes.txt")),
                   (with_pandas, "table.csv"), (with_numpy, "array.npy")):
    state = task(path, return_state=True)
    print(task.name, state.name, state.result())
"""


def _write(directory: Path, notes: str, total: int) -> None:
    import numpy as np

    (directory / "notes.txt").write_text(notes)
    (directory / "table.csv").write_text(f"a,b\n{total},0\n")
    np.save(directory / "array.npy", np.array([total, 0]))


def _bump_mtime(directory: Path) -> None:
    # A second write within one mtime tick must still be seen; make sure of it either way.
    for name in ("notes.txt", "table.csv", "array.npy"):
        later = time.time_ns() + 5_000_000_000
        os.utime(directory / name, ns=(later, later))


def test_a_changed_file_is_a_miss_for_open_pathlib_pandas_and_numpy(tmp_path: Path) -> None:
    _write(tmp_path, "first", 1)
    assert lines(run_script(tmp_path, READERS)) == [
        "with_open Completed first", "with_pathlib Completed first", "with_pandas Completed 1",
        "with_numpy Completed 1",
    ]
    assert lines(run_script(tmp_path, READERS)) == [
        "with_open Cached first", "with_pathlib Cached first", "with_pandas Cached 1", "with_numpy Cached 1",
    ]
    _write(tmp_path, "second", 2)
    _bump_mtime(tmp_path)
    assert lines(run_script(tmp_path, READERS)) == [
        "with_open Completed second", "with_pathlib Completed second", "with_pandas Completed 2",
        "with_numpy Completed 2",
    ]


def test_same_size_rewrite_within_the_same_second_is_seen(tmp_path: Path) -> None:
    # Same size, mtime put back: only the content digest can tell (the file was digested moments after
    # it was written, so every check digests it again).
    _write(tmp_path, "aaaa", 1)
    run_script(tmp_path, READERS)
    stat = (tmp_path / "notes.txt").stat()
    (tmp_path / "notes.txt").write_text("bbbb")
    os.utime(tmp_path / "notes.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert lines(run_script(tmp_path, READERS))[0] == "with_open Completed bbbb"


def test_a_vanished_file_is_a_miss_and_why_names_the_file(tmp_path: Path) -> None:
    source = """
    import os
    import nbflow
    from nbflow.ipython.magics import why

    @nbflow.task
    def settings(path):
        return open(path).read() if os.path.exists(path) else "defaults"

    state = settings("settings.ini", return_state=True)
    print(state.name, state.result())
    print(why("settings"))
    """
    (tmp_path / "settings.ini").write_text("mine")
    assert lines(run_script(tmp_path, source))[0] == "Completed mine"
    assert lines(run_script(tmp_path, source))[0] == "Cached mine"
    (tmp_path / "settings.ini").write_text("theirs")
    later = time.time_ns() + 5_000_000_000
    os.utime(tmp_path / "settings.ini", ns=(later, later))
    output = lines(run_script(tmp_path, source))
    assert output[0] == "Completed theirs"
    assert "file 'settings.ini' changed" in "\n".join(output), output
    (tmp_path / "settings.ini").unlink()
    assert lines(run_script(tmp_path, source))[0] == "Completed defaults"


def test_a_new_file_in_a_listed_directory_is_a_miss(tmp_path: Path) -> None:
    source = """
    import glob
    import nbflow

    @nbflow.task
    def total(pattern):
        return sum(int(open(name).read()) for name in sorted(glob.glob(pattern)))

    print(total("parts/*.txt", return_state=True).name, total("parts/*.txt"))
    """
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.txt").write_text("1")
    assert lines(run_script(tmp_path, source)) == ["Completed 1"]
    assert lines(run_script(tmp_path, source)) == ["Cached 1"]
    (tmp_path / "parts" / "b.txt").write_text("2")
    assert lines(run_script(tmp_path, source)) == ["Completed 3"]


def test_declared_files_cover_reads_python_does_not_see(tmp_path: Path) -> None:
    # `cat` in a subprocess stands for a C library reading the file: no audit event reaches Python.
    source = """
    import subprocess
    import nbflow

    @nbflow.task(files=["data.bin"])
    def declared():
        return subprocess.run(["cat", "data.bin"], capture_output=True, text=True).stdout

    @nbflow.task
    def undeclared():
        return subprocess.run(["cat", "data.bin"], capture_output=True, text=True).stdout

    print(declared(return_state=True).name, declared(), undeclared(return_state=True).name)
    """
    (tmp_path / "data.bin").write_text("one")
    assert lines(run_script(tmp_path, source)) == ["Completed one Completed"]
    (tmp_path / "data.bin").write_text("two")
    later = time.time_ns() + 5_000_000_000
    os.utime(tmp_path / "data.bin", ns=(later, later))
    # The undeclared task is served stale: the documented limit the option exists for.
    assert lines(run_script(tmp_path, source)) == ["Completed two Cached"]


def test_a_file_written_while_the_task_runs_makes_it_uncached_with_a_warning(tmp_path: Path) -> None:
    source = """
    import nbflow

    @nbflow.task
    def bump(path):
        count = int(open(path).read())
        open(path, "w").write(str(count + 10))
        return count

    print(bump("counter.txt", return_state=True).name)
    """
    (tmp_path / "counter.txt").write_text("1")
    output = run_script(tmp_path, source)
    assert lines(output) == ["Completed"]
    assert "'counter.txt' changed while it ran" in output
    assert lines(run_script(tmp_path, source)) == ["Completed"]


def test_reads_inside_a_nested_task_count_for_the_flow_too(tmp_path: Path) -> None:
    source = """
    import nbflow

    @nbflow.task
    def read(path):
        return open(path).read()

    @nbflow.task
    def report(path):
        return "report: " + read(path)

    print(report("in.txt", return_state=True).name, report("in.txt"))
    """
    (tmp_path / "in.txt").write_text("a")
    assert lines(run_script(tmp_path, source)) == ["Completed report: a"]
    assert lines(run_script(tmp_path, source)) == ["Cached report: a"]
    (tmp_path / "in.txt").write_text("b")
    later = time.time_ns() + 5_000_000_000
    os.utime(tmp_path / "in.txt", ns=(later, later))
    assert lines(run_script(tmp_path, source)) == ["Completed report: b"]


WRITER = """
import nbflow
import pandas as pd

@nbflow.task
def export(n):
    pd.DataFrame({"a": range(n)}).to_csv("table.csv", index=False)   # written, then read back
    return int(pd.read_csv("table.csv").a.sum())

state = export(4, return_state=True)
print(state.name, state.result(), open("table.csv").read().count("\\n"))
"""


def test_a_file_the_task_wrote_must_be_there_for_a_hit(tmp_path: Path) -> None:
    assert lines(run_script(tmp_path, WRITER)) == ["Completed 6 5"]
    assert lines(run_script(tmp_path, WRITER)) == ["Cached 6 5"]
    (tmp_path / "table.csv").unlink()   # a hit would leave the next reader without its file
    assert lines(run_script(tmp_path, WRITER)) == ["Completed 6 5"]
    (tmp_path / "table.csv").write_text("a\n100\n")   # changed since: the task's output is not there either
    assert lines(run_script(tmp_path, WRITER)) == ["Completed 6 5"]


def test_relative_paths_are_read_in_the_directory_the_call_runs_in(tmp_path: Path) -> None:
    source = """
    import nbflow

    @nbflow.task
    def load():
        return open("input.txt").read()

    state = load(return_state=True)
    print(state.name, state.result())
    """
    home = {"NBFLOW_HOME": str(tmp_path / "store")}
    for name, text in (("one", "same"), ("two", "same"), ("three", "other")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "input.txt").write_text(text)
    assert lines(run_script(tmp_path / "one", source, env=home)) == ["Completed same"]
    # Another directory with the same content: the same input, a hit; with other content, a miss.
    assert lines(run_script(tmp_path / "two", source, env=home)) == ["Cached same"]
    assert lines(run_script(tmp_path / "three", source, env=home)) == ["Completed other"]


def test_a_json_serialized_task_that_reads_a_file_is_cached_and_checked(tmp_path: Path) -> None:
    source = """
    import json
    import nbflow

    @nbflow.task(result_serializer="json")
    def settings(path) -> dict:
        return json.load(open(path))

    state = settings("conf.json", return_state=True)
    print(state.name, state.result())
    """
    (tmp_path / "conf.json").write_text('{"a": 1}')
    assert lines(run_script(tmp_path, source)) == ["Completed {'a': 1}"]
    assert lines(run_script(tmp_path, source)) == ["Cached {'a': 1}"]
    (tmp_path / "conf.json").write_text('{"a": 2}')
    assert lines(run_script(tmp_path, source)) == ["Completed {'a': 2}"]


def test_a_task_listing_a_directory_keeps_its_key_whether_or_not_the_readers_are_watched_yet(tmp_path: Path) -> None:
    # The first computed call installs nbflow's wrappers of open / os.listdir / os.scandir: a function that
    # refers to them must have the same code identity before (a run where every call is a hit) and after.
    source = """
    import os
    from nbflow.engine import file_reads
    from nbflow.hashing import code_identity

    def names():
        return sorted(os.listdir(".")), open, os.scandir, os.open

    before = code_identity(names)
    file_reads._install()

    def names():
        return sorted(os.listdir(".")), open, os.scandir, os.open

    print(before == code_identity(names), type(os.listdir).__name__)
    """
    assert lines(run_script(tmp_path, source)) == ["True function"]


def test_files_read_in_a_process_pool_worker_count_for_the_entry(tmp_path: Path) -> None:
    # The attempt runs in another process: the worker records what it reads and sends it back.
    source = """
    import nbflow

    @nbflow.task
    def read(path):
        with open(path) as handle:
            return handle.read().strip()

    @nbflow.flow(task_runner=nbflow.ProcessPoolTaskRunner(max_workers=1))
    def fan():
        return read.submit("notes.txt").result()

    if __name__ == "__main__":
        print(fan())
        state = read("notes.txt", return_state=True)  # the entry the worker's attempt stored, in this process
        print(state.name, state.result())
    """
    (tmp_path / "notes.txt").write_text("first")
    assert lines(run_script(tmp_path, source)) == ["first", "Cached first"]
    (tmp_path / "notes.txt").write_text("second")
    later = time.time_ns() + 5_000_000_000
    os.utime(tmp_path / "notes.txt", ns=(later, later))
    assert lines(run_script(tmp_path, source)) == ["second", "Cached second"]


def test_numpy_text_readers_are_seen(tmp_path: Path) -> None:
    # np.loadtxt and np.genfromtxt open files through numpy's own table of openers, which took `open` when
    # numpy was imported (before nbflow wrapped it).
    source = """
    import numpy as np
    import nbflow

    @nbflow.task
    def with_loadtxt(path):
        return int(np.loadtxt(path)[0])

    @nbflow.task
    def with_genfromtxt(path):
        return int(np.genfromtxt(path)[0])

    for task in (with_loadtxt, with_genfromtxt):
        state = task("numbers.txt", return_state=True)
        print(task.name, state.name, state.result())
    """
    (tmp_path / "numbers.txt").write_text("1\n0\n")
    assert lines(run_script(tmp_path, source)) == ["with_loadtxt Completed 1", "with_genfromtxt Completed 1"]
    assert lines(run_script(tmp_path, source)) == ["with_loadtxt Cached 1", "with_genfromtxt Cached 1"]
    (tmp_path / "numbers.txt").write_text("2\n0\n")
    later = time.time_ns() + 5_000_000_000
    os.utime(tmp_path / "numbers.txt", ns=(later, later))
    assert lines(run_script(tmp_path, source)) == ["with_loadtxt Completed 2", "with_genfromtxt Completed 2"]


def test_a_cached_call_inside_a_process_pool_worker_passes_its_files_on(tmp_path: Path) -> None:
    # outer's attempt runs in a worker where inner is a hit: the file inner's entry depends on is outer's too.
    source = """
    import sys
    import nbflow

    @nbflow.task
    def inner(path):
        with open(path) as handle:
            return handle.read().strip()

    @nbflow.task
    def outer(path, tag):
        return inner(path) + tag

    @nbflow.flow(task_runner=nbflow.ProcessPoolTaskRunner(max_workers=1))
    def pipeline(tag):
        return outer.submit("notes.txt", tag).result()

    if __name__ == "__main__":
        print(pipeline(sys.argv[1]))
    """
    (tmp_path / "notes.txt").write_text("old")
    assert lines(run_script(tmp_path, source, "!")) == ["old!"]
    assert lines(run_script(tmp_path, source, "?")) == ["old?"]  # outer computed, inner a hit in the worker
    (tmp_path / "notes.txt").write_text("new")
    later = time.time_ns() + 5_000_000_000
    os.utime(tmp_path / "notes.txt", ns=(later, later))
    assert lines(run_script(tmp_path, source, "?")) == ["new?"]
