"""Task calls through the engine: results, states, retries, timeouts, interrupts, hooks, logs."""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest

import nbflow
from nbflow.cache_policies import NONE
from nbflow.engine.retries import delay_for, exponential_backoff, jittered
from nbflow.exceptions import ConfigurationError, ParameterError, TaskTimeoutError
from nbflow.runs import list_runs


def session_task_runs() -> list:
    runs = [run for run in list_runs() if run.kind == "session"]
    assert len(runs) == 1
    return runs[0].task_runs


def test_bare_and_configured_decorators_return_results() -> None:
    @nbflow.task
    def add(a: int, b: int) -> int:
        return a + b

    @nbflow.task(name="times", retries=1)
    def mul(a: int, b: int) -> int:
        return a * b

    assert add(2, 3) == 5
    assert mul(2, 3) == 6
    assert mul.name == "times"
    assert isinstance(add, nbflow.Task)
    assert add.__name__ == "add" and add.__doc__ is None


def test_return_state_gives_the_final_state_and_does_not_raise() -> None:
    @nbflow.task(cache_policy=NONE)
    def boom() -> None:
        raise ValueError("bad value")

    state = boom(return_state=True)
    assert state.type == nbflow.StateType.FAILED and state.name == "Failed"
    assert state.is_failed() and not state.is_completed()
    with pytest.raises(ValueError, match="bad value"):
        state.result()
    assert isinstance(state.result(raise_on_failure=False), ValueError)
    with pytest.raises(ValueError, match="bad value"):
        boom()  # a plain call raises the original exception type


def test_bad_call_fails_before_running_with_the_signature() -> None:
    ran = []

    @nbflow.task
    def f(a: int) -> int:
        ran.append(a)
        return a

    with pytest.raises(ParameterError, match=r"task 'f'.*f\(a: int\)") as info:
        f(1, 2)
    assert isinstance(info.value, TypeError)
    assert ran == []


def _positional(a, b, /, c=3, d=None):  # type: ignore[no-untyped-def]
    return (a, b, c, d)


def _keywords(a, *rest, key=1, **more):  # type: ignore[no-untyped-def]
    return (a, rest, key, more)


@pytest.mark.parametrize(
    ("fn", "args", "kwargs"),
    [
        (_positional, (1, 2), {}),
        (_positional, (1, 2, 5), {}),
        (_positional, (1, 2, 5, 6), {}),
        (_positional, (1, 2), {"d": 7}),
        (_positional, (1,), {}),
        (_positional, (1, 2, 3, 4, 5), {}),
        (_positional, (), {"a": 1, "b": 2}),
        (_keywords, (1, 2, 3), {"key": 4, "x": 5}),
        (_keywords, (), {}),
    ],
)
def test_arguments_bind_as_inspect_binds_them(fn, args, kwargs) -> None:  # type: ignore[no-untyped-def]
    # Plain positional calls bind without inspect (they are most calls, cache hits included): the
    # arguments, their order and the errors must be exactly what Signature.bind + apply_defaults give.
    import inspect

    task = nbflow.task(fn)
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as error:
        with pytest.raises(TypeError) as info:
            task.bind_arguments(args, kwargs)
        assert str(info.value) == str(error)
        return
    bound.apply_defaults()
    arguments = task.bind_arguments(args, kwargs)
    assert list(arguments.items()) == list(bound.arguments.items())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"retry_delay_seconds": "soon"}, "retry_delay_seconds"),
        ({"retry_delay_seconds": []}, "retry_delay_seconds"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"cache_policy": "inputs"}, "cache_policy"),
        ({"result_serializer": "yaml"}, "result_serializer"),
        ({"on_completion": [1]}, "on_completion"),
        ({"cache_expiration": "1 day"}, "cache_expiration"),
    ],
)
def test_bad_options_name_the_option(options: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        nbflow.task(**options)(lambda: None)


def test_with_options_returns_a_changed_copy() -> None:
    @nbflow.task(retries=1)
    def f() -> int:
        return 1

    g = f.with_options(retries=4, name="g")
    assert (f.retries, g.retries, g.name, f.name) == (1, 4, "g", "f")
    with pytest.raises(ConfigurationError, match="unknown option"):
        f.with_options(retry=3)


def test_retries_record_every_attempt() -> None:
    attempts = []

    @nbflow.task(retries=3, retry_delay_seconds=[0.01, 0.02], cache_policy=NONE)
    def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "ok"

    assert flaky() == "ok"
    (task_run,) = session_task_runs()
    assert task_run.attempts == 3
    assert task_run.state == "Completed"
    names = [entry.name for entry in task_run.history]
    assert names == ["Pending", "Running", "AwaitingRetry", "Retrying", "AwaitingRetry", "Retrying", "Completed"]
    assert attempts[1] - attempts[0] >= 0.01 and attempts[2] - attempts[1] >= 0.02


def test_retries_exhausted_end_failed_with_the_original_exception() -> None:
    @nbflow.task(retries=2, cache_policy=NONE)
    def always() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError):
        always()
    (task_run,) = session_task_runs()
    assert (task_run.state, task_run.attempts) == ("Failed", 3)
    assert task_run.error == "KeyError: 'missing'"
    assert "raise KeyError" in task_run.traceback


