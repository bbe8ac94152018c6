"""Random numbers: a seeded script draws exactly what a plain run draws, whichever calls come from the
cache; unseeded draws are cached across processes. Fresh processes, with and without nbflow."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from tests.staleness.helpers import lines, run_script

SEEDED = """
import random, sys
import numpy as np
import nbflow

PLAIN = sys.argv[1] == "plain"
task = (lambda fn: fn) if PLAIN else nbflow.task
EXTRA = int(sys.argv[2])

@task
def noise(n):
    return [round(float(x), 6) for x in np.random.normal(size=n)]

@task
def pick(n):
    return [random.randint(0, 1000) for _ in range(n)]

@task
def extra(n):
    return np.random.rand(n).round(6).tolist()

np.random.seed(0)
random.seed(0)
print("a", noise(3), pick(2))
print("b", noise(3))            # the same task at a later point of the sequence
print("c", extra(EXTRA))        # an upstream call whose number of draws the test changes
print("d", noise(2), pick(2))
print("e", np.random.rand(2).round(6).tolist(), random.random())   # plain draws after the tasks
"""


def test_a_seeded_script_reproduces_its_plain_run_on_every_rerun(tmp_path: Path) -> None:
    plain = lines(run_script(tmp_path, SEEDED, "plain", "2"))
    for _ in range(3):  # computed, then served from the cache: the same numbers each time
        assert lines(run_script(tmp_path, SEEDED, "tasks", "2")) == plain
    # An upstream call now draws more numbers: what follows it draws other numbers, as in a plain run.
    plain_more = lines(run_script(tmp_path, SEEDED, "plain", "5"))
    assert plain_more[3:] != plain[3:]
    assert lines(run_script(tmp_path, SEEDED, "tasks", "5")) == plain_more
    assert lines(run_script(tmp_path, SEEDED, "tasks", "2")) == plain


def test_the_second_run_of_a_seeded_script_is_served_from_the_cache(tmp_path: Path) -> None:
    source = SEEDED + """
import nbflow.runs
run = nbflow.runs.list_runs(1)[0]
print("states", sorted({task_run.state for task_run in run.task_runs}))
"""
    run_script(tmp_path, source, "tasks", "2")
    assert lines(run_script(tmp_path, source, "tasks", "2"))[-1] == "states ['Cached']"


def test_unseeded_draws_are_cached_across_processes(tmp_path: Path) -> None:
    source = """
    import numpy as np
    import nbflow

    @nbflow.task
    def sample(n):
        return np.random.rand(n).tolist()

    state = sample(3, return_state=True)
    print(state.name, state.result())
    """
    first = lines(run_script(tmp_path, source))[0]
    second = lines(run_script(tmp_path, source))[0]
    assert first.startswith("Completed") and second.startswith("Cached")
    assert first.split(" ", 1)[1] == second.split(" ", 1)[1]


GENERATOR_ARGUMENT = """
import random, sys
import numpy as np
import nbflow

PLAIN = sys.argv[1] == "plain"
task = (lambda fn: fn) if PLAIN else nbflow.task

@task
def jitter(rng, n):
    return rng.normal(size=n).round(6).tolist()

@task
def shuffle(generator, items):
    items = list(items)
    generator.shuffle(items)
    return items

rng = np.random.default_rng(1701)
legacy = np.random.RandomState(42)
python = random.Random(7)
print(jitter(rng, 2), jitter(rng, 2), jitter(legacy, 2), shuffle(python, range(6)))
print(rng.random(), legacy.rand(), python.random())   # each generator as the calls left it
"""


def test_generators_passed_in_are_inputs_and_left_as_the_computed_call_left_them(tmp_path: Path) -> None:
    plain = lines(run_script(tmp_path, GENERATOR_ARGUMENT, "plain"))
    first = run_script(tmp_path, GENERATOR_ARGUMENT, "tasks")
    assert lines(first) == plain and "in place" not in first
    source = GENERATOR_ARGUMENT + """
import nbflow.runs
print(sorted({task_run.state for task_run in nbflow.runs.list_runs(1)[0].task_runs}))
"""
    output = lines(run_script(tmp_path, source, "tasks"))
    assert output[:2] == plain and output[2] == "['Cached']"


def test_a_generator_a_task_reads_as_a_global_is_left_as_the_computed_call_left_it(tmp_path: Path) -> None:
    source = """
    import sys
    import numpy as np
    import nbflow

    PLAIN = sys.argv[1] == "plain"
    task = (lambda fn: fn) if PLAIN else nbflow.task
    rng = np.random.default_rng(2024)

    @task
    def noise(n):
        return rng.normal(size=n).round(6).tolist()

    print(noise(2), noise(2), rng.random())
    """
    source = textwrap.dedent(source) + (
        "import nbflow.runs\nif not PLAIN:\n"
        "    print(sorted({r.state for r in nbflow.runs.list_runs(1)[0].task_runs}))\n")
    plain = lines(run_script(tmp_path, source, "plain"))
    assert lines(run_script(tmp_path, source, "tasks")) == [*plain, "['Completed']"]
    assert lines(run_script(tmp_path, source, "tasks")) == [*plain, "['Cached']"]


def test_an_unseeded_generator_passed_in_is_cached_across_processes(tmp_path: Path) -> None:
    source = """
    import numpy as np
    import nbflow

    @nbflow.task
    def sample(rng, n):
        return rng.random(n).tolist()

    seeded = sample(np.random.default_rng(7), 2, return_state=True).name
    print(sample(np.random.default_rng(), 2, return_state=True).name, sample(np.random.RandomState(), 2,
                                                                             return_state=True).name, seeded)
    """
    assert lines(run_script(tmp_path, source)) == ["Completed Completed Completed"]
    assert lines(run_script(tmp_path, source)) == ["Cached Cached Cached"]


def test_an_unseeded_entry_does_not_stand_for_a_seeded_run(tmp_path: Path) -> None:
    source = """
    import sys
    import numpy as np
    import nbflow

    @nbflow.task
    def sample(n):
        return np.random.rand(n).round(6).tolist()

    if sys.argv[1] == "seeded":
        np.random.seed(5)
    state = sample(2, return_state=True)
    print(state.name, state.result())
    """
    assert lines(run_script(tmp_path, source, "unseeded"))[0].startswith("Completed")
    seeded = lines(run_script(tmp_path, source, "seeded"))[0]
    assert seeded == f"Completed {np.round(np.random.RandomState(5).rand(2), 6).tolist()}"
    assert lines(run_script(tmp_path, source, "seeded"))[0] == seeded.replace("Completed", "Cached")
