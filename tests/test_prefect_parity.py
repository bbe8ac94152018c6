"""Prefect behaviour that Prefect users rely on: logs printed and kept, returned states, state-like records,
wait_for / allow_failure / quote, run names, result_storage_key, runtime, hooks, transactions' extras, tags,
Prefect's module names."""

from __future__ import annotations

import json
import os
import pickle
import re
import time
from pathlib import Path

import pytest

import nbflow
from nbflow.exceptions import ConfigurationError, FailedRun
from nbflow.runs import list_runs
from nbflow.states import Completed, Failed

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| (\w+)\s* \| (Flow|Task) run '([^']+)' - (.*)$")


# -- logs ---------------------------------------------------------------------------------------------
def test_run_logger_lines_are_printed_in_prefect_format_and_kept_for_flows_and_tasks(capsys) -> None:
    @nbflow.task
    def load(n: int) -> int:
        nbflow.get_run_logger().info("loading %d", n)
        return n

    @nbflow.flow
    def pipeline() -> int:
        logger = nbflow.get_run_logger()
        logger.info("starting")
        logger.error("something odd")
        logger.debug("not shown")
        return load(3)

    assert pipeline() == 3
    printed = [LOG_LINE.match(line) for line in capsys.readouterr().err.splitlines()]
    assert [m.groups() for m in printed if m] == [
        ("INFO", "Flow", "pipeline", "starting"),
        ("ERROR", "Flow", "pipeline", "something odd"),
        ("INFO", "Task", "load", "loading 3"),
    ]
    run = list_runs(limit=1)[0]
    assert run.logs == ["INFO: starting", "ERROR: something odd"]
    assert run.task_runs[0].logs == ["INFO: loading 3"]


def test_a_flow_with_log_prints_keeps_its_own_prints(capsys) -> None:
    @nbflow.flow(log_prints=True)
    def chatty() -> None:
        print("hello from the body")

    chatty()
    assert "hello from the body" in capsys.readouterr().out
    assert list_runs(limit=1)[0].logs == ["PRINT: hello from the body"]


# -- returned states ----------------------------------------------------------------------------------
def test_a_task_that_returns_a_failed_state_ends_failed_and_its_call_raises() -> None:
    @nbflow.task
    def check() -> object:
        return Failed(message="the data is not ready")

    state = check(return_state=True)
    assert state.is_failed() and state.message == "the data is not ready"
    with pytest.raises(FailedRun, match="the data is not ready"):
        check()
    task_run = nbflow.runs.list_runs(limit=1)[0].task_runs[-1]
    assert task_run.state == "Failed" and "the data is not ready" in (task_run.error or "")


def test_a_returned_completed_state_keeps_its_name_and_data() -> None:
    @nbflow.task(persist_result=False)
    def skip() -> object:
        return Completed(data=5, message="nothing new", name="Skipped")

    state = skip(return_state=True)
    assert (state.name, state.type.value, state.result(), state.message) == ("Skipped", "COMPLETED", 5, "nothing new")


def test_a_flow_returning_states_fails_when_one_failed_and_raises_its_exception() -> None:
    @nbflow.task
    def ok() -> int:
        return 1

    @nbflow.task
    def bad() -> int:
        raise ValueError("boom")

    @nbflow.flow
    def both() -> object:
        return [ok(return_state=True), bad(return_state=True)]

    state = both(return_state=True)
    assert state.is_failed() and state.message == "1/2 states failed."
    with pytest.raises(ValueError, match="boom"):
        both()
    assert list_runs(limit=1)[0].state.is_failed()


def test_a_returned_state_that_is_not_final_fails_the_run() -> None:
    @nbflow.task
    def odd() -> object:
        return nbflow.states.Running()

    state = odd(return_state=True)
    assert state.is_failed() and "not final" in state.message


