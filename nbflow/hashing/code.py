"""Code identity: a digest of what a function, class or notebook cell does, stable across restarts.

The identity of a function is the digest of

* its **normalized source**: the AST of its definition (found through ``linecache``, which also holds
  IPython cells), with the decorators of the definition and every docstring dropped, written out with
  field names and without positions. Comments, blank lines, formatting, docstrings and decorators do
  not count; any other edit does. File names, line numbers, bytecode and pickled function bytes are
  never part of it;
* what it **refers to**, resolved at the time of the call: each global name it reads (and each
  ``module.attr`` chain starting at a global module, so ``helpers.clean(x)`` depends on
  ``helpers.clean``), each closure cell, its default values, and each module it imports inside its
  body. A function or class of user code (``__main__``, notebook cells, modules of the project that
  are neither in ``site-packages``/``dist-packages`` nor in the standard library) counts by its own
  code identity, recursively (cycles such as mutual recursion are handled, see below); a function,
  class or module of an installed package counts by its name and the installed version of its
  distribution; standard-library ones by name; any other value by its :func:`~nbflow.hashing.fingerprint`
  (or, when it cannot be fingerprinted, by its type's name). Builtins are skipped. A user module that
  a function uses as a whole (not through ``module.attr``) counts by name only, except modules
  imported inside the function body, which count by the normalized source of their file.

Classes are identified the same way from the ``class`` statement (decorators and docstrings dropped),
plus the identities of their bases and of the methods defined in the class body. A class without
findable source (built by ``type()``, ``namedtuple()``, ``exec`` of a string) counts by its name, its
annotations and its plain attributes.

When the source of a function cannot be found (code compiled from a string that is not in
``linecache``, a ``.pyc`` without its ``.py``), the identity falls back to the parts of the code object
that do not depend on positions: constants (nested code objects recursively), names, variable names,
argument counts, flags and the symbolic instruction stream (opcode names and arguments, without
offsets or line numbers; constants and names alone could not tell ``a + b`` from ``a - b``). **That
fallback is stable across processes and kernel restarts only for the same Python version**, and a
docstring edit can change it.

Caching: the static part (normalized AST digest and the names to resolve) is computed once per code
object, so ``inspect``-style source lookups never run per call. Per call, the names are resolved again
in ``__globals__``; digests of immutable plain values (numbers, strings, tuples of them) are reused
while the name still resolves to the same object, mutable values (lists, dicts, arrays) are
fingerprinted again on every call.

Cycles: when a function is met again while its own identity is being computed, a back-reference to
its depth is written instead. Results that depend on such a back-reference to an outer function are
not reused, so each identity is a deterministic function of the code and of what it refers to,
whichever function is asked first.
"""

from __future__ import annotations

import ast
import builtins
import dis
import linecache
import operator
import os
import struct
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import xxhash

from nbflow.exceptions import UnfingerprintableError
from nbflow.hashing import values as _values

__all__ = ["code_identity", "source_identity"]

_digest = xxhash.xxh3_128_digest
_hexdigest = xxhash.xxh3_128_hexdigest
_pack_I = struct.Struct("<I").pack
_sb = _values._sb

_FunctionType = types.FunctionType
_MethodType = types.MethodType
_ModuleType = types.ModuleType
_CodeType = types.CodeType

_USER = ("user", "")
_MISSING: Any = object()
_SKIP: Any = object()
_IMPORT = "<import>"  # first element of a dependency chain that names a module imported in the body
_MAX_CACHE = 4096


# -- where code lives: user code, the standard library, or an installed package --------------------

_STDLIB: tuple[str, ...] | None = None


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _stdlib_dirs() -> tuple[str, ...]:
    global _STDLIB
    if _STDLIB is None:
        import sysconfig

        paths = sysconfig.get_paths()
        _STDLIB = tuple(sorted({_real(paths[k]) for k in ("stdlib", "platstdlib") if paths.get(k)}))
    return _STDLIB


def _top(part: str) -> str:
    return part.split(".", 1)[0]


