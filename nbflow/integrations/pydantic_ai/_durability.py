"""The nbflow durability capability: pydantic-ai's durable-execution extension point, backed by nbflow tasks.

pydantic-ai routes every model request, tool call, tool discovery and capability operation of a durable
agent through an *operation backend*. Ours runs each one as an nbflow task — cached by
:data:`~nbflow.integrations.pydantic_ai.AGENT_INPUTS`, retried and timed out by the engine, recorded in
the run history and drawn in the graph — inside the nbflow flow the run happens in. Outside a flow the
capability stays out of the way and the agent runs as usual.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic_ai.agent import EventStreamHandler
from pydantic_ai.durable_exec import (
    IDENTITY_CODEC,
    BaseDurabilityCapability,
    CallableOperationBackend,
    DurabilityEngineSpec,
    DurableOperationBackend,
    DurableOperationId,
    EventStreamHandlerId,
    ModelRequestId,
    RoleBasedOperationConfig,
    ToolsetCallToolId,
    ToolsetKind,
    ToolsetValidateToolArgumentsId,
)
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelResponse
from pydantic_ai.models import Model
from pydantic_ai.tools import AgentDepsT, RunContext
from pydantic_ai.toolsets import AbstractToolset, ToolsetTool
from typing_extensions import TypedDict

from nbflow.cache_policies import CachePolicy
from nbflow.context import current_flow_run
from nbflow.engine.retries import RetryDelay
from nbflow.exceptions import ConfigurationError
from nbflow.integrations.pydantic_ai._keys import AGENT_INPUTS, UPSTREAM_PARAMETER
from nbflow.tasks import RetryCondition, Task

if TYPE_CHECKING:
    from pydantic_ai.durable_exec._operation_names import DurableInvocationName
else:
    try:  # pydantic-ai does not export it yet; a later release may, and move the private module
        from pydantic_ai.durable_exec import DurableInvocationName
    except ImportError:
        from pydantic_ai.durable_exec._operation_names import DurableInvocationName

__all__ = ["AgentDurability", "NON_RETRYABLE_ERRORS", "NbflowDurability", "TaskConfig"]


class TaskConfig(TypedDict, total=False):
    """Options of the nbflow tasks that run an agent's model requests or tool calls (all optional).

    The same options as :func:`nbflow.task`: ``retries``, ``retry_delay_seconds`` (a number, a list, or
    a callable such as :func:`nbflow.exponential_backoff`), ``retry_condition_fn`` (composed with the
    rule that errors in :data:`NON_RETRYABLE_ERRORS` are never retried), ``timeout_seconds``,
    ``cache_policy`` (default :data:`AGENT_INPUTS`; ``NONE`` turns caching off, ``AGENT_INPUTS +
    RUN_ID`` keeps entries to one flow run) and ``persist_result``.
    """

    retries: int
    retry_delay_seconds: RetryDelay
    retry_condition_fn: RetryCondition
    timeout_seconds: float
    cache_policy: CachePolicy
    persist_result: bool


_DEFAULT_CONFIG = TaskConfig(retries=0, retry_delay_seconds=1.0, cache_policy=AGENT_INPUTS, persist_result=True)
_KNOWN_OPTIONS = frozenset(TaskConfig.__annotations__)


def _non_retryable() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError
    from pydantic.errors import PydanticUserError
    from pydantic_ai.exceptions import (
        ModelQuotaExceededError,
        ModelRequestRejectedError,
        RunCancelled,
        UnexpectedModelBehavior,
        UsageLimitExceeded,
        UserError,
    )

    return (
        UserError,  # a mistake in the agent's setup: the same call fails the same way
        PydanticUserError,
        ValidationError,  # bad arguments or output that no second attempt changes
        UnexpectedModelBehavior,
        ModelRequestRejectedError,  # 4xx the provider will answer the same way: context window, auth, model name
        ModelQuotaExceededError,
        UsageLimitExceeded,
        RunCancelled,
    )


NON_RETRYABLE_ERRORS: tuple[type[BaseException], ...] = _non_retryable()
"""Errors a retry cannot fix; a task failing with one of them is not retried, whatever its ``retries``.
An HTTP error from a model with a 4xx status other than 408, 409 and 429 is not retried either."""

_RETRYABLE_4XX = frozenset({408, 409, 429})  # timeout, conflict, rate limit: another attempt may pass


def is_retryable(error: object) -> bool:
    """Whether another attempt could succeed where ``error`` failed (see :data:`NON_RETRYABLE_ERRORS`)."""
    from pydantic_ai.exceptions import ModelHTTPError

    if isinstance(error, NON_RETRYABLE_ERRORS):
        return False
    if isinstance(error, ModelHTTPError):
        status = error.status_code
        return not (400 <= status < 500 and status not in _RETRYABLE_4XX)
    return True


def _with_non_retryable(config: Mapping[str, Any]) -> TaskConfig:
    merged = cast(TaskConfig, {**_DEFAULT_CONFIG, **config})
    user_condition = merged.get("retry_condition_fn")

    def retry_condition(task: Task[..., Any], task_run: Any, state: Any) -> bool:
        if not is_retryable(state.result(raise_on_failure=False)):
            return False
        return True if user_condition is None else bool(user_condition(task, task_run, state))

    merged["retry_condition_fn"] = retry_condition
    return merged


def check_task_config(config: Mapping[str, Any] | None, owner: str) -> dict[str, Any]:
    """A copy of ``config`` after checking its option names (values are checked by :class:`nbflow.Task`)."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise TypeError(f"{owner} must be a TaskConfig (a dict of task options), got {type(config).__name__}")
    unknown = set(config) - _KNOWN_OPTIONS
    if unknown:
        raise ConfigurationError(
            f"{owner}: unknown option(s) {sorted(unknown)}; a TaskConfig takes {sorted(_KNOWN_OPTIONS)}"
        )
    try:  # the values, now rather than at the first model request of a run
        Task(_check_values, name=owner, **config)
    except ConfigurationError as error:
        raise ConfigurationError(f"{owner}: {error}") from None
    return dict(config)