# -- records' states ----------------------------------------------------------------------------------
def test_record_states_are_strings_that_answer_like_states() -> None:
    live: list[bool] = []

    @nbflow.task(on_failure=[lambda task, task_run, state: live.append(task_run.state.is_failed())])
    def bad() -> None:
        raise ValueError("x")

    @nbflow.flow
    def fails() -> None:
        bad()

    fails(return_state=True)
    assert live == [True]  # the live record, as a hook sees it
    for run in (list_runs(limit=1)[0], nbflow.runs.get_run(list_runs(limit=1)[0].id)):  # live, then read back
        assert run.state == "Failed" and isinstance(run.state, str)
        assert run.state.name == "Failed" and run.state.is_failed() and not run.state.is_completed()
        assert run.state.type is nbflow.StateType.FAILED and run.state.is_final()
        assert run.task_runs[0].state.is_failed()
    state = list_runs(limit=1)[0].state
    assert pickle.loads(pickle.dumps(state)).is_failed()
    assert json.dumps({"state": state}) == '{"state": "Failed"}'


# -- wait_for, allow_failure, quote ---------------------------------------------------------------------
def test_wait_for_orders_calls_without_passing_results() -> None:
    order: list[str] = []

    @nbflow.task(cache_policy=nbflow.cache_policies.NONE)
    def slow() -> None:
        time.sleep(0.2)
        order.append("slow")

    @nbflow.task(cache_policy=nbflow.cache_policies.NONE)
    def after(tag: str) -> str:
        order.append(tag)
        return tag

    @nbflow.flow
    def chain() -> list[str]:
        first = slow.submit()
        second = after.submit("submitted", wait_for=[first])
        third = after("called", wait_for=[second])
        mapped = after.map(["m1", "m2"], wait_for=[first])
        return [second.result(), third, *mapped.result()]

    assert chain() == ["submitted", "called", "m1", "m2"]
    assert order[0] == "slow" and order[1:3] == ["submitted", "called"]
    task_runs = list_runs(limit=1)[0].task_runs
    slow_id = task_runs[0].id
    assert slow_id in task_runs[1].upstream  # wait_for draws an edge


def test_wait_for_a_failed_call_ends_upstream_failed_unless_failure_is_allowed() -> None:
    @nbflow.task
    def broken() -> int:
        raise RuntimeError("upstream broke")

    @nbflow.task(cache_policy=nbflow.cache_policies.NONE)
    def cleanup(value: object = None) -> str:
        return f"cleaned after {type(value).__name__}"

    @nbflow.flow
    def flow() -> tuple[str, str, str]:
        failed = broken.submit()
        skipped = cleanup.submit(wait_for=[failed])
        skipped.wait()
        allowed = cleanup.submit(wait_for=[nbflow.allow_failure(failed)]).result()
        given = cleanup(nbflow.allow_failure(failed))
        return skipped.state.name, allowed, given

    assert flow() == ("UpstreamFailed", "cleaned after NoneType", "cleaned after RuntimeError")


def test_quote_passes_a_value_as_it_is() -> None:
    @nbflow.task(cache_policy=nbflow.cache_policies.NONE)
    def inner() -> int:
        return 1

    @nbflow.task(cache_policy=nbflow.cache_policies.NONE)
    def keep(values: list[object]) -> str:
        return type(values[0]).__name__

    @nbflow.flow
    def flow() -> tuple[str, str]:
        future = inner.submit()
        future.wait()
        return keep(nbflow.quote([future])), keep([future])

    assert flow() == ("TaskFuture", "int")
    from nbflow.utilities.annotations import quote

    assert quote is nbflow.quote and quote(3).unquote() == 3


# -- options ------------------------------------------------------------------------------------------
def test_description_defaults_to_the_docstring_and_version_is_kept() -> None:
    @nbflow.task(version="2")
    def documented() -> None:
        """Loads the data."""

    @nbflow.flow(description="The nightly job")
    def job() -> None:
        pass

    assert documented.description == "Loads the data." and documented.version == "2"
    assert documented.with_options(retries=1).description == "Loads the data."
    assert job.description == "The nightly job"
    with pytest.raises(ConfigurationError, match="description=3"):
        nbflow.task(description=3)(lambda: None)


