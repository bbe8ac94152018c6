"""Auto mode: every code cell runs as a cell task, with no edit to the notebook.

``%nbflow auto`` (or ``nbflow.configure(auto=True)``, ``NBFLOW_AUTO=1`` before ``%load_ext nbflow``, or
``nbflow run --auto``) turns it on. Each code cell then runs as it would under ``%%task`` with no options:
the same key, the same restore and replay rules (see :mod:`nbflow.ipython.cells`). A cell that already
has a ``%%task`` line keeps its options.

A cell runs normally (uncached) when a hit could not stand for it: it runs a shell command or a line
magic, has another cell magic, uses top-level ``await``, reads the keyboard, or changes process-wide
state that a hit would not set again (see :func:`static_reason`). Settings a hit does set again
(display options, rcParams, the working directory, ``sys.path``, environment variables, warning filters)
do not stop a cell from being cached. A cell that runs quicker than ``auto_min_seconds`` is run, not
stored: restoring it would not be quicker.

Every cell shows one status line (a display with an id, so it can change later): cached, computed,
quick, or not cached and why. When a cell runs again and changes a value that cells after it (in the
order cells were first run) read or bound, or a file they read changes, their status lines turn into
stale marks saying what changed where; ``%nbflow status`` lists them and ``%nbflow run-stale`` runs
them again in order.

How: a pre-run hook notes the cell's text, and an AST transformer of the shell replaces the parsed cell
with one call of :func:`run_pending`, which runs the cell as a cell task. ``In`` keeps the cell as typed.
"""

from __future__ import annotations

import ast
import html
import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nbflow.context import identity_matcher
from nbflow.engine import file_reads
from nbflow.ipython.auto_rules import only_nbflow_magics, static_reason
from nbflow.ipython.capture import publish_quietly
from nbflow.runs import format_duration

if TYPE_CHECKING:
    from nbflow.engine.file_reads import FileRead
    from nbflow.ipython.cells import CellOutcome, CellSpec
    from nbflow.ipython.session import Session

__all__ = ["AutoMode", "CellRecord", "run_pending"]

# What an auto-mode cell runs instead of its code (parsed anew for each cell: IPython may hand the tree to
# other transformers, which may change it).
_CALL = "__import__('nbflow.ipython.auto', fromlist=['*']).run_pending()"
# Cell magics whose body is Python run in the notebook's namespace.
_PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "debug"})
_active: AutoMode | None = None  # the auto mode of the shell whose cell is running (one shell per kernel)
_ids = itertools.count(1)


@dataclass
class CellRecord:
    """What auto mode knows of one notebook cell: its latest run, what it read and bound, and whether it is
    stale."""

    key: str  # the front-end's cell id, or "#N" without one
    order: int  # when the cell was first run: the notebook's order when it is run top to bottom
    number: int  # its latest execution count (In[number])
    source: str
    state: str = ""  # cached, computed, quick, uncached, failed
    reason: str = ""
    duration: float = 0.0
    saved: float = 0.0
    task_name: str = ""
    task_run_id: str = ""
    # name -> ("part", kind, digest) when the value's fingerprint is known, else ("same", matcher)
    reads: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # names it bound or changed -> matcher of the value it left
    writes: dict[str, Any] = field(default_factory=dict)
    maybe_changed: list[str] = field(default_factory=list)  # inputs it may have changed in place (uncached)
    files: list[FileRead] = field(default_factory=list)
    upstream: list[str] = field(default_factory=list)  # keys of the cells whose values it read
    display_id: str = ""
    stale: dict[str, str] = field(default_factory=dict)  # why -> words ("df": "`df` changed in cell [5]")
    shown: str = ""  # the status text on screen now
    override: str = ""  # the status text to show while not stale, in place of the usual one

    @property
    def first_line(self) -> str:
        for line in self.source.splitlines():
            if line.strip():
                return line.strip()
        return ""

    @property
    def label(self) -> str:
        line = self.first_line
        return f"[{self.number}] " + (line if len(line) <= 40 else line[:39] + "…")


