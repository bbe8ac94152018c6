"""Cell tasks: a ``%%task`` cell run by the task engine, like a call of an ``@nbflow.task`` function.

A cell task is a :class:`~nbflow.Task` whose function executes the cell's code in the user namespace
while :class:`~nbflow.ipython.capture.OutputTee` records what it shows, and returns a
:class:`CellResult`: the values of the cell's outputs, the recorded outputs and how long it took. Its
cache key is the cell's code identity (normalized AST + the notebook code it calls, transitively)
plus the fingerprints of its inputs, each recorded as a key part for ``%nbflow why``.

On a cache hit the cell body does not run: the ``def`` / ``class`` / ``import`` statements of the cell
run again (code is restored by running its definition, never unpickled), the other outputs are
bound from the stored values, and the recorded outputs are shown again, followed by one line saying
how much time the cache saved.

A value that cannot be stored (an open file, a connection, a generator) is still bound — the cell
ran — but the cell is then not cached, and a warning names the variable. The exception is the target
of a ``with ... as`` statement (typically a file the block closed): it is left out of the stored values
silently, and a hit does not bind it.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import linecache
import operator
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nbflow.cache_policies import ArgumentError, CachePolicy, KeyContext, fingerprint_arguments
from nbflow.engine.conditions import Conditional, restore_in_place
from nbflow.engine.file_reads import FileRead
from nbflow.engine.task_engine import _PLAIN, TaskRunEngine, user_traceback
from nbflow.exceptions import NbflowWarning
from nbflow.ipython import settings_effects
from nbflow.ipython.analysis import analyze, entangled_definition, inert, normalized_digest
from nbflow.ipython.capture import Output, OutputTee, publish_quietly, replay
from nbflow.ipython.dynamic_reads import dynamic_reads
from nbflow.runs import format_duration, time_saved
from nbflow.states import State, StateType
from nbflow.tasks import Task

if TYPE_CHECKING:
    from nbflow.ipython.session import Session

__all__ = ["CellOptions", "CellOutcome", "CellResult", "CellSpec", "prepare_cell", "run_cell_task"]


@dataclass
class CellOptions:
    """The options of one ``%%task`` line."""

    name: str | None = None
    retries: int = 0
    retry_delay: float = 0.0
    timeout: float | None = None
    no_cache: bool = False
    refresh: bool = False
    inputs: list[str] | None = None
    outputs: list[str] | None = None
    tags: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass
class CellResult:
    """What a cell task stores: output values, recorded outputs, and the seconds the body took."""

    values: dict[str, Any]
    outputs: list[Output]
    duration: float
    # The value of the last expression (shown as Out[n]), when it could be stored: a hit sets `_` and
    # Out[n] to it again. One that cannot be stored is dropped quietly; its display is replayed anyway.
    last_value: Any = None
    # Inputs the cell changed in place (``df["y"] = ...``, ``a.sort()``): their values after the cell are
    # among ``values``, and a hit changes the objects in the namespace to match rather than rebinding.
    mutated: list[str] = field(default_factory=list)
    # Process-wide settings the cell changed (display options, rcParams, the working directory): set
    # again by a hit (see nbflow.ipython.settings_effects).
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Outputs that are inputs under another name (`alias = rows`): a hit binds them to the input itself.
    aliases: dict[str, str] = field(default_factory=dict)
    # Outputs that are part of an input (`row = x2[0]`, a view; `first = rows[0]`): a stored copy would not
    # be, and a later change through one name would not show through the other, so the cell is not cached.
    shared: dict[str, str] = field(default_factory=dict)
    # Names the cell deleted (`del tmp`): a hit deletes them too.
    deleted: list[str] = field(default_factory=list)


@dataclass
class CellOutcome:
    """How one run of a cell task went, for the status line auto mode shows and ``%nbflow status``."""

    state: str  # "cached", "computed" (and stored), "quick" (ran, not worth storing), "uncached", "failed"
    reason: str = ""  # why a cell that ran was not stored
    duration: float = 0.0  # seconds the run (or the restore) took
    saved: float = 0.0  # seconds a hit saved
    task_run: Any = None
    # Names the cell bound, rebound, changed in place or deleted: what later cells may have read.
    changed: list[str] = field(default_factory=list)
    files: list[Any] = field(default_factory=list)  # the FileReads it depends on (absolute paths)


@dataclass
class CellSpec:
    """A parsed ``%%task`` cell, ready to run (kept per name so ``%nbflow retry`` can run it again)."""

    source: str  # the cell body as typed, without the %%task line
    code: str  # the body with IPython syntax turned into Python
    tree: ast.Module
    options: CellOptions
    name: str
    digest: str
    inputs: list[str]
    outputs: list[str]
    definitions: list[str]
    definition_nodes: list[ast.stmt]
    with_targets: list[str] = field(default_factory=list)
    entangled: str = ""  # a definition that uses a value the cell computes ("capital uses agent")
    # The names an inert cell reads or binds (see nbflow.ipython.analysis.inert); None for any other cell.
    inert_names: tuple[str, ...] | None = None


def _is_code(value: Any) -> bool:
    """Functions, classes, modules and tasks count by code identity, not by value fingerprint."""
    return (
        inspect.ismodule(value) or inspect.isclass(value) or inspect.isroutine(value)
        or isinstance(value, Task) or hasattr(value, "__wrapped__")
    )


# The first of IPython's steps that turn a cell into Python (``shell.transform_cell``), by cell text: the static
# transforms, which depend on the text alone (tokenizing it is most of the cost), kept with the transforms they
# were made by. The later steps depend on the namespace and on the user's settings: they run every time.
_STATIC: dict[str, tuple[tuple[Any, ...], str]] = {}
_MAX_STATIC = 64


def python_code(shell: Any, source: str) -> str:
    """``shell.transform_cell(source)``: the cell as Python. A cell run again (a hit) is not tokenized again:
    IPython's static transforms are kept per text while they are IPython's own (tests compare the two ways on
    many cells)."""
    from IPython.core.inputtransformer2 import TransformerManager
    from IPython.core.interactiveshell import InteractiveShell

    manager: Any = getattr(shell, "input_transformer_manager", None)
    if getattr(type(shell), "transform_cell", None) is not InteractiveShell.transform_cell or (
            getattr(type(manager), "transform_cell", None) is not TransformerManager.transform_cell):
        return str(shell.transform_cell(source))
    transforms = (manager, *manager.cleanup_transforms, *manager.line_transforms, *manager.token_transformers)
    known = _STATIC.get(source)
    if known is not None and len(known[0]) == len(transforms) and all(map(operator.is_, known[0], transforms)):
        cell = known[1]
    else:
        cell = manager.transform_cell(source)
        if all(getattr(t, "__module__", "").startswith("IPython.") for t in transforms[1:]):  # pure functions
            if len(_STATIC) >= _MAX_STATIC:
                del _STATIC[next(iter(_STATIC))]
            _STATIC[source] = (transforms, cell)
    # The rest of InteractiveShell.transform_cell, as it is written there.
    if len(cell.splitlines()) == 1:
        with shell.builtin_trap:
            cell = shell.prefilter_manager.prefilter_lines(cell) + "\n"
    lines = cell.splitlines(keepends=True)
    for transform in shell.input_transformers_post:
        lines = transform(lines)
    return "".join(lines)


@dataclass(frozen=True)
class _Parsed:
    """What prepare_cell makes of a cell's Python code alone (the options aside): the same for the same code."""

    tree: ast.Module
    analysis: Any  # nbflow.ipython.analysis.CellAnalysis: its lists are copied into each spec, never shared
    digest: str
    entangled: str
    inert_names: tuple[str, ...] | None


