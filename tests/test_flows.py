"""Flows: parameter validation, subflows, retries that reuse completed tasks, timeouts, run records."""

from __future__ import annotations

import time

import pytest

import nbflow
from nbflow.cache_policies import NONE
from nbflow.exceptions import ConfigurationError, ParameterError
from nbflow.runs import get_run, list_runs


def test_flow_returns_the_body_result_and_records_a_run() -> None:
    @nbflow.task
    def double(x: int) -> int:
        return 2 * x

    @nbflow.flow
    def pipeline(n: int, scale: float = 1.0) -> float:
        return sum(double(i) for i in range(n)) * scale

    assert pipeline(3) == 6.0
    (run,) = [run for run in list_runs() if run.kind == "flow"]
    assert run.flow_name == "pipeline"
    assert run.state == "Completed"
    assert run.parameters == {"n": "3", "scale": "1.0"}
    assert run.end_time is not None and run.end_time >= run.start_time
    assert [t.task_name for t in run.task_runs] == ["double"] * 3
    assert all(t.duration is not None and t.attempts == 1 for t in run.task_runs)
    assert get_run(run.id).id == run.id
    assert get_run(run.id[:10]).id == run.id  # a unique prefix works
    assert get_run("no-such-run") is None


def test_parameters_are_validated_before_any_task_runs() -> None:
    ran = []

    @nbflow.task
    def t(x: int) -> int:
        ran.append(x)
        return x

    @nbflow.flow
    def pipeline(n: int, rate: float, name: str = "x") -> int:
        return t(n)

    assert pipeline("4", rate="0.5") == 4  # coerced as pydantic's lax mode does
    with pytest.raises(ParameterError, match=r"pipeline.*n='four'") as info:
        pipeline("four", rate=1.0)
    assert isinstance(info.value, TypeError)
    with pytest.raises(ParameterError, match="missing a required argument"):
        pipeline(1)
    assert ran == [4]


def test_unresolvable_hints_are_not_checked() -> None:
    @nbflow.flow
    def pipeline(df: pd.DataFrame, n: int) -> int:  # noqa: F821 - pd is deliberately unknown
        return n

    assert pipeline(object(), "3") == 3


def test_validate_parameters_false_passes_values_through() -> None:
    @nbflow.flow(validate_parameters=False)
    def pipeline(n: int) -> object:
        return n

    assert pipeline("x") == "x"


def test_failed_flow_raises_the_original_exception_and_records_it() -> None:
    @nbflow.task(cache_policy=NONE)
    def bad() -> None:
        raise ZeroDivisionError("division by zero")

    @nbflow.flow
    def pipeline() -> None:
        bad()

    with pytest.raises(ZeroDivisionError):
        pipeline()
    state = pipeline(return_state=True)
    assert state.is_failed()
    run = list_runs(limit=1)[0]
    assert run.state == "Failed" and "ZeroDivisionError" in run.error
    assert run.task_runs[0].state == "Failed"


def test_subflows_nest_with_their_own_runs() -> None:
    @nbflow.task
    def leaf(x: int) -> int:
        return x + 1

    @nbflow.flow
    def child(x: int) -> int:
        return leaf(x)

    @nbflow.flow
    def parent() -> int:
        return child(1) + child(2)

    assert parent() == 5
    flows = [run for run in list_runs() if run.kind == "flow"]
    parent_run = next(run for run in flows if run.flow_name == "parent")
    children = [run for run in flows if run.flow_name == "child"]
    assert len(children) == 2
    assert all(run.parent_run_id == parent_run.id for run in children)