# nbflow's own code counts as a library (by version) even when it is installed in editable mode:
# user code that calls nbflow must not depend on nbflow's internals and their caches.
_NBFLOW_DIR = _real(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _classify_path(filename: str) -> tuple[str, str]:
    """("user" | "stdlib" | "third", top-level package name) for a source file."""
    if not filename or (filename.startswith("<") and filename.endswith(">")):
        return _USER
    real = _real(filename)
    if real.startswith(_NBFLOW_DIR + os.sep):
        return ("third", "nbflow")
    parts = real.split(os.sep)
    for i in range(len(parts) - 1, -1, -1):
        # Checked before the stdlib: a virtualenv's site-packages sits under its "platstdlib".
        if parts[i] in ("site-packages", "dist-packages"):
            return ("third", _top(parts[i + 1]) if i + 1 < len(parts) else "")
    path = os.sep.join(parts)
    for d in _stdlib_dirs():
        if path.startswith(d + os.sep):
            rest = [p for p in path[len(d) + 1 :].split(os.sep) if p != "lib-dynload"]
            return ("stdlib", _top(rest[0]) if rest else "")
    return _USER


_PATH_KINDS: dict[str, tuple[str, str]] = {}


def _path_kind(filename: str) -> tuple[str, str]:
    r = _PATH_KINDS.get(filename)
    if r is None:
        r = _classify_path(filename)
        if len(_PATH_KINDS) > _MAX_CACHE:
            _PATH_KINDS.clear()
        _PATH_KINDS[filename] = r
    return r


_MODULE_KINDS: dict[str, tuple[str, str]] = {}


def _module_kind(name: object) -> tuple[str, str]:
    """Kind of an imported module, by name. Modules that are not imported count as user code."""
    if not isinstance(name, str) or not name:
        return _USER
    r = _MODULE_KINDS.get(name)
    if r is not None:
        return r
    top = _top(name)
    if name == "__main__":
        r = _USER
    else:
        mod = sys.modules.get(name)
        if mod is None:
            return ("stdlib", top) if top in sys.stdlib_module_names else _USER
        where = getattr(mod, "__file__", None)
        if not isinstance(where, str):
            path = getattr(mod, "__path__", None)  # namespace packages have a path but no file
            where = next(iter(path), None) if path is not None else None
        if isinstance(where, str) and where:
            kind = _path_kind(where)[0]
            r = (kind, top) if kind != "user" else _USER
        elif top in sys.stdlib_module_names or name in sys.builtin_module_names:
            r = ("stdlib", top)
        else:
            r = _USER
    if len(_MODULE_KINDS) > _MAX_CACHE:
        _MODULE_KINDS.clear()
    _MODULE_KINDS[name] = r
    return r


def is_user_class(cls: type) -> bool:
    """True for classes whose code identity (not just their name) should count."""
    kind = _module_kind(cls.__module__)[0]
    if kind == "user":
        return True
    if kind == "stdlib" and "<locals>" not in cls.__qualname__:
        # Classes built by exec() in a namespace without __name__ claim to live in "builtins";
        # only trust the module if the class can actually be found there.
        obj: Any = sys.modules.get(cls.__module__)
        for part in cls.__qualname__.split("."):
            obj = getattr(obj, part, None)
        return obj is not cls
    return False


_VERSIONS: dict[str, str] = {}
_PKG_DISTS: Mapping[str, list[str]] | None = None


def _lookup_version(top: str) -> str:
    global _PKG_DISTS
    from importlib import metadata

    try:
        return metadata.version(top)
    except Exception:
        pass
    try:
        if _PKG_DISTS is None:
            # Maps import names to distributions ("yaml" -> "PyYAML"); slow, so built once.
            _PKG_DISTS = metadata.packages_distributions()
        for dist in _PKG_DISTS.get(top, ()):
            return metadata.version(dist)
    except Exception:
        pass
    v = getattr(sys.modules.get(top), "__version__", None)
    return v if isinstance(v, str) else ""


def _dist_version(top: str) -> str:
    v = _VERSIONS.get(top)
    if v is None:
        v = _VERSIONS[top] = _lookup_version(top)
    return v


def module_version(name: str) -> str:
    """Installed version of the distribution providing module ``name``; "" for stdlib and user code."""
    kind, top = _module_kind(name)
    return _dist_version(top) if kind == "third" else ""


# -- source files and their ASTs -------------------------------------------------------------------


class _FileInfo:
    __slots__ = ("by_line", "classes", "lines", "module_digest", "text", "tree")

    def __init__(self, lines: list[str], text: str, tree: ast.Module) -> None:
        self.lines = lines
        self.text = text
        self.tree = tree
        self.by_line: dict[int, list[tuple[str, ast.AST]]] = {}
        self.classes: dict[str, list[ast.ClassDef]] = {}
        self.module_digest: bytes | None = None
        _Indexer(self).visit_body(tree.body, "")


class _Indexer:
    """Indexes definitions by first line (def line and first decorator line) and by qualname."""

    def __init__(self, info: _FileInfo) -> None:
        self.info = info

    def add(self, line: int, qualname: str, node: ast.AST) -> None:
        self.info.by_line.setdefault(line, []).append((qualname, node))

    def visit_body(self, nodes: Iterable[ast.AST], prefix: str) -> None:
        for n in nodes:
            self.visit(n, prefix)

    def visit(self, node: ast.AST, prefix: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            q = prefix + node.name
            self.add(node.lineno, q, node)
            if node.decorator_list:
                self.add(node.decorator_list[0].lineno, q, node)
            self.visit_body(node.decorator_list, prefix)
            self.visit(node.args, prefix)
            self.visit_body(node.body, q + ".<locals>.")
        elif isinstance(node, ast.ClassDef):
            q = prefix + node.name
            self.info.classes.setdefault(q, []).append(node)
            self.visit_body([*node.decorator_list, *node.bases, *node.keywords], prefix)
            self.visit_body(node.body, q + ".")
        elif isinstance(node, ast.Lambda):
            q = prefix + "<lambda>"
            self.add(node.lineno, q, node)
            self.visit(node.args, prefix)
            self.visit(node.body, q + ".<locals>.")
        else:
            for child in ast.iter_child_nodes(node):
                self.visit(child, prefix)


_FILES: dict[str, _FileInfo] = {}


def _file_info(filename: str, module_globals: Any) -> _FileInfo | None:
    try:
        linecache.checkcache(filename)
        lines = linecache.getlines(filename, module_globals if isinstance(module_globals, dict) else None)
    except Exception:
        return None
    if not lines:
        return None
    info = _FILES.get(filename)
    if info is not None and info.lines is lines:
        return info
    text = "".join(lines)
    if info is not None and info.text == text:
        info.lines = lines
        return info
    try:
        info = _FileInfo(lines, text, ast.parse(text))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    _FILES.pop(filename, None)
    if len(_FILES) >= 256:  # notebook cells each get their own "file": keep the most recent ones
        del _FILES[next(iter(_FILES))]
    _FILES[filename] = info
    return info


# -- normalized AST ----------------------------------------------------------------------------------

_DOC_OWNERS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)


def _is_docstring(stmt: ast.AST) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _dump(node: ast.AST, out: list[str], top: bool = False) -> None:
    # Like ast.dump(annotate_fields=False, include_attributes=False), but with field names and
    # without None/empty fields, so fields added by newer Pythons (type_params=[] in 3.12) leave the
    # text unchanged, and with the top decorators and all docstrings left out.
    if isinstance(node, ast.Constant):
        v = node.value
        out.append(f"Constant:{type(v).__name__}:{v!r}")
        if node.kind is not None:
            out.append(f"kind={node.kind!r}")
        return
    out.append(type(node).__name__ + "(")
    doc_owner = isinstance(node, _DOC_OWNERS)
    for name in node._fields:
        if (top and name == "decorator_list") or name == "type_comment":
            continue
        value = getattr(node, name, None)
        if value is None:
            continue
        if isinstance(value, list):
            if doc_owner and name == "body" and value and _is_docstring(value[0]):
                value = value[1:]
            if not value:
                continue
            out.append("[" + name)
            for item in value:
                if isinstance(item, ast.AST):
                    _dump(item, out)
                else:
                    out.append(repr(item))
            out.append("]")
        elif isinstance(value, ast.AST):
            out.append(name + ":")
            _dump(value, out)
        else:
            out.append(f"{name}={value!r}")
    out.append(")")


def _ast_digest(node: ast.AST) -> bytes:
    out: list[str] = []
    _dump(node, out, top=True)
    return _digest("\x00".join(out).encode("utf-8", "surrogatepass"))


# -- finding the definition of a code object ---------------------------------------------------------

_VARARGS, _VARKEYWORDS = 0x04, 0x08


def _code_argnames(code: types.CodeType) -> tuple[str, ...]:
    n = code.co_argcount + code.co_kwonlyargcount
    n += bool(code.co_flags & _VARARGS) + bool(code.co_flags & _VARKEYWORDS)
    return code.co_varnames[:n]


def _node_argnames(args: ast.arguments) -> tuple[str, ...]:
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    if args.vararg is not None:
        names.append(args.vararg.arg)
    if args.kwarg is not None:
        names.append(args.kwarg.arg)
    return tuple(names)


def _def_name(node: ast.AST) -> str | None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return node.name
    if isinstance(node, ast.Lambda):
        return "<lambda>"
    return None


def _contains(node: ast.AST, line: int, col: int) -> bool:
    start = (node.lineno, node.col_offset)  # type: ignore[attr-defined]
    end = (node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]
    return start <= (line, col) <= end


def _narrow_by_positions(nodes: list[ast.AST], code: types.CodeType) -> list[ast.AST]:
    """Keep the candidate definitions whose source span holds every instruction of ``code``."""
    if not hasattr(code, "co_positions"):  # Python < 3.11
        return nodes
    points = []
    for ins in dis.get_instructions(code):
        p = ins.positions
        if p is None or p.lineno is None or p.col_offset is None or p.end_col_offset is None:
            continue
        if (p.end_lineno, p.end_col_offset) <= (p.lineno, p.col_offset):
            continue  # a zero-width span (RESUME, an implicit return): not the lambda's own text
        points.append((p.lineno, p.col_offset))
    if not points:
        return nodes
    return [n for n in nodes if all(_contains(n, ln, col) for ln, col in points)]


def _enclosing_statement(tree: ast.AST, nodes: list[ast.AST]) -> ast.AST | None:
    first = min(n.lineno for n in nodes)  # type: ignore[attr-defined]
    last = max(n.end_lineno or n.lineno for n in nodes)  # type: ignore[attr-defined]
    found = None
    for n in ast.walk(tree):  # breadth first: the last statement that covers them is the innermost
        if isinstance(n, ast.stmt) and n.lineno <= first and (n.end_lineno or n.lineno) >= last:
            found = n
    return found


def _find_definition(info: _FileInfo, code: types.CodeType) -> ast.AST | None:
    candidates = info.by_line.get(code.co_firstlineno)
    if not candidates:
        return None
    named = [(q, n) for q, n in candidates if _def_name(n) == code.co_name]
    qualname = getattr(code, "co_qualname", None)
    matches = [n for q, n in named if q == qualname] or [n for _, n in named]
    want = _code_argnames(code)
    matches = [n for n in matches if _node_argnames(n.args) == want]  # type: ignore[attr-defined]
    if len(matches) > 1:
        matches = _narrow_by_positions(matches, code) or matches
    if len(matches) == 1:
        return matches[0]
    if matches:
        # Several lambdas with the same arguments on one line that positions cannot tell apart
        # (`lambda x: lambda x: x`): use the whole statement. They share an identity.
        return _enclosing_statement(info.tree, matches)
    return None


# -- dependencies named in code ----------------------------------------------------------------------

_LOAD_GLOBAL = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_LOAD_ATTR = frozenset({"LOAD_ATTR", "LOAD_METHOD"})


def _chains_from_code(code: types.CodeType) -> set[tuple[str, ...]]:
    """Global names read by ``code`` and nested code, with the attribute chains read off them."""
    chains: set[tuple[str, ...]] = set()
    todo = [code]
    while todo:
        c = todo.pop()
        instrs = [i for i in dis.get_instructions(c) if i.opname != "CACHE"]
        for k, ins in enumerate(instrs):
            if ins.opname in _LOAD_GLOBAL:
                chain = [ins.argval]
                j = k + 1
                while j < len(instrs) and instrs[j].opname in _LOAD_ATTR:
                    chain.append(instrs[j].argval)
                    j += 1
                for n in range(1, len(chain) + 1):
                    chains.add(tuple(chain[:n]))
            elif ins.opname == "IMPORT_NAME":
                level = instrs[k - 2].argval if k >= 2 and instrs[k - 2].opname == "LOAD_CONST" else 0
                if level == 0:
                    chains.add((_IMPORT, ins.argval))
        todo.extend(x for x in c.co_consts if isinstance(x, _CodeType))
    return chains


def _chains_from_ast(nodes: Iterable[ast.AST], skip_function_bodies: bool) -> tuple[set[tuple[str, ...]], set[str]]:
    """(names and attribute chains read, names bound) in ``nodes``."""
    chains: set[tuple[str, ...]] = set()
    bound: set[str] = set()

    def visit(n: ast.AST) -> None:
        if isinstance(n, ast.Attribute):
            attrs = []
            cur: ast.AST = n
            while isinstance(cur, ast.Attribute):
                attrs.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name):
                chain = [cur.id, *reversed(attrs)]
                for k in range(1, len(chain) + 1):
                    chains.add(tuple(chain[:k]))
            else:
                visit(cur)
            return
        if isinstance(n, ast.Name):
            if isinstance(n.ctx, ast.Load):
                chains.add((n.id,))
            else:
                bound.add(n.id)
            return
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            for alias in n.names:
                bound.add((alias.asname or alias.name).split(".")[0])
        if skip_function_bodies and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            # Only what the class body itself evaluates: decorators, defaults, annotations.
            if not isinstance(n, ast.Lambda):
                bound.add(n.name)
                for d in n.decorator_list:
                    visit(d)
                if n.returns is not None:
                    visit(n.returns)
            visit(n.args)
            return
        if isinstance(n, ast.ClassDef):
            bound.add(n.name)
        for child in ast.iter_child_nodes(n):
            visit(child)

    for node in nodes:
        visit(node)
    return chains, bound