def test_flow_and_task_run_names_from_templates_and_callables() -> None:
    from nbflow import runtime

    @nbflow.task(task_run_name=lambda: f"square-{runtime.task_run.parameters['x']}")
    def square(x: int) -> int:
        return x * x

    @nbflow.flow(flow_run_name="report-{day}")
    def report(day: str) -> str:
        square(3)
        return runtime.flow_run.name

    @nbflow.flow(flow_run_name=lambda: f"called-{runtime.flow_run.parameters['day']}")
    def other(day: str) -> str:
        return runtime.flow_run.name

    assert report("monday") == "report-monday"
    run = list_runs(limit=1)[0]
    assert run.run_name == "report-monday" and run.task_runs[0].task_name == "square-3"
    assert other("tuesday") == "called-tuesday"
    with pytest.raises(ConfigurationError, match="flow_run_name"):
        nbflow.flow(flow_run_name=3)(lambda: None)


def test_result_storage_key_names_the_entry_tasks_share(executions) -> None:
    @nbflow.task(result_storage_key="answer-{parameters[day]}")
    def first(day: str) -> str:
        return f"computed for {day}"

    @nbflow.task(result_storage_key="answer-{parameters[day]}")
    def second(day: str) -> str:
        return "never"

    assert first("mon") == "computed for mon"
    assert second("mon") == "computed for mon"  # the same key: the stored result
    assert second("tue") == "never"

    @nbflow.task(result_storage_key="answer-{parameters[nope]}")
    def bad(day: str) -> str:
        return day

    with pytest.raises(ConfigurationError, match=r"result_storage_key .* could not be formatted \(KeyError"):
        bad("x")
    with pytest.raises(ConfigurationError, match="not both"):
        nbflow.task(result_storage_key="k", cache_key_fn=lambda c, p: "k")(lambda: None)


def test_cache_result_in_memory_is_accepted_and_checked() -> None:
    @nbflow.task(cache_result_in_memory=False)
    def value() -> int:
        return 3

    @nbflow.flow(cache_result_in_memory=False, persist_result=True)
    def flow() -> int:
        return value()

    assert flow() == 3
    with pytest.raises(ConfigurationError, match="cache_result_in_memory"):
        nbflow.task(cache_result_in_memory="no")(lambda: None)


def test_runtime_names_the_current_runs() -> None:
    from nbflow import runtime

    seen: dict[str, object] = {}

    @nbflow.task
    def inside(x: int) -> None:
        seen.update(task=runtime.task_run.name, task_id=runtime.task_run.id, params=runtime.task_run.parameters,
                    flow_id_in_task=runtime.flow_run.id)

    @nbflow.flow
    def outer(n: int) -> None:
        seen.update(flow=runtime.flow_run.name, flow_params=runtime.flow_run.parameters, flow_id=runtime.flow_run.id)
        inside(n)

    assert (runtime.flow_run.id, runtime.task_run.id, runtime.flow_run.parameters) == (None, None, {})
    outer(4)
    run = list_runs(limit=1)[0]
    assert seen["flow"] == "outer" and seen["flow_params"] == {"n": 4} and seen["flow_id"] == run.id
    assert seen["task"] == "inside" and seen["params"] == {"x": 4} and seen["task_id"] == run.task_runs[0].id
    assert seen["flow_id_in_task"] == run.id
    assert runtime.deployment.id is None
    with pytest.raises(AttributeError, match="offers"):
        runtime.flow_run.nope  # noqa: B018


