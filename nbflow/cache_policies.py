"""Cache policies: small values that compose with ``+`` and ``-``.

A policy turns a task call into a cache key (or None: do not cache). The default is written as the
composition it is::

    DEFAULT = INPUTS + TASK_SOURCE

which is *cross-run*: a restarted kernel or a new process computes the same key for the same code and
inputs, and hits. Add ``RUN_ID`` to confine entries to one run; subtract an argument name to leave it
out of the key (``INPUTS - "verbose"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import FrozenInstanceError
from typing import TYPE_CHECKING, Any

import xxhash

from nbflow.exceptions import ConfigurationError, UnfingerprintableError
from nbflow.hashing import code_identity, fingerprint

if TYPE_CHECKING:
    from nbflow.tasks import Task

__all__ = [
    "DEFAULT",
    "FLOW_PARAMETERS",
    "INPUTS",
    "NONE",
    "RUN_ID",
    "TASK_SOURCE",
    "CacheKeyFnPolicy",
    "CachePolicy",
    "CompoundCachePolicy",
    "FlowParameters",
    "Inputs",
    "KeyContext",
    "NoCache",
    "RunId",
    "Serializable",
    "StorageKeyPolicy",
    "TaskSource",
]


class ArgumentError(UnfingerprintableError):
    """An argument could not be fingerprinted; ``argument`` names it."""

    def __init__(self, argument: str, cause: BaseException) -> None:
        super().__init__(f"argument {argument!r}: {cause}")
        self.argument = argument


def fingerprint_arguments(arguments: dict[str, Any], parts: dict[str, str] | None = None,
                          prefix: str = "input:") -> str:
    """One digest over named values, in name order; raises :class:`ArgumentError` naming a bad one.

    With ``parts``, each value's own digest is recorded there under ``prefix + name``.
    """
    pieces = []
    for name in sorted(arguments) if len(arguments) > 1 else arguments:
        try:
            digest = fingerprint(arguments[name])
        except UnfingerprintableError as error:
            raise ArgumentError(name, error) from error
        except RecursionError as error:
            raise ArgumentError(name, UnfingerprintableError("value is nested too deeply")) from error
        # The digest of "name\0digest" for every argument in a row (one hash call, not three per argument).
        pieces.append(f"{name}\0{digest}")
        if parts is not None:
            parts[prefix + name] = digest
    return xxhash.xxh3_128_hexdigest("".join(pieces).encode())


def default_key_exclusions(policy: CachePolicy) -> frozenset[str] | None:
    """For a policy that is ``INPUTS (- names) + TASK_SOURCE`` (the default, and the most common), the
    argument names it leaves out; None for any other policy. The engine computes such keys directly,
    without the general machinery, since it does so on every call."""
    parts = policy.parts()
    if len(parts) == 2 and type(parts[0]) is Inputs and type(parts[1]) is TaskSource:
        return parts[0].exclude
    return None


class _Frozen:
    """Immutable values, compared and hashed by their ``_fields``: what ``@dataclass(frozen=True)`` gives,
    without its cost of creating each class (~0.7 ms each here, paid by a process's first task call)."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self._fields)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, name) for name in self._fields))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__qualname__}({fields})"


class KeyContext(_Frozen):
    """What a policy may look at besides the task's inputs: ``task``, ``run_id``, ``flow_parameters`` (the
    enclosing flow's, else None) and ``parts``, which the policies fill as they compute: one digest per
    part of the key ("code", "input:x", ...), kept in the task run record so that a changed key can be
    explained part by part."""

    _fields = ("task", "run_id", "flow_parameters", "parts")
    task: Task[..., Any]
    run_id: str
    flow_parameters: dict[str, Any] | None
    parts: dict[str, str]

    def __init__(self, task: Task[..., Any], run_id: str, flow_parameters: dict[str, Any] | None = None,
                 parts: dict[str, str] | None = None) -> None:
        set_field = object.__setattr__
        set_field(self, "task", task)
        set_field(self, "run_id", run_id)
        set_field(self, "flow_parameters", flow_parameters)
        set_field(self, "parts", {} if parts is None else parts)


class CachePolicy:
    """Base class: ``compute_key`` returns a string, or None when the call must not be cached."""

    # Whether the key parts "input:NAME" are fingerprint(value) of the arguments (INPUTS's are): the engine
    # then fingerprints them again after the call to see an argument the call changed in place.
    fingerprints_inputs = False

    def compute_key(self, context: KeyContext, inputs: dict[str, Any]) -> str | None:
        raise NotImplementedError

    def parts(self) -> tuple[CachePolicy, ...]:
        return (self,)

    def __add__(self, other: CachePolicy) -> CachePolicy:
        if not isinstance(other, CachePolicy):
            return NotImplemented
        return _compose((*self.parts(), *other.parts()))

    def __sub__(self, name: str) -> CachePolicy:
        if not isinstance(name, str):
            raise ConfigurationError(
                f"a cache policy minus {name!r}: subtract an argument name, e.g. INPUTS - 'verbose'"
            )
        if not any(isinstance(part, Inputs) for part in self.parts()):
            raise ConfigurationError(
                f"cannot subtract {name!r} from {self!r}: only a policy that includes INPUTS has arguments"
            )
        return _compose(tuple(part - name if isinstance(part, Inputs) else part for part in self.parts()))

    def configure(self, key_storage: Any = None, lock_manager: Any = None, isolation_level: Any = None) -> CachePolicy:
        """This policy with Prefect's storage options, where they map onto nbflow's store.

        ``isolation_level="SERIALIZABLE"``: calls that compute the same key run one at a time, across threads
        and processes using this ``NBFLOW_HOME`` (a lock file per key under ``<home>/locks``); the later ones
        find the first one's result and end ``Cached``. ``lock_manager`` is accepted and not needed (nbflow's
        locks are those files). ``key_storage`` is accepted with a warning and not used: keys and results live
        in ``NBFLOW_HOME``'s store (point ``NBFLOW_HOME`` at a shared directory to share them).
        """
        if key_storage is not None:
            import warnings

            from nbflow.exceptions import NbflowWarning

            warnings.warn(
                f"{self!r}.configure(key_storage={key_storage!r}): nbflow keeps cache keys and results in the store "
                "under NBFLOW_HOME, so key_storage is not used; to share a cache, point NBFLOW_HOME (or "
                "nbflow.configure(home=...)) at a shared directory",
                NbflowWarning, stacklevel=2,
            )
        level = _isolation(isolation_level)
        base = self.policy if isinstance(self, Serializable) else self
        return Serializable(base) if level == "SERIALIZABLE" else base


def _isolation(value: Any) -> str | None:
    if value is None:
        return None
    text = str(getattr(value, "value", value)).upper()
    if text not in ("READ_COMMITTED", "SERIALIZABLE"):
        raise ConfigurationError(
            f"CachePolicy.configure: isolation_level={value!r} is not 'READ_COMMITTED' or 'SERIALIZABLE'"
        )
    return text


def _compose(parts: Iterable[CachePolicy]) -> CachePolicy:
    unique: list[CachePolicy] = []
    for part in parts:
        if isinstance(part, NoCache) or part in unique:
            continue
        unique.append(part)
    if not unique:
        return NONE
    if len(unique) == 1:
        return unique[0]
    return CompoundCachePolicy(tuple(unique))


class Inputs(_Frozen, CachePolicy):
    """Fingerprints of the task's bound arguments (defaults included), minus ``exclude``."""

    _fields = ("exclude",)
    exclude: frozenset[str]

    def __init__(self, exclude: frozenset[str] = frozenset()) -> None:
        object.__setattr__(self, "exclude", frozenset(exclude))

    fingerprints_inputs = True

    def compute_key(self, context: KeyContext, inputs: dict[str, Any]) -> str | None:
        return fingerprint_arguments(
            {name: value for name, value in inputs.items() if name not in self.exclude}, context.parts
        )

    def __sub__(self, name: str) -> CachePolicy:
        if not isinstance(name, str):
            raise ConfigurationError(f"INPUTS - {name!r}: subtract an argument name (a string)")
        return Inputs(self.exclude | {name})

    def __repr__(self) -> str:
        if self.exclude:
            return "INPUTS - " + " - ".join(repr(name) for name in sorted(self.exclude))
        return "INPUTS"


class TaskSource(_Frozen, CachePolicy):
    """The code identity of the task: its normalized source and the notebook code it uses."""

    def compute_key(self, context: KeyContext, inputs: dict[str, Any]) -> str | None:
        digest = code_identity(context.task.fn)
        context.parts["code"] = digest
        return digest

    def __repr__(self) -> str:
        return "TASK_SOURCE"


class RunId(_Frozen, CachePolicy):
    """The id of the flow run (or, outside flows, of the session run): entries live for one run."""

    def compute_key(self, context: KeyContext, inputs: dict[str, Any]) -> str | None:
        context.parts["run_id"] = context.run_id
        return context.run_id

    def __repr__(self) -> str:
        return "RUN_ID"


class FlowParameters(_Frozen, CachePolicy):
    """Fingerprint of the enclosing flow's parameters (empty outside a flow)."""

    def compute_key(self, context: KeyContext, inputs: dict[str, Any]) -> str | None:
        return fingerprint_arguments(context.flow_parameters or {}, context.parts, "flow_parameter:")

    def __repr__(self) -> str:
        return "FLOW_PARAMETERS"


class NoCache(_Frozen, CachePolicy):
    """Never cache: the task always runs (results may still be persisted for the record)."""

    def compute_key(self, context: KeyContext, inputs: dict[str, Any]) -> str | None:
        return None

    def __repr__(self) -> str:
        return "NONE"


class CompoundCachePolicy(_Frozen, CachePolicy):
    """Several policies together; the key covers every part's key."""

    _fields = ("policies",)
    policies: tuple[CachePolicy, ...]

    def __init__(self, policies: tuple[CachePolicy, ...]) -> None:
        object.__setattr__(self, "policies", tuple(policies))

    def parts(self) -> tuple[CachePolicy, ...]:
        return self.policies

    @property
    def fingerprints_inputs(self) -> bool:  # type: ignore[override]
        return any(policy.fingerprints_inputs for policy in self.policies)

    def compute_key(self, context: KeyContext, inputs: dict[str, Any]) -> str | None:
        keys = [policy.compute_key(context, inputs) for policy in self.policies]
        present = [key for key in keys if key is not None]
        if not present:
            return None
        return "|".join(present)

    def __repr__(self) -> str:
        return " + ".join(repr(policy) for policy in self.policies)


class CacheKeyFnPolicy(_Frozen, CachePolicy):
    """A user function ``cache_key_fn(context, parameters) -> str | None`` decides the key."""

    _fields = ("fn",)
    fn: Callable[[KeyContext, dict[str, Any]], str | None]

    def __init__(self, fn: Callable[[KeyContext, dict[str, Any]], str | None] | None = None, *,
                 cache_key_fn: Callable[[KeyContext, dict[str, Any]], str | None] | None = None) -> None:
        # cache_key_fn=: the keyword Prefect's CacheKeyFnPolicy takes.
        function = fn if fn is not None else cache_key_fn
        if not callable(function) or (fn is not None and cache_key_fn is not None):
            raise ConfigurationError(
                "CacheKeyFnPolicy needs one callable(context, parameters) -> str | None, e.g. "
                "CacheKeyFnPolicy(cache_key_fn=my_key)"
            )
        object.__setattr__(self, "fn", function)

    def compute_key(self, context: KeyContext, inputs: dict[str, Any]) -> str | None:
        key = self.fn(context, inputs)
        if isinstance(key, str):
            context.parts["cache_key_fn"] = key
        if key is not None and not isinstance(key, str):
            raise ConfigurationError(
                f"cache_key_fn {getattr(self.fn, '__name__', self.fn)!r} returned {type(key).__name__}; "
                "it must return a string or None"
            )
        return key


class StorageKeyPolicy(_Frozen, CachePolicy):
    """The key of a task with ``result_storage_key``: the template formatted for the call. As with
    ``cache_key_fn``, the key is used as given (any call, of any task, rendering it shares the entry),
    and nothing else — not the code — is part of it."""

    _fields = ("template",)
    template: str

    def __init__(self, template: str) -> None:
        object.__setattr__(self, "template", template)

    def compute_key(self, context: KeyContext, inputs: dict[str, Any]) -> str | None:
        from nbflow.runtime import template_values

        try:
            key = self.template.format(**template_values(inputs))
        except (KeyError, IndexError, AttributeError, ValueError) as error:
            raise ConfigurationError(
                f"result_storage_key {self.template!r} could not be formatted ({type(error).__name__}: {error}); "
                "it may use {parameters[name]}, {task_run.name}, {task_run.task_name}, {flow_run.name}, "
                "{flow_run.flow_name} and {flow_run.id}"
            ) from None
        context.parts["result_storage_key"] = key
        return key

    def __repr__(self) -> str:
        return f"StorageKeyPolicy({self.template!r})"


class Serializable(_Frozen, CachePolicy):
    """``policy.configure(isolation_level="SERIALIZABLE")``: the same keys as ``policy``; calls computing
    one key run one at a time (the engine holds a lock on the key around the call)."""

    _fields = ("policy",)
    policy: CachePolicy

    def __init__(self, policy: CachePolicy) -> None:
        object.__setattr__(self, "policy", policy)

    @property
    def fingerprints_inputs(self) -> bool:  # type: ignore[override]
        return self.policy.fingerprints_inputs

    def compute_key(self, context: KeyContext, inputs: dict[str, Any]) -> str | None:
        return self.policy.compute_key(context, inputs)

    def __sub__(self, name: str) -> CachePolicy:
        return Serializable(self.policy - name)

    def __repr__(self) -> str:
        return f"({self.policy!r}).configure(isolation_level='SERIALIZABLE')"


INPUTS: CachePolicy = Inputs()
TASK_SOURCE: CachePolicy = TaskSource()
RUN_ID: CachePolicy = RunId()
FLOW_PARAMETERS: CachePolicy = FlowParameters()
NONE: CachePolicy = NoCache()
DEFAULT: CachePolicy = INPUTS + TASK_SOURCE