# The code of the latest cells parsed here (oldest first): running a cell again, a hit, parses nothing.
_PARSED: dict[str, _Parsed] = {}
_MAX_PARSED = 64


def _parse(code: str) -> _Parsed:
    parsed = _PARSED.get(code)
    if parsed is not None:
        return parsed
    tree = ast.parse(code)
    parsed = _analyze(tree)
    if len(_PARSED) >= _MAX_PARSED:
        del _PARSED[next(iter(_PARSED))]
    _PARSED[code] = parsed
    return parsed


def _analyze(tree: ast.Module) -> _Parsed:
    analysis = analyze(tree)
    return _Parsed(
        tree=tree, analysis=analysis, digest=normalized_digest(tree),
        entangled=entangled_definition(tree, analysis.definition_nodes),
        inert_names=tuple(dict.fromkeys([*analysis.inputs, *analysis.outputs])) if inert(tree) else None,
    )


def prepare_cell(shell: Any, source: str, options: CellOptions, code: str | None = None,
                 tree: ast.Module | None = None) -> CellSpec:
    """Parse and analyze a cell body. Raises SyntaxError for a body that is not Python. ``code`` and
    ``tree``: the body already turned into Python and parsed (by IPython), when known. (A tree given is
    analyzed each time: IPython's AST transformers may have changed it.)"""
    if code is None:
        code = python_code(shell, source)
    parsed = _parse(code) if tree is None else _analyze(tree)
    analysis = parsed.analysis
    outputs = options.outputs if options.outputs is not None else analysis.outputs
    digest = parsed.digest
    # Stable across re-runs and restarts; an edit of the body keeps the name, so `%nbflow why` can
    # compare with the entry the edit replaced.
    name = options.name or (outputs[0] if outputs else f"cell-{digest[:8]}")
    return CellSpec(
        source=source, code=code, tree=parsed.tree, options=options, name=name, digest=digest,
        inputs=list(options.inputs if options.inputs is not None else analysis.inputs),
        outputs=list(outputs),
        definitions=[n for n in analysis.definitions if n in outputs],
        definition_nodes=list(analysis.definition_nodes), with_targets=list(analysis.with_targets),
        entangled=parsed.entangled, inert_names=parsed.inert_names,
    )