@dataclass
class _Pending:
    raw: str
    cell_id: str | None
    number: int
    reason: str = ""  # why it runs normally ("" for a cell task)
    ids: dict[str, int] = field(default_factory=dict)  # namespace before a normal run (name -> id)
    reads: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    started: float = 0.0  # perf_counter() when it started running
    tree: ast.Module | None = None  # the cell as IPython parsed it, and the Python code it parsed
    code: str | None = None
    handled: bool = False  # recorded already (a cell task), nothing left for the post-run hook
    quiet: bool = False  # nbflow's own magics: no record, no status line


class _Transformer(ast.NodeTransformer):
    def __init__(self, mode: AutoMode) -> None:
        self.mode = mode

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Module):
            try:
                return self.mode.transform(node)
            except Exception:  # IPython drops a transformer that raises; run the cell as it is instead
                return node
        return node


class AutoMode:
    """Auto mode of one shell (see the module docstring)."""

    def __init__(self, shell: Any, session: Session) -> None:
        self.shell = shell
        self.session = session
        self.enabled = False
        self.cells: dict[str, CellRecord] = {}
        self.producers: dict[str, str] = {}  # variable -> key of the cell that last bound or changed it
        self._pending: _Pending | None = None
        self._current: _Pending | None = None
        self._transformer = _Transformer(self)
        self._rerun: CellRecord | None = None  # the stale cell %nbflow run-stale is running again
        self._users: dict[str, set[str]] = {}  # variable -> keys of the cells that read or bound it
        self._with_files: set[str] = set()  # keys of the cells that read files
        self._stale_keys: set[str] = set()
        self._ignored = 0  # nested runs under way that belong to the cell running them

    # -- on and off -----------------------------------------------------------------------------------
    def enable(self) -> None:
        global _active
        if self.enabled:
            return
        events = self.shell.events
        events.register("pre_run_cell", self._pre_run_cell)
        events.register("post_run_cell", self._post_run_cell)
        self.shell.ast_transformers.append(self._transformer)
        self.enabled = True
        _active = self

    def disable(self) -> None:
        global _active
        if not self.enabled:
            return
        events = self.shell.events
        for name, callback in (("pre_run_cell", self._pre_run_cell), ("post_run_cell", self._post_run_cell)):
            try:
                events.unregister(name, callback)
            except ValueError:
                pass
        if self._transformer in self.shell.ast_transformers:
            self.shell.ast_transformers.remove(self._transformer)
        self.enabled = False
        self._pending = self._current = None
        if _active is self:
            _active = None

    @property
    def min_seconds(self) -> float:
        from nbflow.settings import get_settings

        return get_settings().auto_min_seconds

    # -- before and around a cell ---------------------------------------------------------------------
    def _pre_run_cell(self, info: Any) -> None:
        if getattr(info, "silent", False) or not isinstance(getattr(info, "raw_cell", None), str):
            return
        # IPython holds the running cell's result while it executes: a cell run from inside another one
        # (%%capture and %%time run their body so) is part of that cell, unless run-stale runs it.
        nested = getattr(getattr(self.shell, "displayhook", None), "exec_result", None) is not None
        if nested and self._rerun is None:
            self._ignored += 1
            return
        if not nested:
            self._ignored = 0  # a nested run that failed to parse sends no post-run event: start afresh
        cell_id = getattr(info, "cell_id", None)
        # The cell's number is known once it runs (IPython sets it after the AST transformers ran).
        self._pending = _Pending(info.raw_cell, cell_id if isinstance(cell_id, str) and cell_id else None, 0)

    def transform(self, tree: ast.Module) -> ast.Module:
        """Called by IPython with the parsed cell: the cell task call, or the cell as it is."""
        pending, self._pending = self._pending, None
        if pending is None:  # an inner parse (%time, %timeit) or a silent execution
            return tree
        self._current = pending
        pending.started = time.perf_counter()
        raw = pending.raw.lstrip()
        if raw.startswith("%%"):
            magic = raw[2:].split(None, 1)[0] if raw[2:].strip() else ""
            if magic != "task":
                pending.reason = f"it runs the cell magic %%{magic}"
                self._prepare_normal(pending, self._python_body(magic, raw))
            return tree  # a %%task cell runs its magic, which calls run_task_cell
        if only_nbflow_magics(tree):
            pending.quiet = True
            return tree
        if not tree.body:
            pending.quiet = True
            return tree
        pending.reason = static_reason(tree, self.shell.user_ns)
        if pending.reason:
            self._prepare_normal(pending, tree)
            return tree
        pending.tree = tree
        history = getattr(self.shell, "history_manager", None)
        try:  # the cell as IPython turned it into Python, stored in the history before this step
            if history is not None and history.input_hist_raw[-1] == pending.raw:
                pending.code = history.input_hist_parsed[-1]
        except (AttributeError, IndexError, TypeError):
            pass
        return ast.parse(_CALL)

    def _python_body(self, magic: str, raw: str) -> ast.Module | None:
        """The body of a cell magic that runs it as Python (``%%time``, ``%%capture``...), parsed: what it reads
        counts for stale marks. None for other magics (``%%bash``) or a body that does not parse."""
        if magic not in _PYTHON_CELL_MAGICS:
            return None
        try:
            return ast.parse(self.shell.transform_cell(raw.split("\n", 1)[1] if "\n" in raw else ""))
        except (SyntaxError, ValueError):
            return None

    def _prepare_normal(self, pending: _Pending, tree: ast.Module | None) -> None:
        """Before a cell that runs normally: what it reads, and the namespace to compare with after."""
        namespace = self.shell.user_ns
        pending.ids = {name: id(value) for name, value in namespace.items()}
        if tree is not None:
            from nbflow.ipython.analysis import analyze

            pending.inputs = [name for name in analyze(tree).inputs if name in namespace]
            pending.reads = {name: _same(namespace[name]) for name in pending.inputs}

    def claims_magic(self) -> bool:
        """Whether the ``%%task`` cell running now is an auto-mode cell (so its run is recorded here)."""
        current = self._current
        return current is not None and not current.handled and current.raw.lstrip().startswith("%%task")

    def _post_run_cell(self, result: Any) -> None:
        if self._ignored:
            self._ignored -= 1
            return
        current, self._current = self._current, None
        self._pending = None
        if current is None or current.handled or current.quiet:
            return
        if not current.reason:
            return  # a cell task that failed before it ran (its error is shown)
        from nbflow.ipython.cells import _namespace_changes

        number = getattr(result, "execution_count", None)
        current.number = number if isinstance(number, int) else self.shell.execution_count
        namespace = self.shell.user_ns
        bound, deleted = _namespace_changes(namespace, current.ids, set())
        maybe = [name for name in current.inputs if name in namespace and _mutable(namespace[name])]
        failed = getattr(result, "error_in_exec", None) is not None or getattr(result, "error_before_exec", None)
        self._record(current, state="failed" if failed else "uncached", reason=current.reason,
                     changed=[*bound, *deleted], maybe_changed=maybe, reads=current.reads,
                     duration=time.perf_counter() - current.started)

    # -- cell tasks -------------------------------------------------------------------------------------
    def run_current(self) -> None:
        """Run the cell noted by the pre-run hook as a cell task (see :func:`run_pending`)."""
        from nbflow.ipython.cells import CellOptions, prepare_cell

        current = self._current
        if current is None:
            return
        spec = prepare_cell(self.shell, current.raw, CellOptions(), code=current.code,
                            tree=current.tree if current.code is not None else None)
        self.run_task_cell(spec)

    def run_task_cell(self, spec: CellSpec) -> None:
        """Run ``spec`` as the current cell's cell task and record how it went; raise the user's error."""
        from nbflow.ipython.cells import cell_number, current_inputs, run_cell_task

        current = self._current
        assert current is not None
        current.handled = True
        current.number = cell_number(self.shell)
        inputs = current_inputs(self.shell, spec)
        reads = {name: _same(value) for name, value in inputs.items()}
        auto_options = not current.raw.lstrip().startswith("%%task")
        try:
            outcome = run_cell_task(self.shell, spec, self.session, auto=True,
                                    min_seconds=self.min_seconds if auto_options else 0.0)
        except SyntaxError as error:
            if not _from_compiling(error):
                raise
            # An error only the compiler finds (`return` at the top level): shown as IPython shows it.
            from nbflow.ipython.magics import _syntax_error

            current.quiet = True
            _syntax_error(self.shell, spec.source, error)
            return
        except BaseException:
            namespace = self.shell.user_ns
            self._record(current, state="failed", reason="it raised an error", reads=reads,
                         changed=[name for name in spec.outputs if name in namespace],
                         maybe_changed=[name for name in inputs if _mutable(inputs[name])])
            raise
        self._record(current, outcome=outcome, reads=reads)

    # -- records and stale marks ------------------------------------------------------------------------
    def _record(self, current: _Pending, *, state: str = "", reason: str = "", outcome: CellOutcome | None = None,
                reads: dict[str, tuple[Any, ...]], changed: list[str] | None = None,
                maybe_changed: list[str] | None = None, duration: float = 0.0) -> None:
        rerun = self._rerun
        key = rerun.key if rerun is not None else current.cell_id or f"#{current.number}"
        previous = self.cells.get(key)
        number = rerun.number if rerun is not None else current.number
        record = CellRecord(key=key, order=previous.order if previous is not None else len(self.cells),
                            number=number, source=current.raw)
        if outcome is not None:
            record.state, record.reason = outcome.state, outcome.reason
            record.duration, record.saved = outcome.duration, outcome.saved
            changed = outcome.changed
            record.files = [read for read in outcome.files if not read.written]
            task_run = outcome.task_run
            if task_run is not None:
                record.task_name, record.task_run_id = task_run.task_name, task_run.id
                parts = task_run.key_parts or {}
                for name in reads:
                    for kind in ("input:", "code:", "module:"):
                        part = parts.get(kind + name)
                        if part is not None:
                            reads[name] = ("part", kind, part)
                            break
        else:
            record.state, record.reason, record.duration = state, reason, duration
        record.reads = reads
        record.maybe_changed = list(maybe_changed or [])
        namespace = self.shell.user_ns
        record.upstream = list(dict.fromkeys(
            self.producers[name] for name in reads if name in self.producers and self.producers[name] != key))
        changed = list(dict.fromkeys(changed or []))
        record.writes = {name: _same(namespace[name])[1] if name in namespace else None for name in changed}
        if previous is not None:
            record.display_id = previous.display_id
            self._unindex(previous)
        self.cells[key] = record  # a cell run again keeps its place (its first run's)
        self._index(record)
        for name in [*changed, *record.maybe_changed]:
            self.producers[name] = key
        if rerun is None:
            record.display_id = f"nbflow-cell-{os.getpid()}-{next(_ids)}"
            self._show(record, new=True)
        self._refresh_stale(record, [*changed, *record.maybe_changed])
        graph = sys.modules.get("nbflow.ui.cells")
        if graph is not None:  # a cell graph may be open: redraw it (never imports the UI, ~150 ms)
            graph.cells_changed(self)

    def _index(self, record: CellRecord) -> None:
        for name in (*record.reads, *record.writes):
            self._users.setdefault(name, set()).add(record.key)
        if record.files:
            self._with_files.add(record.key)

    def _unindex(self, record: CellRecord) -> None:
        for name in (*record.reads, *record.writes):
            users = self._users.get(name)
            if users is not None:
                users.discard(record.key)
        self._with_files.discard(record.key)

    def _refresh_stale(self, changer: CellRecord, names: list[str]) -> None:
        """After ``changer`` ran: which later cells read or bound a value it changed, now different from what
        they saw or left; which cells read a file that changed; and which read from a stale cell. Only the
        cells that use a changed name or read files are looked at (a notebook may have hundreds of cells)."""
        namespace = self.shell.user_ns
        cells = self.cells
        parts: dict[tuple[str, str], Any] = {}  # (kind, name) -> the value's part now (computed once)
        touched: set[str] = set(self._with_files)
        for name in dict.fromkeys(names):
            for key in self._users.get(name, ()):
                record = cells[key]
                if key == changer.key or record.order < changer.order:
                    continue
                touched.add(key)
                if name in record.reads:
                    words = _read_changed(name, record.reads[name], namespace, parts,
                                          name in changer.maybe_changed or name in changer.writes)
                    _note(record, name, words and f"`{name}` {words} in cell [{changer.number}]")
                if name in record.writes and not record.stale.get(name):
                    matcher = record.writes[name]
                    if name not in namespace:
                        words = "was deleted"
                    elif matcher is None or not matcher(namespace[name]):
                        words = "was replaced"
                    else:
                        words = "was changed" if name in changer.writes else ""
                    _note(record, f"wrote:{name}", words and f"its `{name}` {words} by cell [{changer.number}]")
        for key in self._with_files:
            record = cells[key]
            moved = file_reads.changed(record.files)
            _note(record, "file", moved is not None and f"file {moved.label!r} changed")
        if self._stale_keys or any(cells[key].stale for key in touched):
            touched.update(self._propagate())
        for key in touched:
            self._show(cells[key])

    def _propagate(self) -> set[str]:
        """Mark the readers of what a stale cell bound stale too, in notebook order; the keys of every cell
        whose marks changed."""
        changed: set[str] = set()
        stale_writes: dict[str, CellRecord] = {}
        self._stale_keys = set()
        for record in self.cells.values():
            before = dict(record.stale)
            direct = {key: words for key, words in record.stale.items() if not key.startswith("via:")}
            found: dict[str, str] = {}
            for name in record.reads:
                source = stale_writes.get(name)
                if source is not None and source.key != record.key and name in source.writes:
                    found.setdefault(f"via:{source.key}", f"it reads `{name}` from stale cell [{source.number}]")
            record.stale = {**direct, **found}
            if record.stale != before:
                changed.add(record.key)
            if record.stale:
                self._stale_keys.add(record.key)
            for name in record.writes:
                if record.stale:
                    stale_writes[name] = record
                else:
                    stale_writes.pop(name, None)
        return changed

    # -- the status line ----------------------------------------------------------------------------------
    def _status_text(self, record: CellRecord) -> tuple[str, str]:
        if record.stale:
            reasons = list(record.stale.values())
            more = f" (and {len(reasons) - 2} more)" if len(reasons) > 2 else ""
            return "stale", (f"[nbflow] stale: {'; '.join(reasons[:2])}{more} — run this cell again, "
                             "or %nbflow run-stale")
        if record.override:
            return "rerun", record.override
        duration = format_duration(record.duration)
        if record.state == "cached":
            return "cached", (f"[nbflow] restored from the cache in {duration} "
                              f"(saved {format_duration(record.saved)})")
        if record.state == "computed":
            return "computed", f"[nbflow] computed in {duration}, stored"
        if record.state == "quick":
            return "quick", f"[nbflow] ran in {duration}: quicker to run than to restore, not stored"
        if record.state == "failed":
            return "failed", ""
        return "uncached", f"[nbflow] not cached: {record.reason}"

    def _show(self, record: CellRecord, new: bool = False) -> None:
        kind, text = self._status_text(record)
        if not text or (text == record.shown and not new):
            return
        color = "var(--jp-warn-color0, #b35c00)" if kind == "stale" else "var(--jp-ui-font-color2, #777)"
        bundle = {"text/plain": text,
                  "text/html": f'<div style="font-size: 11px; color: {color}">{html.escape(text)}</div>'}
        metadata = {"nbflow": {"cell_status": {"state": kind, "cell_state": record.state, "reason": record.reason,
                                               "duration": record.duration, "saved": record.saved,
                                               "stale": list(record.stale.values()), "task": record.task_name}}}
        if not new and not record.shown:
            return
        publish_quietly(self.shell, bundle, metadata, record.display_id, update=not new)
        record.shown = text

    # -- what %nbflow shows and does ----------------------------------------------------------------------
    def stale_cells(self) -> list[CellRecord]:
        """The stale cells, in notebook order."""
        return [record for record in self.cells.values() if record.stale]

    def status(self) -> str:
        """One row per cell in notebook order: its state, why it was not cached, and stale marks."""
        from nbflow.ipython.magics import _table

        if not self.cells:
            return "auto mode is on; no cell has run in it yet"
        rows = []
        for record in self.cells.values():
            state = record.state if record.state != "uncached" else "not cached"
            note = record.reason if record.state in ("uncached", "quick") else ""
            if record.stale:
                note = "STALE: " + "; ".join(record.stale.values())
            rows.append((f"[{record.number}]", _short(record.first_line, 36), state,
                         format_duration(record.duration),
                         format_duration(record.saved) if record.state == "cached" else "-", note))
        lines = [_table(("cell", "first line", "state", "took", "saved", "note"), rows)]
        stale = self.stale_cells()
        if stale:
            lines.append("\nstale cells, in notebook order: " + ", ".join(f"[{r.number}]" for r in stale)
                         + " — %nbflow run-stale runs them again")
        saved = sum(record.saved for record in self.cells.values() if record.state == "cached")
        if saved:
            lines.append(f"\ntime saved by the cache: {format_duration(saved)}")
        return "\n".join(lines)

    def run_stale(self) -> None:
        """Run the stale cells again, in notebook order (each served from the cache where it can be)."""
        done: set[str] = set()
        while True:
            stale = [record for record in self.stale_cells() if record.key not in done]
            if not stale:
                break
            record = stale[0]
            done.add(record.key)
            print(f"[nbflow] running cell {record.label} again")
            self._rerun, outer = record, self._current
            try:
                result = self.shell.run_cell(record.source, store_history=False)
            finally:
                self._rerun, self._current = None, outer
            fresh = self.cells.get(record.key)
            if fresh is not None and fresh is not record:
                fresh.shown = record.shown
                fresh.override = (f"[nbflow] run again by %nbflow run-stale ({fresh.state}); its new output is "
                                  "shown there")
                self._show(fresh)
            if not getattr(result, "success", True):
                print(f"[nbflow] stopped: cell [{record.number}] failed")
                return
        if not done:
            print("[nbflow] no stale cells")

    def graph_cells(self) -> list[dict[str, Any]]:
        """The cells as graph nodes, in notebook order: label, state (or "Stale"), upstream cell keys."""
        return [{"key": record.key, "label": record.label, "number": record.number, "state": record.state,
                 "stale": list(record.stale.values()),
                 "upstream": [key for key in record.upstream if key in self.cells],
                 "duration": record.duration, "saved": record.saved, "reason": record.reason,
                 "task_run_id": record.task_run_id, "task": record.task_name}
                for record in self.cells.values()]