def test_retry_condition_stops_retrying() -> None:
    calls = []

    def only_connection_errors(task, task_run, state) -> bool:
        return isinstance(state.result(raise_on_failure=False), ConnectionError)

    @nbflow.task(retries=5, retry_condition_fn=only_connection_errors, cache_policy=NONE)
    def f() -> None:
        calls.append(1)
        raise (ConnectionError if len(calls) < 2 else ValueError)("x")

    with pytest.raises(ValueError):
        f()
    assert len(calls) == 2


def test_delay_schedules() -> None:
    assert [delay_for(2, n) for n in (1, 2, 3)] == [2, 2, 2]
    assert [delay_for([1, 5], n) for n in (1, 2, 3, 4)] == [1, 5, 5, 5]
    backoff = exponential_backoff(1.5)
    assert [backoff(n) for n in (1, 2, 3, 4)] == [1.5, 3, 6, 12]
    assert [delay_for(lambda n: n * 10, n) for n in (1, 2)] == [10, 20]
    with pytest.raises(ConfigurationError):
        exponential_backoff(-1)


def test_jitter_really_varies_the_delay() -> None:
    rng = random.Random(7)
    delays = [jittered(10.0, 0.5, rng) for _ in range(200)]
    assert min(delays) >= 5.0 and max(delays) <= 15.0
    assert len({round(d, 6) for d in delays}) > 150
    assert min(delays) < 7 and max(delays) > 13  # the whole band is used
    assert jittered(10.0, None) == 10.0


def test_jitter_varies_real_waits_between_attempts() -> None:
    stamps: list[float] = []

    @nbflow.task(retries=6, retry_delay_seconds=0.04, retry_jitter_factor=0.9, cache_policy=NONE)
    def f() -> None:
        stamps.append(time.monotonic())
        raise RuntimeError("again")

    with pytest.raises(RuntimeError):
        f()
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert len(gaps) == 6
    assert max(gaps) - min(gaps) > 0.01, gaps  # without jitter these would all be ~0.04


def test_timeout_interrupts_a_sleeping_task_on_the_main_thread() -> None:
    @nbflow.task(timeout_seconds=0.2, cache_policy=NONE)
    def sleepy() -> None:
        time.sleep(5)

    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        sleepy()
    assert time.monotonic() - started < 2
    assert isinstance(info.value, TaskTimeoutError)
    assert "sleepy" in str(info.value)
    (task_run,) = session_task_runs()
    assert task_run.state == "TimedOut"


def test_timeout_is_retried_then_times_out() -> None:
    @nbflow.task(timeout_seconds=0.05, retries=1, cache_policy=NONE)
    def sleepy() -> None:
        time.sleep(1)

    state = sleepy(return_state=True)
    assert state.name == "TimedOut" and state.type == nbflow.StateType.FAILED
    (task_run,) = session_task_runs()
    assert task_run.attempts == 2