# The built-in scalar types: their operators run no Python code, and dropping one runs no finalizer.
_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})


def runs_no_code(shell: Any, spec: CellSpec) -> bool:
    """Whether running the cell now runs nothing but its own statements: an inert cell (see
    :func:`~nbflow.ipython.analysis.inert`) whose names hold built-in scalars, or nothing, in the namespace
    (no operator of a user class runs, and no value a rebinding drops has a ``__del__``). Such a run reads
    no file, draws no random number, changes no setting and binds only the names the analysis lists, so
    the run skips looking for those (the random generators' states, the namespace, the settings)."""
    names = spec.inert_names
    if names is None:
        return False
    namespace = shell.user_ns
    for name in names:
        value = namespace.get(name, _ABSENT)
        if value is _ABSENT:  # read from the builtins (which code may have added to), or not bound yet
            value = builtins.__dict__.get(name)
        if type(value) not in _SCALARS:
            return False
    return True


_ABSENT: Any = object()
# The builtins as they were when the extension loaded (Python's and IPython's own): a name found there is no
# input unless the user has put it there or rebound it since.
_ORIGINAL_BUILTINS = dict(builtins.__dict__)


def current_inputs(shell: Any, spec: CellSpec) -> dict[str, Any]:
    """The cell's inputs as they are now in the user namespace: builtins and IPython's own names
    (``get_ipython``, ``exit``, ...) are left out unless the user rebound them. IPython's history (``_``,
    ``Out``, ``_3``, ``In``) is an input like any value: what the cell reads there is what it computes from."""
    namespace = shell.user_ns
    hidden = getattr(shell, "user_ns_hidden", {})
    history = set(history_reads(spec))
    found: dict[str, Any] = {}
    for name in spec.inputs:
        if name not in namespace:
            # Found in the builtins: an input if the user put it there (`builtins.LIMIT = 5`) or rebound one.
            value = builtins.__dict__.get(name, _ABSENT)
            if value is not _ABSENT and _ORIGINAL_BUILTINS.get(name, _ABSENT) is not value:
                found[name] = value
            continue
        value = namespace[name]
        if name in hidden and hidden[name] is value and name not in history:
            continue
        found[name] = value
    return found