def _dep_keys(chains: Iterable[tuple[str, ...]]) -> tuple[tuple[bytes, tuple[str, ...]], ...]:
    return tuple((_sb(".".join(c)), c) for c in sorted(chains))


# -- static (per definition) part ----------------------------------------------------------------------

_FLAG_MASK = 0x04 | 0x08 | 0x20 | 0x80 | 0x100 | 0x200  # varargs, varkw, generator, coroutine kinds


def _code_fallback_digest(code: types.CodeType, doc: object) -> bytes:
    consts: list[object] = []
    for i, c in enumerate(code.co_consts):
        if isinstance(c, _CodeType):
            consts.append(("<code>", _code_fallback_digest(c, None)))
        elif i == 0 and doc is not None and c is doc:
            consts.append(("<doc>",))
        else:
            consts.append(c)
    instrs = tuple(
        (ins.opname, -1 if ins.arg is None else ins.arg)
        for ins in dis.get_instructions(code)
        if ins.opname not in ("CACHE", "RESUME")
    )
    parts = (
        code.co_name,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags & _FLAG_MASK,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_names,
        tuple(consts),
        instrs,
    )
    return _values.fingerprint_digest(parts)


class _Static:
    __slots__ = ("deps", "digest", "ref")

    def __init__(self, digest: bytes, deps: tuple[tuple[bytes, tuple[str, ...]], ...]) -> None:
        self.digest = digest
        self.deps = deps
        self.ref: Any = None


