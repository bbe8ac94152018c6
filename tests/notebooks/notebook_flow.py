"""Which cells of a notebook an edit of one cell can reach, by data flow over the source (no execution).

Used by ``test_handbook_auto.py`` to tell which cells ``nbflow run --auto`` may recompute after an edit. See
:func:`downstream`: statement by statement from the edited statements of the edited cell, a statement that
reads something tainted taints what it binds and what it may change in place (a method call's object, an
argument of a notebook function, what a loop changes through its loop variable, all the names bound together
from one call as in ``fig, ax = plt.subplots()``); a statement that reads nothing tainted binds afresh.
Besides variables it follows what a cell reads without naming it: the global random generators (a cell calling
``np.random.*`` / ``random.*``, or a notebook function that does, reads and moves their state), IPython's
history (``In``, ``_``, ``Out[n]``), files by name, and settings (``pd.set_option``, ``rcParams``...) that
every cell's display depends on. It over-approximates: a cell it says is reached may compute the same values.
Not seen: reads by name at run time (``eval("df")``, ``globals()[...]``).
"""

from __future__ import annotations

import ast
import builtins
import re
from dataclasses import dataclass, field

from nbformat import NotebookNode

__all__ = ["Flow", "Names", "cell_flow", "downstream", "python_tree", "reads_directly", "statement_flows"]

# A file a cell names: a string constant that looks like a file name ("table.csv", "data/x.npy").
FILE_NAME = re.compile(r"^[\w./-]+\.[A-Za-z0-9]{1,5}$")

_RANDOM_MAKERS = {"default_rng", "RandomState", "Generator", "SeedSequence", "PCG64", "MT19937", "Philox", "SFC64"}
_SETTINGS_CALLS = {"numpy.set_printoptions", "pandas.set_option", "pandas.reset_option", "matplotlib.rc",
                   "matplotlib.pyplot.rc", "matplotlib.pyplot.style.use", "matplotlib.style.use"}
_HISTORY_INPUTS = re.compile(r"^_i(?:i{0,2}|h|\d+)$|^In$")
_HISTORY_OUTPUT = re.compile(r"^_(\d+)$")


def python_tree(source: str) -> ast.Module | None:
    """The cell as IPython runs it (magics and ``!`` as calls), parsed; None for a cell that does not compile."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        return ast.parse(TransformerManager().transform_cell(source))
    except SyntaxError:
        return None


def _root(node: ast.AST) -> str | None:
    """The variable an expression such as ``df.groupby("a")["b"].agg`` starts from."""
    while True:
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Name):
            return node.id
        else:
            return None


def _dotted(node: ast.AST, modules: dict[str, str]) -> str:
    """``np.random.seed`` -> ``numpy.random.seed`` when ``np`` is a module the notebook imported; else ""."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in modules:
        return ".".join([modules[node.id], *reversed(parts)])
    return ""


@dataclass
class Flow:
    """What one cell reads and what it binds or may change (names, and ``<...>`` for unnamed state)."""

    reads: set[str] = field(default_factory=set)
    writes: set[str] = field(default_factory=set)  # bound or rebound at the top level
    inner: set[str] = field(default_factory=set)  # read after an earlier statement of the cell bound it
    changes: set[str] = field(default_factory=set)  # may have changed in place (and unnamed state it moves)


@dataclass
class Names:
    """What the cells run so far defined, as far as the flow of later cells goes."""

    modules: dict[str, str] = field(default_factory=dict)  # alias -> module
    # The notebook's own functions -> the unnamed state their bodies use (a call may also change its arguments).
    functions: dict[str, set[str]] = field(default_factory=dict)
    # Names bound together from one call (`fig, ax = plt.subplots()`): a change through one is a change of all.
    together: dict[str, set[str]] = field(default_factory=dict)


