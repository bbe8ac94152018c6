"""Auto mode in a real IPython shell: every cell a cell task, status lines, stale marks, run-stale."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

NOTES = ""  # the directory note() writes to (set per test: a constant while the test runs)


def note(tag: str) -> None:
    """What the cells call to say they ran: a new file per call (appending to a log would make a cell uncached
    in auto mode, and a list the function reads would be part of its code identity)."""
    open(os.path.join(NOTES, f"{time.perf_counter_ns()}.{tag}"), "x").close()


@pytest.fixture
def auto(shell: Any, tmp_path: Path) -> Any:
    global NOTES
    NOTES = str(tmp_path / "notes")
    os.mkdir(NOTES)
    shell.user_ns["note"] = note
    shell.run_line_magic("nbflow", "auto")
    yield shell
    shell.run_line_magic("nbflow", "auto off")


def cell(shell: Any, source: str, cell_id: str) -> list[dict[str, Any]]:
    """Run ``source`` as the cell ``cell_id``; the display messages it sent (status lines and updates)."""
    shell.display_pub.outputs.clear()
    result = shell.run_cell(source, store_history=True, cell_id=cell_id)
    assert result.success, result.error_in_exec or result.error_before_exec
    return list(shell.display_pub.outputs)


def statuses(messages: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """(display id, text, is an update) of the nbflow status lines among ``messages``."""
    found = []
    for message in messages:
        if "cell_status" in (message.get("metadata") or {}).get("nbflow", {}):
            found.append(((message.get("transient") or {}).get("display_id", ""), message["data"]["text/plain"],
                          bool(message.get("update"))))
    return found


def calls(shell: Any) -> list[str]:
    return [name.split(".", 1)[1] for name in sorted(os.listdir(NOTES), key=lambda name: int(name.split(".")[0]))]


def test_every_cell_is_a_cell_task_stored_then_restored(auto: Any) -> None:
    source = "note('a')\nvalue = 21 * 2\nprint('value is', value)\nvalue"
    first = statuses(cell(auto, source, "a"))
    assert len(first) == 1 and "computed in" in first[0][1] and "stored" in first[0][1]
    del auto.user_ns["value"]
    messages = cell(auto, source, "a")
    second = statuses(messages)
    assert len(second) == 1 and "restored from the cache" in second[0][1]
    assert auto.user_ns["value"] == 42 and calls(auto) == ["a"]  # the body did not run again
    assert auto.user_ns["_"] == 42  # the replayed result is Out[n] again
    assert first[0][0] != second[0][0]  # each run's status line is a display of its own


def test_cells_that_cannot_be_cached_run_normally_and_say_why(auto: Any, capsys: Any) -> None:
    cases = {
        "!echo hi": "it runs a shell command",
        "%time x = 1": "it runs the magic %time",
        "import logging\nlogging.basicConfig(level=logging.INFO)": "configures logging",
        "import os as system\nsystem.sep2 = '/'": "it sets system.sep2, a module attribute",
        "async def f():\n    return 1\nr = await f()": "it uses top-level await",
    }
    for number, (source, reason) in enumerate(cases.items()):
        for _ in range(2):  # run twice: never served from the cache
            found = statuses(cell(auto, source, f"n{number}"))
            assert len(found) == 1 and found[0][1].startswith("[nbflow] not cached: ") and reason in found[0][1], (
                source, found)
    capsys.readouterr()
    auto.run_line_magic("nbflow", "status")
    table = capsys.readouterr().out
    assert "it runs a shell command" in table and "configures logging" in table
    assert "not cached" in table


def test_nbflow_s_own_magics_get_no_status_line(auto: Any) -> None:
    assert statuses(cell(auto, "%nbflow status", "s")) == []


def test_a_rerun_that_changes_a_value_marks_the_later_readers_stale_in_place(auto: Any) -> None:
    cell(auto, "x = 1", "a")
    b = statuses(cell(auto, "y = x * 2", "b"))[0][0]
    c = statuses(cell(auto, "z = y + 1\nprint(z)", "c"))[0][0]
    unrelated = statuses(cell(auto, "w = 5", "d"))[0][0]
    messages = cell(auto, "x = 2", "a")
    updates = {display_id: text for display_id, text, update in statuses(messages) if update}
    number = max(n for n, text in enumerate(auto.user_ns["In"]) if text.strip() == "x = 2")  # In[number]
    assert "stale: `x` changed in cell" in updates[b] and f"[{number}]" in updates[b]
    assert "stale: it reads `y` from stale cell" in updates[c]
    assert unrelated not in updates
    assert [record.key for record in auto_mode(auto).stale_cells()] == ["b", "c"]


def test_a_rerun_that_gives_the_same_value_marks_nothing(auto: Any) -> None:
    cell(auto, "x = 1", "a")
    cell(auto, "y = x * 2", "b")
    messages = cell(auto, "x = 1", "a")  # a hit: an equal value, another object
    assert [text for _, text, update in statuses(messages) if update] == []
    assert auto_mode(auto).stale_cells() == []


def test_a_value_a_later_cell_changed_in_place_marks_that_cell_stale_when_replaced(auto: Any) -> None:
    cell(auto, "items = [1, 2]", "a")
    cell(auto, "items.append(3)", "b")
    cell(auto, "n = len(items)", "c")
    cell(auto, "items = [1, 2]", "a")  # the list b changed is gone: b's change must be made again
    stale = {record.key: " ".join(record.stale.values()) for record in auto_mode(auto).stale_cells()}
    assert set(stale) == {"b", "c"}
    assert "items" in stale["b"]


def test_run_stale_runs_them_again_in_order_from_the_cache_where_inputs_match(auto: Any, capsys: Any) -> None:
    cell(auto, "x = 1", "a")
    cell(auto, "note('b')\ny = x * 2", "b")
    cell(auto, "note('c')\nz = y + 1", "c")
    cell(auto, "x = 2", "a")
    auto.run_line_magic("nbflow", "run-stale")
    assert (auto.user_ns["y"], auto.user_ns["z"]) == (4, 5)
    assert calls(auto) == ["b", "c", "b", "c"]
    assert auto_mode(auto).stale_cells() == []
    cell(auto, "x = 1", "a")  # back to the first value: b and c are stale again...
    auto.run_line_magic("nbflow", "run-stale")
    assert (auto.user_ns["y"], auto.user_ns["z"]) == (2, 3)
    assert calls(auto) == ["b", "c", "b", "c"]  # ...and served from the cache
    assert "running cell" in capsys.readouterr().out


def test_a_changed_file_marks_its_readers_stale(auto: Any, tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("1")
    auto.user_ns["path"] = str(data)
    cell(auto, "text = open(path).read()", "a")
    data.write_text("2")
    cell(auto, "other = 1", "b")  # any cell run notices it
    stale = auto_mode(auto).stale_cells()
    assert [record.key for record in stale] == ["a"] and "data.txt" in " ".join(stale[0].stale.values())


def test_a_task_cell_keeps_its_options(auto: Any) -> None:
    cell(auto, "%%task named --no-cache\nnote('t')\nq = 1", "t")
    cell(auto, "%%task named --no-cache\nnote('t')\nq = 1", "t")
    assert calls(auto) == ["t", "t"]  # --no-cache held
    record = auto_mode(auto).cells["t"]
    assert record.task_name == "named" and record.state == "uncached" and "--no-cache" in record.reason


def test_names_bound_where_the_analysis_cannot_see_are_restored(auto: Any) -> None:
    cell(auto, "def setup():\n    global g\n    g = 7\n", "def")
    source = "note('s')\nsetup()"
    cell(auto, source, "s")
    del auto.user_ns["g"]
    cell(auto, source, "s")
    assert calls(auto) == ["s"] and auto.user_ns["g"] == 7


@pytest.mark.parametrize("reader", [
    "eval('a * 10')",
    "globals()['a'] + 100",
    "show('a')",  # a notebook function that evaluates the name it is given
    "str(Shown('a'))",  # a notebook class whose method does
])
def test_a_cell_reading_variables_by_name_at_run_time_is_never_served_stale(auto: Any, reader: str) -> None:
    cell(auto, "def show(name):\n    return eval(name)\n"
               "class Shown:\n    def __init__(self, name):\n        self.name = name\n"
               "    def __str__(self):\n        return str(eval(self.name))", "defs")
    for value in (1, 2):
        cell(auto, f"a = {value}", "a")
        cell(auto, f"result = {reader}", "r")
        assert auto.user_ns["result"] in (value, str(value), value * 10, value + 100)
    status = auto_mode(auto).cells["r"]
    assert status.state == "uncached" and "reads variables by name at run time" in status.reason


def test_a_pandas_query_s_at_variables_are_inputs(auto: Any) -> None:
    import pandas as pd

    auto.user_ns["frame"] = pd.DataFrame({"x": [1, 2, 3, 4]})
    for limit, expected in ((2, 2), (3, 1), (2, 2)):
        cell(auto, f"limit = {limit}", "a")
        cell(auto, "n = len(frame.query('x > @limit'))", "q")
        assert auto.user_ns["n"] == expected
    assert auto_mode(auto).cells["q"].state == "cached"  # the third run: limit is 2 again


def test_a_cell_computing_from_the_working_directory_is_keyed_by_it(auto: Any, tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir(), second.mkdir()
    source = "import os\nwhere = os.path.join(os.getcwd(), 'out.txt')\nopen(where, 'w').write('x')"
    cwd = os.getcwd()
    try:
        for directory in (first, second):
            os.chdir(directory)
            cell(auto, source, "w")
            assert auto.user_ns["where"] == str(directory / "out.txt") and (directory / "out.txt").exists()
    finally:
        os.chdir(cwd)


def test_a_deletion_and_an_environment_variable_are_made_again_by_a_hit(auto: Any) -> None:
    cell(auto, "tmp = 1", "a")
    source = "note('d')\nimport os\nos.environ['NBFLOW_TEST_AUTO'] = 'yes'\ndel tmp"
    try:
        cell(auto, source, "d")
        cell(auto, "tmp = 1", "a")
        del os.environ["NBFLOW_TEST_AUTO"]
        cell(auto, source, "d")
        assert calls(auto) == ["d"]
        assert "tmp" not in auto.user_ns and os.environ.get("NBFLOW_TEST_AUTO") == "yes"
    finally:
        os.environ.pop("NBFLOW_TEST_AUTO", None)


def test_auto_off_and_configure(shell: Any) -> None:
    import nbflow

    shell.run_line_magic("nbflow", "auto")
    shell.run_line_magic("nbflow", "auto off")
    assert statuses(cell(shell, "k = 1", "k")) == []
    nbflow.configure(auto=True)
    try:
        assert len(statuses(cell(shell, "k = 1", "k"))) == 1
    finally:
        nbflow.configure(auto=False)
    assert statuses(cell(shell, "k = 1", "k")) == []


def auto_mode(shell: Any) -> Any:
    from nbflow.ipython import auto_mode as find

    return find(shell)


def test_nbflow_auto_in_the_environment_turns_it_on_at_load(shell: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbflow import settings

    shell.run_line_magic("unload_ext", "nbflow")
    monkeypatch.setenv("NBFLOW_AUTO", "1")
    settings.reset()
    try:
        shell.run_line_magic("load_ext", "nbflow")
        assert len(statuses(cell(shell, "e = 1", "e"))) == 1
    finally:
        monkeypatch.delenv("NBFLOW_AUTO")
        settings.reset()
        shell.run_line_magic("nbflow", "auto off")


def test_a_python_cell_magic_runs_normally_but_its_reads_count_for_stale_marks(auto: Any) -> None:
    cell(auto, "x = 1", "a")
    found = statuses(cell(auto, "%%capture captured\ny = x + 1\nprint(y)", "b"))
    assert "not cached: it runs the cell magic %%capture" in found[0][1]
    cell(auto, "x = 2", "a")
    assert [record.key for record in auto_mode(auto).stale_cells()] == ["b"]


def test_an_error_only_the_compiler_finds_is_shown_as_ipython_shows_it(auto: Any, capsys: Any) -> None:
    capsys.readouterr()
    result = auto.run_cell("x = 1\nreturn x", store_history=True, cell_id="r")
    assert isinstance(result.error_in_exec, SyntaxError) and "outside function" in str(result.error_in_exec)
    shown = capsys.readouterr()
    assert "SyntaxError" in shown.out + shown.err and "nbflow" not in shown.out + shown.err
    result = auto.run_cell("value = eval('1 +')", store_history=True, cell_id="e")
    assert isinstance(result.error_in_exec, SyntaxError)  # raised by the cell's code: the user's error


def test_a_cell_that_appends_to_a_file_runs_every_time(auto: Any, tmp_path: Path) -> None:
    auto.user_ns["log"] = str(tmp_path / "log.txt")
    for _ in range(2):
        found = statuses(cell(auto, "with open(log, 'a') as f:\n    f.write('line\\n')\ndone = True", "w"))
        assert "not cached: it appends to file" in found[0][1] and "log.txt" in found[0][1]
    assert (tmp_path / "log.txt").read_text() == "line\nline\n"


def test_a_decorated_definition_runs_once_on_a_miss_and_one_using_a_value_of_its_cell_is_not_cached(
        auto: Any) -> None:
    cell(auto, "class Registry:\n    def __init__(self):\n        self.names = []\n"
               "    def add(self, fn):\n        if fn.__name__ in self.names:\n"
               "            raise ValueError(f'{fn.__name__} is registered already')\n"
               "        self.names.append(fn.__name__)\n        return fn", "defs")
    cell(auto, "app = Registry()", "app")
    cell(auto, "@app.add\ndef index():\n    return 'hi'", "route")  # a miss: defined once, no error
    assert auto.user_ns["app"].names == ["index"]
    found = statuses(cell(auto, "tools = Registry()\n@tools.add\ndef capital():\n    return 'Paris'", "tools"))
    assert "not cached: its definition capital uses tools" in found[0][1]
    assert auto.user_ns["tools"].names == ["capital"]
