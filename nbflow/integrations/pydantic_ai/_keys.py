"""Cache keys for agent operations: a canonical projection of what a model request or a tool call depends on.

A model request depends on the model, the messages, the model settings, the request parameters (tool
definitions, output mode) and whatever the run context carries into it (deps, the prompt, retry counters,
the run step...). Two things keep those from being hashed as they are:

- pydantic-ai stamps every message with **per-run values** — timestamps, durations, run and conversation
  ids, usage, provider response ids — and each release may add more. A key built from every field would
  miss on an identical rerun as soon as a release adds one. So a message and each of its parts count by
  an **allowlist of what the conversation says** (:data:`_CONTENT_FIELDS`: text, tool names, arguments,
  tool results, instructions, finish reasons...), looked up along the class's MRO, so a later release's
  new fields, or a subclass's, do not change keys. pydantic-ai dataclasses without an allowlist (new
  part kinds, tool definitions, request parameters) keep every public field but the known per-run ones:
  an unknown field can only cost a hit, never serve a stale one. Tool call ids that pydantic-ai generates
  (``pyd_ai_...``) at random when a model does not give one are replaced by their order of first
  appearance, which is stable between identical runs and still tells two parallel calls apart.
- the run context holds **live machinery** — the model object, HTTP clients, tracers, usage counters,
  the agent — that cannot be fingerprinted and does not change what an operation computes. Only the
  fields listed in :data:`_RUN_CONTEXT_FIELDS` count; a user value among them (deps, metadata) that
  cannot be fingerprinted, or a field of it that cannot, is replaced by a marker naming its type instead
  of failing the call.

Code counts too: a tool call's key includes the code identity of the tool's function (so editing a tool
recomputes its calls), and a :class:`~pydantic_ai.models.function.FunctionModel`'s key the code identity of
its functions. A real provider's model counts by its name and system. Every key also names the
pydantic-ai release, so an upgrade starts afresh instead of replaying objects an older release recorded.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import xxhash
from pydantic import BaseModel
from pydantic_ai import __version__ as _pydantic_ai_version
from pydantic_ai import _utils as _pydantic_ai_utils
from pydantic_ai.models import Model
from pydantic_ai.tools import RunContext
from pydantic_ai.toolsets import FunctionToolset, ToolsetTool

from nbflow.cache_policies import CachePolicy, KeyContext
from nbflow.exceptions import NbflowWarning, UnfingerprintableError
from nbflow.hashing import code_identity, fingerprint

__all__ = ["AGENT_INPUTS", "AgentInputs", "UPSTREAM_PARAMETER", "canonical"]

# Bump the first part when the projection changes what it keeps.
_FORMAT = f"agent-inputs/2 pydantic-ai/{_pydantic_ai_version}"

# The task parameter that carries graph edges (earlier results of the same agent run); never keyed.
UPSTREAM_PARAMETER = "upstream"

# What a message, a message part or a content item says, by the pydantic-ai class that defines it (the
# first match along a value's MRO wins). Names a release does not have are skipped; the key names the
# release anyway. Left out on purpose: ids a provider or pydantic-ai makes up per run (``id``,
# ``signature``, ``provider_response_id``, ``record_id``), clocks (``timestamp``, ``request_timestamp``,
# ``duration``), usage, provider details and ``metadata`` (the application's, never sent to the model).
_CONTENT_FIELDS: dict[str, tuple[str, ...]] = {
    # messages
    "ModelRequest": ("kind", "parts", "instructions", "state"),
    # provider_details can carry what a provider continues from (a conversation id): it is sent back
    "ModelResponse": ("kind", "parts", "model_name", "finish_reason", "state", "provider_details"),
    # request parts
    "SystemPromptPart": ("part_kind", "content", "dynamic_ref", "scope"),
    "UserPromptPart": ("part_kind", "content"),
    "BaseToolReturnPart": ("part_kind", "tool_name", "content", "tool_call_id", "tool_kind", "outcome", "retry"),
    "RetryPromptPart": ("part_kind", "content", "tool_name", "tool_call_id"),
    "RetryFeedbackPart": ("part_kind", "content", "retry"),
    "InstructionPart": ("part_kind", "content", "dynamic", "on_change", "name", "id"),
    "CapabilityPart": ("part_kind", "kind", "source", "scope", "capability_id", "rendering", "content", "data"),
    # response parts
    "TextPart": ("part_kind", "content", "citations"),
    "ThinkingPart": ("part_kind", "content"),
    "BaseToolCallPart": ("part_kind", "tool_name", "args", "tool_call_id", "tool_kind"),
    "FilePart": ("part_kind", "content"),
    "CompactionPart": ("part_kind", "content"),
    "SpeechPart": ("part_kind", "speaker", "transcript", "audio", "interrupted_at_ms", "timestamps"),
    # content items
    "FileUrl": ("kind", "url", "media_type", "vendor_metadata"),
    "BinaryContent": ("kind", "data", "media_type", "vendor_metadata"),
    "UploadedFile": ("kind", "file_id", "provider_name", "media_type", "vendor_metadata"),
    "TextContent": ("kind", "content"),
    "StructuredContent": ("kind", "content", "value", "tag", "description"),
}

# The fields of those classes that were looked at and left out. A test checks that every field of every
# class above is in one list or the other, so a release that adds a field is reviewed (`make test-latest`)
# before the lock moves to it: a new field that carries content would otherwise be silently ignored.
_NOT_CONTENT = frozenset({
    # made up per run, by pydantic-ai or the provider
    "id", "record_id", "signature", "provider_response_id", "run_id", "conversation_id", "context_id",
    "history_digest", "failed_attempts",
    # clocks and accounting
    "timestamp", "request_timestamp", "duration", "usage",
    # where and how it was served, not what it says (model_name counts)
    "model_id", "provider_name", "provider_url", "provider_details", "canonical_system", "workspace_ref",
    # the application's, never sent to the model; display hints; how a URL is fetched
    "metadata", "ui_visibility", "force_download",
    # private; media_type (a property over _media_type) counts
    "_media_type", "_identifier",
})

# Fields of pydantic-ai's other dataclasses that differ between two identical runs.
_PER_RUN_FIELDS = frozenset({
    "timestamp", "request_timestamp", "duration", "run_id", "conversation_id", "provider_response_id", "usage",
})
_MISSING = object()
# How pydantic-ai starts the tool call ids it makes up (its own constant where it has one).
_GENERATED_ID_PREFIX: str = getattr(_pydantic_ai_utils, "TOOL_CALL_ID_PREFIX", "pyd_ai_")
_MAX_DEPTH = 64

# The run-context fields an operation's result can depend on. Everything else is live machinery
# (model, usage, tracer, agent, toolsets, capabilities, cancellation) or per-run bookkeeping (run and
# conversation ids, the deadline: a clock time).
_RUN_CONTEXT_FIELDS = (
    "deps",
    "_model_id",
    "prompt",
    "messages",
    "model_settings",
    "metadata",
    "validation_context",
    "usage_limits",
    "retries",
    "retry",
    "max_retries",
    "run_step",
    "tool_name",
    "tool_call_id",
    "tool_call_approved",
    "tool_call_metadata",
    "partial_output",
    "loaded_capability_ids",
    "discovered_tool_names",
)


def _is_framework(obj: object) -> bool:
    module = type(obj).__module__
    return module == "pydantic_ai" or module.startswith("pydantic_ai.")


_ALLOWLISTS: dict[type, tuple[str, ...] | None] = {}


def content_fields(cls: type) -> tuple[str, ...] | None:
    """The allowlist that applies to a class: its own or its nearest pydantic-ai ancestor's, else None."""
    if cls in _ALLOWLISTS:
        return _ALLOWLISTS[cls]
    found = None
    for base in cls.__mro__:
        module = base.__module__
        if (module == "pydantic_ai" or module.startswith("pydantic_ai.")) and base.__qualname__ in _CONTENT_FIELDS:
            found = _CONTENT_FIELDS[base.__qualname__]
            break
    _ALLOWLISTS[cls] = found
    return found