_STATICS: dict[int, _Static] = {}


def _forget(cache: dict[int, Any], key: int) -> Callable[[Any], None]:
    def callback(ref: Any) -> None:
        entry = cache.get(key)
        if entry is not None and entry.ref is ref:
            del cache[key]

    return callback


def _code_static(fn: types.FunctionType) -> _Static:
    code = fn.__code__
    key = id(code)
    st = _STATICS.get(key)
    if st is not None and st.ref() is code:
        return st
    digest = None
    info = _file_info(code.co_filename, fn.__globals__)
    if info is not None:
        node = _find_definition(info, code)
        if node is not None:
            digest = b"A" + _ast_digest(node)
    if digest is None:
        digest = b"B" + _code_fallback_digest(code, fn.__doc__)
    st = _Static(digest, _dep_keys(_chains_from_code(code)))
    st.ref = weakref.ref(code, _forget(_STATICS, key))
    _STATICS[key] = st
    return st


class _ClassStatic:
    __slots__ = ("deps", "digest", "filename", "ref")

    def __init__(
        self, digest: bytes | None, deps: tuple[tuple[bytes, tuple[str, ...]], ...], filename: str | None
    ) -> None:
        self.digest = digest
        self.deps = deps
        self.filename = filename
        self.ref: Any = None


_CLASS_STATICS: dict[int, _ClassStatic] = {}


def _member_functions(attr: object) -> list[types.FunctionType]:
    if type(attr) is _FunctionType:
        return [attr]
    if isinstance(attr, (staticmethod, classmethod)):
        f = attr.__func__
        return [f] if type(f) is _FunctionType else []
    if isinstance(attr, property):
        return [f for f in (attr.fget, attr.fset, attr.fdel) if type(f) is _FunctionType]
    func = getattr(attr, "func", None) if type(attr).__name__ == "cached_property" else None
    return [func] if type(func) is _FunctionType else []


def _class_static(cls: type) -> _ClassStatic:
    key = id(cls)
    st = _CLASS_STATICS.get(key)
    if st is not None and st.ref() is cls:
        return st
    st = _build_class_static(cls)
    st.ref = weakref.ref(cls, _forget(_CLASS_STATICS, key))
    _CLASS_STATICS[key] = st
    return st


def _build_class_static(cls: type) -> _ClassStatic:
    methods = [f for attr in list(vars(cls).values()) for f in _member_functions(attr)]
    filenames: list[str] = []
    for f in methods:
        name = f.__code__.co_filename
        if name not in filenames and name != "<string>":
            filenames.append(name)
    mod = sys.modules.get(cls.__module__)
    mod_file = getattr(mod, "__file__", None)
    if isinstance(mod_file, str) and mod_file not in filenames:
        filenames.append(mod_file)
    module_globals = methods[0].__globals__ if methods else getattr(mod, "__dict__", None)
    first = getattr(cls, "__firstlineno__", None)  # Python >= 3.13
    for filename in filenames:
        info = _file_info(filename, module_globals)
        if info is None:
            continue
        nodes = info.classes.get(cls.__qualname__) or [
            n for q, ns in info.classes.items() if q.rsplit(".", 1)[-1] == cls.__name__ for n in ns
        ]
        lines = [f.__code__.co_firstlineno for f in methods if f.__code__.co_filename == filename]
        node = _pick_class_node(nodes, first, lines)
        if node is not None:
            chains, bound = _chains_from_ast(node.body, skip_function_bodies=True)
            chains |= _chains_from_ast([*node.decorator_list, *node.bases, *node.keywords], False)[0]
            deps = {c for c in chains if c[0] not in bound}
            return _ClassStatic(b"A" + _ast_digest(node), _dep_keys(deps), filename)
    return _ClassStatic(None, (), None)


