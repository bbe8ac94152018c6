"""Code identity of functions, classes and notebook cells."""

from __future__ import annotations

import importlib
import itertools
import json
import linecache
import pathlib
import sys
import textwrap
import timeit
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import xxhash

from nbflow.exceptions import UnfingerprintableError
from nbflow.hashing import code as code_mod
from nbflow.hashing import code_identity, fingerprint, source_identity

_cells = itertools.count(1)


def run_cell(source: str, ns: dict[str, Any] | None = None) -> dict[str, Any]:
    """Execute ``source`` the way IPython runs a cell: compiled under a cell name kept in linecache."""
    source = textwrap.dedent(source)
    filename = f"<ipython-input-{next(_cells)}-{uuid.uuid4().hex[:12]}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    if ns is None:
        ns = {"__name__": "__main__"}
    exec(compile(source, filename, "exec"), ns)
    return ns


def define(source: str, name: str, ns: dict[str, Any] | None = None) -> Any:
    return run_cell(source, ns)[name]


def same(a: str, b: str, name: str = "f") -> bool:
    return code_identity(define(a, name)) == code_identity(define(b, name))


# -- normalized source ----------------------------------------------------------------------------------

BASE = """
def f(x, y=2):
    \"\"\"Add things.\"\"\"
    total = x + y  # the sum
    return total * 3
"""


def test_identity_shape_and_determinism() -> None:
    a = code_identity(define(BASE, "f"))
    assert len(a) == 32
    assert a == code_identity(define(BASE, "f"))  # a fresh definition of the same code


def test_comments_docstrings_decorators_and_formatting_do_not_count() -> None:
    variants = [
        """
        def f(x, y=2):
            total = x + y
            return total * 3
        """,
        """
        # a comment above
        def f(x, y=2):
            '''Another docstring, entirely.'''

            total = (x
                     + y)   # spread over lines

            return total*3
        """,
        """
        def deco(fn):
            return fn

        @deco
        def f(x, y=2):
            \"\"\"Add things.\"\"\"
            total = x + y
            return total * 3
        """,
        """
        import functools
        @functools.lru_cache(maxsize=None)
        def g(): pass
        def keep(fn): return fn
        @keep
        @keep
        def f(x, y=2):
            total = x + y
            return total * 3
        """,
    ]
    base = code_identity(define(BASE, "f"))
    for v in variants:
        assert code_identity(define(v, "f")) == base, v


def test_body_edits_count() -> None:
    edits = [
        BASE.replace("x + y", "x - y"),
        BASE.replace("* 3", "* 4"),
        BASE.replace("y=2", "y=3"),
        BASE.replace("total = x + y  # the sum", "total = y + x"),
        BASE.replace("def f(x, y=2)", "def f(x, z=2)").replace("x + y", "x + z"),
        BASE.replace("return total * 3", "return (total * 3)\n    print()"),
        BASE.replace("def f", "async def f"),
    ]
    base = code_identity(define(BASE, "f"))
    digests = {code_identity(define(e, "f")) for e in edits}
    assert base not in digests
    assert len(digests) == len(edits)


def test_nested_function_docstrings_and_decorators() -> None:
    a = """
    def f():
        def inner():
            "doc"
            return 1
        return inner
    """
    b = """
    def f():
        def inner():
            return 1
        return inner
    """
    c = """
    def f():
        @staticmethod
        def inner():
            return 1
        return inner
    """
    assert same(a, b)
    assert not same(b, c)  # decorators of nested definitions are code


# -- what a function refers to -------------------------------------------------------------------------


def test_global_constant_changes_identity_and_revert_restores_it() -> None:
    ns = run_cell(
        """
        LIMIT = 10
        def f(x):
            return min(x, LIMIT)
        """
    )
    f = ns["f"]
    first = code_identity(f)
    ns["LIMIT"] = 11
    second = code_identity(f)
    ns["LIMIT"] = 10
    assert first != second
    assert code_identity(f) == first
    ns["LIMIT"] = [1, 2]
    mutable = code_identity(f)
    ns["LIMIT"].append(3)  # mutated in place: mutable values are fingerprinted on every call
    assert code_identity(f) != mutable