class CellPolicy(CachePolicy):
    """The key of a cell task: its code identity plus the fingerprints of its input values."""

    fingerprints_inputs = True

    def __init__(self, shell: Any, spec: CellSpec, quiet: bool = False) -> None:
        self.shell = shell
        self.spec = spec
        self.quiet = quiet  # auto mode: why the cell runs uncached goes in its status line, not a warning
        self.reason = ""

    def _uncached(self, reason: str, hint: str) -> str | None:
        """No key (None): the cell runs uncached. Why goes in ``reason`` (auto mode's status line), else a
        warning."""
        self.reason = reason
        if not self.quiet:
            warnings.warn(f"cell task {self.spec.name!r} runs uncached: {reason}. {hint}", NbflowWarning, stacklevel=3)
        return None

    def compute_key(self, context: KeyContext, inputs: dict[str, Any]) -> str | None:
        from nbflow.hashing import code_identity, source_identity
        from nbflow.hashing.code import module_version

        parts = context.parts
        parts["cell"] = self.spec.digest
        parts["settings"] = settings_effects.display_digest()
        code = source_identity(self.spec.code, self.shell.user_ns)
        parts["code"] = code
        values: dict[str, Any] = {}
        for name, value in inputs.items():
            if value is os.environ:  # the variables the cell reads by name are in its code identity
                continue
            if not _is_code(value):
                values[name] = value
            elif inspect.ismodule(value):
                parts["module:" + name] = f"{value.__name__} {module_version(value.__name__)}".strip()
            else:
                try:  # for `why` only: the whole code identity above already covers it
                    parts["code:" + name] = code_identity(value)
                except Exception:
                    pass
        if self.spec.entangled:
            return self._uncached(f"its definition {self.spec.entangled}, a value the cell computes: a cache hit, "
                                  "which runs the definitions before it restores the values, could not run it",
                                  "Move the definition to a cell of its own to cache it.")
        by_name, reads_cwd = dynamic_reads(self.spec.tree, inputs, self.spec.digest)
        if by_name:
            return self._uncached(f"it reads variables by name at run time ({by_name}): which ones is known only "
                                  "when it runs", "Give them with --inputs to cache it.")
        if reads_cwd:  # it computes from the working directory (os.getcwd(), Path.resolve()...)
            parts["cwd"] = os.getcwd()
        try:
            inputs_digest = fingerprint_arguments(values, parts)
        except ArgumentError as error:
            return self._uncached(f"input {error.argument!r} cannot be fingerprinted ({error.__cause__})",
                                  "Leave it out of the key with --inputs, or register a fingerprint with "
                                  "nbflow.hashing.register(type, fn).")
        return f"{code}|{inputs_digest}|{parts['settings']}" + (f"|{parts['cwd']}" if reads_cwd else "")


class _NullSink:
    def write(self, data: bytes) -> int:
        return len(data)


def unstorable(values: dict[str, Any]) -> dict[str, str]:
    """The values that cannot be pickled, with the reason. Large buffers are skipped out-of-band, so
    this check costs about as much as pickling the small parts of the values."""
    import pickle

    bad: dict[str, str] = {}
    for name, value in values.items():
        try:
            pickle.Pickler(_NullSink(), protocol=5, buffer_callback=lambda buffer: None).dump(value)
        except Exception as error:
            bad[name] = f"{type(error).__name__}: {error}"
    return bad


