"""Durable pydantic-ai agents: runs are flows, model requests and tool calls are cached, retried tasks.

Offline only: the models are pydantic-ai's FunctionModel and TestModel. Model and tool calls are
counted through files (or the engine's events), never through a global the function reads, which
would be part of its code identity.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import Agent, RunContext, Tool
from pydantic_ai.exceptions import ModelHTTPError, UserError
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.tools import ToolDefinition

import nbflow
from nbflow.cache_policies import NONE
from nbflow.exceptions import ConfigurationError, NbflowWarning
from nbflow.integrations.pydantic_ai import AGENT_INPUTS, DurableAgent, NbflowDurability, TaskConfig
from nbflow.integrations.pydantic_ai._keys import canonical

CALLS = "NBFLOW_TEST_CALLS"


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file the model and tool functions append one line to per call."""
    path = tmp_path / "calls.log"
    monkeypatch.setenv(CALLS, str(path))
    return path


def logged(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def note(word: str) -> None:
    with open(os.environ[CALLS], "a") as log:
        log.write(word + "\n")


def geography_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    note("model")
    returned = [p for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
    if not returned:
        return ModelResponse(parts=[ToolCallPart("capital", {"country": "Mexico"})])
    return ModelResponse(parts=[TextPart(f"The capital is {returned[-1].content}.")])


def capital(ctx: RunContext[None], country: str) -> str:
    """The capital city of a country."""
    note("tool")
    return {"Mexico": "Mexico City"}.get(country, "unknown")


def capital_v2(ctx: RunContext[None], country: str) -> str:
    """The capital city of a country."""
    note("tool")
    return {"Mexico": "Ciudad de México"}.get(country, "unknown")


def geography(instructions: str = "You are an expert in geography.", tool: Any = capital) -> Agent[None, str]:
    return Agent(FunctionModel(geography_model), name="geography", instructions=instructions,
                 tools=[Tool(tool, name="capital")])


def last_run() -> Any:
    return nbflow.runs.list_runs(limit=1)[0]


def states(run: Any) -> list[tuple[str, str]]:
    return [(task_run.task_name, task_run.state) for task_run in run.task_runs]


MODEL = "function:geography_model:"


# -- the API ---------------------------------------------------------------------------------------


def test_importing_without_pydantic_ai_names_the_extra() -> None:
    code = "import sys; sys.modules['pydantic_ai'] = None; import nbflow.integrations.pydantic_ai"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert 'pip install "nbflow[ai]"' in done.stderr


def test_import_nbflow_does_not_import_pydantic_ai() -> None:
    code = "import sys, nbflow; nbflow.task; print('pydantic_ai' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_an_agent_without_a_name_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"no name.*Agent\(\.\.\., name="):
        DurableAgent(Agent(TestModel()))
    assert DurableAgent(Agent(TestModel()), name="helper").name == "helper"


def test_bad_task_options_fail_when_the_agent_is_wrapped() -> None:
    with pytest.raises(ConfigurationError, match="retry_count"):
        DurableAgent(geography(), model_task_config={"retry_count": 3})  # type: ignore[typeddict-unknown-key]
    with pytest.raises(ConfigurationError, match=r"tool_task_config.*retries=-1"):
        DurableAgent(geography(), tool_task_config=TaskConfig(retries=-1))
    agent = Agent(FunctionModel(geography_model), name="geography")
    agent.tool(metadata={"nbflow": {"timeout": 3}})(capital)
    with pytest.raises(ConfigurationError, match=r"tool 'capital'.*timeout"):
        DurableAgent(agent)


# -- runs, tasks and the cache ---------------------------------------------------------------------


def test_a_run_is_a_flow_whose_model_requests_and_tool_calls_are_tasks(calls: Path) -> None:
    durable = DurableAgent(geography())
    result = durable.run_sync("What is the capital of Mexico?")
    assert result.output == "The capital is Mexico City."
    run = last_run()
    assert run.flow_name == "geography" and run.state == "Completed"
    assert states(run) == [(MODEL, "Completed"), ("capital", "Completed"), (MODEL, "Completed")]
    # graph edges follow the conversation: model -> tool -> model (which reads the first answer too)
    first, tool, second = run.task_runs
    assert tool.upstream == [first.id] and set(second.upstream) == {first.id, tool.id}
    assert logged(calls) == ["model", "tool", "model"]


def test_the_same_run_again_is_served_from_the_cache(calls: Path) -> None:
    first = DurableAgent(geography()).run_sync("What is the capital of Mexico?")
    calls.unlink()
    second = DurableAgent(geography()).run_sync("What is the capital of Mexico?")
    assert logged(calls) == []
    assert second.output == first.output
    assert [state for _, state in states(last_run())] == ["Cached"] * 3
    assert second.all_messages()[-1].parts == first.all_messages()[-1].parts


def test_a_second_process_makes_zero_model_requests(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    script = tmp_path / "agent_run.py"
    script.write_text(textwrap.dedent('''
        import json, os, sys
        from pydantic_ai import Agent, RunContext
        from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart, ToolReturnPart
        from pydantic_ai.models.function import FunctionModel
        import nbflow
        from nbflow.integrations.pydantic_ai import DurableAgent

        def answer(messages, info):
            with open(os.environ["MODEL_CALLS"], "a") as log:
                log.write("request\\n")
            returned = [p for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
            if not returned:
                return ModelResponse(parts=[ToolCallPart("capital", {"country": "Mexico"})])
            return ModelResponse(parts=[TextPart(f"The capital is {returned[-1].content}.")])

        agent = Agent(FunctionModel(answer), name="geography", instructions="Be brief.")

        @agent.tool
        def capital(ctx: RunContext[None], country: str) -> str:
            return {"Mexico": "Mexico City"}.get(country, "unknown")

        result = DurableAgent(agent).run_sync(sys.argv[1])
        run = nbflow.runs.list_runs(limit=1)[0]
        print(json.dumps({"output": result.output, "messages": len(result.all_messages()),
                          "tasks": [[t.task_name, t.state] for t in run.task_runs]}))
    '''))
    model_calls = tmp_path / "model-calls.log"
    env = {**subprocess_env, "MODEL_CALLS": str(model_calls)}

    def run(prompt: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, str(script), prompt], capture_output=True, text=True,
                              env=env, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = run("What is the capital of Mexico?")
    assert logged(model_calls) == ["request", "request"]
    second = run("What is the capital of Mexico?")
    assert logged(model_calls) == ["request", "request"]  # zero model requests the second time
    assert second["output"] == first["output"] == "The capital is Mexico City."
    assert second["messages"] == first["messages"]
    assert [state for _, state in second["tasks"]] == ["Cached", "Cached", "Cached"]
    # another prompt is another conversation
    run("And the capital of Peru?")
    assert len(logged(model_calls)) == 4


def test_changing_the_prompt_or_the_instructions_recomputes(calls: Path) -> None:
    DurableAgent(geography()).run_sync("What is the capital of Mexico?")
    calls.unlink()
    DurableAgent(geography()).run_sync("Capital of Mexico, please?")
    assert logged(calls) == ["model", "tool", "model"]  # the tool's history changed too
    calls.unlink()
    DurableAgent(geography(instructions="Answer in one word.")).run_sync("What is the capital of Mexico?")
    assert logged(calls) == ["model", "tool", "model"]


def test_changing_a_tools_code_recomputes_from_that_tool_on(calls: Path) -> None:
    DurableAgent(geography()).run_sync("What is the capital of Mexico?")
    calls.unlink()
    result = DurableAgent(geography(tool=capital_v2)).run_sync("What is the capital of Mexico?")
    assert result.output == "The capital is Ciudad de México."
    assert logged(calls) == ["tool", "model"]  # the first model request is still cached
    assert [state for _, state in states(last_run())] == ["Cached", "Completed", "Completed"]


def twice_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    note("model")
    returned = [p for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
    if not returned:  # two calls with the same arguments in one response, ids left to pydantic-ai
        return ModelResponse(parts=[ToolCallPart("capital", {"country": "Mexico"}),
                                    ToolCallPart("capital", {"country": "Mexico"})])
    return ModelResponse(parts=[TextPart(" / ".join(str(p.content) for p in returned))])


def test_parallel_identical_tool_calls_each_run_and_each_replay(calls: Path) -> None:
    agent = Agent(FunctionModel(twice_model), name="twice", tools=[Tool(capital)])
    first = DurableAgent(agent).run_sync("Mexico?")
    assert first.output == "Mexico City / Mexico City"
    assert logged(calls) == ["model", "tool", "tool", "model"]
    keys = [task_run.cache_key for task_run in last_run().task_runs if task_run.task_name == "capital"]
    assert len(set(keys)) == 2
    calls.unlink()
    again = DurableAgent(agent).run_sync("Mexico?")
    assert logged(calls) == [] and again.output == first.output


def test_await_run_inside_a_running_event_loop(calls: Path) -> None:
    async def main() -> tuple[str, str]:
        durable = DurableAgent(geography())
        first = await durable.run("What is the capital of Mexico?")
        again = durable.run_sync("What is the capital of Mexico?")  # a loop runs: a helper thread
        return first.output, again.output

    assert asyncio.run(main()) == ("The capital is Mexico City.",) * 2
    assert logged(calls) == ["model", "tool", "model"]


def test_cache_policy_none_turns_caching_off(calls: Path) -> None:
    config = TaskConfig(cache_policy=NONE)
    DurableAgent(geography(), model_task_config=config, tool_task_config=config).run_sync("Mexico?")
    DurableAgent(geography(), model_task_config=config, tool_task_config=config).run_sync("Mexico?")
    assert logged(calls) == ["model", "tool", "model"] * 2


def test_a_tool_opted_out_runs_without_a_task(calls: Path) -> None:
    agent = Agent(FunctionModel(geography_model), name="geography")
    agent.tool(metadata={"nbflow": False})(capital)
    DurableAgent(agent).run_sync("What is the capital of Mexico?")
    assert [name for name, _ in states(last_run())] == [MODEL, MODEL]
    assert logged(calls) == ["model", "tool", "model"]


def test_per_tool_config_overrides_the_default(calls: Path) -> None:
    def flaky_capital(ctx: RunContext[None], country: str) -> str:
        note("tool")
        if len(Path(os.environ[CALLS]).read_text().split()) < 3:
            raise ConnectionError("service unavailable")
        return "Mexico City"

    agent = Agent(FunctionModel(geography_model), name="geography")
    agent.tool(metadata={"nbflow": TaskConfig(retries=2, retry_delay_seconds=0)}, name="capital")(flaky_capital)
    result = DurableAgent(agent, tool_task_config=TaskConfig(retries=0)).run_sync("Mexico?")
    assert result.output == "The capital is Mexico City."
    tool_run = last_run().task_runs[1]
    assert tool_run.task_name == "capital" and tool_run.attempts == 2


# -- retries ---------------------------------------------------------------------------------------


def flaky_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    note("model")
    if len(Path(os.environ[CALLS]).read_text().split()) <= 2:
        raise ModelHTTPError(status_code=503, model_name="flaky", body="overloaded")
    return ModelResponse(parts=[TextPart("Mexico City")])


def test_a_model_request_that_fails_twice_is_retried_by_nbflow(calls: Path) -> None:
    agent = Agent(FunctionModel(flaky_model), name="flaky")
    durable = DurableAgent(agent, model_task_config=TaskConfig(retries=3, retry_delay_seconds=0))
    assert durable.run_sync("Mexico?").output == "Mexico City"
    assert logged(calls) == ["model"] * 3
    (request,) = last_run().task_runs
    assert request.state == "Completed" and request.attempts == 3
    assert [entry.name for entry in request.history].count("AwaitingRetry") == 2


def rejecting_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    note("model")
    raise ModelHTTPError(status_code=401, model_name="rejecting", body="invalid api key")


def test_a_rejected_model_request_is_not_retried(calls: Path) -> None:
    durable = DurableAgent(Agent(FunctionModel(rejecting_model), name="rejecting"),
                           model_task_config=TaskConfig(retries=3, retry_delay_seconds=0))
    with pytest.raises(ModelHTTPError, match="401"):
        durable.run_sync("hi")
    assert logged(calls) == ["model"]
    assert last_run().task_runs[0].attempts == 1


async def slow_then_fast_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    note("model")
    if len(Path(os.environ[CALLS]).read_text().split()) == 1:
        await asyncio.sleep(30)  # the first attempt hangs
    return ModelResponse(parts=[TextPart("answered")])


def test_a_model_request_over_its_timeout_is_cancelled_and_retried(calls: Path) -> None:
    durable = DurableAgent(Agent(FunctionModel(slow_then_fast_model), name="slow"),
                           model_task_config=TaskConfig(retries=1, retry_delay_seconds=0, timeout_seconds=0.5))
    assert durable.run_sync("hi").output == "answered"
    (request,) = last_run().task_runs
    assert request.attempts == 2
    waits = [entry.message or "" for entry in request.history if entry.name == "AwaitingRetry"]
    assert len(waits) == 1 and "timed out after 0.5 s" in waits[0]
    assert request.duration is not None and request.duration < 10


def refusing_tool_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    note("model")
    return ModelResponse(parts=[ToolCallPart("misconfigured", {})])


def misconfigured(ctx: RunContext[None]) -> str:
    note("tool")
    raise UserError("the tool was set up wrong")


def test_a_tool_raising_a_non_retryable_error_is_not_retried(calls: Path) -> None:
    agent = Agent(FunctionModel(refusing_tool_model), name="refusing", tools=[misconfigured])
    durable = DurableAgent(agent, tool_task_config=TaskConfig(retries=3, retry_delay_seconds=0))
    with pytest.raises(UserError, match="set up wrong"):
        durable.run_sync("go")
    assert logged(calls) == ["model", "tool"]
    run = last_run()
    assert run.state == "Failed"
    tool_run = run.task_runs[1]
    assert (tool_run.task_name, tool_run.state, tool_run.attempts) == ("misconfigured", "Failed", 1)


def test_model_retry_keeps_its_meaning(calls: Path) -> None:
    def picky(ctx: RunContext[None], country: str) -> str:
        from pydantic_ai import ModelRetry

        note("tool")
        if country != "Mexico":
            raise ModelRetry("ask about Mexico")
        return "Mexico City"

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        note("model")
        asked = sum(isinstance(p, ToolCallPart) for m in messages for p in m.parts)
        if asked == 0:
            return ModelResponse(parts=[ToolCallPart("picky", {"country": "Peru"})])
        if asked == 1:
            return ModelResponse(parts=[ToolCallPart("picky", {"country": "Mexico"})])
        return ModelResponse(parts=[TextPart("done")])

    agent = Agent(FunctionModel(model), name="picky", tools=[picky])
    durable = DurableAgent(agent, tool_task_config=TaskConfig(retries=3, retry_delay_seconds=0))
    assert durable.run_sync("go").output == "done"
    # the ModelRetry went back to the model (pydantic-ai's retry), not to nbflow's retries
    assert logged(calls) == ["model", "tool", "model", "tool", "model"]
    assert all(task_run.attempts == 1 for task_run in last_run().task_runs)


# -- keys ------------------------------------------------------------------------------------------


def test_keys_ignore_ids_and_timestamps_but_not_content() -> None:
    plain = Agent(FunctionModel(lambda messages, info: ModelResponse(parts=[
        ToolCallPart("capital", {"country": "Mexico"})] if len(messages) == 1 else [TextPart("ok")])),
        tools=[Tool(lambda country: "Mexico City", name="capital")])
    one = plain.run_sync("Mexico?").all_messages()
    two = plain.run_sync("Mexico?").all_messages()
    assert one != two  # timestamps, run ids and generated tool call ids differ
    assert canonical({"messages": one}) == canonical({"messages": two})
    other = plain.run_sync("Peru?").all_messages()
    assert canonical({"messages": other}) != canonical({"messages": one})


def test_an_identical_rerun_with_model_requests_uncached_hits_every_tool_call(calls: Path) -> None:
    # Each uncached model request makes a new response (new timestamps, durations, ids): the tool calls'
    # keys, which include the conversation so far, must see only what it says.
    uncached = TaskConfig(cache_policy=NONE)
    DurableAgent(geography(), model_task_config=uncached).run_sync("What is the capital of Mexico?")
    calls.unlink()
    again = DurableAgent(geography(), model_task_config=uncached).run_sync("What is the capital of Mexico?")
    assert again.output == "The capital is Mexico City."
    assert logged(calls) == ["model", "model"]
    assert states(last_run()) == [(MODEL, "Completed"), ("capital", "Cached"), (MODEL, "Completed")]


# What a later pydantic-ai release might look like: the same messages carrying fields nobody knows yet.
@dataclasses.dataclass(repr=False)
class FutureUserPromptPart(UserPromptPart):
    received_at: float = 0.0


@dataclasses.dataclass(repr=False)
class FutureToolCallPart(ToolCallPart):
    stream_latency_ms: float = 0.0
    trace_id: str = ""


@dataclasses.dataclass(repr=False)
class FutureTextPart(TextPart):
    tokens_per_second: float = 0.0


@dataclasses.dataclass(repr=False)
class FutureModelResponse(ModelResponse):
    server_timing_ms: float = 0.0
    region: str = ""
    cache_hit_ratio: float = 0.0


def future_conversation(answer: str, extra: float) -> list[ModelMessage]:
    return [
        ModelRequest(parts=[FutureUserPromptPart("Mexico?", received_at=extra)], instructions="Be brief."),
        FutureModelResponse(parts=[FutureToolCallPart("capital", {"country": "Mexico"}, tool_call_id="call_1",
                                                      stream_latency_ms=extra, trace_id=f"trace-{extra}")],
                            server_timing_ms=extra, region=f"region-{extra}", cache_hit_ratio=extra),
        ModelRequest(parts=[ToolReturnPart("capital", answer, tool_call_id="call_1")]),
        FutureModelResponse(parts=[FutureTextPart(f"It is {answer}.", tokens_per_second=extra)],
                            server_timing_ms=extra),
    ]


def test_keys_ignore_fields_a_later_release_adds_but_not_content() -> None:
    one = canonical({"messages": future_conversation("Mexico City", 1.0)})
    assert one == canonical({"messages": future_conversation("Mexico City", 2.0)})
    assert one != canonical({"messages": future_conversation("Ciudad de México", 1.0)})
    # the fields that carry what was said all count
    said = [
        lambda m: setattr(m[0], "instructions", "Be verbose."),
        lambda m: setattr(m[0].parts[0], "content", "Peru?"),
        lambda m: setattr(m[1].parts[0], "args", {"country": "Peru"}),
        lambda m: setattr(m[1].parts[0], "tool_name", "capital_v2"),
        lambda m: setattr(m[1].parts[0], "tool_call_id", "call_2"),
        lambda m: setattr(m[1], "model_name", "another-model"),
        lambda m: setattr(m[3].parts[0], "content", "It is elsewhere."),
    ]
    for change in said:
        messages = future_conversation("Mexico City", 1.0)
        change(messages)
        assert canonical({"messages": messages}) != one


def test_every_field_of_a_message_class_is_either_counted_or_left_out_on_purpose() -> None:
    # Fails on a pydantic-ai release that adds a field to a message: decide whether it is content (then
    # _CONTENT_FIELDS) or not (_NOT_CONTENT) before the lock moves to that release.
    import pydantic_ai.messages

    from nbflow.integrations.pydantic_ai._keys import _NOT_CONTENT, content_fields

    unreviewed = {}
    for cls in vars(pydantic_ai.messages).values():
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            continue
        counted = content_fields(cls)
        if counted is not None:
            names = {field.name for field in dataclasses.fields(cls)} - set(counted) - _NOT_CONTENT
            if names:
                unreviewed[cls.__qualname__] = sorted(names)
    assert not unreviewed, f"fields neither counted nor left out in pydantic-ai {pydantic_ai.__version__}"


def test_other_pydantic_ai_dataclasses_keep_every_field_but_per_run_ones() -> None:
    # No allowlist for a tool definition: all its public fields count, so a change is never missed.
    first = ToolDefinition(name="capital", description="The capital city.")
    assert canonical({"tool": first}) == canonical({"tool": ToolDefinition(name="capital",
                                                                           description="The capital city.")})
    assert canonical({"tool": first}) != canonical({"tool": ToolDefinition(name="capital",
                                                                           description="Another.")})


class Session:
    """Deps as a plain object: a value that counts and a live handle that cannot be fingerprinted."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.handle = threading.Lock()


def test_a_plain_deps_object_counts_by_the_attributes_that_can_be_fingerprinted() -> None:
    alice, bob = canonical({"deps": Session("alice")}), canonical({"deps": Session("bob")})
    assert alice == canonical({"deps": Session("alice")})
    assert alice != bob
    assert "not fingerprinted" in str(alice)


def test_deps_that_cannot_be_fingerprinted_are_left_out_without_error(calls: Path) -> None:
    @dataclasses.dataclass
    class Deps:
        region: str
        lock: Any  # stands for a live client: not fingerprintable

    agent = Agent(FunctionModel(geography_model), name="geography", deps_type=Deps, tools=[Tool(capital)])
    durable = DurableAgent(agent)
    with _no_nbflow_warnings():
        durable.run_sync("Mexico?", deps=Deps("americas", threading.Lock()))
        calls.unlink()
        durable.run_sync("Mexico?", deps=Deps("americas", threading.Lock()))
    assert logged(calls) == []  # same deps values: cached
    durable.run_sync("Mexico?", deps=Deps("europe", threading.Lock()))
    assert logged(calls) == ["model", "tool", "model"]  # a serializable part of deps changed


class _no_nbflow_warnings:
    def __enter__(self) -> None:
        import warnings

        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()
        warnings.simplefilter("error", NbflowWarning)

    def __exit__(self, *exc: object) -> None:
        self._catcher.__exit__(*exc)


def test_the_default_policy_composes() -> None:
    assert repr(AGENT_INPUTS + nbflow.cache_policies.RUN_ID) == "AGENT_INPUTS + RUN_ID"


# -- the capability, streaming ---------------------------------------------------------------------


def test_the_capability_in_a_flow_of_your_own(calls: Path) -> None:
    agent = Agent(FunctionModel(geography_model), name="geography", tools=[Tool(capital)],
                  capabilities=[NbflowDurability()])

    @nbflow.flow
    async def research(country: str) -> str:
        result = await agent.run(f"Capital of {country}?")
        return result.output

    assert asyncio.run(research("Mexico")) == "The capital is Mexico City."
    assert [name for name, _ in states(last_run())] == [MODEL, "capital", MODEL]
    # outside any flow the capability stays out of the way
    calls.unlink()
    assert agent.run_sync("Capital of Mexico?").output == "The capital is Mexico City."
    assert logged(calls) == ["model", "tool", "model"]


def test_event_stream_handler_sees_the_events(calls: Path) -> None:
    seen: list[str] = []

    async def handler(ctx: RunContext[Any], events: Any) -> None:
        async for event in events:
            seen.append(type(event).__name__)

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        note("model")
        returned = [p for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
        if not returned:
            yield {0: DeltaToolCall(name="capital", json_args='{"country": "Mexico"}')}
        else:
            yield f"The capital is {returned[-1].content}."

    agent = Agent(FunctionModel(stream_function=stream), name="geography", tools=[Tool(capital)])
    durable = DurableAgent(agent, event_stream_handler=handler)
    assert durable.run_sync("What is the capital of Mexico?").output == "The capital is Mexico City."
    # model events are handled inside the model-request tasks, tool events in the flow
    assert "PartStartEvent" in seen
    assert "FunctionToolCallEvent" in seen and "FunctionToolResultEvent" in seen
    assert [name for name, _ in states(last_run())] == ["function::stream", "capital", "function::stream"]
    assert logged(calls) == ["model", "tool", "model"]


def test_toolsets_given_to_one_run_are_refused_in_the_flow(calls: Path) -> None:
    from pydantic_ai import FunctionToolset

    extra = FunctionToolset([Tool(capital)])
    durable = DurableAgent(Agent(FunctionModel(geography_model), name="geography"))
    with pytest.raises(UserError, match="nbflow"):
        durable.run_sync("Mexico?", toolsets=[extra])
    assert logged(calls) == []


def test_a_per_run_event_stream_handler_sees_replayed_events_too(calls: Path) -> None:
    seen: list[str] = []

    async def handler(ctx: RunContext[Any], events: Any) -> None:
        async for event in events:
            seen.append(type(event).__name__)

    agent = Agent(TestModel(), name="streaming", tools=[Tool(capital)])  # TestModel streams
    durable = DurableAgent(agent)
    durable.run_sync("What is the capital of Mexico?", event_stream_handler=handler)
    first = list(seen)
    seen.clear()
    calls.unlink()
    durable.run_sync("What is the capital of Mexico?", event_stream_handler=handler)
    assert [state for _, state in states(last_run())] == ["Cached"] * 3
    assert logged(calls) == [] and seen == first and "PartStartEvent" in seen


def test_run_stream_is_not_durable_and_says_so(calls: Path) -> None:
    durable = DurableAgent(Agent(TestModel(custom_output_text="streamed"), name="streamer"))

    async def main() -> str:
        async with durable.run_stream("hi") as stream:
            return await stream.get_output()

    with pytest.warns(NbflowWarning, match="not durable"):
        assert asyncio.run(main()) == "streamed"


# -- a whole agent: the rest of the agent API ------------------------------------------------------


def test_iter_is_durable_inside_a_flow_and_plain_outside(calls: Path) -> None:
    durable = DurableAgent(geography())

    async def nodes() -> tuple[list[str], str]:
        names: list[str] = []
        async with durable.iter("What is the capital of Mexico?") as agent_run:
            async for node in agent_run:
                names.append(type(node).__name__)
        assert agent_run.result is not None
        return names, agent_run.result.output

    @nbflow.flow
    async def in_a_flow() -> tuple[list[str], str]:
        return await nodes()

    names, output = asyncio.run(in_a_flow())
    assert output == "The capital is Mexico City." and "CallToolsNode" in names
    assert [state for _, state in states(last_run())] == ["Completed"] * 3
    calls.unlink()
    assert asyncio.run(in_a_flow())[1] == output  # replayed: the model and the tool are not called
    assert logged(calls) == []
    runs = len(nbflow.runs.list_runs())
    assert asyncio.run(nodes())[1] == output  # outside a flow: a plain run, no flow recorded
    assert len(nbflow.runs.list_runs()) == runs and logged(calls) == ["model", "tool", "model"]


def test_override_applies_to_durable_runs(calls: Path) -> None:
    durable = DurableAgent(geography())
    with durable.override(instructions="Answer in Spanish."):
        durable.run_sync("What is the capital of Mexico?")
    assert logged(calls) == ["model", "tool", "model"]  # other instructions: another key

    def capital_override(ctx: RunContext[None], country: str) -> str:
        """The capital city of a country."""
        note("override")
        return "CDMX"

    with durable.override(tools=[Tool(capital_override, name="capital")]):
        result = durable.run_sync("What is the capital of Mexico?")
    assert result.output == "The capital is CDMX."
    assert states(last_run())[1] == ("capital", "Completed")  # the overriding tool runs as a task
    with pytest.raises(UserError, match="registered"), durable.override(model=TestModel()):
        durable.run_sync("What is the capital of Mexico?")
    # A registered model by its key, as run(model=...) takes it.
    fast = TestModel(custom_output_text="Rápido.")
    switching = DurableAgent(geography(), name="switching", models={"fast": fast})
    with switching.override(model="fast"):
        assert switching.run_sync("What is the capital of Mexico?").output == "Rápido."


def test_run_stream_events_is_a_durable_run_whose_events_you_iterate(calls: Path) -> None:
    durable = DurableAgent(Agent(TestModel(), name="streaming", tools=[Tool(capital)]))

    async def events() -> list[Any]:
        async with durable.run_stream_events("What is the capital of Mexico?") as stream:
            return [event async for event in stream]

    first = asyncio.run(events())
    assert last_run().flow_name == "streaming" and logged(calls) == ["tool"]
    assert type(first[-1]).__name__ == "AgentRunResultEvent"
    assert sum(type(e).__name__ == "PartDeltaEvent" for e in first) >= 1  # the stream as the model sent it
    calls.unlink()
    second = asyncio.run(events())
    assert [state for _, state in states(last_run())] == ["Cached"] * 3 and logged(calls) == []
    assert [type(e).__name__ for e in second] == [type(e).__name__ for e in first]

    @nbflow.flow
    async def inside() -> None:
        await events()

    with pytest.raises(UserError, match="run_stream_events\\(\\)` cannot be used inside an nbflow flow"):
        asyncio.run(inside())


def test_toolsets_and_event_stream_handler_of_the_wrapper(calls: Path) -> None:
    from pydantic_ai.durable_exec._toolset import DurableFunctionToolset

    async def handler(ctx: RunContext[Any], events: Any) -> None:
        async for _ in events:
            pass

    agent = geography()
    durable = DurableAgent(agent, event_stream_handler=handler)
    assert durable.event_stream_handler is handler
    wrapped = [toolset for toolset in durable.toolsets if isinstance(toolset, DurableFunctionToolset)]
    assert [toolset.wrapped for toolset in wrapped] == [agent.toolsets[0]]
    assert durable.model is agent.model and durable.name == "geography"


def test_a_toolset_without_an_id_is_durable(calls: Path) -> None:
    from pydantic_ai import FunctionToolset

    agent = Agent(FunctionModel(geography_model), name="geography", toolsets=[FunctionToolset([Tool(capital)])])
    durable = DurableAgent(agent)
    assert durable.run_sync("Mexico?").output == "The capital is Mexico City."
    assert states(last_run())[1] == ("capital", "Completed")
    calls.unlink()
    durable.run_sync("Mexico?")
    assert logged(calls) == [] and [state for _, state in states(last_run())] == ["Cached"] * 3


def dynamic_tools(ctx: RunContext[None]) -> Any:
    """Stands in for a server whose tools are discovered at run time (an MCP server): counts discoveries."""
    from pydantic_ai import FunctionToolset

    note("discover")
    return FunctionToolset([Tool(capital)])


def test_a_toolset_added_after_wrapping_is_durable_and_discovery_is_cached(calls: Path) -> None:
    # The mcp package is not a dependency of nbflow[ai]; a dynamic toolset takes the same path (a discovery
    # task, then tool-call tasks), with the lifecycle pydantic-ai declares for MCP servers' sessions.
    agent = Agent(FunctionModel(geography_model), name="geography")
    durable = DurableAgent(agent)
    agent.toolset(dynamic_tools)  # after the agent was wrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error", NbflowWarning)  # discovery is keyed by the agent's policy: no warning
        assert durable.run_sync("Mexico?").output == "The capital is Mexico City."
    assert ("capital", "Completed") in states(last_run()) and "discover" in logged(calls)
    calls.unlink()
    assert durable.run_sync("Mexico?").output == "The capital is Mexico City."
    assert logged(calls) == []  # fully cached: the server would not even be started
    assert {state for _, state in states(last_run())} == {"Cached"}


def test_a_replayed_response_keeps_the_run_and_conversation_that_produced_it(calls: Path) -> None:
    durable = DurableAgent(geography())
    first = durable.run_sync("What is the capital of Mexico?")
    second = durable.run_sync("What is the capital of Mexico?")
    assert logged(calls) == ["model", "tool", "model"]  # the second run is replayed
    produced, replayed = first.all_messages()[-1], second.all_messages()[-1]
    assert isinstance(produced, ModelResponse) and isinstance(replayed, ModelResponse)
    assert (replayed.run_id, replayed.conversation_id) == (produced.run_id, produced.conversation_id)
    assert second.all_messages()[0].run_id == second.run_id != replayed.run_id


def test_run_sync_from_a_sync_tool_is_refused(calls: Path) -> None:
    inner = DurableAgent(geography())

    def delegate() -> str:
        return inner.run_sync("What is the capital of Mexico?").output

    def call_delegate(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[ToolCallPart("delegate", {})])

    outer = Agent(FunctionModel(call_delegate), tools=[Tool(delegate)])
    with pytest.raises(UserError, match="cannot be used inside a synchronous tool"):
        asyncio.run(outer.run("delegate"))
    assert logged(calls) == []