def _pick_class_node(nodes: list[ast.ClassDef], first: int | None, lines: list[int]) -> ast.ClassDef | None:
    if not nodes:
        return None
    if first is not None:
        at = [n for n in nodes if n.lineno == first or (n.decorator_list and n.decorator_list[0].lineno == first)]
        return at[-1] if at else None
    if lines:
        spans = [n for n in nodes if any(n.lineno <= ln <= (n.end_lineno or n.lineno) for ln in lines)]
        return spans[-1] if spans else None
    return nodes[-1]  # without other clues, the last definition is the one that runs


# -- resolving identities -------------------------------------------------------------------------------


class _Session:
    """State of one top-level identity computation: the definitions in progress and finished ones."""

    __slots__ = ("memo", "stack", "taint")

    def __init__(self) -> None:
        self.stack: dict[int, int] = {}  # id of a function/class in progress -> its depth
        self.memo: dict[int, tuple[object, bytes]] = {}
        self.taint = _NO_TAINT  # smallest depth a back-reference in the current subtree points to


_NO_TAINT = 1 << 30
_tls = threading.local()


def _session() -> tuple[_Session, bool]:
    s = getattr(_tls, "session", None)
    if s is None:
        s = _tls.session = _Session()
        return s, True
    return s, False


def _end_session() -> None:
    _tls.session = None


# What the last computation of a definition read, so that the next call can tell cheaply whether its
# identity can have changed. Each check is (getter, argument, object read, kind, digest):
_G_CHAIN, _G_CELL, _G_ATTR, _G_IMPORT, _G_SAME = range(5)  # how to read the object again
# FIXED: the same object means the same digest (immutable values, library code, modules);
# USER: user code, valid if its own snapshot is (recursively); RECOMPUTE: compare a fresh digest.
_K_FIXED, _K_USER, _K_RECOMPUTE = range(3)

_Check = tuple[int, Any, Any, int, bytes]


class _Snap:
    __slots__ = ("builtins", "checks", "fn_state", "members", "node", "ns", "ref")

    def __init__(self, ns: Mapping[str, Any], builtin_names: Any) -> None:
        self.ns = ns
        self.builtins = builtin_names
        self.checks: list[_Check] = []
        self.fn_state: tuple[Any, Any, Any] | None = None  # a function's code, defaults, kwdefaults
        self.members: tuple[tuple[str, ...], tuple[Any, ...]] | None = None
        self.node: bytes | None = None  # only set when the digest does not depend on a cycle
        self.ref: Any = None


_SNAPS: dict[int, _Snap] = {}


def _resolve_chain(chain: tuple[str, ...], namespace: Mapping[str, Any], builtin_names: Any) -> Any:
    """The object a dependency chain names now; _MISSING if undefined, _SKIP if it does not count."""
    obj = namespace.get(chain[0], _MISSING)
    if obj is _MISSING:
        return _MISSING if len(chain) == 1 and chain[0] not in builtin_names else _SKIP
    for attr in chain[1:]:
        if not isinstance(obj, _ModuleType):
            return _SKIP  # only chains through modules; `obj.attr` on a value is the value's business
        try:
            obj = getattr(obj, attr)
        except Exception:
            return _MISSING
    return obj


def _valid(snap: _Snap, owner: Any, sess: _Session, seen: set[int]) -> bool:
    """True if recomputing ``owner``'s identity would read exactly what ``snap`` recorded."""
    state = snap.fn_state
    if state is not None and (
        owner.__code__ is not state[0] or owner.__defaults__ is not state[1] or owner.__kwdefaults__ is not state[2]
    ):
        return False
    members = snap.members
    if members is not None:
        current = vars(owner)
        if tuple(current) != members[0] or not all(map(operator.is_, current.values(), members[1])):
            return False
    for getter, arg, obj, kind, node in snap.checks:
        if getter == _G_CHAIN:
            cur = _resolve_chain(arg, snap.ns, snap.builtins)
        elif getter == _G_CELL:
            try:
                cur = arg.cell_contents
            except ValueError:
                cur = _MISSING
        elif getter == _G_ATTR:
            cur = getattr(owner, arg, None)
        elif getter == _G_IMPORT:
            if _import_dep(arg) != node:
                return False
            continue
        else:
            cur = obj
        if cur is not obj:
            return False
        if kind == _K_FIXED:
            continue
        if kind == _K_USER:
            key = id(obj)
            if key in sess.stack:  # its digest here would be a back-reference, not the stored one
                return False
            if key in seen:
                continue
            seen.add(key)
            sub = _SNAPS.get(key)
            if sub is None or sub.ref() is not obj or not _valid(sub, obj, sess, seen):
                return False
        elif _dep(obj, sess) != node:
            return False
    return True


def _node(obj: Any, compute: Callable[[Any, _Session], tuple[bytes, _Snap]], sess: _Session) -> bytes:
    """Identity of a user function or class, reusing the last one when nothing it read changed."""
    key = id(obj)
    m = sess.memo.get(key)
    if m is not None and m[0] is obj:
        return m[1]
    stack = sess.stack
    d = stack.get(key)
    if d is not None:
        if d < sess.taint:
            sess.taint = d
        return b"^" + _pack_I(len(stack) - d)
    snap = _SNAPS.get(key)
    if snap is not None and snap.node is not None and snap.ref() is obj and _valid(snap, obj, sess, {key}):
        return snap.node
    depth = len(stack)
    stack[key] = depth
    saved = sess.taint
    sess.taint = _NO_TAINT
    t = _NO_TAINT
    try:
        result, snap = compute(obj, sess)
    finally:
        del stack[key]
        t = sess.taint
        # A back-reference to this node or below is settled here; one to an outer node is not.
        sess.taint = min(saved, t) if t < depth else saved
    if t >= depth:
        sess.memo[key] = (obj, result)
        snap.node = result
    snap.ref = weakref.ref(obj, _forget(_SNAPS, key))
    if len(_SNAPS) > _MAX_CACHE * 4:
        _SNAPS.clear()
    _SNAPS[key] = snap
    return result


def _h(*parts: bytes) -> bytes:
    return _digest(b"".join(parts))


