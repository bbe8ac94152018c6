"""What a cell reads and what it binds, from its AST alone (nothing runs here).

*Inputs* are names the cell reads before it binds them (in statement order), including the free
names of functions and classes it defines. *Outputs* are the names it binds at top level:
assignments, augmented and annotated assignments, ``for`` and ``with ... as`` targets, ``except ...
as`` names, walrus targets, ``def``, ``class`` and ``import``. A name whose item or attribute the cell
assigns (``df["x"] = ...``, ``model.coef = ...``) is an input: the cell changes that value in place, which
the engine sees by fingerprinting its inputs again after the cell (an input that changed is stored as an
output); a module whose attribute a cell sets is not a value the cell could store.

The analysis is flow-insensitive inside a statement and ordered across statements, which is what a
notebook cell needs: ``x = x + 1`` reads ``x`` first; ``x = 1; y = x`` does not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field

from nbflow.ipython.dynamic_reads import query_names

__all__ = ["CellAnalysis", "analyze", "entangled_definition", "inert", "normalized_digest"]

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.GeneratorExp, ast.ListComp,
           ast.SetComp, ast.DictComp)


@dataclass
class CellAnalysis:
    """The result of :func:`analyze`: names in first-seen order, plus the statements that define code."""

    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    # Names bound by top-level def / class / import statements and `name = lambda ...`: restored by
    # running those statements again on a cache hit instead of pickling code.
    definitions: list[str] = field(default_factory=list)
    definition_nodes: list[ast.stmt] = field(default_factory=list)
    # `with ... as NAME` targets: usually a closed file or a released lock once the block ends.
    with_targets: list[str] = field(default_factory=list)


def normalized_digest(tree: ast.AST) -> str:
    """A digest of the AST without positions: comments and formatting do not change it."""
    import xxhash

    return xxhash.xxh3_128_hexdigest(ast.dump(tree, annotate_fields=True, include_attributes=False).encode())


class _Reads(ast.NodeVisitor):
    """Names an expression (or a nested scope) reads from the enclosing namespace."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.walrus: list[str] = []

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.names.append(node.id)

    def visit_Call(self, node: ast.Call) -> None:
        self.names.extend(query_names(node))  # df.query("a > @limit") reads limit
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.walrus.append(node.target.id)

    def _scope(self, node: ast.AST, local: set[str], parts: list[ast.AST]) -> None:
        inner = _Reads()
        for part in parts:
            inner.visit(part)
        # Locals of the nested scope are whatever it binds (parameters, assignments, loop targets).
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
                local.add(sub.id)
            elif isinstance(sub, ast.arg):
                local.add(sub.arg)
            elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and sub is not node:
                local.add(sub.name)
            elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                local.update((alias.asname or alias.name).split(".")[0] for alias in sub.names)
        self.names.extend(name for name in inner.names if name not in local)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for default in (*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)):
            self.visit(default)
        self._scope(node, set(), [node.body])

    def _comprehension(self, node: ast.GeneratorExp | ast.ListComp | ast.SetComp | ast.DictComp) -> None:
        # The first iterable is evaluated in the enclosing scope; everything else inside.
        self.visit(node.generators[0].iter)
        parts: list[ast.AST] = [gen for gen in node.generators]
        parts[0] = ast.comprehension(target=node.generators[0].target, iter=ast.Constant(None),
                                     ifs=node.generators[0].ifs, is_async=0)
        if isinstance(node, ast.DictComp):
            parts += [node.key, node.value]
        else:
            parts.append(node.elt)
        self._scope(node, set(), parts)

    visit_GeneratorExp = visit_ListComp = visit_SetComp = visit_DictComp = _comprehension

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for expr in (*node.decorator_list, *node.args.defaults,
                     *(d for d in node.args.kw_defaults if d is not None)):
            self.visit(expr)
        self._scope(node, set(), list(node.body))

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in (*node.decorator_list, *node.bases, *(k.value for k in node.keywords)):
            self.visit(expr)
        self._scope(node, set(), list(node.body))


