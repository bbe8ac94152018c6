"""DurableAgent: a pydantic-ai agent whose runs are nbflow flows."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import warnings
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

from pydantic_ai.agent import AbstractAgent, EventStreamHandler
from pydantic_ai.run import AgentRunResult

from nbflow.exceptions import ConfigurationError, NbflowWarning
from nbflow.flows import Flow
from nbflow.integrations.pydantic_ai._durability import NbflowDurability, TaskConfig, check_tool_metadata

__all__ = ["DurableAgent"]

OutputT = TypeVar("OutputT")


class DurableAgent(Generic[OutputT]):
    """Wraps a pydantic-ai agent so that each run is an nbflow flow, and each model request and tool
    call in it a task: cached across kernel restarts, retried by the engine, drawn in the graph.

    ``await durable.run(prompt)`` (or ``durable.run_sync(prompt)``) takes the same arguments as
    ``Agent.run`` and returns its result. The flow is named after the agent (or ``name``); model
    requests are tasks named for the model, tool calls tasks named for the tool. Rerunning the same
    notebook replays every model response and tool result from the cache without calling the model.

    ``model_task_config`` / ``tool_task_config`` are :class:`TaskConfig` dicts (retries,
    retry_delay_seconds, retry_condition_fn, timeout_seconds, cache_policy, persist_result); a tool's
    ``metadata={"nbflow": TaskConfig(...)}`` overrides them for that tool, ``{"nbflow": False}`` runs it
    without a task. ``event_stream_handler`` receives the run's stream events as in pydantic-ai's durable
    integrations: model events inside each model-request task (a request replayed from the cache does not
    replay them), tool events in the flow. One passed to ``run(..., event_stream_handler=...)`` gets every
    event in the flow, replayed ones included.

    :meth:`run_stream` is **not** durable: it runs the plain agent, with no flow and no cache.
    """

    def __init__(
        self,
        agent: AbstractAgent[Any, OutputT],
        *,
        name: str | None = None,
        model_task_config: TaskConfig | None = None,
        tool_task_config: TaskConfig | None = None,
        event_stream_handler: EventStreamHandler[Any] | None = None,
    ) -> None:
        if not isinstance(agent, AbstractAgent):
            raise TypeError(f"DurableAgent wraps a pydantic_ai.Agent; got {type(agent).__name__}")
        resolved = name or agent.name
        if not resolved:
            raise ConfigurationError(
                "DurableAgent: the agent has no name. Name it — Agent(..., name='geography') — or pass "
                "DurableAgent(agent, name='geography'): the name names the agent's flow and its tasks."
            )
        self.wrapped = agent
        self.name: str = resolved
        self.capability: NbflowDurability[Any] = NbflowDurability(
            name=resolved,
            model_task_config=model_task_config,
            tool_task_config=tool_task_config,
            event_stream_handler=event_stream_handler,
        )
        # Bind once now, so a bad per-tool config or a second durability capability fails here and not
        # in the middle of the first run.
        check_tool_metadata(agent)
        self.capability.for_agent(agent)

        async def agent_run(user_prompt: Any = None, options: dict[str, Any] | None = None) -> Any:
            return await self._run_agent(user_prompt, dict(options or {}))

        agent_run.__qualname__ = agent_run.__name__ = resolved
        self.flow: Flow[..., Any] = Flow(agent_run, name=resolved, validate_parameters=False)

    def __repr__(self) -> str:
        return f"DurableAgent({self.name!r})"

    async def _run_agent(self, user_prompt: Any, options: dict[str, Any]) -> AgentRunResult[Any]:
        extra: Sequence[Any] = options.pop("capabilities", None) or ()
        return await self.wrapped.run(user_prompt, capabilities=[*extra, self.capability], **options)

    async def run(self, user_prompt: Any = None, **options: Any) -> AgentRunResult[OutputT]:
        """Run the agent as an nbflow flow; takes ``Agent.run``'s arguments and returns its result."""
        result: AgentRunResult[OutputT] = await self.flow(user_prompt, options)
        return result

    def run_sync(self, user_prompt: Any = None, **options: Any) -> AgentRunResult[OutputT]:
        """:meth:`run` for synchronous code. In a notebook, where an event loop already runs, the flow
        runs on a helper thread with its own loop (``await durable.run(...)`` is the direct way there)."""
        coroutine = self.run(user_prompt, **options)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coroutine)
        return _run_in_thread(coroutine)

    @asynccontextmanager
    async def run_stream(self, user_prompt: Any = None, **options: Any) -> AsyncIterator[Any]:
        """Stream a run of the *plain* agent: not durable — no flow, no tasks, no cache, no engine retries.

        Use :meth:`run` with ``event_stream_handler`` for a durable run that still sees the stream.
        """
        warnings.warn(
            f"DurableAgent {self.name!r}: run_stream is not durable (no flow, no cache, no retries); use "
            "run(..., event_stream_handler=...) for a durable run that still receives the stream events",
            NbflowWarning,
            stacklevel=3,
        )
        async with self.wrapped.run_stream(user_prompt, **options) as stream:
            yield stream


def _run_in_thread(coroutine: Any) -> Any:
    context = contextvars.copy_context()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = context.run(asyncio.run, coroutine)
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, name="nbflow-durable-agent", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