class _CellEngine(TaskRunEngine):
    """The task engine with cell-specific steps: graph edges by variable name, a stored payload that fails
    to load is a miss, inputs changed in place are outputs, and a value that cannot be stored is named in
    the warning."""

    mutated_inputs_are_outputs = True

    def __init__(self, task: Task[..., Any], inputs: dict[str, Any], session: Session, spec: CellSpec,
                 shell: Any, min_seconds: float = 0.0, inert: bool = False) -> None:
        super().__init__(task, (), inputs)
        self.session = session
        self.spec = spec
        self.shell = shell
        self.defined = False  # the cell's def / class / import statements ran already (see probe)
        self.min_seconds = min_seconds  # a run quicker than this is not stored (auto mode's threshold)
        self.files: list[FileRead] = []  # the files the result depends on (read, or written by it)
        self.quick = False
        self.quiet = isinstance(task.cache_policy, CellPolicy) and task.cache_policy.quiet
        self.inert = inert  # the run runs no code but the cell's own statements (see runs_no_code)

    def _appended(self) -> str:
        """The first file the cell opened for appending, as it named it ("" when none)."""
        observation = self.observation
        appends = observation.recorder.appends if observation is not None else None
        return next(iter(appends.values()), "") if appends else ""

    def still_valid(self, value: Conditional) -> Conditional | None:
        valid = super().still_valid(value)
        if valid is not None:
            self.files = list(valid.files)
        return valid

    def conditioned(self, state: State) -> Any:
        value = super().conditioned(state)
        if type(value) is Conditional:
            self.files = list(value.files)
        return value

    def begin(self) -> None:
        super().begin()
        self.task_run.upstream = self.session.tracker.cell_upstream(self.parameters, self.task_run.upstream)

    def probe(self) -> State | None:
        if self.key is not None and self.spec.definitions and not self.task.refresh_cache and self._stored():
            # Before loading: stored values may be instances of a class this very cell defines. Only when
            # there is an entry: on a miss the cell runs them itself, and running a decorated definition
            # twice would register it twice (`@app.route`, `@agent.tool`).
            try:
                _define(self.shell, self.spec)
            except Exception as error:
                if not self.quiet:
                    warnings.warn(f"cell task {self.spec.name!r}: its definitions could not run before its cache "
                                  f"entry was loaded ({type(error).__name__}: {error}); running the cell",
                                  NbflowWarning, stacklevel=2)
                return None
            self.defined = True
        try:
            return super().probe()
        except Exception as error:  # e.g. a stored value of a class this kernel has not defined yet
            warnings.warn(f"cell task {self.spec.name!r}: its cache entry could not be loaded ({error}); "
                          "running the cell", NbflowWarning, stacklevel=2)
            return None

    def _stored(self) -> bool:
        """Whether the store has an entry under the key (its metadata only: no payload is read)."""
        from nbflow.engine.runtime import get_store

        assert self.key is not None
        try:
            return get_store().probe(self.key) is not None
        except Exception:  # the load that follows says what is wrong with the store
            return True

    def may_draw(self) -> bool:
        # A cell is code at the top level: anything in it may draw random numbers, unless it runs no code.
        return not self.inert

    def mutated_arguments(self) -> list[str]:
        history = set(history_reads(self.spec))
        return [name for name in super().mutated_arguments() if name not in history]

    def keep_mutated(self, names: list[str], state: State) -> bool:
        result: CellResult = state.result()
        namespace = self.shell.user_ns
        for name in names:
            if name in namespace and namespace[name] is self.parameters[name]:
                result.values[name] = namespace[name]
                result.mutated.append(name)
        return True

    def persist(self, state: State) -> State:
        result: CellResult = state.result()
        reason = ""
        if self.key is not None and result.shared:
            # Quietly: running such a cell again is what keeps it right (a slice or an element is cheap).
            reason = ", ".join(f"{name!r} is part of {owner!r}" for name, owner in result.shared.items())
        elif self.key is not None and _shows_widget(result.outputs):
            reason = "it shows a widget, which a replay could not bring back to life"
        elif self.key is not None and self.quiet and self._appended():
            # Auto mode caches cells nobody marked: one that adds to a file must add to it on every run.
            reason = f"it appends to file {self._appended()!r}, which a cache hit would not do"
        elif self.key is not None and result.duration < self.min_seconds:
            self.quick = True
            reason = (f"it ran in {format_duration(result.duration)}, quicker than a restore "
                      f"(auto mode stores cells that take {format_duration(self.min_seconds)} or more)")
            self.conditioned(state)  # the files it read, for stale marks
        if reason:
            state.persisted = self.task_run.persisted = False
            state.message = f"not cached: {reason}"
            return state
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state = super().persist(state)
        result = state.result()
        bad = unstorable(result.values) if self.key is not None and not state.persisted else {}
        if bad:
            names = ", ".join(repr(name) for name in bad)
            reasons = "; ".join(f"{name}: {reason}" for name, reason in bad.items())
            state.message = f"not cached: {names} cannot be stored"
            if self.quiet:
                return state
            warnings.warn(
                f"cell task {self.spec.name!r}: variable(s) {names} cannot be stored ({reasons}). The cell ran "
                "and bound them, but it is not cached: it runs again next time.",
                NbflowWarning,
                stacklevel=2,
            )
        else:
            for warning in caught:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return state


_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _shows_widget(outputs: list[Output]) -> bool:
    return any(output[0] in ("display", "execute_result") and _WIDGET_VIEW in output[1] for output in outputs)


_SCAN_LIMIT = 10_000  # elements of an input container looked through for an output