def _from_compiling(error: SyntaxError) -> bool:
    """Whether ``error`` was raised compiling the cell (not by its code running, e.g. ``eval("1 +")``)."""
    from nbflow.ipython.cells import _compile_cell

    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is _compile_cell.__code__:
            return True
        tb = tb.tb_next
    return False


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _mutable(value: Any) -> bool:
    import types

    from nbflow.engine.task_engine import _PLAIN

    return type(value) not in _PLAIN and not isinstance(value, (types.ModuleType, type, types.FunctionType))


def _same(value: Any) -> tuple[Any, ...]:
    matcher, _ = identity_matcher(value)
    return ("same", matcher)


def _read_changed(name: str, token: tuple[Any, ...], namespace: dict[str, Any], parts: dict[tuple[str, str], Any],
                  maybe_mutated: bool) -> str:
    """How the value of ``name`` differs from what a cell read ("" when it is the same)."""
    if name not in namespace:
        return "was deleted"
    value = namespace[name]
    if token[0] == "part":
        kind = token[1]
        key = (kind, name)
        if key not in parts:
            parts[key] = _part(kind, value)
        return "" if parts[key] == token[2] else "changed"
    matcher = token[1]
    if matcher is None or not matcher(value):
        return "changed"
    return "may have changed in place" if maybe_mutated else ""