def _target_names(target: ast.AST) -> tuple[list[str], list[str]]:
    """(names bound, names read) by an assignment target."""
    bound: list[str] = []
    read: list[str] = []
    if isinstance(target, ast.Name):
        bound.append(target.id)
    elif isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            b, r = _target_names(element)
            bound += b
            read += r
    elif isinstance(target, ast.Starred):
        return _target_names(target.value)
    elif isinstance(target, (ast.Subscript, ast.Attribute)):
        # `df["x"] = ...` reads df and changes it in place: an input (see the module docstring).
        base: ast.AST = target
        while isinstance(base, (ast.Subscript, ast.Attribute)):
            if isinstance(base, ast.Subscript):
                reads = _Reads()
                reads.visit(base.slice)
                read += reads.names
            base = base.value
        reads = _Reads()
        reads.visit(base)
        read += reads.names
    return bound, read


class _Cell:
    def __init__(self) -> None:
        self.bound: set[str] = set()
        self.inputs: dict[str, None] = {}
        self.outputs: dict[str, None] = {}
        self.with_targets: dict[str, None] = {}

    def read(self, names: list[str]) -> None:
        for name in names:
            if name not in self.bound:
                self.inputs.setdefault(name)

    def bind(self, names: list[str]) -> None:
        for name in names:
            self.bound.add(name)
            self.outputs.setdefault(name)

    def expr(self, *nodes: ast.AST | None) -> None:
        for node in nodes:
            if node is None:
                continue
            reads = _Reads()
            reads.visit(node)
            self.read(reads.names)
            self.bind(reads.walrus)

    def target(self, node: ast.AST) -> None:
        bound, read = _target_names(node)
        self.read(read)
        self.bind(bound)

    def body(self, statements: list[ast.stmt]) -> None:
        for statement in statements:
            self.statement(statement)

    def statement(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Assign):
            self.expr(node.value)
            for target in node.targets:
                self.target(target)
        elif isinstance(node, ast.AugAssign):
            self.expr(node.value)
            bound, read = _target_names(node.target)
            self.read(read + bound)  # `x += 1` reads x first
            self.bind(bound)
        elif isinstance(node, ast.AnnAssign):
            self.expr(node.value)
            if node.value is not None or not isinstance(node.target, ast.Name):
                self.target(node.target)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            self.expr(node.iter)
            self.target(node.target)
            self.body(node.body)
            self.body(node.orelse)
        elif isinstance(node, (ast.While, ast.If)):
            self.expr(node.test)
            self.body(node.body)
            self.body(node.orelse)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.expr(item.context_expr)
                if item.optional_vars is not None:
                    self.target(item.optional_vars)
                    self.with_targets.update(dict.fromkeys(_target_names(item.optional_vars)[0]))
            self.body(node.body)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            self.body(node.body)  # type: ignore[attr-defined]
            for handler in node.handlers:  # type: ignore[attr-defined]
                self.expr(handler.type)
                if handler.name:
                    self.bind([handler.name])
                self.body(handler.body)
            self.body(node.orelse)  # type: ignore[attr-defined]
            self.body(node.finalbody)  # type: ignore[attr-defined]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            # Bound before its body's names count: a body reads them when called, and a recursive
            # function reads its own name (decorators reading that name are rare enough to ignore).
            self.bind([node.name])
            self.expr(node)  # decorators, defaults, bases and free names of the body
        elif isinstance(node, ast.Import):
            self.bind([(alias.asname or alias.name).split(".")[0] for alias in node.names])
        elif isinstance(node, ast.ImportFrom):
            self.bind([alias.asname or alias.name for alias in node.names if alias.name != "*"])
        elif isinstance(node, (ast.Global, ast.Nonlocal, ast.Pass, ast.Break, ast.Continue)):
            pass
        elif isinstance(node, ast.Delete):
            for target in node.targets:
                self.expr(target)
        else:  # expressions, assert, raise, return, match, ...: read first, then any name they bind
            reads = _Reads()
            reads.visit(node)
            self.read(reads.names)
            here = list(_walk_here(node))
            stores = [sub.id for sub in here if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store)]
            stores += [sub.name for sub in here if isinstance(sub, ast.MatchAs | ast.MatchStar) and sub.name]
            self.bind(reads.walrus + stores)