def test_helper_edit_changes_caller() -> None:
    ns = run_cell(
        """
        def helper(x):
            return x + 1
        def caller(x):
            return helper(x) * 2
        """
    )
    caller = ns["caller"]
    before = code_identity(caller)
    run_cell("def helper(x):\n    return x + 2\n", ns)
    after = code_identity(caller)
    assert before != after
    run_cell("def helper(x):\n    # same code, a comment\n    return x + 1\n", ns)
    assert code_identity(caller) == before


def test_helper_deep_in_the_call_graph() -> None:
    ns = run_cell(
        """
        def leaf():
            return 1
        def middle():
            return leaf() + 1
        def top():
            return middle() + 1
        """
    )
    before = code_identity(ns["top"])
    run_cell("def leaf():\n    return 2\n", ns)
    assert code_identity(ns["top"]) != before


def test_undefined_name_then_defined() -> None:
    ns = run_cell("def f():\n    return later()\n")
    missing = code_identity(ns["f"])
    run_cell("def later():\n    return 1\n", ns)
    assert code_identity(ns["f"]) != missing


def test_builtins_do_not_count_but_shadowing_does() -> None:
    ns = run_cell("def f(x):\n    return len(x)\n")
    before = code_identity(ns["f"])
    run_cell("def len(x):\n    return 0\n", ns)
    assert code_identity(ns["f"]) != before


def test_mutual_recursion_is_stable_whichever_comes_first() -> None:
    src = """
    def is_even(n):
        return True if n == 0 else is_odd(n - 1)
    def is_odd(n):
        return False if n == 0 else is_even(n - 1)
    """
    ns1 = run_cell(src)
    even_first = (code_identity(ns1["is_even"]), code_identity(ns1["is_odd"]))
    code_mod._clear_caches()
    ns2 = run_cell(src)
    odd_first = code_identity(ns2["is_odd"])
    assert (code_identity(ns2["is_even"]), odd_first) == even_first
    assert even_first[0] != even_first[1]
    assert code_identity(ns1["is_even"]) == even_first[0]  # and again, now from the cached snapshots
    run_cell("def is_odd(n):\n    return not is_even(n)\n", ns1)
    assert code_identity(ns1["is_even"]) != even_first[0]


def test_self_recursion() -> None:
    f = define("def fact(n):\n    return 1 if n <= 1 else n * fact(n - 1)\n", "fact")
    assert code_identity(f) == code_identity(f)
    g = define("def fact(n):\n    return 1 if n <= 1 else n * fact(n - 2)\n", "fact")
    assert code_identity(f) != code_identity(g)


def test_closures() -> None:
    make = define(
        """
        def make(k):
            def inner(x):
                return x * k
            return inner
        """,
        "make",
    )
    assert code_identity(make(2)) == code_identity(make(2))
    assert code_identity(make(2)) != code_identity(make(3))
    ns = run_cell(
        """
        def helper(x):
            return x + 1
        def wrap(fn):
            def inner(x):
                return fn(x)
            return inner
        wrapped = wrap(helper)
        """
    )
    before = code_identity(ns["wrapped"])
    ns["wrapped"] = ns["wrap"](define("def helper(x):\n    return x + 5\n", "helper"))
    assert code_identity(ns["wrapped"]) != before


def test_default_values_count() -> None:
    ns = run_cell("N = 1\ndef f(x, n=N):\n    return x + n\n")
    before = code_identity(ns["f"])
    run_cell("N = 2\ndef f(x, n=N):\n    return x + n\n", ns)
    assert code_identity(ns["f"]) != before