def _attribute(value: Any, name: str) -> Any:
    # Some listed names are properties that may raise (an ImageUrl's media_type when the URL names no
    # known type): such a value is left out of the key; the fields it derives from still count.
    try:
        return getattr(value, name, _MISSING)
    except Exception:
        return _MISSING


class _Projector:
    """One projection pass; it numbers generated tool call ids in order of first appearance."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    def generated_id(self, value: str) -> str:
        label = self.ids.get(value)
        if label is None:
            label = self.ids[value] = f"<generated tool call #{len(self.ids)}>"
        return label

    def project(self, value: Any, depth: int = 0) -> Any:
        if value is None or isinstance(value, (bool, int, float, str, bytes)):
            return value
        if depth > _MAX_DEPTH:
            return f"<too deep: {type(value).__qualname__}>"
        if isinstance(value, RunContext):
            return self.run_context(value, depth)
        if isinstance(value, ToolsetTool):
            return self.tool(value, depth)
        if isinstance(value, Model):
            return model_identity(value)
        if isinstance(value, dict):
            return {key: self.project(item, depth + 1) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.project(item, depth + 1) for item in value]
        if isinstance(value, (set, frozenset)):
            return sorted(_digest(self.project(item, depth + 1)) for item in value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return self.dataclass(value, depth)
        return self.user_value(value, depth)

    def dataclass(self, value: Any, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {"__type__": type(value).__qualname__}
        allowed = content_fields(type(value))
        framework = allowed is not None or _is_framework(value)
        if allowed is not None:
            names: Iterable[str] = allowed
        else:
            names = (field.name for field in dataclasses.fields(value))
        for name in names:
            if allowed is None and framework and (name in _PER_RUN_FIELDS or name.startswith("_")):
                continue
            item = _attribute(value, name)
            if item is _MISSING:
                continue
            if framework and name == "tool_call_id" and isinstance(item, str) and item.startswith(
                _GENERATED_ID_PREFIX
            ):
                out[name] = self.generated_id(item)
                continue
            out[name] = self.project(item, depth + 1)
        return out

    def run_context(self, ctx: Any, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {"__type__": "RunContext"}
        for name in _RUN_CONTEXT_FIELDS:
            item = getattr(ctx, name, None)
            if name == "tool_call_id" and isinstance(item, str) and item.startswith(_GENERATED_ID_PREFIX):
                # The id of the call being made counts by its place in the messages (projected above), so
                # two parallel identical calls key apart and an identical rerun keys alike; an id the
                # messages do not hold counts verbatim, so two such calls never share a result.
                out[name] = self.ids.get(item, item)
            else:
                out[name] = self.project(item, depth + 1)
        agent = getattr(ctx, "agent", None)
        out["agent"] = getattr(agent, "name", None)
        model = getattr(ctx, "model", None)
        out["model"] = model_identity(model) if model is not None else None
        return out

    def tool(self, tool: Any, depth: int) -> dict[str, Any]:
        toolset = getattr(tool, "toolset", None)
        return {
            "__type__": "ToolsetTool",
            "toolset": getattr(toolset, "id", None),
            "tool_def": self.project(tool.tool_def, depth + 1),
            "max_retries": tool.max_retries,
            "code": tool_code_identity(tool),
        }

    def user_value(self, value: Any, depth: int) -> Any:
        # A user's value (deps, a tool's return value, metadata): its nbflow fingerprint. A pydantic model
        # goes field by field, and so does a plain object that cannot be fingerprinted whole, so a field
        # holding a client only blanks that field and the others (a user id, a region) still count.
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        if isinstance(value, BaseModel):
            fields = type(value).model_fields
            return {"__type__": kind, **{name: self.project(getattr(value, name, None), depth + 1) for name in fields}}
        try:
            return {"__value__": fingerprint(value)}
        except (UnfingerprintableError, RecursionError):
            pass
        attributes = getattr(value, "__dict__", None)
        if isinstance(attributes, dict) and not isinstance(value, type):
            return {"__type__": kind, **{str(name): self.project(item, depth + 1)
                                         for name, item in attributes.items()}}
        return f"<not fingerprinted: {kind}>"


def _digest(value: Any) -> str:
    return fingerprint(value)


def _wrapped_models(model: Any) -> Iterator[Any]:
    seen: set[int] = set()
    while model is not None and id(model) not in seen:
        seen.add(id(model))
        yield model
        model = getattr(model, "wrapped", None)


def model_identity(model: Any) -> dict[str, Any]:
    """What identifies a model in a key: name and system, plus the code of a FunctionModel's functions."""
    identity: dict[str, Any] = {
        "name": getattr(model, "model_name", None),
        "system": getattr(model, "system", None),
    }
    for inner in _wrapped_models(model):
        for attribute in ("function", "stream_function"):
            function = getattr(inner, attribute, None)
            if function is not None and callable(function):
                identity[attribute] = _code_or_marker(function)
    return identity