def _walk_here(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` without entering nested scopes: a comprehension's or lambda's variables are its own
    (``[n for n in xs]`` binds no ``n`` in the notebook)."""
    pending = [node]
    while pending:
        current = pending.pop()
        yield current
        pending.extend(child for child in ast.iter_child_nodes(current) if not isinstance(child, _SCOPES))


def analyze(tree: ast.Module) -> CellAnalysis:
    """Inputs and outputs of a parsed cell (see the module docstring)."""
    cell = _Cell()
    cell.body(tree.body)
    result = CellAnalysis(inputs=list(cell.inputs), outputs=list(cell.outputs),
                          with_targets=list(cell.with_targets))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            result.definitions.append(node.name)
            result.definition_nodes.append(node)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.asname or alias.name for alias in node.names]
            if "*" in names:
                continue
            result.definitions += [name.split(".")[0] for name in names]
            result.definition_nodes.append(node)
        elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda)
              and all(isinstance(target, ast.Name) for target in node.targets)):
            result.definitions += [target.id for target in node.targets if isinstance(target, ast.Name)]
            result.definition_nodes.append(node)
    return result


# What an inert cell is made of: assignments to names, and expressions of constants, names, displays of them
# and operators. Not: calls, attributes, subscripts, imports, definitions, loops, `del`, displayed expressions
# (IPython's formatters), annotations (`x: int = 1` binds __annotations__), walrus or starred targets.
_INERT = (ast.Module, ast.Assign, ast.AugAssign, ast.Pass, ast.Name, ast.Constant, ast.Tuple, ast.List, ast.Set,
          ast.Dict, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.JoinedStr, ast.FormattedValue,
          ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.Load, ast.Store)


def inert(tree: ast.Module) -> bool:
    """Whether the cell only binds names to constants, to the values of names and to what the operators of
    Python's built-in types make of them (``x_3 = 3``, ``total = a * 2 + b``). Given names that hold values
    of the built-in scalar types (before it runs: what it reads and what it rebinds), such a cell runs no
    function, method or library: it reads no file, draws no random number, changes no setting and binds no
    name but its own (see ``nbflow.ipython.cells``)."""
    return all(isinstance(node, _INERT) for node in ast.walk(tree))


def entangled_definition(tree: ast.Module, definitions: list[ast.stmt]) -> str:
    """A ``def`` / ``class`` whose decorators, bases or defaults use a value the same cell computed before it
    (``agent = Agent(...)`` then ``@agent.tool def capital``), as words ("capital uses agent"); "" when none.

    A hit restores code by running the definitions (before the stored values load: they may be instances of
    a class the cell defines), so such a definition cannot run on a hit without the value it needs, and the
    cell is not cached."""
    if not definitions:
        return ""
    ids = {id(node) for node in definitions}
    computed: set[str] = set()
    for node in tree.body:
        if id(node) in ids:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                reads = _Reads()
                parts: list[ast.AST] = list(node.decorator_list)
                if isinstance(node, ast.ClassDef):
                    parts += [*node.bases, *(keyword.value for keyword in node.keywords)]
                else:
                    parts += [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
                for part in parts:
                    reads.visit(part)
                used = [name for name in reads.names if name in computed]
                if used:
                    return f"{node.name} uses {used[0]}"
            continue
        cell = _Cell()
        cell.statement(node)
        computed.update(cell.outputs)
    return ""