_EXT: dict[int, tuple[object, bytes]] = {}


def _remember(obj: object, node: bytes) -> bytes:
    if len(_EXT) > _MAX_CACHE:
        _EXT.clear()
    _EXT[id(obj)] = (obj, node)
    return node


def _ext_name(module: object, qualname: object, kind: str, top: str) -> bytes:
    version = _dist_version(top) if kind == "third" else ""
    return _h(b"x", _sb(str(module)), _sb(str(qualname)), _sb(top), _sb(version))


def _fn_node(fn: types.FunctionType, sess: _Session) -> bytes:
    e = _EXT.get(id(fn))
    if e is not None and e[0] is fn:
        return e[1]
    kind, top = _path_kind(fn.__code__.co_filename)
    if kind == "user":
        return _node(fn, _compute_function, sess)
    base = _ext_name(fn.__module__, fn.__qualname__, kind, top)
    wrapped = fn.__dict__.get("__wrapped__")
    if wrapped is not None:  # a library decorator around user code: the user code counts too
        return b"E" + _h(base, _dep(wrapped, sess))
    return _remember(fn, b"E" + base)


def _record(obj: Any, sess: _Session, parts: list[bytes], snap: _Snap, getter: int, arg: Any) -> None:
    """Append the digest of a dependency to ``parts`` and how to re-check it to ``snap``."""
    if obj is _MISSING:
        parts.append(b"?")
        snap.checks.append((getter, arg, obj, _K_FIXED, b""))
        return
    node = _dep(obj, sess)
    parts.append(node)
    snap.checks.append((getter, arg, obj, _check_kind(obj), node))


def _check_kind(obj: Any) -> int:
    t = type(obj)
    if t is _FunctionType:
        if _path_kind(obj.__code__.co_filename)[0] == "user":
            return _K_USER
        return _K_RECOMPUTE if "__wrapped__" in obj.__dict__ else _K_FIXED
    if isinstance(obj, type):
        return _K_USER if is_user_class(obj) else _K_FIXED
    if isinstance(obj, _ModuleType):
        return _K_FIXED
    if isinstance(obj, _BUILTIN_CALLABLES):
        owner = getattr(obj, "__self__", None)
        return _K_FIXED if owner is None or isinstance(owner, (_ModuleType, type)) else _K_RECOMPUTE
    return _K_FIXED if _is_immutable(obj) else _K_RECOMPUTE


def _resolve_deps(
    deps: tuple[tuple[bytes, tuple[str, ...]], ...],
    snap: _Snap,
    sess: _Session,
    parts: list[bytes],
    code_only: bool = False,
) -> None:
    namespace, builtin_names = snap.ns, snap.builtins
    for key, chain in deps:
        if chain[0] == _IMPORT:
            node = _import_dep(chain[1])
            parts.append(key)
            parts.append(node)
            snap.checks.append((_G_IMPORT, chain[1], None, _K_RECOMPUTE, node))
            continue
        obj = _resolve_chain(chain, namespace, builtin_names)
        if obj is _SKIP or (code_only and obj is not _MISSING and not _is_code_like(obj)):
            snap.checks.append((_G_CHAIN, chain, obj, _K_FIXED, b""))
            continue
        parts.append(key)
        _record(obj, sess, parts, snap, _G_CHAIN, chain)


def _compute_function(fn: types.FunctionType, sess: _Session) -> tuple[bytes, _Snap]:
    code = fn.__code__
    st = _code_static(fn)
    snap = _Snap(fn.__globals__, fn.__builtins__)  # type: ignore[attr-defined]
    snap.fn_state = (code, fn.__defaults__, fn.__kwdefaults__)
    parts = [b"F", st.digest]
    _resolve_deps(st.deps, snap, sess, parts)
    closure = fn.__closure__
    if closure:
        for name, cell in zip(code.co_freevars, closure):
            if name == "__class__":  # the class of a method using super(): it is the caller's side
                continue
            try:
                obj = cell.cell_contents
            except ValueError:  # an empty cell
                obj = _MISSING
            parts.append(b"c" + _sb(name))
            _record(obj, sess, parts, snap, _G_CELL, cell)
    for attr, tag in (("__defaults__", b"d"), ("__kwdefaults__", b"k")):
        value = getattr(fn, attr)
        if value:
            parts.append(tag)
            _record(value, sess, parts, snap, _G_ATTR, attr)
    return b"D" + _digest(b"".join(parts)), snap


def _cls_node(cls: type, sess: _Session) -> bytes:
    e = _EXT.get(id(cls))
    if e is not None and e[0] is cls:
        return e[1]
    if is_user_class(cls):
        return _node(cls, _compute_class, sess)
    kind, top = _module_kind(cls.__module__)
    return _remember(cls, b"E" + _ext_name(cls.__module__, cls.__qualname__, kind, top))


def _compute_class(cls: type, sess: _Session) -> tuple[bytes, _Snap]:
    st = _class_static(cls)
    members = vars(cls)
    names = sorted(k for k in members if isinstance(k, str))
    methods: list[tuple[str, Any]] = []
    prefix = cls.__qualname__ + "."
    for name in names:
        attr = members[name]
        for f in _member_functions(attr):
            # Methods written in the class body; generated ones (dataclass __init__, ...) follow
            # from the class source and would tie the identity to the Python version.
            if st.filename is None or f.__code__.co_filename == st.filename:
                methods.append((name, f))
        if isinstance(attr, type) and attr.__qualname__.startswith(prefix):
            methods.append((name, attr))
    if methods:
        namespace = next((f.__globals__ for _, f in methods if type(f) is _FunctionType), None)
    if not methods or namespace is None:  # the class body ran in its module's namespace
        namespace = getattr(sys.modules.get(cls.__module__), "__dict__", None) or {}
    snap = _Snap(namespace, builtins.__dict__)
    snap.members = (tuple(members), tuple(members.values()))
    parts = [b"K", st.digest if st.digest is not None else b"S" + _sb(cls.__qualname__)]
    snap.checks.append((_G_ATTR, "__bases__", cls.__bases__, _K_FIXED, b""))
    for base in cls.__bases__:
        parts.append(b"b")
        _record(base, sess, parts, snap, _G_SAME, None)
    for name, f in methods:
        parts.append(_sb(name))
        _record(f, sess, parts, snap, _G_SAME, None)
    _resolve_deps(st.deps, snap, sess, parts)
    if st.digest is None:
        _structural_parts(cls, names, sess, parts, snap)
    return b"D" + _digest(b"".join(parts)), snap