def _part(kind: str, value: Any) -> Any:
    """The key part of ``value`` as a cell task records it (see CellPolicy.compute_key)."""
    try:
        if kind == "module:":
            from nbflow.hashing.code import module_version

            return f"{value.__name__} {module_version(value.__name__)}".strip()
        if kind == "code:":
            from nbflow.hashing import code_identity

            return code_identity(value)
        from nbflow.hashing import fingerprint

        return fingerprint(value)
    except Exception:
        return object()  # not comparable: counts as changed


def _note(record: CellRecord, reason: str, words: Any) -> None:
    if words:
        record.stale[reason] = str(words)
    else:
        record.stale.pop(reason, None)


def run_pending() -> None:
    """What an auto-mode cell runs instead of its own code: the cell, as a cell task."""
    mode = _active
    if mode is None:  # pragma: no cover - the transformer is only installed while a mode is active
        return
    mode.run_current()


def apply_setting(enabled: bool) -> None:
    """``nbflow.configure(auto=...)``: turn auto mode on or off in the running IPython shell, if any."""
    import sys

    if "IPython" not in sys.modules:
        return
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        return
    from nbflow.ipython import auto_mode, load_ipython_extension

    if enabled:
        load_ipython_extension(shell)
    mode = auto_mode(shell)
    if mode is not None:
        mode.enable() if enabled else mode.disable()

