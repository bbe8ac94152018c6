"""What counts as a change besides files: policies, arguments changed in place, class attributes,
environment variables. Each case runs in fresh processes, as a rerun or a new kernel would."""

from __future__ import annotations

from pathlib import Path

from tests.staleness.helpers import lines, run_script


def test_a_policy_without_the_code_warns_and_default_minus_a_name_keeps_the_code(tmp_path: Path) -> None:
    source = """
    import sys
    import nbflow
    from nbflow.cache_policies import DEFAULT, INPUTS

    FACTOR = int(sys.argv[1])

    @nbflow.task(cache_policy=DEFAULT - "verbose")
    def train(x, verbose=False):
        return x * FACTOR

    @nbflow.task(cache_policy=INPUTS - "verbose")
    def risky(x, verbose=False):
        return x * FACTOR

    a, b = train(2, return_state=True), risky(2, return_state=True)
    print(a.name, a.result(), b.name, b.result(), train(2, verbose=True, return_state=True).name)
    """
    first = run_script(tmp_path, source, "10")
    assert lines(first) == ["Completed 20 Completed 20 Cached"]
    assert "cache_policy=INPUTS - 'verbose' leaves the task's code out" in first
    assert "DEFAULT - 'verbose'" in first and first.count("leaves the task's code out") == 1
    # The edit (a global the body reads) recomputes under DEFAULT - "verbose"; INPUTS alone serves stale.
    assert lines(run_script(tmp_path, source, "3")) == ["Completed 6 Cached 20 Cached"]


def test_a_task_that_changes_its_argument_in_place_warns_and_is_not_cached(tmp_path: Path) -> None:
    source = """
    import nbflow

    @nbflow.task
    def add_total(rows):
        rows.append(sum(rows))
        return len(rows)

    @nbflow.task
    def total(rows):
        return sum(rows)

    data = [1, 2]
    first = add_total(data, return_state=True)
    print(first.name, data, add_total([1, 2], return_state=True).name)
    print(total([1, 2], return_state=True).name)
    """
    output = run_script(tmp_path, source)
    assert lines(output) == ["Completed [1, 2, 3] Completed", "Completed"]
    assert "changed its argument(s) 'rows' in place" in output
    # A task that leaves its argument alone is cached as usual.
    assert lines(run_script(tmp_path, source)) == ["Completed [1, 2, 3] Completed", "Cached"]


def test_a_class_attribute_changed_after_the_class_statement_is_a_change(tmp_path: Path) -> None:
    source = """
    import sys
    import nbflow

    class Scaled:
        factor = 2

        def __init__(self, value):
            self.value = value

        def scaled(self):
            return self.value * self.factor

    @nbflow.task
    def compute(item):
        return item.scaled()

    if sys.argv[1] == "changed":
        Scaled.factor = 3
    state = compute(Scaled(5), return_state=True)
    print(state.name, state.result())
    """
    assert lines(run_script(tmp_path, source, "as-written")) == ["Completed 10"]
    assert lines(run_script(tmp_path, source, "as-written")) == ["Cached 10"]
    assert lines(run_script(tmp_path, source, "changed")) == ["Completed 15"]
    assert lines(run_script(tmp_path, source, "changed")) == ["Cached 15"]


ENVIRONMENT = """
import os
import nbflow
from nbflow.ipython.magics import why

def region():
    return os.environ.get("REGION", "eu")

@nbflow.task
def price(amount):
    return f"{amount} {region()}"

@nbflow.task
def home_dir():
    return os.getenv("HOME")

state = price(3, return_state=True)
print(state.name, state.result(), home_dir(return_state=True).name)
print(why("price"))
"""


def test_only_the_environment_variables_read_count(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    assert lines(run_script(tmp_path, ENVIRONMENT, env={"REGION": "us"}))[0] == "Completed 3 us Completed"
    # An unrelated variable, another working directory (PWD): still hits.
    assert lines(run_script(tmp_path, ENVIRONMENT, env={"REGION": "us", "UNRELATED": "1", "PWD": "/"}))[0] == (
        "Cached 3 us Cached")
    changed = lines(run_script(tmp_path, ENVIRONMENT, env={"REGION": "ap"}))
    assert changed[0] == "Completed 3 ap Cached"
    assert any("region" in line for line in changed[1:]), changed


def test_an_environment_read_by_a_computed_name_counts_the_whole_environment(tmp_path: Path) -> None:
    source = """
    import os, sys
    import nbflow

    NAME = "REGION"

    @nbflow.task
    def lookup():
        return os.environ.get(NAME)

    print(lookup(return_state=True).name)
    """
    assert lines(run_script(tmp_path, source, env={"REGION": "us"})) == ["Completed"]
    assert lines(run_script(tmp_path, source, env={"REGION": "us"})) == ["Cached"]
    assert lines(run_script(tmp_path, source, env={"REGION": "us", "OTHER": "1"})) == ["Completed"]