def tool_code_identity(tool: Any) -> str | None:
    """Code identity of the user function behind a function tool (None for tools without one, e.g. MCP).

    A tool of a function toolset whose function cannot be found warns, naming it: editing its code would
    not recompute its cached calls.
    """
    name = getattr(getattr(tool, "tool_def", None), "name", None)
    toolset = getattr(tool, "toolset", None)
    # The public way first (FunctionToolset.tools maps names to Tool objects, each with its function),
    # then the bound method pydantic-ai calls, for toolsets that wrap a function toolset.
    tools = getattr(toolset, "tools", None)
    function = getattr(tools.get(name), "function", None) if isinstance(tools, dict) else None
    if function is None:
        call = getattr(tool, "call_func", None)
        function = getattr(getattr(call, "__self__", None), "function", None)
    if function is None:
        if isinstance(toolset, FunctionToolset) and name not in _UNTRACKED_TOOLS:
            _UNTRACKED_TOOLS.add(name)
            warnings.warn(
                f"nbflow cannot find the function of tool {name!r}: its cached calls are keyed without its "
                "code, so editing the tool does not recompute them (clear them with `nbflow cache clear`)",
                NbflowWarning,
                stacklevel=2,
            )
        return None
    return _code_or_marker(function)


_UNTRACKED_TOOLS: set[Any] = set()