def test_flow_retry_reuses_tasks_completed_in_an_earlier_attempt() -> None:
    calls: list[str] = []
    attempts = {"n": 0}

    @nbflow.task(cache_policy=NONE)  # no cache: reuse comes from the run, not the store
    def extract() -> list[int]:
        calls.append("extract")
        return [1, 2, 3]

    @nbflow.task(cache_policy=NONE)
    def flaky_load(rows: list[int]) -> int:
        calls.append("load")
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise ConnectionError("database went away")
        return sum(rows)

    @nbflow.flow(retries=1)
    def etl() -> int:
        return flaky_load(extract())

    assert etl() == 6
    assert calls == ["extract", "load", "load"]
    run = list_runs(limit=1)[0]
    assert run.attempts == 2 and run.state == "Completed"
    states = [(t.task_name, t.state) for t in run.task_runs]
    assert states == [("extract", "Completed"), ("flaky_load", "Failed"), ("extract", "Cached"),
                      ("flaky_load", "Completed")]
    history = [entry.name for entry in run.history]
    assert history == ["Pending", "Running", "AwaitingRetry", "Retrying", "Completed"]


class Table:
    """A result that allows weak references, as arrays and frames do."""

    def __init__(self, rows: list[int]) -> None:
        self.rows = rows


def test_a_flow_keeps_no_stored_result_alive_and_a_retry_reads_it_back(executions: dict[str, int]) -> None:
    import gc
    import weakref

    from nbflow.engine.runtime import get_store

    probes: list[weakref.ref[Table]] = []
    attempts = {"n": 0, "clear": False}

    @nbflow.task
    def make(i: int) -> Table:
        return Table([i] * 3)

    @nbflow.task(cache_policy=NONE)
    def flaky(total: int) -> int:
        attempts["n"] += 1
        if attempts["n"] == 1:
            if attempts["clear"]:
                get_store().clear()  # the stored results are gone by the retry
            raise ConnectionError("not yet")
        return total

    @nbflow.flow(retries=1)
    def loop(n: int) -> int:
        total = 0
        for i in range(n):
            table = make(i)
            probes.append(weakref.ref(table))
            total += sum(table.rows)
            del table
            gc.collect()
            # What the body let go is gone: the run holds a stored result by its key, not itself.
            assert all(probe() is None for probe in probes)
        return flaky(total)

    assert loop(4) == 18
    assert executions["make"] == 4  # the retry read the four results back from the store
    run = list_runs(limit=1)[0]
    reused = [t for t in run.task_runs if t.task_name == "make" and t.state == "Cached"]
    assert len(reused) == 4
    assert all(t.history[-1].message == "reused from an earlier attempt of this flow run" for t in reused)

    attempts.update(n=0, clear=True)
    probes.clear()
    # Attempt 1 hits the first flow's entries; the store loses them before the retry, which runs them again.
    assert loop(3) == 9
    assert executions["make"] == 4 + 3


def test_flow_timeout() -> None:
    @nbflow.flow(timeout_seconds=0.2)
    def slow() -> None:
        time.sleep(3)

    with pytest.raises(TimeoutError):
        slow()
    assert list_runs(limit=1)[0].state == "TimedOut"


def test_flow_hooks_and_log_prints(capsys) -> None:
    seen = []

    @nbflow.task(cache_policy=NONE)
    def talk() -> None:
        print("inside")

    @nbflow.flow(log_prints=True, on_completion=[lambda flow, run, state: seen.append(state.name)])
    def pipeline() -> None:
        talk()

    pipeline()
    assert seen == ["Completed"]
    assert list_runs(limit=1)[0].task_runs[0].logs == ["PRINT: inside"]


def test_graph_edges_follow_data() -> None:
    @nbflow.task
    def a() -> list[int]:
        return [1, 2]

    @nbflow.task
    def b(rows: list[int]) -> list[int]:
        return [*rows, 3]

    @nbflow.task
    def c(left: list[int], right: list[int]) -> int:
        return len(left) + len(right)

    @nbflow.flow
    def pipeline() -> int:
        x = a()
        y = b(x)
        return c(x, y)

    assert pipeline() == 5
    run = list_runs(limit=1)[0]
    ids = {t.task_name: t.id for t in run.task_runs}
    upstream = {t.task_name: t.upstream for t in run.task_runs}
    assert upstream == {"a": [], "b": [ids["a"]], "c": [ids["a"], ids["b"]]}


def test_flow_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="retries"):
        nbflow.flow(retries=-2)(lambda: None)
    with pytest.raises(ConfigurationError, match="keyword options"):
        nbflow.flow(lambda: None, retries=1)