def test_timeout_in_a_worker_thread_interrupts_python_code() -> None:
    @nbflow.task(timeout_seconds=0.2, cache_policy=NONE)
    def spin() -> int:
        total = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            total += 1
        return total

    box: dict = {}

    def worker() -> None:
        started = time.monotonic()
        box["state"] = spin(return_state=True)
        box["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert box["state"].name == "TimedOut"
    assert box["elapsed"] < 2


def test_timeout_in_a_worker_thread_blocked_in_c_still_ends_timed_out() -> None:
    @nbflow.task(timeout_seconds=0.1, cache_policy=NONE)
    def blocked() -> str:
        time.sleep(0.4)  # a C call: cannot be interrupted off the main thread
        return "late"

    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(state=blocked(return_state=True)))
    thread.start()
    thread.join(10)
    assert box["state"].name == "TimedOut"


def test_nested_timeouts_the_inner_one_fires_first() -> None:
    @nbflow.task(timeout_seconds=0.1, cache_policy=NONE)
    def inner() -> None:
        time.sleep(2)

    @nbflow.flow(timeout_seconds=5)
    def outer() -> str:
        state = inner(return_state=True)
        return state.name

    assert outer() == "TimedOut"


def test_keyboard_interrupt_cancels_and_propagates() -> None:
    @nbflow.task
    def interrupted(x: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted(1)
    (task_run,) = session_task_runs()
    assert task_run.state == "Cancelled"
    assert task_run.persisted is None
    from nbflow.engine.runtime import get_store

    assert list(get_store().records()) == []


def test_hooks_run_once_per_final_state_and_a_raising_hook_is_not_fatal(caplog) -> None:
    seen: list[tuple[str, str]] = []

    def on_done(task, task_run, state) -> None:
        seen.append(("done", state.name))

    def on_fail(task, task_run, state) -> None:
        seen.append(("fail", state.name))

    def broken(task, task_run, state) -> None:
        raise RuntimeError("hook bug")

    @nbflow.task(on_completion=[on_done, broken], on_failure=[on_fail], cache_policy=NONE)
    def f(fail: bool) -> int:
        if fail:
            raise ValueError("x")
        return 1

    assert f(False) == 1
    with pytest.raises(ValueError):
        f(True)
    assert seen == [("done", "Completed"), ("fail", "Failed")]
    assert "hook bug" in caplog.text or "raised" in caplog.text


def test_log_prints_and_run_logger(capsys) -> None:
    @nbflow.task(log_prints=True, cache_policy=NONE)
    def chatty() -> None:
        print("hello from the task")
        nbflow.get_run_logger().info("logged %d", 42)

    @nbflow.task(cache_policy=NONE)
    def quiet() -> None:
        print("not captured")

    chatty()
    quiet()
    assert "hello from the task" in capsys.readouterr().out  # still printed
    first, second = session_task_runs()
    assert "PRINT: hello from the task" in first.logs
    assert any("logged 42" in line for line in first.logs)
    assert second.logs == []


def test_task_run_name_template() -> None:
    @nbflow.task(task_run_name="load-{path}", cache_policy=NONE)
    def load(path: str) -> str:
        return path

    load("a.csv")
    (task_run,) = session_task_runs()
    assert task_run.task_name == "load-a.csv"


def test_a_generator_function_task_is_a_clear_error() -> None:
    def numbers() -> object:
        yield 1

    with pytest.raises(ConfigurationError, match="generator"):
        nbflow.task(numbers)


def test_a_session_keeps_only_its_latest_task_runs_in_memory_but_all_on_disk(monkeypatch) -> None:
    from nbflow import runs
    from nbflow.engine.runtime import finish_session, session_run

    monkeypatch.setattr(runs, "_IN_MEMORY", 10)

    @nbflow.task(cache_policy=NONE)
    def f(i: int) -> int:
        if i == 3:
            raise ValueError("three")
        return i

    for i in range(30):
        f(i, return_state=True)
    session = session_run()
    assert len(session.task_runs) <= 10
    assert session.task_runs[-1].seq == 29
    finish_session()
    (stored,) = [run for run in list_runs() if run.kind == "session"]
    assert [t.seq for t in stored.task_runs] == list(range(30))
    assert stored.state == "Failed"  # one task failed, though it is no longer in memory