def _check_values() -> None:
    """Stands in for an operation while a TaskConfig's values are checked."""


def check_tool_metadata(agent: Any) -> None:
    """Check the ``"nbflow"`` metadata of the agent's function tools (a TaskConfig or False)."""
    from pydantic_ai.toolsets import FunctionToolset

    def visit(toolset: Any) -> None:
        if not isinstance(toolset, FunctionToolset):
            return
        for name, tool in toolset.tools.items():
            config = (tool.metadata or {}).get("nbflow")
            if config is None or config is False:
                continue
            check_task_config(config, f"tool {name!r}: metadata 'nbflow'")

    for toolset in agent.toolsets:
        toolset.apply(visit)


# Names of the task parameters for each kind of operation, in the order of pydantic-ai's cache identity
# projection; they name the parts of a key in `%nbflow why` and the inputs in the run record.
def _parameter_names(operation_id: DurableOperationId, count: int) -> list[str]:
    if isinstance(operation_id, ModelRequestId) and count == 5:
        return ["model_id", "messages", "model_settings", "model_request_parameters", "run_context"]
    if isinstance(operation_id, (ToolsetCallToolId, ToolsetValidateToolArgumentsId)) and count == 4:
        return ["tool_name", "tool_args", "ctx", "tool"]
    if count == 1:
        return ["ctx"]
    return [f"input_{index}" for index in range(count)]


@dataclass
class _Trail:
    """Results of one agent run so far, so each task gets graph edges from the ones it follows."""

    last_model: object | None = None
    since_model: list[object] = field(default_factory=list)


_trail: ContextVar[_Trail | None] = ContextVar("nbflow_agent_trail", default=None)

# The model's stream events of the streamed model request running now, recorded inside its task.
_recorded_events: ContextVar[list[Any] | None] = ContextVar("nbflow_agent_stream_events", default=None)