def _aliases(values: dict[str, Any], inputs: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(outputs that are inputs, outputs that are part of an input): by identity, one level deep (items of
    lists, tuples, sets and dicts, attributes of objects), and NumPy arrays sharing an input array's memory."""
    candidates = {id(value): name for name, value in inputs.items()
                  if type(value) not in _PLAIN and not _is_code(value)}
    if not candidates:
        return {}, {}
    aliases: dict[str, str] = {}
    shared: dict[str, str] = {}
    for name, value in values.items():
        if type(value) in _PLAIN or _is_code(value):
            continue
        owner = candidates.get(id(value))
        if owner is not None:
            aliases[name] = owner
            continue
        for owner, container in inputs.items():
            if id(container) in candidates and _contains(container, value):
                shared[name] = owner
                break
    return aliases, shared


def _contains(container: Any, value: Any) -> bool:
    kind = type(container)
    items: Any
    if kind.__name__ == "ndarray" and type(value).__name__ == "ndarray":
        numpy = __import__("numpy")
        return bool(numpy.may_share_memory(container, value)) and bool(numpy.shares_memory(container, value))
    if isinstance(container, dict):
        items = container.values()
    elif isinstance(container, (list, tuple, set, frozenset)):
        items = container
    else:
        attributes = getattr(container, "__dict__", None)
        if not isinstance(attributes, dict):
            return False
        items = attributes.values()
    if len(items) > _SCAN_LIMIT:
        return False
    return any(item is value for item in items)


def cell_number(shell: Any) -> int:
    """The number of the cell running now (``In[n]``): the execution result's, which IPython sets before
    the cell runs (some IPython releases count ``shell.execution_count`` up before running it)."""
    result = getattr(getattr(shell, "displayhook", None), "exec_result", None)
    number = getattr(result, "execution_count", None)
    return number if isinstance(number, int) else shell.execution_count


def _cell_filename(shell: Any, spec: CellSpec) -> str:
    """The filename the cell's code is compiled under, its source put in ``linecache`` there (so that
    tracebacks show its lines and functions defined in it have a code identity).

    A Jupyter kernel names cells like files (``/tmp/ipykernel_7/123.py``) that do not exist until its
    debugger writes them. IPython then formats a frame of such a "file" by a shortcut that takes the
    lines of a comprehension's frame from the cell's top, so a failure inside ``[... for x in xs]`` shows
    the cell's first lines. Under a name that does not end in ``.py`` (the same cell label, ``Cell
    In[n]``) IPython reads the lines the usual way and shows the right one. A file the debugger wrote
    keeps its name, so breakpoints in it still hold."""
    number = cell_number(shell)
    filename: str = shell.compile.cache(spec.code, number, raw_code=spec.source)
    if not filename.endswith(".py") or os.path.exists(filename):
        return filename
    alias = filename[:-3] + ".ipy"
    entry = linecache.cache.get(filename)
    if entry is not None:
        linecache.cache[alias] = (*entry[:3], alias)
    names = getattr(shell.compile, "_filename_map", None)
    if isinstance(names, dict):
        names[alias] = number  # labelled "Cell In[n]" like the cell itself
    return alias


def _compile_cell(shell: Any, spec: CellSpec) -> tuple[Any, Any, str]:
    """(body code, last-expression code or None, filename): see :func:`_cell_filename`."""
    filename = _cell_filename(shell, spec)
    flags = shell.compile.flags
    statements = list(spec.tree.body)
    last = None
    if statements and isinstance(statements[-1], ast.Expr):
        from IPython.core.displayhook import DisplayHook

        expression = statements.pop()
        assert isinstance(expression, ast.Expr)
        if not DisplayHook.semicolon_at_end_of_expression(spec.source):
            last = compile(ast.Expression(expression.value), filename, "eval", flags=flags, dont_inherit=True)
        else:
            statements.append(expression)
    body = compile(ast.Module(body=statements, type_ignores=[]), filename, "exec", flags=flags, dont_inherit=True)
    return body, last, filename


# IPython's history: inputs by their values now (`Out[3]` is whatever cell 3 showed this time). They
# grow as cells run, which is no change a cell made.
_HISTORY = frozenset({"In", "Out", "_", "__", "___", "_i", "_ii", "_iii", "_ih", "_oh", "_dh", "_exit_code"})


def history_reads(spec: CellSpec) -> list[str]:
    """The names of IPython's input/output history the cell reads (``Out``, ``_``, ``_3``, ``_i2``...)."""
    found = []
    for name in spec.inputs:
        rest = name[2:] if name.startswith("_i") else name[1:] if name.startswith("_") else ""
        if name in _HISTORY or (rest.isdigit() and rest == str(int(rest))):
            found.append(name)
    return found


def _make_task(shell: Any, spec: CellSpec, execute: Any, quiet: bool = False) -> Task[..., Any]:
    options = spec.options
    task: Task[..., Any] = Task(
        execute, name=spec.name, retries=options.retries, retry_delay_seconds=options.retry_delay,
        timeout_seconds=options.timeout, cache_policy=CellPolicy(shell, spec, quiet), refresh_cache=options.refresh,
        persist_result=not options.no_cache, tags=("cell", *options.tags), files=options.files,
    )
    task.task_key = f"cell:{spec.name}"
    return task


def _is_history(name: str) -> bool:
    """IPython's own names for its history (``_``, ``_3``, ``_i3``, ``_ii``...): it sets them around every cell."""
    if name in _HISTORY:
        return True
    rest = name[2:] if name.startswith("_i") else name[1:] if name.startswith("_") else ""
    return rest.isdigit()


def _namespace_changes(namespace: dict[str, Any], before: dict[str, int], known: set[str]) -> tuple[
        list[str], list[str]]:
    """(names bound or rebound, names deleted) since ``before`` (name -> id) that the analysis of the cell
    did not list: bound through ``exec``, ``globals()[...]``, a function's ``global`` statement, a ``del``
    under an ``if``. Found by identity, so an object rebound to itself counts as unchanged."""
    bound = [name for name, value in namespace.items()
             if before.get(name) != id(value) and name not in known and not _is_history(name)]
    deleted = [name for name in before if name not in namespace and not _is_history(name)]
    return bound, deleted


def run_cell_task(shell: Any, spec: CellSpec, session: Session, *, auto: bool = False,
                  min_seconds: float = 0.0) -> CellOutcome:
    """Run (or restore) one cell task; raise the user's error when it fails.

    ``auto``: the cell runs in auto mode — why it is not cached is said in the outcome (auto mode shows it
    in the cell's status line) rather than in a warning, and a run quicker than ``min_seconds`` is not
    stored. Without it, a hit shows one line saying how much time the cache saved.
    """
    value_names = [name for name in spec.outputs if name not in spec.definitions]
    known = set(spec.outputs)
    # Before the run (the names' values now): a cell that runs no code binds only what the analysis lists and
    # changes no setting, so neither the namespace nor the settings are looked through (see runs_no_code).
    inert = runs_no_code(shell, spec)

    def execute(**_inputs: Any) -> CellResult:
        # The inputs are already in the user namespace; they are parameters so that the run record
        # lists them and a manual retry can name them.
        # Compiled only when the cell runs: a hit never runs the body, and would only add the cell's
        # source to linecache once more, for good (memory that grew with every hit).
        body, last, _ = _compile_cell(shell, spec)
        started = time.perf_counter()
        result = None
        namespace = shell.user_ns
        ids = ({name: id(value) for name, value in namespace.items()}
               if spec.options.outputs is None and not inert else None)
        before = settings_effects.snapshot() if not inert else None
        with OutputTee(shell) as tee:
            exec(body, shell.user_global_ns, namespace)
            if last is not None:
                result = eval(last, shell.user_global_ns, namespace)
                if result is not None:
                    shell.displayhook(result)
        if result is not None and unstorable({"_": result}):
            result = None
        # With --outputs the user said what the cell binds; else what the analysis missed counts too.
        extra, deleted = _namespace_changes(namespace, ids, known) if ids is not None else ([], [])
        values = {name: namespace[name] for name in [*value_names, *extra] if name in namespace}
        # `with open(...) as f` leaves a closed file behind: leave such a target out rather than make
        # the whole cell uncacheable (a hit does not bind it).
        for name in unstorable({n: values[n] for n in spec.with_targets if n in values}):
            del values[name]
        aliases, shared = _aliases(values, _inputs)
        for name in aliases:
            del values[name]
        return CellResult(values=values, outputs=tee.outputs, duration=time.perf_counter() - started,
                          last_value=result,
                          settings=settings_effects.changed_settings(before) if before is not None else {},
                          aliases=aliases, shared=shared, deleted=deleted)

    inputs = current_inputs(shell, spec)
    execute.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in inputs]
    )
    task = _make_task(shell, spec, execute, quiet=auto)
    engine = _CellEngine(task, inputs, session, spec, shell, min_seconds=min_seconds, inert=inert)
    session.remember_cell(spec)
    started = time.perf_counter()
    state = engine.run_to_state()
    task_run = engine.task_run
    files = [read._replace(path=os.path.abspath(read.path)) for read in engine.files]
    if state.type is StateType.COMPLETED and state.name == "Cached":
        cached: CellResult = state.result()
        _restore(shell, spec, cached, engine.defined)
        session.tracker.remember_outputs(_bound(shell, spec), task_run.id)
        replay(shell, cached.outputs, cached.last_value)
        elapsed = time.perf_counter() - started
        saved = time_saved(cached.duration, elapsed)
        session.note_saved(task_run.id, saved)  # what `%nbflow status` adds up: the number this line shows
        if not auto:
            _notice(shell, f"[nbflow] {spec.name}: restored from the cache in {format_duration(elapsed)} "
                           f"(saved {format_duration(saved)})")
        return CellOutcome("cached", duration=elapsed, saved=saved, task_run=task_run, files=files,
                           changed=_changed(spec, cached))
    if state.is_completed():
        session.tracker.remember_outputs(_bound(shell, spec), task_run.id)
        computed: CellResult = state.result()
        elapsed = time.perf_counter() - started
        changed = _changed(spec, computed)
        # What the notebook's own code took (the run took `elapsed` with nbflow's share).
        duration = computed.duration if isinstance(computed, CellResult) else elapsed
        if state.persisted:
            return CellOutcome("computed", duration=duration, task_run=task_run, files=files, changed=changed)
        reason = _reason(state.message or "", task.cache_policy, spec)
        return CellOutcome("quick" if engine.quick else "uncached", reason=reason, duration=duration,
                           task_run=task_run, files=files, changed=changed)
    error = state.result(raise_on_failure=False)
    if isinstance(error, BaseException):
        _show_user_traceback(shell, error)
        raise error
    raise RuntimeError(f"cell task {spec.name!r} ended {state.name}")  # pragma: no cover - no such state