def _structural_parts(cls: type, names: list[str], sess: _Session, parts: list[bytes], snap: _Snap) -> None:
    """What a class without source is made of: annotations and plain class attributes."""
    members = vars(cls)
    annotations = members.get("__annotations__")
    if isinstance(annotations, dict):
        for name, ann in annotations.items():
            parts.append(b"a" + _sb(str(name)))
            if isinstance(ann, type):
                _record(ann, sess, parts, snap, _G_SAME, None)
            else:
                text = ann if isinstance(ann, str) else repr(ann)
                text = text if " at 0x" not in text else type(ann).__qualname__
                parts.append(b"V" + _values.fingerprint_digest(text))
    for name in names:
        if name.startswith("__") and name.endswith("__"):
            continue
        attr = members[name]
        if _member_functions(attr) or isinstance(attr, type):
            continue
        parts.append(b"v" + _sb(name))
        _record(attr, sess, parts, snap, _G_SAME, None)


def _module_node(mod: types.ModuleType) -> bytes:
    e = _EXT.get(id(mod))
    if e is not None and e[0] is mod:
        return e[1]
    name = mod.__name__
    kind, top = _module_kind(name)
    return _remember(mod, b"E" + _ext_name(name, "", kind, top))


def _module_file(name: str) -> str | None:
    """Source file of a module, without importing it when it is not imported yet."""
    mod = sys.modules.get(name)
    if mod is not None:
        f = getattr(mod, "__file__", None)
        return f if isinstance(f, str) else None
    try:
        from importlib.machinery import PathFinder

        parts = name.split(".")
        spec = PathFinder.find_spec(parts[0])
        for part in parts[1:]:
            if spec is None or not spec.submodule_search_locations:
                return None
            spec = PathFinder.find_spec(f"{spec.name}.{part}", list(spec.submodule_search_locations))
        return spec.origin if spec is not None and spec.has_location else None
    except Exception:
        return None


def _import_dep(name: str) -> bytes:
    """A module imported inside a function body or a cell: its file's source for user modules."""
    filename = _module_file(name)
    if filename is None:
        kind, top = _module_kind(name)
        if name not in sys.modules and kind == "user":
            return b"E" + _h(b"i?", _sb(name))
        return b"E" + _ext_name(name, "", kind, top)
    kind, top = _path_kind(filename)
    if kind != "user":
        return b"E" + _ext_name(name, "", kind, _top(name))
    info = _file_info(filename, None)
    if info is None:
        return b"E" + _h(b"i?", _sb(name))
    if info.module_digest is None:
        info.module_digest = _ast_digest(info.tree)
    return b"E" + _h(b"i", _sb(name), info.module_digest)


_BUILTIN_CALLABLES = (
    types.BuiltinFunctionType,
    types.WrapperDescriptorType,
    types.MethodWrapperType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
)


def _builtin_node(obj: Any, sess: _Session) -> bytes:
    owner = getattr(obj, "__self__", None)
    objclass = getattr(obj, "__objclass__", None)
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "")
    if module is None and isinstance(owner, _ModuleType):
        module = owner.__name__
    if module is None and isinstance(objclass, type):
        module = objclass.__module__
    kind, top = _module_kind(module)
    base = _ext_name(module, qualname, kind, top)
    if owner is None or isinstance(owner, (_ModuleType, type)):
        return b"E" + base
    return b"E" + _h(base, _value_dep(owner, sess))


def _wrapped(obj: object) -> Any:
    try:
        attrs = object.__getattribute__(obj, "__dict__")
    except Exception:
        return None
    return attrs.get("__wrapped__") if type(attrs) is dict else None


def _is_partial(obj: object) -> bool:
    t = type(obj)
    return t.__name__ == "partial" and t.__module__ == "functools"


def _is_code_like(obj: object) -> bool:
    t = type(obj)
    return (
        t is _FunctionType
        or t is _MethodType
        or isinstance(obj, (type, _ModuleType, *_BUILTIN_CALLABLES))
        or _is_partial(obj)
        or _wrapped(obj) is not None
    )


def _dep(obj: Any, sess: _Session) -> bytes:
    """Tagged digest of anything a definition refers to."""
    t = type(obj)
    if t is _FunctionType:
        return _fn_node(obj, sess)
    if isinstance(obj, type):
        return _cls_node(obj, sess)
    if isinstance(obj, _ModuleType):
        return _module_node(obj)
    if t is _MethodType:
        return b"E" + _h(b"m", _dep(obj.__func__, sess), _value_dep(obj.__self__, sess))
    if isinstance(obj, _BUILTIN_CALLABLES):
        return _builtin_node(obj, sess)
    wrapped = _wrapped(obj) if not _is_partial(obj) else None
    if wrapped is not None:  # a decorator object (functools.wraps convention): the wrapped code counts
        return b"E" + _h(b"w", _cls_node(t, sess), _dep(wrapped, sess))
    return _value_dep(obj, sess)


_IMMUTABLE = frozenset({int, float, complex, str, bytes, bool, type(None)})
_VALUES: dict[int, tuple[object, bytes]] = {}


def _is_immutable(v: object, depth: int = 0) -> bool:
    t = type(v)
    if t in _IMMUTABLE:
        return True
    if (t is tuple or t is frozenset) and depth < 4 and len(v) <= 64:  # type: ignore[arg-type]
        return all(_is_immutable(x, depth + 1) for x in v)  # type: ignore[attr-defined]
    return False