_StreamedResult: Any
try:  # pydantic-ai's result shape for a streamed request that carries its events (still decoded and replayed)
    from pydantic_ai.durable_exec._utils import StreamedActivityResult as _StreamedResult
except ImportError:  # pragma: no cover - a release without it: the run sees the response only
    _StreamedResult = None


class _Namer:
    """Task names: a model request is named for its model, a tool call for its tool."""

    def __init__(self, agent_name: str) -> None:
        self.agent_name = agent_name

    def operation_name(self, operation_id: DurableOperationId) -> str:
        if isinstance(operation_id, ModelRequestId):
            return operation_id.model_name
        kind = type(operation_id).__name__.removesuffix("Id")
        detail = getattr(operation_id, "toolset_id", None) or getattr(operation_id, "capability_id", None)
        return f"{self.agent_name}: {kind}" + (f" {detail}" if detail else "")

    def invocation_name(self, operation_id: DurableOperationId, *, label: str | None) -> DurableInvocationName:
        if isinstance(operation_id, (ToolsetCallToolId, ToolsetValidateToolArgumentsId)) and label:
            return DurableInvocationName(label, display_name=label)
        name = self.operation_name(operation_id)
        return DurableInvocationName(name, display_name=name)


class NbflowOperationBackend(CallableOperationBackend[dict[str, Any]]):
    """Runs each durable operation of an agent as one nbflow task call."""

    def __init__(self, *, agent_name: str, config: RoleBasedOperationConfig[dict[str, Any]]) -> None:
        super().__init__(namer=_Namer(agent_name), config=config)
        self._agent_name = agent_name

    async def execute(
        self,
        *,
        operation_id: DurableOperationId,
        name: str,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
        config: dict[str, Any],
    ) -> object:
        # Argument validation is pure and deterministic, and an event handler only reports what the run
        # does: both run in the flow itself rather than as tasks of their own that would crowd the graph.
        if isinstance(operation_id, (ToolsetValidateToolArgumentsId, EventStreamHandlerId)):
            return await body()
        trail = _trail.get()
        is_model = isinstance(operation_id, ModelRequestId)
        upstream: tuple[object, ...] = ()
        if trail is not None:
            if is_model:
                upstream = tuple(trail.since_model) or (
                    (trail.last_model,) if trail.last_model is not None else ()
                )
            elif trail.last_model is not None:
                upstream = (trail.last_model,)
        if isinstance(operation_id, ModelRequestId) and getattr(operation_id, "streaming", False):
            body = _recording_events(body)
        task = _operation_task(operation_id, name, len(cache_key), body, self._agent_name, config)
        result = await task(*cache_key, **{UPSTREAM_PARAMETER: upstream})
        if trail is not None:
            if is_model:
                trail.last_model = result
                trail.since_model = []
            else:
                trail.since_model.append(result)
        return result


def _recording_events(body: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[object]]:
    """A streamed model request whose stored result keeps the model's stream events with the response,
    so the flow (a per-run handler, ``run_stream_events``, ``ProcessEventStream``) sees the stream as the
    model sent it — deltas and all — on the first run and on every replay, not one event per part."""
    if _StreamedResult is None:
        return body

    async def recorded() -> object:
        events: list[Any] = []
        token = _recorded_events.set(events)
        try:
            response = await body()
        finally:
            _recorded_events.reset(token)
        if not isinstance(response, ModelResponse):
            return response
        return _StreamedResult(response=response, events=events)

    return recorded


def _operation_task(operation_id: DurableOperationId, name: str, count: int,
                    body: Callable[[], Awaitable[object]], agent_name: str,
                    config: dict[str, Any]) -> Task[..., Any]:
    names = _parameter_names(operation_id, count)

    async def operation(*inputs: object, **_: object) -> object:
        return await body()

    parameters = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    parameters.append(inspect.Parameter(UPSTREAM_PARAMETER, inspect.Parameter.KEYWORD_ONLY, default=()))
    operation.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    # The task key (module + qualname) tells operations apart when a flow retry reuses earlier results.
    operation.__name__ = name
    operation.__qualname__ = f"{agent_name}.{type(operation_id).__name__}.{name}"
    return Task(operation, name=name, **config)