def test_library_references_count_by_name_and_version(monkeypatch: pytest.MonkeyPatch) -> None:
    f = define("import json, xxhash\ndef f(x):\n    return xxhash.xxh64(json.dumps(x)).hexdigest()\n", "f")
    assert code_mod._module_kind("json") == ("stdlib", "json")
    assert code_mod._module_kind("xxhash") == ("third", "xxhash")
    assert code_mod.module_version("xxhash") == xxhash.VERSION
    assert code_mod.module_version("json") == ""
    before = code_identity(f)
    # Simulate an upgrade of xxhash: the recorded version is what ties the identity to the package.
    code_mod._clear_caches()
    monkeypatch.setitem(code_mod._VERSIONS, "xxhash", "0.0-upgraded")
    assert code_identity(f) != before
    code_mod._clear_caches()
    assert code_identity(f) == before


def test_library_function_as_global() -> None:
    ns = run_cell("from json import dumps as encode\ndef f(x):\n    return encode(x)\n")
    before = code_identity(ns["f"])
    run_cell("from json import loads as encode\n", ns)
    assert code_identity(ns["f"]) != before


def test_local_import_inside_function(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"localmod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("def g():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    f = define(f"def f():\n    import {name}\n    return {name}.g()\n", "f")
    before = code_identity(f)
    assert code_identity(f) == before
    (tmp_path / f"{name}.py").write_text("def g():\n    return 22\n")
    assert code_identity(f) != before


# -- helpers in modules of the project ---------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[pathlib.Path, str]]:
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path, suffix
    for mod in [m for m in sys.modules if m.endswith(suffix)]:
        del sys.modules[mod]


HELPERS = """
def clean(x):
    return x.strip()


def other(x):
    return x
"""


def test_editing_a_helper_module_changes_the_caller(project: tuple[pathlib.Path, str]) -> None:
    root, suffix = project
    helpers_name, callers_name = f"helpers_{suffix}", f"callers_{suffix}"
    (root / f"{helpers_name}.py").write_text(HELPERS)
    (root / f"{callers_name}.py").write_text(
        f"import {helpers_name} as helpers\n\n\ndef run(x):\n    return helpers.clean(x).upper()\n"
    )
    helpers = importlib.import_module(helpers_name)
    callers = importlib.import_module(callers_name)
    original = code_identity(callers.run)

    (root / f"{helpers_name}.py").write_text(HELPERS.replace("x.strip()", "x.strip().lower()"))
    importlib.reload(helpers)
    edited = code_identity(callers.run)
    assert edited != original

    (root / f"{helpers_name}.py").write_text(HELPERS.replace("return x\n", "return x  # unrelated edit\n"))
    importlib.reload(helpers)
    assert code_identity(callers.run) == original  # reverted; the change to `other` does not matter

    (root / f"{helpers_name}.py").write_text(HELPERS.replace("return x\n", "return [x]\n"))
    importlib.reload(helpers)
    assert code_identity(callers.run) == original  # `other` is not used by `run`


def test_same_module_source_under_a_fresh_name(project: tuple[pathlib.Path, str]) -> None:
    root, suffix = project
    for tag, body in (("a", "return x + 1"), ("b", "return x + 1"), ("c", "return x + 2")):
        (root / f"m{tag}_{suffix}.py").write_text(
            f"def helper(x):\n    {body}\n\n\ndef caller(x):\n    return helper(x)\n"
        )
    a, b, c = (importlib.import_module(f"m{t}_{suffix}") for t in "abc")
    assert code_identity(a.caller) == code_identity(b.caller)
    assert code_identity(a.caller) != code_identity(c.caller)


def test_module_source_file_is_found_for_plain_modules(project: tuple[pathlib.Path, str]) -> None:
    root, suffix = project
    (root / f"plain_{suffix}.py").write_text("def f(x):\n    # comment\n    return x\n")
    mod = importlib.import_module(f"plain_{suffix}")
    assert code_identity(mod.f) == code_identity(define("def f(x):\n    return x\n", "f"))


SHAPES = '''
import functools


def plain(x):
    return x + 1


@functools.lru_cache(
    maxsize=None,
)
def decorated(x):
    return x


def only_a_docstring(x):
    """Nothing else: no instruction after the def line."""


@functools.wraps(plain)
def decorated_docstring(x):
    """No instruction after the decorator's line."""


def trailing_pass(x):
    if x:
        return 1
    else:
        pass


def commented_docstring(x):
# a comment at column 0 does not end the body
    """Only a docstring."""


async def coroutine(x, *args, key=1, **kwargs):
    return [
        x,
        key,
    ]


class Holder:
    @staticmethod
    def method(x):
        text = """
a string whose lines start at column 0
"""
        return text


def outer(x):
    def inner(y):
        return y
    return inner


def tabbed(x):
	return x


def trailing_string(x):
    return x
    """
y = 2
"""
'''


def test_a_definition_is_parsed_from_its_own_lines(project: tuple[pathlib.Path, str]) -> None:
    """A function's digest comes from its own lines, not a parse of its whole file (which costs tens of µs
    a line on a task's first call in each process), and is the digest the whole file gives."""
    root, suffix = project
    (root / f"shapes_{suffix}.py").write_text(SHAPES)
    mod = importlib.import_module(f"shapes_{suffix}")
    functions = {
        "plain": mod.plain, "decorated": mod.decorated.__wrapped__, "only_a_docstring": mod.only_a_docstring,
        "decorated_docstring": mod.decorated_docstring,
        "commented_docstring": mod.commented_docstring,
        "trailing_pass": mod.trailing_pass, "coroutine": mod.coroutine, "method": mod.Holder.method,
        "outer": mod.outer, "inner": mod.outer(1), "tabbed": mod.tabbed, "trailing_string": mod.trailing_string,
    }
    filename = mod.plain.__code__.co_filename
    for name, fn in functions.items():
        own = code_mod._own_definition(fn.__code__, fn.__globals__)
        info = code_mod._file_info(filename, fn.__globals__)
        assert info is not None
        whole = code_mod._find_definition(info, fn.__code__)
        assert whole is not None, name
        if name == "trailing_string":
            # Its lines cannot be told apart from the next statement's: the whole file decides.
            assert own is None
        else:
            assert own is not None, name
            assert code_mod._ast_digest(own) == code_mod._ast_digest(whole), name
    code_mod._FILES.pop(filename)
    code_identity(mod.plain)
    code_identity(mod.Holder.method)
    assert filename not in code_mod._FILES  # the file was not parsed whole
    assert code_identity(mod.trailing_string) != code_identity(mod.plain)


def test_an_edited_definition_is_read_again(project: tuple[pathlib.Path, str]) -> None:
    root, suffix = project
    path = root / f"edited_{suffix}.py"
    path.write_text("def f(x):\n    return x\n")
    mod = importlib.import_module(f"edited_{suffix}")
    before = code_identity(mod.f)
    path.write_text("def f(x):\n    return x + 1  # edited\n\n\n")
    importlib.reload(mod)
    assert code_identity(mod.f) != before


def test_where_code_lives(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard library, installed package or user code, by file; a file outside Python's own directories is
    user code without asking sysconfig for the standard library's paths (a few ms of a process's first call)."""
    import email.utils
    import os

    import diskcache

    user = tmp_path / "analysis.py"
    user.write_text("x = 1\n")
    assert code_mod._classify_path(json.__file__) == ("stdlib", "json")
    assert code_mod._classify_path(email.utils.__file__) == ("stdlib", "email")
    assert code_mod._classify_path(os.__file__) == ("stdlib", "os")
    assert code_mod._classify_path(diskcache.__file__) == ("third", "diskcache")
    assert code_mod._classify_path(str(user)) == ("user", "")
    assert code_mod._classify_path("<ipython-input-3-abc>") == ("user", "")

    def no_sysconfig() -> tuple[str, ...]:
        raise AssertionError("the standard library's paths were computed for a user file")

    monkeypatch.setattr(code_mod, "_stdlib_dirs", no_sysconfig)
    assert code_mod._classify_path(str(user)) == ("user", "")


# -- IPython cells, lambdas, exec'd code --------------------------------------------------------------------


def test_ipython_style_cell() -> None:
    src = "def load(path):\n    return open(path).read()\n"
    filename = "<ipython-input-1-abc>"
    linecache.cache[filename] = (len(src), None, src.splitlines(keepends=True), filename)
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(src, filename, "exec"), ns)
    identity = code_identity(ns["load"])
    static = code_mod._code_static(ns["load"])
    assert static.digest.startswith(b"A")  # found through linecache: the normalized AST, not bytecode
    assert identity == code_identity(define(src, "load"))


def test_source_unavailable_falls_back_to_code_object() -> None:
    ns1: dict[str, Any] = {}
    ns2: dict[str, Any] = {}
    exec(compile("def f(a, b):\n    return a + b\n", "<nowhere>", "exec"), ns1)
    exec(compile("def f(a, b):\n    return a + b\n", "<nowhere-else>", "exec"), ns2)
    assert code_mod._code_static(ns1["f"]).digest.startswith(b"B")
    assert code_identity(ns1["f"]) == code_identity(ns2["f"])
    ns3: dict[str, Any] = {}
    exec(compile("def f(a, b):\n    return a - b\n", "<nowhere>", "exec"), ns3)
    assert code_identity(ns1["f"]) != code_identity(ns3["f"])


def test_lambdas() -> None:
    ns = run_cell(
        """
        add = lambda x, y: x + y
        sub = lambda x, y: x - y
        pair = (lambda a: a * 2, lambda b: b * 3)
        twins = [lambda v: v + 1, lambda v: v + 2]
        """
    )
    assert code_identity(ns["add"]) != code_identity(ns["sub"])
    assert code_identity(ns["pair"][0]) != code_identity(ns["pair"][1])  # same line, told apart by args
    assert code_identity(ns["twins"][0]) != code_identity(ns["twins"][1])  # same args, by position
    assert code_identity(ns["add"]) == code_identity(define("add = lambda x, y: x + y  # comment\n", "add"))
    assert code_identity(ns["add"]) != code_identity(define("add = lambda x, y: x * y\n", "add"))
    static = code_mod._code_static(ns["twins"][1])
    assert static.digest.startswith(b"A")


def test_lambda_inside_function() -> None:
    ns = run_cell(
        """
        def make():
            return lambda q: q ** 2
        """
    )
    lam = ns["make"]()
    assert code_mod._code_static(lam).digest.startswith(b"A")
    assert code_identity(lam) == code_identity(ns["make"]())


# -- classes ---------------------------------------------------------------------------------------------------

CLASS = """
class Scaler:
    \"\"\"Scales things.\"\"\"

    factor = 2

    def __init__(self, offset):
        self.offset = offset

    def apply(self, x):
        return x * self.factor + self.offset
"""


def test_class_identity() -> None:
    base = code_identity(define(CLASS, "Scaler"))
    assert base == code_identity(define(CLASS.replace('"""Scales things."""', "# no docstring"), "Scaler"))
    assert base != code_identity(define(CLASS.replace("x * self.factor", "x / self.factor"), "Scaler"))
    assert base != code_identity(define(CLASS.replace("factor = 2", "factor = 3"), "Scaler"))
    instance_digest = fingerprint(define(CLASS, "Scaler")(1))
    assert instance_digest == fingerprint(define(CLASS, "Scaler")(1))
    assert instance_digest != fingerprint(define(CLASS.replace("+ self.offset", "- self.offset"), "Scaler")(1))


def test_class_method_referencing_a_helper() -> None:
    ns = run_cell(
        """
        def helper(v):
            return v + 1
        class Model:
            def predict(self, v):
                return helper(v)
        """
    )
    before = code_identity(ns["Model"])
    run_cell("def helper(v):\n    return v + 2\n", ns)
    assert code_identity(ns["Model"]) != before


def test_class_inheritance_and_self_reference() -> None:
    ns = run_cell(
        """
        class Base:
            def go(self):
                return 1
        class Child(Base):
            def clone(self):
                return Child()
        """
    )
    before = code_identity(ns["Child"])
    assert code_identity(ns["Child"]) == before
    run_cell("class Base:\n    def go(self):\n        return 2\n", ns)
    ns["Child"].__bases__ = (ns["Base"],)
    assert code_identity(ns["Child"]) != before


def test_dataclasses_and_pydantic_models_in_cells() -> None:
    src = """
    import dataclasses
    @dataclasses.dataclass(frozen=True)
    class Config:
        name: str
        size: int = 3
    """
    a = define(src, "Config")
    b = define(src, "Config")
    assert code_identity(a) == code_identity(b)
    assert fingerprint(a("x")) == fingerprint(b("x"))
    c = define(src.replace("size: int = 3", "size: int = 4"), "Config")
    assert code_identity(a) != code_identity(c)
    assert fingerprint(a("x", 3)) != fingerprint(c("x", 3))

    msrc = """
    import pydantic
    class Params(pydantic.BaseModel):
        alpha: float = 0.5
    """
    m1, m2 = define(msrc, "Params"), define(msrc, "Params")
    assert fingerprint(m1()) == fingerprint(m2())
    assert fingerprint(m1()) != fingerprint(define(msrc.replace("0.5", "0.6"), "Params")())


def test_class_without_source() -> None:
    import collections

    a = collections.namedtuple("P", ["x", "y"])
    b = collections.namedtuple("P", ["x", "y"])
    c = collections.namedtuple("P", ["x", "z"])
    assert code_identity(a) == code_identity(b)
    assert code_identity(a) != code_identity(c)


def test_callables_and_errors() -> None:
    ns = run_cell(
        """
        import functools
        class Runner:
            def __call__(self, x):
                return x
            def method(self):
                return 1
        def base(a, b):
            return a + b
        add_one = functools.partial(base, 1)
        add_two = functools.partial(base, 2)
        """
    )
    runner = ns["Runner"]()
    assert code_identity(runner) == code_identity(ns["Runner"])
    assert code_identity(runner.method) == code_identity(ns["Runner"].method)
    assert code_identity(ns["add_one"]) != code_identity(ns["add_two"])
    assert len(code_identity(len)) == 32
    with pytest.raises(UnfingerprintableError, match="expects a function"):
        code_identity(42)  # type: ignore[arg-type]


def test_wrapper_objects_count_by_what_they_wrap() -> None:
    ns = run_cell(
        """
        import functools
        class Task:
            def __init__(self, fn):
                self.fn = fn
                functools.update_wrapper(self, fn)
                self.cache = {}
            def __call__(self, *a):
                return self.fn(*a)
        def step(x):
            return x + 1
        step_task = Task(step)
        def pipeline(x):
            return step_task(x)
        """
    )
    before = code_identity(ns["pipeline"])
    ns["step_task"].cache["k"] = object()  # state of the wrapper does not matter
    assert code_identity(ns["pipeline"]) == before
    ns["step_task"] = ns["Task"](define("def step(x):\n    return x + 2\n", "step"))
    assert code_identity(ns["pipeline"]) != before
    assert code_identity(functools_cached()) != code_identity(functools_cached(2))


def functools_cached(k: int = 1) -> Any:
    return define(f"import functools\n@functools.lru_cache\ndef cached(x):\n    return x + {k}\n", "cached")


# -- notebook cells ---------------------------------------------------------------------------------------------


def test_source_identity_ignores_comments_and_formatting() -> None:
    ns = run_cell("def load(p):\n    return p\n")
    a = source_identity("df = load('x.csv')\nresult = df\n", ns)
    b = source_identity("# load the data\ndf = load(  'x.csv'  )\n\nresult = df   # done\n", ns)
    c = source_identity("df = load('y.csv')\nresult = df\n", ns)
    assert a == b
    assert a != c


def test_source_identity_follows_notebook_functions() -> None:
    ns = run_cell("def load(p):\n    return p\nDATA = [1, 2]\n")
    cell = "df = load(DATA)\n"
    before = source_identity(cell, ns)
    ns["DATA"].append(3)
    assert source_identity(cell, ns) == before  # plain values are the caller's business
    run_cell("def load(p):\n    return list(p)\n", ns)
    assert source_identity(cell, ns) != before


def test_source_identity_ignores_names_the_cell_binds() -> None:
    cell = "def helper():\n    return 1\nx = helper()\n"
    ns: dict[str, Any] = {"__name__": "__main__"}
    first = source_identity(cell, ns)
    run_cell(cell, ns)  # now `helper` exists in the namespace, from this very cell
    assert source_identity(cell, ns) == first


def test_source_identity_modules_and_attribute_chains(project: tuple[pathlib.Path, str]) -> None:
    root, suffix = project
    name = f"cellhelpers_{suffix}"
    (root / f"{name}.py").write_text(HELPERS)
    ns = run_cell(f"import {name} as helpers\n")
    cell = "out = helpers.clean(' a ')\n"
    before = source_identity(cell, ns)
    (root / f"{name}.py").write_text(HELPERS.replace("strip()", "strip(' ')"))
    importlib.reload(ns["helpers"])
    assert source_identity(cell, ns) != before

    imports = f"import json\nimport {name}\nout = {name}.clean(json.dumps(1))\n"
    first = source_identity(imports, {"__name__": "__main__"})
    assert source_identity(imports, {"__name__": "__main__"}) == first
    (root / f"{name}.py").write_text(HELPERS)
    assert source_identity(imports, {"__name__": "__main__"}) != first


def test_source_identity_with_ipython_syntax() -> None:
    a = source_identity("x = 1\n!ls -la\n", {})
    assert a == source_identity("x = 1\n\n!ls -la   \n", {})
    assert a != source_identity("x = 2\n!ls -la\n", {})


# -- speed -----------------------------------------------------------------------------------------------------


def test_repeated_calls_are_cached_report() -> None:
    """Prints the per-call cost of a repeated code_identity (no timing assertion)."""
    ns = run_cell(
        """
        SCALE = 3
        def helper_a(x):
            return x + 1
        def helper_b(x):
            return x * 2
        def caller(x):
            return helper_a(helper_b(x)) * SCALE
        """
    )
    f = ns["caller"]
    first = code_identity(f)
    n = 20_000
    t = min(timeit.repeat(lambda: code_identity(f), number=n, repeat=3)) / n
    assert code_identity(f) == first
    print(f"\nrepeated code_identity: {t * 1e6:.2f} us")


def test_identity_is_json_safe() -> None:
    assert json.loads(json.dumps(code_identity(test_identity_is_json_safe)))


def test_snapshots_do_not_keep_replaced_values_alive() -> None:
    import gc
    import weakref

    ns = run_cell("import numpy as np\nDATA = np.zeros(1000)\ndef total():\n    return DATA.sum()\n")
    ref = weakref.ref(ns["DATA"])
    first = code_identity(ns["total"])
    ns["DATA"] = None
    gc.collect()
    assert ref() is None
    assert code_identity(ns["total"]) != first


_IPYTHON_SESSION = r"""
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()


def run(src):
    result = shell.run_cell(src, store_history=True)
    result.raise_error()


run("from nbflow.hashing import code_identity, source_identity")
run('''
def helper(x):
    return x + 1

class Model:
    def predict(self, v):
        return helper(v)

def task(x):
    # a comment
    return helper(x) * 2
''')
run("first = (code_identity(task), code_identity(Model))")
run("def task(x):\n    return helper(x) * 2\n")
run("assert code_identity(task) == first[0], 'a comment-only edit changed the identity'")
run("def helper(x):\n    return x + 2\n")
run("assert code_identity(task) != first[0] and code_identity(Model) != first[1]")
run("cell = source_identity('y = task(1)\\n!echo done\\n', get_ipython().user_ns)")
run("def task(x):\n    return helper(x) * 3\n")
run("assert source_identity('y = task(1)\\n!echo done\\n', get_ipython().user_ns) != cell")
print("ok")
"""


def test_real_ipython_shell() -> None:
    import subprocess

    out = subprocess.run([sys.executable, "-c", _IPYTHON_SESSION], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok"), out.stdout + out.stderr