def _code_or_marker(function: Any) -> str:
    try:
        return code_identity(function)
    except UnfingerprintableError:
        # A callable whose code cannot be read still keys by its qualified name.
        return f"<code of {getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}>"


def canonical(values: dict[str, Any]) -> dict[str, Any]:
    """The canonical projection of an operation's named inputs (one pass, so tool call ids number once)."""
    projector = _Projector()
    return {name: projector.project(value) for name, value in values.items()}


@dataclasses.dataclass(frozen=True)
class AgentInputs(CachePolicy):
    """The default cache policy of agent operations: the canonical projection of their inputs.

    Compose it like any policy: ``AGENT_INPUTS + RUN_ID`` keeps entries to one flow run;
    ``cache_policy=NONE`` in a :class:`TaskConfig` turns caching off for those operations.
    """

    def compute_key(self, context: KeyContext, inputs: dict[str, Any]) -> str | None:
        named = {name: value for name, value in inputs.items() if name != UPSTREAM_PARAMETER}
        if not named:
            return None  # nothing to key by: run, never replay
        projected = canonical(named)
        hasher = xxhash.xxh3_128()
        # Recorded results are pydantic-ai objects: another release of it, or another projection, starts
        # afresh rather than replaying objects an older release made.
        context.parts["format"] = _FORMAT
        hasher.update(_FORMAT.encode())
        for name in sorted(projected):
            digest = fingerprint(projected[name])
            context.parts[f"input:{name}"] = digest
            hasher.update(name.encode())
            hasher.update(b"\0")
            hasher.update(digest.encode())
        return hasher.hexdigest()

    def __repr__(self) -> str:
        return "AGENT_INPUTS"


AGENT_INPUTS: CachePolicy = AgentInputs()