def test_on_running_hooks_and_flow_crash_hooks() -> None:
    calls: list[str] = []

    @nbflow.task(on_running=[lambda task, run, state: calls.append(f"task {state.name}")],
                 cache_policy=nbflow.cache_policies.NONE)
    def work() -> None:
        calls.append("work")

    @nbflow.flow(on_running=[lambda flow, run, state: calls.append(f"flow {state.name}")],
                 on_crashed=[lambda flow, run, state: calls.append("crashed")])
    def flow(crash: bool) -> None:
        work()
        if crash:
            raise SystemExit(3)

    flow(False)
    assert calls == ["flow Running", "task Running", "work"]
    calls.clear()
    with pytest.raises(SystemExit):
        flow(True)
    assert calls == ["flow Running", "task Running", "work", "crashed"]


# -- transactions --------------------------------------------------------------------------------------
def test_transaction_state_questions_and_stage_hooks() -> None:
    calls: list[str] = []
    with nbflow.transaction() as txn:
        txn.stage(on_commit_hooks=[lambda t: calls.append("commit")],
                  on_rollback_hooks=[lambda t: calls.append("rollback")])
        assert txn.is_active() and not txn.is_committed()
    assert txn.is_committed() and not txn.is_rolled_back() and calls == ["commit"]

    calls.clear()
    with pytest.raises(RuntimeError), nbflow.transaction() as failing:
        failing.stage(on_commit_hooks=[lambda t: calls.append("commit")],
                      on_rollback_hooks=[lambda t: calls.append("rollback 1")])
        failing.stage(on_rollback_hooks=[lambda t: calls.append("rollback 2")])
        raise RuntimeError("stop")
    assert failing.is_rolled_back() and not failing.is_committed() and calls == ["rollback 2", "rollback 1"]
    with pytest.raises(ConfigurationError, match="no key"), nbflow.transaction() as keyless:
        keyless.stage(42)


def test_on_commit_hooks_run_for_a_call_outside_any_transaction() -> None:
    committed: list[bool] = []

    @nbflow.task(on_commit=[lambda txn: committed.append(txn.is_committed())])
    def write(x: int) -> int:
        return x

    write(1)
    assert committed == [True]
    write(1)  # a cache hit commits nothing
    assert committed == [True]


# -- tags ----------------------------------------------------------------------------------------------
def test_tags_block_adds_tags_to_task_runs() -> None:
    @nbflow.task(tags=["own"])
    def tagged() -> None:
        pass

    with nbflow.tags("nightly", "etl") as active:
        assert active == {"nightly", "etl"}
        with nbflow.tags("inner"):
            tagged()
    tagged()
    records = list_runs(limit=1)[0].task_runs[-2:]
    assert records[0].tags == ["own", "nightly", "etl", "inner"] and records[1].tags == ["own"]
    with pytest.raises(ConfigurationError, match="non-empty string"), nbflow.tags(3):  # type: ignore[arg-type]
        pass


# -- visualize ------------------------------------------------------------------------------------------
def test_visualize_draws_the_latest_run(tmp_path: Path) -> None:
    @nbflow.task
    def step(x: int) -> int:
        return x + 1

    @nbflow.flow
    def graph(n: int) -> int:
        return step(step(n))

    with pytest.raises(ConfigurationError, match="has not run"):
        graph.visualize()
    picture = graph.visualize(1)
    assert picture is not None and picture.svg is not None and "<svg" in picture.svg and "step" in picture.svg
    assert picture.save(tmp_path / "g.svg").read_text().startswith("<svg")


# -- Prefect's module names ---------------------------------------------------------------------------
def test_prefect_module_names_import() -> None:
    from nbflow.concurrency.sync import concurrency, rate_limit
    from nbflow.futures import PrefectFuture, resolve_futures_to_results, resolve_futures_to_states, wait
    from nbflow.logging import get_run_logger
    from nbflow.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
    from nbflow.tasks import exponential_backoff

    assert PrefectFuture is nbflow.TaskFuture and wait is nbflow.wait and get_run_logger is nbflow.get_run_logger
    assert concurrency is nbflow.concurrency.concurrency and rate_limit is nbflow.rate_limit
    assert ThreadPoolTaskRunner is nbflow.ThreadPoolTaskRunner and ProcessPoolTaskRunner is nbflow.ProcessPoolTaskRunner
    assert exponential_backoff is nbflow.exponential_backoff

    @nbflow.task
    def one() -> int:
        return 1

    @nbflow.flow
    def flow() -> tuple[object, object]:
        futures = [one.submit(), one.submit()]
        return resolve_futures_to_results({"a": futures}), resolve_futures_to_states(futures)[0].name

    assert flow() == ({"a": [1, 1]}, "Completed") or flow()[1] == "Cached"