class _FlowVisitor(ast.NodeVisitor):
    def __init__(self, names: Names) -> None:
        self.names = names
        self.modules = names.modules  # grown by the cell's imports
        self.functions = names.functions
        self.flow = Flow()
        self.scopes: list[set[str]] = []  # local names of the functions / comprehensions we are in
        self.globals: set[str] = set()
        self.deferred: set[str] | None = None  # in a function body: the unnamed state it uses, when called

    def state(self, name: str) -> None:
        """The cell uses unnamed state (a global generator): now, or when it calls the function it defines."""
        if self.deferred is not None:
            self.deferred.add(name)
        else:
            self.flow.reads.add(name)
            self.flow.changes.add(name)

    def local(self, name: str) -> bool:
        return any(name in scope for scope in self.scopes) and name not in self.globals

    # -- names
    def visit_Name(self, node: ast.Name) -> None:
        flow, name = self.flow, node.id
        if isinstance(node.ctx, ast.Load):
            if self.local(name):
                return
            match = _HISTORY_OUTPUT.match(name)
            if _HISTORY_INPUTS.match(name):
                flow.reads.add("<In>")
            elif name == "_":
                flow.reads.add("<_>")
            elif match:
                flow.reads.add(f"<Out:{match.group(1)}>")
            elif name != "Out":
                flow.reads.add(name)
        elif not self.scopes or name in self.globals:
            flow.writes.add(name)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if (isinstance(node.value, ast.Name) and node.value.id == "Out" and isinstance(node.slice, ast.Constant)
                and isinstance(node.slice.value, int)):
            self.flow.reads.add(f"<Out:{node.slice.value}>")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and FILE_NAME.match(node.value):
            self.flow.reads.add(f"<file:{node.value}>")
            self.flow.changes.add(f"<file:{node.value}>")

    # -- bindings and changes
    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            bound = alias.asname or alias.name.split(".")[0]
            if not self.scopes:
                self.flow.writes.add(bound)
            if isinstance(node, ast.Import):
                self.modules[bound] = alias.name if alias.asname else bound
            elif node.module:
                self.modules[bound] = f"{node.module}.{alias.name}"  # a module or not: only dotted calls use it

    visit_ImportFrom = visit_Import

    def _changed_target(self, target: ast.AST) -> None:
        """``x[0] = ...``, ``df.a = ...``, ``x += ...``: the object is changed in place."""
        if isinstance(target, (ast.Subscript, ast.Attribute)):
            root = _root(target)
            if root is not None and not self.local(root):
                if root in self.modules:
                    self.flow.changes.add("<settings>")  # plt.rcParams[...] = ..., pd.options.x = ...
                else:
                    self.flow.changes.add(root)
                    self.flow.reads.add(root)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._changed_target(target)
        self.generic_visit(node)
        if self.scopes:
            return
        for target in node.targets:
            bound = {inner.id for inner in ast.walk(target) if isinstance(inner, ast.Name)}
            for name in bound:
                if isinstance(target, (ast.Tuple, ast.List)) and isinstance(node.value, ast.Call):
                    self.names.together[name] = bound
                else:
                    self.names.together.pop(name, None)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._changed_target(node.target)
        if isinstance(node.target, ast.Name) and not self.local(node.target.id):
            self.flow.reads.add(node.target.id)
            self.flow.changes.add(node.target.id)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        flow = self.flow
        dotted = _dotted(node.func, self.modules)
        arguments = [arg.id for arg in [*node.args, *(k.value for k in node.keywords)]
                     if isinstance(arg, ast.Name) and not self.local(arg.id)]
        if dotted:
            module, _, function = dotted.rpartition(".")
            if module in ("numpy.random", "random") and function not in _RANDOM_MAKERS:
                self.state(f"<{module}>")  # the global generator's state
                flow.changes.update(arguments)  # np.random.shuffle(deck)
            elif dotted in _SETTINGS_CALLS:
                flow.changes.add("<settings>")
        elif isinstance(node.func, ast.Attribute):
            root = _root(node.func)  # a method call may change its object
            if root is not None and not self.local(root) and root not in self.modules:
                flow.changes.add(root)
        elif isinstance(node.func, ast.Name) and node.func.id in self.functions:
            flow.changes.update(arguments)  # center(weights)
            for state in self.functions[node.func.id]:
                self.state(state)
        self.generic_visit(node)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.generic_visit(node)
        targets = {inner.id for inner in ast.walk(node.target) if isinstance(inner, ast.Name)}
        if self.flow.changes & targets:  # `for i, axis in enumerate(axes.flat): axis.plot(...)` draws on axes
            self.flow.changes |= {inner.id for inner in ast.walk(node.iter) if isinstance(inner, ast.Name)
                                  and inner.id not in self.modules and not self.local(inner.id)
                                  and not hasattr(builtins, inner.id)}

    visit_AsyncFor = visit_For

    # -- scopes
    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        arguments = node.args
        names = {a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]}
        names |= {a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None}
        body = node.body if isinstance(node.body, list) else [node.body]
        for statement in body:
            for inner in ast.walk(statement):
                if isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
                    names.add(inner.id)
                elif isinstance(inner, ast.Global):
                    self.globals.update(inner.names)
        if not isinstance(node, ast.Lambda):
            for decorator in node.decorator_list:
                self.visit(decorator)
        for default in [*arguments.defaults, *arguments.kw_defaults]:
            if default is not None:
                self.visit(default)
        outer, self.deferred = self.deferred, set()
        self.scopes.append(names)
        for statement in body:
            self.visit(statement)
        self.scopes.pop()
        used, self.deferred = self.deferred, outer
        if outer is not None:
            outer |= used
        if not isinstance(node, ast.Lambda) and not self.scopes:
            self.flow.writes.add(node.name)
            self.functions[node.name] = used

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if not self.scopes:
            self.flow.writes.add(node.name)
        for expression in [*node.decorator_list, *node.bases, *(keyword.value for keyword in node.keywords)]:
            self.visit(expression)
        self.scopes.append(set())  # its methods are not the notebook's functions
        for statement in node.body:
            self.visit(statement)
        self.scopes.pop()

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        names = {inner.id for generator in node.generators for inner in ast.walk(generator.target)
                 if isinstance(inner, ast.Name)}
        self.visit(node.generators[0].iter)  # evaluated outside the comprehension's scope
        self.scopes.append(names)
        for index, generator in enumerate(node.generators):
            if index:
                self.visit(generator.iter)
            for condition in generator.ifs:
                self.visit(condition)
        for part in ("elt", "key", "value"):
            if hasattr(node, part):
                self.visit(getattr(node, part))
        self.scopes.pop()

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension


# Statements after which what they bind is bound for the rest of the cell (not in a branch or a loop).
_BINDING = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Import, ast.ImportFrom, ast.FunctionDef,
            ast.AsyncFunctionDef, ast.ClassDef, ast.With)


def statement_flows(tree: ast.Module, names: Names) -> list[tuple[ast.stmt, Flow]]:
    """Each top-level statement with its flow; ``reads`` only what comes from before the cell, ``inner`` what
    an earlier statement of the cell bound."""
    bound: set[str] = set()
    flows = []
    for statement in tree.body:
        visitor = _FlowVisitor(names)
        visitor.visit(statement)
        flow = visitor.flow
        flow.inner = flow.reads & bound
        flow.reads -= bound
        if isinstance(statement, _BINDING):
            bound |= flow.writes
        # `to_celsius = lambda f: ...`: a function of the notebook all the same.
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Lambda):
            names.functions.update((t.id, set()) for t in statement.targets if isinstance(t, ast.Name))
        flows.append((statement, flow))
    return flows


def cell_flow(source: str, names: Names) -> Flow:
    total = Flow(reads={"<settings>"})  # what a cell shows depends on the display settings in force
    tree = python_tree(source)
    for _, flow in statement_flows(tree, names) if tree is not None else []:
        total.reads |= flow.reads
        total.writes |= flow.writes
        total.changes |= flow.changes
    return total


def _reach(source: str, names: Names, tainted: set[str], old_source: str | None = None) -> tuple[bool, set[str]]:
    """(whether the cell reads anything in ``tainted``, what is tainted after it), statement by statement: a
    statement that reads something tainted (or, with ``old_source``, is not a statement of the cell before
    the edit) taints what it binds and changes; one that does not binds afresh. So a cell that reads the
    edit in one statement and sets a style in another does not make the style depend on the edit."""
    tree = python_tree(source)
    if tree is None:
        return False, tainted
    old = python_tree(old_source) if old_source is not None else None
    old_statements = {ast.dump(statement) for statement in old.body} if old is not None else None
    tainted = set(tainted)
    reached = False
    for statement, flow in statement_flows(tree, names):
        edited = old_statements is not None and ast.dump(statement) not in old_statements
        if edited or (flow.reads | flow.inner | {"<settings>"}) & tainted:
            reached = True
            tainted |= flow.writes | flow.changes
            for name in flow.changes:
                tainted |= names.together.get(name, set())
        elif isinstance(statement, _BINDING):
            tainted -= flow.writes
    return reached, tainted


def downstream(before: NotebookNode, after: NotebookNode) -> tuple[int, set[str], set[int]]:
    """(the edited cell, what the edit changes, the code cells after it that change may reach), by data flow
    from the notebook before the edit to an execution of the notebook after it (for which cells show a
    result, and their execution counts)."""
    names = Names()
    start, changed, tainted, found = -1, set[str](), set[str](), set[int]()
    for index, (old, cell) in enumerate(zip(before.cells, after.cells)):
        if cell.cell_type != "code":
            continue
        if start < 0 and old.source == cell.source:
            cell_flow(cell.source, names)
            continue
        if start < 0:
            start = index
            _, changed = _reach(cell.source, names, set(), old_source=old.source)
            tainted = {*changed, "<In>"}  # `In` holds the edited source from the edited cell on
            reached = True
        else:
            reached, tainted = _reach(cell.source, names, tainted)
            if reached:
                found.add(index)
        if any(output.output_type == "execute_result" for output in cell.get("outputs", [])):
            if reached:
                tainted |= {"<_>", f"<Out:{cell.execution_count}>"}
            else:
                tainted.discard("<_>")
    assert start >= 0, "no cell differs between the notebook and its edited version"
    return start, changed, found


def reads_directly(source: str, changed: set[str]) -> bool:
    return bool(cell_flow(source, Names()).reads & changed)