@dataclass(init=False)
class NbflowDurability(BaseDurabilityCapability[AgentDepsT]):
    """A pydantic-ai capability that makes an agent's runs inside an nbflow flow durable.

    :class:`~nbflow.integrations.pydantic_ai.DurableAgent` attaches it for you. Attach it yourself with
    ``Agent(..., capabilities=[NbflowDurability()])`` when the agent runs inside a flow of your own: each
    model request then is a task named for the model, each tool call a task named for the tool.
    Per-tool options go in the tool's metadata: ``@agent.tool(metadata={"nbflow": TaskConfig(...)})``,
    or ``{"nbflow": False}`` to run that tool inline, without a task.
    """

    engine_spec = DurabilityEngineSpec(
        engine_name="nbflow",
        durable_unit_noun="task",
        durable_container_noun="flow",
        codec=IDENTITY_CODEC,  # nbflow's store serializes results itself
        wrapped_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        # Units run in the flow's own process, so an MCP session can be entered by the first task
        # that needs it and held for the run.
        toolset_lifecycles={"function": "enter-always", "mcp": "enter-in-durable-unit", "dynamic": "enter-never"},
        # Toolsets passed to a single run were never wrapped, so their calls could not be tasks.
        unsupported_runtime_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        journal_discovery=True,
        sequential_tools_in_durable_context=False,
        tool_config_key="nbflow",
    )

    def __init__(
        self,
        *,
        name: str | None = None,
        model_task_config: TaskConfig | None = None,
        tool_task_config: TaskConfig | None = None,
        event_stream_handler: EventStreamHandler[AgentDepsT] | None = None,
        models: Mapping[str, Model] | None = None,
    ) -> None:
        """Options: ``name`` (defaults to the agent's name), ``model_task_config`` and ``tool_task_config``
        (:class:`TaskConfig` for model-request and tool-call tasks), ``event_stream_handler`` (called with
        the model's stream events inside each model-request task, and with tool events in the flow), and
        ``models`` (extra models a run may switch to, by key)."""
        super().__init__(models=models, event_stream_handler=event_stream_handler, name=name)
        self._model_config = _with_non_retryable(check_task_config(model_task_config, "model_task_config"))
        self._tool_config = check_task_config(tool_task_config, "tool_task_config")

    @property
    def in_durable_context(self) -> bool:
        return current_flow_run() is not None

    async def wrap_run(self, ctx: RunContext[AgentDepsT], *, handler: Any) -> Any:
        token = _trail.set(_Trail()) if self.in_durable_context else None
        try:
            return await super().wrap_run(ctx, handler=handler)
        finally:
            if token is not None:
                _trail.reset(token)

    def get_durable_operation_backend(self) -> DurableOperationBackend[dict[str, Any]]:
        def tool_config(operation_id: DurableOperationId, tool: object | None,
                        tool_name: str) -> dict[str, Any] | Literal[False]:
            return self._resolve_tool_config(cast("ToolsetTool[Any] | None", tool), tool_name)

        return NbflowOperationBackend(
            agent_name=self.name,
            config=RoleBasedOperationConfig(
                model=cast(dict[str, Any], self._model_config),
                event=cast(dict[str, Any], _with_non_retryable({})),
                capability=cast(dict[str, Any], _with_non_retryable({})),
                tool=cast(dict[str, Any], _with_non_retryable(self._tool_config)),
                resolve_tool=tool_config,
            ),
        )

    def _resolve_tool_config(self, tool: ToolsetTool[Any] | None, tool_name: str) -> dict[str, Any] | Literal[False]:
        """The task options of one tool's calls: its ``"nbflow"`` metadata over the tool defaults."""
        resolve = self._build_resolve_tool_config(self._tool_config)
        return cast("dict[str, Any] | Literal[False]", resolve(tool, tool_name))

    def _model_stream_event_handler(self) -> EventStreamHandler[AgentDepsT] | None:
        # Inside a streamed model request's task: record each event for the flow, and hand it on to the
        # capability's own handler, which sees the live stream there as before.
        handler = super()._model_stream_event_handler()
        events = _recorded_events.get()
        if events is None:
            return handler

        async def recording(ctx: RunContext[AgentDepsT], stream: Any) -> None:
            async def tee() -> Any:
                async for event in stream:
                    events.append(event)
                    yield event

            teed = tee()
            if handler is not None:
                await handler(ctx, teed)
            async for _ in teed:  # what the handler left unread still belongs to the record
                pass

        return recording

    def _toolset_base_config(self, kind: ToolsetKind) -> Any:
        # The options of a toolset's own tasks (MCP and dynamic tool discovery) are the agent's tool
        # options with the agent's defaults (AGENT_INPUTS): without them discovery ran uncached, under
        # the engine's default policy, and a fully cached run still started an MCP server.
        return _with_non_retryable(self._tool_config)

    def _stamp_response(self, response: ModelResponse, messages: list[Any]) -> None:
        # Inside the task, before the response is stored: the run and conversation that produced it.
        # pydantic-ai fills unset ids after the task returns, so a replay in another run would otherwise
        # be stamped as that run's own (and a provider's server-side state guard would take another
        # conversation's response for this one's).
        if not messages:
            return
        request = messages[-1]
        if getattr(response, "run_id", None) is None and getattr(request, "run_id", None) is not None:
            response.run_id = request.run_id
        if getattr(response, "conversation_id", None) is None and getattr(request, "conversation_id", None):
            response.conversation_id = request.conversation_id

    def _normalize_unit_config(self, config: Any) -> Any:
        # Per-tool metadata is merged over the tool defaults here; unknown names fail with the tool's name.
        return _with_non_retryable(check_task_config(config, "tool metadata 'nbflow'"))