def test_process_pool_runner_runs_attempts_in_other_processes() -> None:
    @nbflow.task(cache_policy=nbflow.cache_policies.NONE)
    def where(x: int) -> tuple[int, int]:
        import os

        return os.getpid(), x * 2

    @nbflow.flow(task_runner=nbflow.ProcessPoolTaskRunner(max_workers=2))
    def fan() -> list[tuple[int, int]]:
        return where.map([1, 2, 3]).result()

    results = fan()
    assert [doubled for _, doubled in results] == [2, 4, 6]
    assert all(pid != os.getpid() for pid, _ in results)
    with pytest.raises(ConfigurationError, match="max_workers"):
        nbflow.ProcessPoolTaskRunner(max_workers=0)


def test_a_serializable_cache_policy_computes_a_key_once_at_a_time() -> None:
    from nbflow.cache_policies import DEFAULT, INPUTS

    computed: list[int] = []

    @nbflow.task(cache_policy=DEFAULT.configure(isolation_level="SERIALIZABLE", lock_manager=object()))
    def slow(x: int) -> int:
        computed.append(x)
        time.sleep(0.3)
        return x * 10

    @nbflow.flow
    def fan() -> list[int]:
        return slow.map([1, 1, 1]).result()

    assert fan() == [10, 10, 10] and computed == [1]
    assert sorted(task_run.state for task_run in list_runs(limit=1)[0].task_runs) == ["Cached", "Cached", "Completed"]
    assert DEFAULT.configure(isolation_level="READ_COMMITTED") == DEFAULT
    from nbflow.locking.filesystem import FileSystemLockManager

    with pytest.warns(nbflow.NbflowWarning, match="key_storage is not used"):
        assert INPUTS.configure(key_storage="/tmp/keys", lock_manager=FileSystemLockManager("/tmp/locks")) == INPUTS
    with pytest.raises(ConfigurationError, match="isolation_level"):
        INPUTS.configure(isolation_level="sometimes")


def test_prefect_helpers_for_hooks_contexts_and_annotations(capsys) -> None:
    from nbflow.context import FlowRunContext, TaskRunContext, get_run_context, with_context
    from nbflow.logging import disable_run_logger
    from nbflow.logging.loggers import flow_run_logger
    from nbflow.utilities.annotations import opaque

    def report(flow, flow_run, state) -> None:
        flow_run_logger(flow_run, flow).info(f"ended {state.name}")

    @nbflow.task
    def make() -> list[int]:
        return [1, 2]

    @nbflow.task(cache_policy=nbflow.cache_policies.NONE)
    def length(values: list[int]) -> int:
        return len(values)

    @nbflow.flow(on_completion=[report])
    def flow() -> tuple[int, bool, bool]:
        inside = with_context(lambda: FlowRunContext.get() is not None)
        return length(opaque(make.submit())), inside(), TaskRunContext.get() is None

    @flow.on_failure
    def never(flow, flow_run, state) -> None:
        raise AssertionError("not called")

    assert flow() == (2, True, True) and flow.on_failure == [never]
    assert "| INFO    | Flow run 'flow' - ended Completed" in capsys.readouterr().err
    assert list_runs(limit=1)[0].logs == ["INFO: ended Completed"]
    with disable_run_logger():
        nbflow.get_run_logger().info("silent")
    assert "silent" not in capsys.readouterr().err
    with pytest.raises(nbflow.NbflowError, match="no flow run or task run"):
        get_run_context()


