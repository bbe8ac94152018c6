"""The shortcuts that keep a trivial ``%%task`` cell's overhead under a millisecond (issue 24), in a real in-process
IPython shell: none of them may serve a result a plain run would not give.

* A cell that runs no code but its own statements (``x_3 = 3``: see ``nbflow.ipython.analysis.inert``) skips
  the random generators' states, the namespace scan and the settings' snapshots — only when the names it reads
  and rebinds hold built-in scalars, since an operator of any other value (or the finalizer of a value a
  rebinding drops) may run code that draws, binds names or changes settings.
* The analysis of a cell's code is kept for the next run of the same code.
* The digest of the display settings is computed again only when a setting changed.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from nbflow.engine import randomness
from nbflow.ipython import cells, settings_effects

SNEAKY = """
import os
import random


class Sneaky:
    # An operator that runs code: it draws a number, binds a name in the notebook and sets an environment variable.
    def __add__(self, other):
        from IPython import get_ipython

        get_ipython().user_ns["side"] = random.random()
        os.environ["NBFLOW_TEST_SIDE"] = "set"
        return other


s = Sneaky()
"""


def ok(ip: Any, source: str) -> Any:
    result = ip.run_cell(source)
    assert result.success, result.error_in_exec or result.error_before_exec
    return result


def notices(ip: Any) -> int:
    return sum(1 for output in ip.display_pub.outputs
               if output["metadata"].get("nbflow", {}).get("cache_notice"))


@pytest.fixture
def observed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the cell runs looked through: "random" (the generators' states), "settings" (a snapshot)."""
    seen: list[str] = []
    states, snapshot = randomness.states, settings_effects.snapshot

    def counted_states() -> Any:
        seen.append("random")
        return states()

    def counted_snapshot() -> Any:
        seen.append("settings")
        return snapshot()

    monkeypatch.setattr(randomness, "states", counted_states)
    monkeypatch.setattr(settings_effects, "snapshot", counted_snapshot)
    return seen


def test_a_cell_that_runs_no_code_skips_the_generators_and_the_settings(shell: Any, observed: list[str]) -> None:
    ok(shell, "import random\na = 2\nb = 'x'")
    ok(shell, "%%task\nx_3 = 3\ntotal = a * 2 + 1\nlabel = f'{b}-{a!r}' if a > 1 else b")
    assert observed == []
    assert (shell.user_ns["x_3"], shell.user_ns["total"], shell.user_ns["label"]) == (3, 5, "x-2")
    ok(shell, "%%task\nx_3 = 3\ntotal = a * 2 + 1\nlabel = f'{b}-{a!r}' if a > 1 else b")  # the same cell: a hit
    assert notices(shell) == 1
    ok(shell, "%%task\nr = random.random()")  # a call: observed
    assert "random" in observed and "settings" in observed


@pytest.mark.parametrize("cell", [
    "x_3 = 3\nx_3",  # a displayed value goes through IPython's formatters, which may be the user's
    "x_3: int = 3",  # binds __annotations__ too
    "x_3 = len('abc')",  # a call
    "x_3 = a.real",  # an attribute
    "x_3 = [1][0]",  # a subscript
    "del a",
])
def test_cells_that_may_run_code_are_observed(shell: Any, observed: list[str], cell: str) -> None:
    ok(shell, "a = 2")
    ok(shell, f"%%task\n{cell}")
    assert "random" in observed and "settings" in observed


@pytest.mark.parametrize("setup", [
    "a = [1]",  # an input that is not a scalar: its operators may be anyone's
    "x_3 = [object()]",  # a rebound value that is not a scalar: dropping it may run a finalizer
])
def test_an_inert_cell_over_other_values_is_observed(shell: Any, observed: list[str], setup: str) -> None:
    ok(shell, setup)
    ok(shell, "%%task\nx_3 = a if False else 3")
    assert "random" in observed and "settings" in observed


def test_an_inert_cell_reading_a_value_added_to_the_builtins_is_observed(shell: Any, observed: list[str]) -> None:
    import builtins

    builtins.nbflow_test_value = [1]  # type: ignore[attr-defined]
    try:
        ok(shell, "%%task\nx_3 = nbflow_test_value if False else 3")
    finally:
        del builtins.nbflow_test_value  # type: ignore[attr-defined]
    assert "random" in observed and "settings" in observed