def _is_agent_function_toolset(toolset: AbstractToolset[Any]) -> bool:
    # The agent's own tools (`@agent.tool`, `tools=`, `override(tools=...)`), by class name: pydantic-ai
    # keeps the class private.
    return type(toolset).__name__ == "_AgentFunctionToolset"


def _explicit_id(toolset: AbstractToolset[Any]) -> str | None:
    # The id a user chose (not one pydantic-ai derives from a URL): what the engine keys toolsets by.
    return cast("str | None", getattr(toolset, "_explicit_id", toolset.id))


@dataclass(init=False)
class AgentDurability(NbflowDurability[AgentDepsT]):
    """The capability a :class:`~nbflow.integrations.pydantic_ai.DurableAgent` attaches to each run.

    It binds to the toolsets the agent has when the run starts — including toolsets added with
    ``@agent.toolset`` after the agent was wrapped, and those of ``override(toolsets=...)`` — and
    accepts toolsets without an ``id`` (keyed by identity: nbflow keys each call by its tool's code and
    arguments, not by the toolset's name). Toolsets passed to a single run (``run(toolsets=...)``) are
    still refused inside a flow when they execute tools: their calls would not be tasks.
    """

    def __init__(
        self,
        *,
        tool_task_config_by_name: Mapping[str, dict[str, Any] | Literal[False]] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._by_name: dict[str, dict[str, Any] | Literal[False]] = dict(tool_task_config_by_name or {})
        self._unnamed: dict[int, tuple[AbstractToolset[AgentDepsT], AbstractToolset[AgentDepsT]]] = {}
        self._known_leaves: set[int] = set()

    def _bind_to_agent(self, agent: Any) -> None:
        # Runs on the bound copy, once per run: what the agent holds now is what its tasks wrap.
        self._unnamed = {}
        known: set[int] = set()
        for toolset in agent.toolsets:
            toolset.apply(lambda leaf: known.add(id(leaf)))
        self._known_leaves = known
        super()._bind_to_agent(agent)

    def _wrap_and_register_leaf(self, ts: AbstractToolset[AgentDepsT]) -> AbstractToolset[AgentDepsT]:
        if _explicit_id(ts) is not None:
            return cast("AbstractToolset[AgentDepsT]", super()._wrap_and_register_leaf(ts))
        entry = self._unnamed.get(id(ts))
        if entry is not None:
            return entry[1]
        wrapped = self._wrap_leaf_toolset(ts)
        if wrapped is None:
            return ts
        self._unnamed[id(ts)] = (ts, wrapped)
        return wrapped

    def swap_toolset(self, ts: AbstractToolset[AgentDepsT]) -> AbstractToolset[AgentDepsT]:
        """The durable wrapper of a leaf toolset this capability bound, or the toolset itself."""
        toolset_id = _explicit_id(ts)
        if toolset_id is None:
            entry = self._unnamed.get(id(ts))
            return entry[1] if entry is not None and entry[0] is ts else ts
        registered = self._toolsets_by_id.get(toolset_id)
        return registered if registered is not None and registered.wrapped is ts else ts

    def get_wrapper_toolset(self, toolset: AbstractToolset[AgentDepsT]) -> AbstractToolset[AgentDepsT] | None:
        self._reject_runtime_toolsets(toolset)
        return toolset.visit_and_replace(self._swap_for_run)

    def _swap_for_run(self, ts: AbstractToolset[AgentDepsT]) -> AbstractToolset[AgentDepsT]:
        swapped = self.swap_toolset(ts)
        if swapped is not ts:
            return swapped
        if _is_agent_function_toolset(ts):
            # `override(tools=...)` builds the agent's function toolset anew each time it is asked for:
            # wrap the run's own (tasks need no registration ahead of the run in nbflow).
            entry = self._unnamed.get(id(ts))
            if entry is None:
                wrapped = self._wrap_leaf_toolset(ts)
                if wrapped is None:
                    return ts
                entry = self._unnamed[id(ts)] = (ts, wrapped)
            return entry[1]
        toolset_id = _explicit_id(ts)
        if toolset_id is not None and toolset_id in self._toolsets_by_id and self.in_durable_context:
            raise UserError(
                f"A toolset added at run time has the same `id` {toolset_id!r} as one of the agent's: toolset "
                "ids must be unique, since the id tells which toolset's task a tool call runs as. Give the "
                "toolset a different `id`."
            )
        return ts

    def _reject_runtime_toolsets(self, toolset: AbstractToolset[AgentDepsT]) -> None:
        # pydantic-ai's check counts only the toolsets the agent was constructed with as known; a
        # DurableAgent binds every run to the toolsets the agent holds then, so those are known too.
        if not self.in_durable_context:
            return
        from pydantic_ai.durable_exec._runtime_toolsets import reject_unsupported_runtime_toolsets
        from pydantic_ai.toolsets._capability_owned import CapabilityOwnedToolset

        runtime: list[AbstractToolset[AgentDepsT]] = []

        def collect(leaf: AbstractToolset[AgentDepsT]) -> None:
            # A capability's contributions are re-packaged per run; the toolsets inside are judged alone.
            if id(leaf) in self._known_leaves or _is_agent_function_toolset(leaf):
                return
            if not isinstance(leaf, CapabilityOwnedToolset):
                runtime.append(leaf)

        toolset.apply(collect)
        reject_unsupported_runtime_toolsets(
            runtime,
            unsupported_kinds=self.engine_spec.unsupported_runtime_toolset_kinds,
            engine=self.engine_name,
            tool_config_key=self.engine_spec.tool_config_key,
        )

    def _resolve_tool_config(self, tool: ToolsetTool[Any] | None, tool_name: str) -> dict[str, Any] | Literal[False]:
        metadata = getattr(getattr(tool, "tool_def", None), "metadata", None) or {}
        if "nbflow" not in metadata and tool_name in self._by_name:
            by_name = self._by_name[tool_name]
            if by_name is False:
                return False
            return cast(dict[str, Any], self._normalize_unit_config({**self._tool_config, **by_name}))
        return super()._resolve_tool_config(tool, tool_name)