def test_a_generator_a_flow_returns_is_consumed_but_a_generator_flow_yields() -> None:
    def numbers():  # type: ignore[no-untyped-def]
        yield from [1, 2, 3]

    @nbflow.flow
    def returns():  # type: ignore[no-untyped-def]
        return numbers()

    @nbflow.flow
    def yields():  # type: ignore[no-untyped-def]
        yield numbers()

    assert returns() == [1, 2, 3]
    assert list(next(yields())) == [1, 2, 3]


def test_flows_defined_in_a_class_bind_like_methods() -> None:
    class Report:
        greeting = "class"

        def __init__(self) -> None:
            self.greeting = "instance"

        @nbflow.flow
        def from_instance(self) -> str:
            return self.greeting

        @nbflow.flow
        @classmethod
        def from_class(cls) -> str:
            return cls.greeting

        @nbflow.flow
        @staticmethod
        def alone(x: int) -> int:
            return x

    assert Report().from_instance() == "instance"
    assert Report.from_class() == "class" and Report().from_class() == "class"
    assert Report.alone(2) == 2 and Report().alone(3) == 3


def test_a_flow_returning_futures_returns_their_results_and_fails_as_prefect_says() -> None:
    @nbflow.task(cache_policy=nbflow.cache_policies.NONE)
    def maybe(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    @nbflow.flow
    def fine() -> list[object]:
        return [maybe.submit(1), maybe.submit(3)]

    @nbflow.flow
    def broken() -> list[object]:
        return [maybe.submit(1), maybe.submit(2)]

    assert fine() == [1, 3]
    state = broken(return_state=True)
    assert state.is_failed() and state.message == "1/2 states failed."
    with pytest.raises(ValueError, match="two"):
        broken()


def test_artifacts_are_kept_and_shown_in_a_notebook_only(capsys) -> None:
    from nbflow.artifacts import (
        Artifact,
        create_link_artifact,
        create_markdown_artifact,
        create_progress_artifact,
        create_table_artifact,
        update_progress_artifact,
    )

    @nbflow.task
    def report() -> str:
        create_markdown_artifact("# Sales", key="sales")
        create_table_artifact([{"customer": "ana", "p": 0.9}], key="churn")
        create_link_artifact("https://example.com", "example", key="link")
        progress = create_progress_artifact(0.0, key="fetch")
        update_progress_artifact(progress, 50)
        return progress

    progress_id = report()
    assert capsys.readouterr().out == ""  # outside a kernel nothing is printed, as in Prefect
    sales = Artifact.get("sales")
    assert sales is not None and sales._repr_markdown_() == "# Sales" and sales.task_run_id is not None
    churn = Artifact.get("churn")
    assert churn is not None and "<td>ana</td>" in (churn._repr_html_() or "")
    fetch = Artifact.get("fetch")
    assert fetch is not None and fetch.id == progress_id and fetch.data == 50.0
    assert Artifact.get("nothing") is None
    with pytest.raises(ConfigurationError, match="from 0 to 100"):
        update_progress_artifact(progress_id, 150)


def test_a_storage_key_from_the_task_runs_id_or_name_never_shares_an_entry() -> None:
    @nbflow.task(result_storage_key="by-id-{task_run.id}")
    def by_id(x: int) -> int:
        return x * 10

    @nbflow.task(result_storage_key="by-name-{task_run.name}")
    def by_name(x: int) -> int:
        return x * 10

    @nbflow.task(result_storage_key="by-flow-{flow_run.id}")
    def by_flow(x: int) -> int:
        return x * 10

    @nbflow.flow
    def calls() -> tuple[int, ...]:
        return by_id(1), by_id(2), by_name(1), by_name(2)

    assert calls() == (10, 20, 10, 20)  # each call its own run id and name, as in Prefect
    with pytest.raises(ConfigurationError, match=r"\{flow_run.id\} has no value here"):
        by_flow(3)  # outside a flow: no run id to render (not the text "None", shared by every call)
