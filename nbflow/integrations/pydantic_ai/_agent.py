"""DurableAgent: a pydantic-ai agent whose runs are nbflow flows."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any, Literal

from pydantic_ai import _utils as _pydantic_ai_utils
from pydantic_ai.agent import AbstractAgent, AgentRun, EventStreamHandler, WrapperAgent
from pydantic_ai.exceptions import UserError
from pydantic_ai.models import Model
from pydantic_ai.run import AgentRunResult
from pydantic_ai.tools import AgentDepsT
from pydantic_ai.toolsets import AbstractToolset

from nbflow.context import current_flow_run, current_task_run
from nbflow.exceptions import ConfigurationError, NbflowWarning
from nbflow.flows import Flow
from nbflow.integrations.pydantic_ai._durability import (
    AgentDurability,
    NbflowDurability,
    TaskConfig,
    check_task_config,
    check_tool_metadata,
)

try:
    from pydantic_ai.output import OutputDataT
except ImportError:  # pragma: no cover - every supported release has it
    from typing import TypeVar

    OutputDataT = TypeVar("OutputDataT")  # type: ignore[misc]

__all__ = ["DurableAgent"]


class AgentSetupError(ConfigurationError, UserError):
    """A DurableAgent cannot wrap this agent as it is set up (no name, no model...).

    Both an nbflow :class:`~nbflow.exceptions.ConfigurationError` and pydantic-ai's ``UserError``, so
    code written against either catches it."""


class DurableAgent(WrapperAgent[AgentDepsT, OutputDataT]):
    """Wraps a pydantic-ai agent so that each run is an nbflow flow, and each model request and tool
    call in it a task: cached across kernel restarts, retried by the engine, drawn in the graph.

    It is a whole agent (a pydantic-ai ``WrapperAgent``): ``run``, ``run_sync``, ``run_stream``,
    ``run_stream_events``, ``iter``, ``override``, ``toolsets``, ``event_stream_handler`` and the rest
    take the same arguments as on the agent it wraps.

    - ``await durable.run(prompt)`` / ``durable.run_sync(prompt)`` run the agent as a flow named after
      the agent (or ``name``): model requests are tasks named for the model, tool calls tasks named for
      the tool. Rerunning the same notebook replays every model response and tool result from the cache
      without calling the model; a replayed response keeps the ``run_id`` / ``conversation_id`` of the
      run that produced it.
    - ``run_stream_events`` is durable too (it is a ``run`` whose events you iterate).
    - ``iter`` is durable inside a flow of yours (``@nbflow.flow``) and a plain run outside one.
    - ``run_stream`` is **not** durable: it runs the plain agent, with no flow and no cache, and says so.
      Inside a flow ``run_stream`` and ``run_stream_events`` are refused: use ``run`` with an
      ``event_stream_handler`` there.

    ``model_task_config`` / ``tool_task_config`` are :class:`TaskConfig` dicts (retries,
    retry_delay_seconds, retry_condition_fn, timeout_seconds, cache_policy, persist_result); a tool's
    ``metadata={"nbflow": TaskConfig(...)}`` overrides them for that tool, ``{"nbflow": False}`` runs it
    without a task (``tool_task_config_by_name`` does the same by tool name, for tools whose metadata
    you cannot edit). Toolsets need no ``id``, and toolsets added with ``@agent.toolset`` after the
    agent was wrapped are durable too. ``models`` registers extra models a run may switch to
    (``run(model="key")``, ``override(model=...)``).

    ``event_stream_handler`` (or the wrapped agent's) receives the run's stream events as in pydantic-ai's
    durable integrations: model events inside each model-request task (a request replayed from the cache
    does not replay them), tool events in the flow. One passed to ``run(..., event_stream_handler=...)``
    gets every event in the flow, replayed ones included.
    """

    def __init__(
        self,
        wrapped: AbstractAgent[AgentDepsT, OutputDataT],
        *,
        name: str | None = None,
        model_task_config: TaskConfig | None = None,
        tool_task_config: TaskConfig | None = None,
        tool_task_config_by_name: Mapping[str, TaskConfig | None] | None = None,
        event_stream_handler: EventStreamHandler[AgentDepsT] | None = None,
        models: Mapping[str, Model] | None = None,
    ) -> None:
        if not isinstance(wrapped, AbstractAgent):
            raise TypeError(f"DurableAgent wraps a pydantic_ai.Agent; got {type(wrapped).__name__}")
        resolved = name or wrapped.name
        if not resolved:
            raise AgentSetupError(
                "DurableAgent: the agent has no name, and it needs a unique one. Name it — "
                "Agent(..., name='geography') — or pass DurableAgent(agent, name='geography'): the name "
                "names the agent's flow and its tasks."
            )
        super().__init__(wrapped)
        self._name: str = resolved
        by_name: dict[str, dict[str, Any] | Literal[False]] = {
            tool: (False if config is None else check_task_config(config, f"tool_task_config_by_name[{tool!r}]"))
            for tool, config in (tool_task_config_by_name or {}).items()
        }
        # The wrapped agent's own handler is delivered the durable way too (the flow calls `iter`, never
        # the wrapped agent's `run`, which is where a plain agent would call it).
        self._event_stream_handler = event_stream_handler or wrapped.event_stream_handler
        self.capability: NbflowDurability[AgentDepsT] = AgentDurability(
            name=resolved,
            model_task_config=model_task_config,
            tool_task_config=tool_task_config,
            tool_task_config_by_name=by_name,
            event_stream_handler=self._event_stream_handler,
            models=models,
        )
        # Bind once now, so a bad per-tool config, a missing model or a second durability capability
        # fails here and not in the middle of the first run. Each run binds again, to the toolsets the
        # agent has then (`@agent.toolset` after this point, `override(toolsets=...)`).
        check_tool_metadata(wrapped)
        try:
            self.capability.for_agent(wrapped)
        except UserError as error:
            raise AgentSetupError(f"DurableAgent {resolved!r}: {error}") from None
        self._in_run_flow: contextvars.ContextVar[bool] = contextvars.ContextVar(
            f"nbflow_durable_agent_{resolved}", default=False
        )

        async def agent_run(user_prompt: Any = None, options: dict[str, Any] | None = None) -> Any:
            return await self._run_in_flow(user_prompt, dict(options or {}))

        agent_run.__qualname__ = agent_run.__name__ = resolved
        self.flow: Flow[..., Any] = Flow(agent_run, name=resolved, validate_parameters=False)

    def __repr__(self) -> str:
        return f"DurableAgent({self._name!r})"

    # --- what the wrapper changes about the agent ------------------------------------------------

    @property
    def name(self) -> str | None:
        """The name of the agent's flow and tasks (fixed when the agent is wrapped)."""
        return self._name

    @name.setter
    def name(self, value: str | None) -> None:
        raise UserError("DurableAgent: the name names the agent's flows and tasks and cannot change; wrap "
                        "the agent again under another name instead")

    @property
    def event_stream_handler(self) -> EventStreamHandler[AgentDepsT] | None:
        """The handler the agent's stream events go to. Inside a durable run the durability capability
        delivers them (model events inside the model-request tasks), so the run loop itself gets none."""
        if self._in_run_flow.get():
            return None
        return self._event_stream_handler

    @property
    def toolsets(self) -> Sequence[AbstractToolset[AgentDepsT]]:
        """The wrapped agent's toolsets, each leaf that does I/O wrapped so its calls run as tasks
        inside a flow (and as plain calls outside one)."""
        bound: Any = self.capability.for_agent(self.wrapped)
        # The bound copy, or a combination holding it with its companions (a workspace's).
        durability = next(c for c in [bound, *getattr(bound, "capabilities", ())] if isinstance(c, AgentDurability))
        return [toolset.visit_and_replace(durability.swap_toolset) for toolset in self.wrapped.toolsets]

    def _check_model(self, model: object, where: str) -> None:
        # Inside a flow a model request is a task that rebuilds the model from a key; a Model instance
        # the capability does not know cannot be rebuilt, and its requests would not be tasks.
        if model is None or isinstance(model, str) or current_flow_run() is None:
            return
        registered = dict(getattr(self.capability, "_extra_models", {}))
        if any(model is known for known in registered.values()) or model is self.wrapped.model:
            return
        raise UserError(
            f"DurableAgent {self._name!r}: a model instance cannot be {where} inside an nbflow flow unless "
            "it is registered: pass DurableAgent(agent, models={'key': model}) and use the key (or the "
            "registered instance), or set the model when the agent is created."
        )

    # --- realtime sessions -------------------------------------------------------------------------

    def _check_realtime_signaling(self) -> None:
        # A live provider connection is neither a cached result nor replayable: not in flow code (inside
        # a task, whose result is what gets stored, it is the task's own business).
        if current_flow_run() is not None and current_task_run() is None:
            raise UserError(
                "Realtime sessions cannot run in nbflow flow code: a live provider connection cannot be "
                "recorded or replayed. That includes `answer_webrtc_offer()`, `create_client_secret()` and "
                "`hang_up()`, which send provider requests. Use them outside the flow, or inside a task."
            )
        super()._check_realtime_signaling()

    @asynccontextmanager
    async def _resolve_realtime_session(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        self._check_realtime_signaling()
        async with super()._resolve_realtime_session(*args, **kwargs) as resolved:
            yield resolved

    @asynccontextmanager
    async def _open_realtime_session(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        self._check_realtime_signaling()
        async with super()._open_realtime_session(*args, **kwargs) as session:
            yield session

    # --- runs ------------------------------------------------------------------------------------

    async def _run_in_flow(self, user_prompt: Any, options: dict[str, Any]) -> AgentRunResult[Any]:
        token = self._in_run_flow.set(True)
        try:
            # AbstractAgent.run drives `self.iter`, which adds the durability capability.
            run = super(WrapperAgent, self).run
            result: AgentRunResult[Any] = await run(user_prompt, **options)
            return result
        finally:
            self._in_run_flow.reset(token)

    async def run(self, user_prompt: Any = None, **options: Any) -> AgentRunResult[Any]:
        """Run the agent as an nbflow flow; takes ``Agent.run``'s arguments and returns its result."""
        self._check_model(options.get("model"), "set at run time")
        options.pop("infer_name", None)
        result: AgentRunResult[Any] = await self.flow(user_prompt, options)
        return result

    def run_sync(self, user_prompt: Any = None, **options: Any) -> AgentRunResult[Any]:
        """:meth:`run` for synchronous code. In a notebook, where an event loop already runs, the flow
        runs on a helper thread with its own loop (``await durable.run(...)`` is the direct way there).
        Refused inside a synchronous tool of another run, as ``Agent.run_sync`` is."""
        check_nested = getattr(_pydantic_ai_utils, "check_no_nested_sync_run", None)
        if check_nested is not None:
            check_nested()
        coroutine = self.run(user_prompt, **options)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coroutine)
        return _run_in_thread(coroutine)

    @asynccontextmanager
    async def iter(
        self, user_prompt: Any = None, *, capabilities: Sequence[Any] | None = None, **options: Any
    ) -> AsyncIterator[AgentRun[AgentDepsT, Any]]:
        """``Agent.iter`` with the durability capability: durable inside a flow (this agent's own, from
        :meth:`run`, or one of yours), a plain run outside one."""
        self._check_model(options.get("model"), "set at run time")
        async with self.wrapped.iter(
            user_prompt, capabilities=[*(capabilities or ()), self.capability], **options
        ) as agent_run:
            yield agent_run

    @asynccontextmanager
    async def run_stream(self, user_prompt: Any = None, **options: Any) -> AsyncIterator[Any]:
        """Stream a run of the agent: **not durable** — no flow, no cache, no engine retries.

        Refused inside a flow; use :meth:`run` with ``event_stream_handler`` for a durable run that
        still sees the stream (or :meth:`run_stream_events`).
        """
        if current_flow_run() is not None:
            raise UserError(
                "`agent.run_stream()` cannot be used inside an nbflow flow. Set an `event_stream_handler` "
                "on the agent and use `agent.run()` instead."
            )
        warnings.warn(
            f"DurableAgent {self._name!r}: run_stream is not durable (no flow, no cache, no retries); use "
            "run(..., event_stream_handler=...) or run_stream_events for a durable run that still receives "
            "the stream events",
            NbflowWarning,
            stacklevel=3,
        )
        async with super().run_stream(user_prompt, **options) as stream:
            yield stream

    def run_stream_events(
        self, user_prompt: Any = None, **options: Any
    ) -> AbstractAsyncContextManager[Any]:
        """The run's stream events, then its result: a durable :meth:`run` (a flow, cached) whose events
        you iterate, replayed ones included. Refused inside a flow, where :meth:`run` with an
        ``event_stream_handler`` does the same."""
        super_events = super().run_stream_events

        @asynccontextmanager
        async def events() -> AsyncIterator[Any]:
            if current_flow_run() is not None:
                raise UserError(
                    "`agent.run_stream_events()` cannot be used inside an nbflow flow. Set an "
                    "`event_stream_handler` on the agent and use `agent.run()` instead."
                )
            async with super_events(user_prompt, **options) as stream:
                yield stream

        return events()

    @contextmanager
    def override(self, **overrides: Any) -> Iterator[None]:
        """``Agent.override``: deps, model, toolsets, tools, instructions... for the runs in the block.
        Overridden toolsets are durable like the agent's own; an overriding model instance must be
        registered (``models=``) to be used inside a flow, and may be given by its key."""
        model = overrides.get("model")
        registered = dict(getattr(self.capability, "_extra_models", {}))
        if isinstance(model, str) and model in registered:
            # A registered key, as `run(model=...)` takes it: pydantic-ai's override would read it as a
            # provider's model name.
            overrides["model"] = registered[model]
        self._check_model(overrides.get("model"), "set by override")
        with super().override(**overrides):
            yield


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