def test_an_operator_that_runs_code_is_restored_like_a_plain_run(shell: Any, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``y = s + 1`` looks inert, but ``s`` is an object whose ``+`` draws a seeded number, binds a global and
    sets an environment variable: a hit binds that global again, sets the variable again and leaves the
    generator where the computed run left it; another seed is a miss. (The shortcut taken for such a cell
    fails all three.)"""
    (tmp_path / "sneaky_operator.py").write_text(SNEAKY)
    monkeypatch.syspath_prepend(str(tmp_path))
    ok(shell, "import random\nfrom sneaky_operator import s")
    os.environ.pop("NBFLOW_TEST_SIDE", None)
    try:
        ok(shell, "random.seed(1)")
        ok(shell, "%%task\ny = s + 1")
        first = shell.user_ns["side"]
        assert os.environ.get("NBFLOW_TEST_SIDE") == "set"
        after_computed = random.random()

        del shell.user_ns["side"]
        del os.environ["NBFLOW_TEST_SIDE"]
        ok(shell, "random.seed(1)")
        ok(shell, "%%task\ny = s + 1")
        assert notices(shell) == 1, "the second run is a hit"
        assert shell.user_ns["side"] == first
        assert os.environ.get("NBFLOW_TEST_SIDE") == "set"
        assert random.random() == after_computed

        ok(shell, "random.seed(2)")
        ok(shell, "%%task\ny = s + 1")
        assert notices(shell) == 1, "another seed at the start: computed again"
        random.seed(2)
        assert shell.user_ns["side"] == random.random()
    finally:
        os.environ.pop("NBFLOW_TEST_SIDE", None)


def test_an_inert_cell_is_computed_again_when_an_input_changes(shell: Any) -> None:
    ok(shell, "a = 2")
    ok(shell, "%%task\ntotal = a * 10")
    ok(shell, "a = 3")
    ok(shell, "%%task\ntotal = a * 10")
    assert shell.user_ns["total"] == 30 and notices(shell) == 0
    ok(shell, "total = None\na = 2")
    ok(shell, "%%task\ntotal = a * 10")
    assert shell.user_ns["total"] == 20 and notices(shell) == 1


def test_the_same_code_is_analyzed_once_and_every_spec_has_its_own_lists(shell: Any) -> None:
    first = cells.prepare_cell(shell, "y = x + 1\n", cells.CellOptions())
    again = cells.prepare_cell(shell, "y = x + 1\n", cells.CellOptions(name="named", outputs=["y"]))
    assert again.tree is first.tree  # parsed once
    assert (first.name, again.name) == ("y", "named")
    assert first.inputs == again.inputs == ["x"] and first.inputs is not again.inputs
    first.inputs.append("changed")
    assert cells.prepare_cell(shell, "y = x + 1\n", cells.CellOptions()).inputs == ["x"]
    given = cells.prepare_cell(shell, "y = x + 1\n", cells.CellOptions(inputs=["x", "z"]))
    assert given.inputs == ["x", "z"]


def test_a_display_setting_changed_in_place_changes_the_digest() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    params = matplotlib.rcParams
    saved = list(params["figure.figsize"])
    try:
        before = settings_effects.display_digest()
        assert settings_effects.display_digest() == before
        params["figure.figsize"][0] = saved[0] + 1  # the same list object, changed in place
        changed = settings_effects.display_digest()
        assert changed != before
        params["figure.figsize"] = [saved[0] + 1, saved[1]]  # another object, equal
        assert settings_effects.display_digest() == changed
        params["figure.figsize"] = saved
        assert settings_effects.display_digest() == before
    finally:
        params["figure.figsize"] = saved


def test_settings_a_cell_leaves_equal_are_not_changes() -> None:
    before = settings_effects.snapshot()
    assert settings_effects.changed_settings(before) == {}
    os.environ["NBFLOW_TEST_SETTING"] = "1"
    try:
        changed = settings_effects.changed_settings(before)
        assert list(changed) == ["environment variables"]
        assert [os.fsdecode(key) for key in changed["environment variables"]] == ["NBFLOW_TEST_SETTING"]
    finally:
        del os.environ["NBFLOW_TEST_SETTING"]


_FRAGMENTS = [
    "x = 1", "y = x + 2", "ls", "cd /tmp", "pwd", "%time x", "!echo hi", "a = !ls", "b = %pwd", "x?", "x??", "?x",
    "  indented = 1", ">>> p = 1", "... q = 2", "In [1]: r = 3", "   ...: s = 4", "", "   ", "# comment",
    "print('%d' % 3)", "f(x)", "def f():\n    return 1", "exit", "%%time\nx = 1", "%%task name\nz = 1", ",f a b",
    "/f a", ";f a b", "for i in range(3):\n    pass", "d = {'a': 1}", "s = 'a?'", "x = 1 if True else 2",
    "x = (1,\n     2)", "t = f'{x!r}'", "%matplotlib inline", "if x:\n    !ls\n", "u = 1  # ls?", "len x",
]


def test_python_code_is_what_ipython_makes_of_a_cell(shell: Any) -> None:
    """The kept static transforms: the same Python as ``shell.transform_cell`` for random cells, first and again,
    whatever the namespace (automagic, a name shadowing a magic) and the shell's settings say."""
    rng = random.Random(24)
    sources = []
    for _ in range(400):
        lines = [rng.choice(_FRAGMENTS) for _ in range(rng.randint(1, 4))]
        sources.append(rng.choice(["", "\n"]) + "\n".join(lines) + rng.choice(["", "\n"]))
    for step, (automagic, autocall, shadow) in enumerate([(True, 0, False), (False, 0, False), (True, 2, False),
                                                          (True, 0, True)]):
        shell.automagic, shell.autocall = automagic, autocall
        if shadow:
            shell.user_ns.update(ls=1, pwd=2, len=len)
        for source in sources:
            for _ in range(2):
                try:
                    expected: Any = shell.transform_cell(source)
                except Exception as error:
                    expected = type(error)
                try:
                    found: Any = cells.python_code(shell, source)
                except Exception as error:
                    found = type(error)
                assert found == expected, (step, source)
    shell.automagic, shell.autocall = True, 0


def test_python_code_with_transforms_of_ones_own(shell: Any) -> None:
    """A transform the user added runs every time (it may keep state), before or after IPython's."""
    seen: list[str] = []

    def counting(lines: list[str]) -> list[str]:
        seen.append("".join(lines))
        return [line.replace("ONE", "1") for line in lines]

    manager = shell.input_transformer_manager
    manager.cleanup_transforms.append(counting)
    try:
        assert cells.python_code(shell, "x = ONE\n") == "x = 1\n"
        assert cells.python_code(shell, "x = ONE\n") == "x = 1\n"
        assert len(seen) == 2
    finally:
        manager.cleanup_transforms.remove(counting)
    shell.input_transformers_post.append(counting)
    try:
        assert cells.python_code(shell, "x = ONE\n") == "x = 1\n"
        assert len(seen) == 3
    finally:
        shell.input_transformers_post.remove(counting)
    assert cells.python_code(shell, "x = ONE\n") == "x = ONE\n"
