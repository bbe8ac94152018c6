"""What a cell reads that its names do not show: variables looked up by name at run time, and the working
directory.

The key of a cell task has the values of the names its code reads (see :mod:`nbflow.ipython.analysis`).
Code can also read the notebook's variables by a name held in a string — ``eval("a * 10")``, ``exec``,
``globals()["a"]``, ``vars()``, ``locals()`` — in the cell or in a notebook function or class it uses (a
``display('df1', 'df2')`` helper whose ``__repr__`` evaluates the names). Which variables those are is known
only when the code runs, so such a cell is not cached. pandas' ``df.query("a > @limit")`` and ``df.eval``
name their variables after ``@``: those are inputs (see :func:`query_names`).

Code that asks for the working directory (``os.getcwd()``, ``Path.cwd()``, ``os.path.abspath``,
``Path.resolve()``) computes from it: the directory is then part of the key, so a run in another directory
computes its own paths and writes its own files.
"""

from __future__ import annotations

import ast
import re
import types
from typing import Any

__all__ = ["dynamic_reads", "query_names"]

_BY_NAME = frozenset({"eval", "exec", "globals", "vars", "locals"})
_CWD = frozenset({"getcwd", "getcwdb", "cwd", "abspath", "realpath", "resolve", "absolute"})
_QUERY = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)")
_MAX_FUNCTIONS = 200  # notebook functions and classes looked through for one cell

# code object -> (name it reads by, reads the working directory)
_CODE: dict[types.CodeType, tuple[str, bool]] = {}


def query_names(node: ast.Call) -> list[str]:
    """The ``@name`` variables of a pandas ``.query("...")`` / ``.eval("...")`` call (empty for other calls)."""
    func = node.func
    if not (isinstance(func, ast.Attribute) and func.attr in ("query", "eval")):
        return []
    names: list[str] = []
    for argument in [*node.args, *(keyword.value for keyword in node.keywords)]:
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            names += _QUERY.findall(argument.value)
    return names


def _tree_reads(tree: ast.AST) -> tuple[str, bool]:
    by_name, cwd = "", False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _BY_NAME:
            name = node.func.id
            # vars(obj) reads an object's attributes; eval/exec with their own namespace read only that.
            if name == "vars" and node.args:
                continue
            if name in ("eval", "exec") and len(node.args) >= 2:
                continue
            by_name = by_name or f"{name}()"
        elif (isinstance(node, ast.Attribute) and node.attr in _CWD) or (isinstance(node, ast.Name)
                                                                          and node.id in _CWD):
            cwd = True
    return by_name, cwd


def _code_reads(code: types.CodeType) -> tuple[str, bool]:
    found = _CODE.get(code)
    if found is not None:
        return found
    by_name, cwd = "", False
    stack = [code]
    while stack:
        current = stack.pop()
        names = set(current.co_names)
        hit = names & _BY_NAME
        if hit and not by_name:
            by_name = f"{sorted(hit)[0]}()"
        cwd = cwd or bool(names & _CWD)
        stack.extend(const for const in current.co_consts if isinstance(const, types.CodeType))
    if len(_CODE) > 10_000:
        _CODE.clear()
    _CODE[code] = (by_name, cwd)
    return by_name, cwd


def _codes(value: Any) -> list[tuple[types.CodeType, dict[str, Any]]]:
    """The code objects of a notebook function or class, with the globals they read names from."""
    from nbflow.hashing.code import is_user_function

    found = []
    candidates = [value] if not isinstance(value, type) else [
        member for member in vars(value).values()
        if isinstance(member, (types.FunctionType, staticmethod, classmethod, property))]
    for candidate in candidates:
        if isinstance(candidate, (staticmethod, classmethod)):
            candidate = candidate.__func__
        if isinstance(candidate, property):
            candidate = candidate.fget
        if isinstance(candidate, types.FunctionType) and is_user_function(candidate):
            found.append((candidate.__code__, candidate.__globals__))
    return found


_TREES: dict[str, tuple[str, bool]] = {}  # a cell's normalized digest -> what its own code reads


def dynamic_reads(tree: ast.Module, inputs: dict[str, Any], digest: str = "") -> tuple[str, bool]:
    """(``"eval()"``-like words when the cell, or notebook code it uses, reads variables by name at run time,
    else ""; whether it reads the working directory). ``digest``: the cell's normalized digest, to look
    through its code once."""
    found = _TREES.get(digest) if digest else None
    if found is None:
        found = _tree_reads(tree)
        if digest:
            if len(_TREES) > 4096:
                _TREES.clear()
            _TREES[digest] = found
    by_name, cwd = found
    seen: set[int] = set()
    pending = [value for value in inputs.values() if isinstance(value, (types.FunctionType, type))]
    while pending and len(seen) < _MAX_FUNCTIONS and not (by_name and cwd):
        value = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        for code, namespace in _codes(value):
            reads, reads_cwd = _code_reads(code)
            if reads and not by_name:
                qualname = getattr(value, "__qualname__", getattr(value, "__name__", "?"))
                by_name = f"{reads} in {qualname}"
            cwd = cwd or reads_cwd
            for name in code.co_names:  # the notebook functions and classes it calls in turn
                other = namespace.get(name)
                if isinstance(other, (types.FunctionType, type)) and id(other) not in seen:
                    pending.append(other)
    return by_name, cwd