def _value_dep(v: object, sess: _Session) -> bytes:
    e = _VALUES.get(id(v))
    if e is not None and e[0] is v:
        return e[1]
    try:
        r = b"V" + _values.fingerprint_digest(v)
    except UnfingerprintableError:
        t = type(v)
        return b"T" + _h(_sb(str(t.__module__)), _sb(t.__qualname__))
    if _is_immutable(v):
        if len(_VALUES) > _MAX_CACHE:
            _VALUES.clear()
        _VALUES[id(v)] = (v, r)
    return r


def _hex(node: bytes) -> str:
    return node[1:].hex() if len(node) == 17 else _hexdigest(node)


def _clear_caches() -> None:
    """Forget every cached identity, version and parsed file (for tests and for reloading code)."""
    for cache in (_SNAPS, _EXT, _VALUES, _STATICS, _CLASS_STATICS, _FILES, _CELLS, _VERSIONS):
        cache.clear()
    _PATH_KINDS.clear()
    _MODULE_KINDS.clear()


# -- public API ---------------------------------------------------------------------------------------


def value_node(obj: Any) -> tuple[bytes, bool]:
    """Code identity of a function or user class met inside a value being fingerprinted.

    Returns the tagged digest and whether it may be reused for the rest of that fingerprint (it may
    not when it was computed inside an outer identity computation, where it can depend on a cycle).
    """
    sess, created = _session()
    try:
        node = _fn_node(obj, sess) if type(obj) is _FunctionType else _cls_node(obj, sess)
    finally:
        if created:
            _end_session()
    return node, created


def code_identity(obj: Callable[..., Any] | type) -> str:
    """Identity of the code of a function, method or class: 32 hex characters.

    It changes when the normalized source of ``obj`` changes, or when anything it refers to changes
    (see the module docstring): a helper function it calls, a global constant, a closure variable, the
    installed version of a package it uses. It does not change with comments, formatting, docstrings
    or decorators, nor across processes and kernel restarts. Bound methods count by their function;
    other callable objects by their class (or by ``__wrapped__``, when they wrap a function).

    Raises:
        UnfingerprintableError: ``obj`` is not a function, method, class or callable object.
    """
    t = type(obj)
    if t is _FunctionType:  # the common case, first
        sess, created = _session()
        try:
            node = _fn_node(obj, sess)  # type: ignore[arg-type]
        finally:
            if created:
                _end_session()
        return _hex(node)
    if not (_is_code_like(obj) or callable(obj)):
        raise UnfingerprintableError(
            f"code_identity() expects a function, method or class, got a value of type {t.__qualname__!r}"
        )
    sess, created = _session()
    try:
        if t is _MethodType:
            node = _dep(obj.__func__, sess)  # type: ignore[union-attr]
        elif _is_code_like(obj):
            node = _dep(obj, sess)
        else:
            node = _cls_node(t, sess)
    finally:
        if created:
            _end_session()
    return _hex(node)


_CELLS: dict[str, _Static] = {}


def _transform_ipython(source: str) -> str | None:
    mod = sys.modules.get("IPython.core.inputtransformer2")
    if mod is None:
        return None
    try:
        return mod.TransformerManager().transform_cell(source)
    except Exception:
        return None


def _external_names(source: str) -> set[str]:
    """Names a cell reads that it does not bind itself (at any depth: functions defined in it too)."""
    import symtable

    top = symtable.symtable(source, "<cell>", "exec")
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported() or s.is_namespace()}
    names: set[str] = set()
    todo = [top]
    while todo:
        table = todo.pop()
        for s in table.get_symbols():
            name = s.get_name()
            if name in bound or not s.is_referenced():
                continue
            if table is top or s.is_global():
                names.add(name)
        todo.extend(table.get_children())
    return names


def _cell_static(source: str) -> _Static:
    st = _CELLS.get(source)
    if st is not None:
        return st
    text = source
    try:
        tree = ast.parse(text)
    except SyntaxError:
        transformed = _transform_ipython(source)
        try:
            if transformed is None:
                raise
            text = transformed
            tree = ast.parse(text)
        except SyntaxError:
            # Not Python: the text itself, minus blank lines, comment lines and trailing spaces.
            lines = (line.rstrip() for line in source.splitlines())
            kept = "\n".join(ln for ln in lines if ln and not ln.lstrip().startswith("#"))
            st = _Static(b"T" + _digest(kept.encode("utf-8", "surrogatepass")), ())
            _CELLS[source] = st
            return st
    external = _external_names(text)
    chains, _ = _chains_from_ast(tree.body, skip_function_bodies=False)
    deps = {c for c in chains if c[0] in external}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            deps.update((_IMPORT, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            deps.add((_IMPORT, node.module))
    st = _Static(b"A" + _ast_digest(tree), _dep_keys(deps))
    if len(_CELLS) >= 512:
        del _CELLS[next(iter(_CELLS))]
    _CELLS[source] = st
    return st


def source_identity(source: str, namespace: Mapping[str, Any]) -> str:
    """Identity of a notebook cell's code: 32 hex characters.

    Made of the normalized AST of ``source`` (comments, blank lines, formatting and docstrings do not
    count) and the code identity of the functions, classes and modules the cell reads from
    ``namespace`` without binding them itself (user functions and classes by their code identity,
    installed packages by version). Modules the cell imports count too: installed ones by version,
    user modules by the normalized source of their file.

    Plain values the cell reads (data frames, numbers, ...) are deliberately **not** part of it: the
    caller fingerprints the cell's inputs itself. Leading IPython magic lines (``%%task ...``) must be
    stripped by the caller; other IPython syntax is transformed when IPython is loaded, and source that
    still does not parse is identified by its text without blank and comment lines.
    """
    st = _cell_static(source)
    sess, created = _session()
    try:
        parts = [b"N", st.digest]
        _resolve_deps(st.deps, _Snap(namespace, builtins.__dict__), sess, parts, code_only=True)
    finally:
        if created:
            _end_session()
    return _hexdigest(b"".join(parts))