def _changed(spec: CellSpec, result: CellResult) -> list[str]:
    names = dict.fromkeys([*spec.outputs, *result.values, *result.aliases, *result.mutated, *result.deleted])
    return list(names)


def _reason(message: str, policy: Any, spec: CellSpec) -> str:
    """Why a cell that completed was not stored, in words for its status line."""
    for prefix in ("not cached: ", "not persisted: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    if getattr(policy, "reason", ""):
        return str(policy.reason)
    if spec.options.no_cache:
        return "--no-cache"
    return message or "its cache key could not be computed"


def _bound(shell: Any, spec: CellSpec) -> dict[str, Any]:
    namespace = shell.user_ns
    return {name: namespace[name] for name in spec.outputs if name in namespace}


def _define(shell: Any, spec: CellSpec) -> None:
    """Run the cell's def / class / import (and ``name = lambda``) statements: code is restored by running
    its definition, never unpickled."""
    filename = _cell_filename(shell, spec)
    module = ast.Module(body=list(spec.definition_nodes), type_ignores=[])
    code = compile(module, filename, "exec", flags=shell.compile.flags, dont_inherit=True)
    exec(code, shell.user_global_ns, shell.user_ns)


def _restore(shell: Any, spec: CellSpec, cached: CellResult, defined: bool = False) -> None:
    """Set the settings the cell changed, then bind its outputs again: definitions by running their
    statements (unless that happened before the entry was loaded), values from the store."""
    settings = getattr(cached, "settings", None)
    if settings:
        settings_effects.replay(settings)
    if spec.definitions and not defined:
        _define(shell, spec)
    namespace = shell.user_ns
    mutated = getattr(cached, "mutated", ())
    for name, value in cached.values.items():
        if name in mutated and name in namespace and restore_in_place(namespace[name], value):
            continue  # other names bound to the same object see the change too, as after the cell
        namespace[name] = value
    for name, source in getattr(cached, "aliases", {}).items():
        if source in namespace:
            namespace[name] = namespace[source]
    for name in getattr(cached, "deleted", ()):
        namespace.pop(name, None)



def _notice(shell: Any, text: str) -> None:
    # A display message of its own (not stdout text), so it never merges with replayed stream output
    # and tools can tell it apart by its metadata. Published quietly: a kernel's publisher would flush both
    # (empty) streams first, each flush a wait for its I/O thread.
    publish_quietly(shell, {"text/plain": text}, {"nbflow": {"cache_notice": True}})




def _show_user_traceback(shell: Any, error: BaseException) -> None:
    """Make IPython show the traceback from the cell's code down, without nbflow's frames."""
    if isinstance(error, KeyboardInterrupt):
        return
    tb = error.__traceback__
    import os

    from nbflow.engine import task_engine

    nbflow_dir = os.path.dirname(os.path.dirname(os.path.abspath(task_engine.__file__)))
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(nbflow_dir):
        tb = tb.tb_next
    try:
        stb = shell.InteractiveTB.structured_traceback(type(error), error, tb)
    except Exception:
        text = user_traceback(error)
        stb = text.splitlines()
    try:
        # IPython renders an exception through its _render_traceback_ when it has one.
        error._render_traceback_ = lambda: stb  # type: ignore[attr-defined]
    except Exception:
        pass
