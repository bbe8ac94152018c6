"""Bad input never ends in an nbflow traceback: a clear message, or a documented fallback.

Property-based (hypothesis) where the input space is large: ``%%task`` option lines, arbitrary cell
text, generated cells checked against their execution, and fingerprints of generated values.
"""

from __future__ import annotations

import ast
import builtins
import copy
import math
import pickle
import struct
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbflow
from nbflow.exceptions import NbflowWarning
from nbflow.hashing import fingerprint
from nbflow.ipython.analysis import analyze
from nbflow.ipython.cells import CellOptions, prepare_cell
from nbflow.ipython.magics import parse_task_line
from tests.reliability.conftest import ROOT

# No example database in the repository; the examples are few enough to stay fast.
FAST = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# -- %%task option lines ------------------------------------------------------------------------------

TOKENS = st.sampled_from([
    "--retries", "--retry-delay", "--timeout", "--no-cache", "--refresh", "--inputs", "--outputs", "--tags",
    "--help", "-h", "--", "-", "name", "x,y", "1", "-1", "0", "2.5", "nan", "inf", "-inf", "1e400", "1e-400",
    "'", '"', "'a b'", ",", "1x", "é", "\\", "--retries=3", "--timeout=-1", "\x00", "\t",
])


@FAST
@given(st.lists(st.one_of(TOKENS, st.text(max_size=8)), max_size=6))
def test_any_task_line_gives_options_or_a_usage_error(words: list[str]) -> None:
    from IPython.core.error import UsageError

    line = " ".join(words)
    try:
        options = parse_task_line(line)
    except UsageError as error:
        assert str(error).startswith("%%task") and "usage: %%task" in str(error)
        return
    assert isinstance(options, CellOptions)
    assert isinstance(options.retries, int) and options.retries >= 0
    assert math.isfinite(options.retry_delay) and options.retry_delay >= 0
    assert options.timeout is None or (math.isfinite(options.timeout) and options.timeout > 0)
    for names in (options.inputs or [], options.outputs or []):
        assert all(name.isidentifier() for name in names)
    assert options.name is None or (options.name.isprintable() and not options.name.startswith("-"))


@pytest.mark.parametrize("line", ["--timeout nan", "--retry-delay inf", "--timeout 1e400", "--retries 1.5",
                                  "--tags", "one two", "--retries 1e3", "--retry-delay 1e308", "--timeout 1e12"])
def test_bad_option_lines_in_a_real_shell(shell: Any, line: str, capsys: Any) -> None:
    from IPython.core.error import UsageError

    result = shell.run_cell(f"%%task {line}\nx = 1\n")
    assert isinstance(result.error_in_exec, UsageError)
    text = "".join(capsys.readouterr())
    assert "usage: %%task" in text and "Traceback" not in text
    assert "x" not in shell.user_ns


@pytest.mark.parametrize(("options", "named"), [
    ({"timeout_seconds": 1e12}, "timeout_seconds"), ({"timeout_seconds": float("nan")}, "timeout_seconds"),
    ({"timeout_seconds": float("inf")}, "timeout_seconds"), ({"retry_delay_seconds": 1e308}, "retry_delay_seconds"),
    ({"retry_delay_seconds": float("nan")}, "retry_delay_seconds"),
    ({"retry_delay_seconds": [1, float("nan")]}, "retry_delay_seconds"),
    ({"retry_jitter_factor": float("nan")}, "retry_jitter_factor"),
])
@pytest.mark.parametrize("decorator", ["task", "flow"])
def test_numbers_that_would_overflow_are_refused_when_decorating(options: dict[str, Any], named: str,
                                                                 decorator: str) -> None:
    from nbflow.exceptions import ConfigurationError

    if decorator == "flow" and named == "retry_jitter_factor":  # a task option only
        options, named = {"timeout_seconds": 1e12}, "timeout_seconds"
    with pytest.raises(ConfigurationError, match=named):
        getattr(nbflow, decorator)(**options)(lambda: 1)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--timeout", "nan"], "--timeout must be"), (["--timeout", "1e12"], "--timeout must be"),
    (["--timeout", "inf"], "--timeout must be"), (["-o", "."], "is a directory"),
])
def test_bad_run_options_fail_before_the_run(arguments: list[str], message: str, tmp_path: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    notebook = tmp_path / "n.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("open('ran', 'w').close()")]), notebook)
    done = subprocess.run([sys.executable, "-m", "nbflow.cli", "run", str(notebook), *arguments], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "ran").exists()  # refused before a kernel started


def test_an_output_that_cannot_be_written_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    notebook = tmp_path / "n.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("1 + 1")]), notebook)
    done = subprocess.run([sys.executable, "-m", "nbflow.cli", "run", str(notebook), "-o", "/dev/full"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr
    assert "could not write the executed notebook to /dev/full" in done.stderr and "Traceback" not in done.stderr


# -- cells that do not parse -------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "line", "what"), [
    ("x = (\n", 1, "incomplete input"),
    ("x = 1\n  y = 2\n", 2, "unexpected indent"),
    ("def f(:\n    pass\n", 1, "invalid syntax"),
    ("x = 1\nreturn x\n", 2, "'return' outside function"),
    ("yield 1\n", 1, "'yield' outside function"),
    ("nonlocal q\n", 1, "nonlocal declaration not allowed"),
])
def test_a_cell_that_does_not_parse_fails_as_the_plain_cell_does(shell: Any, body: str, line: int, what: str,
                                                                  capsys: Any) -> None:
    result = shell.run_cell(f"%%task\n{body}")
    assert "x" not in shell.user_ns  # nothing of the cell ran
    text = "".join(capsys.readouterr())
    plain = shell.run_cell(body)
    capsys.readouterr()
    # The same error as the cell without %%task: its type, message and line (counted from the body).
    assert type(result.error_in_exec) is type(plain.error_before_exec or plain.error_in_exec)
    assert isinstance(result.error_in_exec, SyntaxError) and result.error_in_exec.lineno == line
    assert what in text and f"line {line}" in text
    assert "Traceback" not in text and "nbflow" not in text.replace("%%task", "")


@FAST
@given(st.text(max_size=60))
@pytest.mark.filterwarnings("ignore:`make_tokens_by_line`:UserWarning")  # IPython's, on odd line endings
def test_any_cell_text_parses_or_is_a_syntax_error(shell: Any, text: str) -> None:
    try:
        spec = prepare_cell(shell, text, CellOptions())
    except SyntaxError:
        return
    assert all(name.isidentifier() for name in [*spec.inputs, *spec.outputs])


# -- the cell analyser, checked against execution ------------------------------------------------------

NAMES = ["a", "b", "c", "d"]


@st.composite
def cells(draw: Any) -> str:
    """Small cells over a few int variables: assignments, loops, branches, defs, comprehensions..."""
    functions: list[str] = []

    def expr() -> str:
        left = draw(st.sampled_from([*NAMES, "1", "2"]))
        choice = draw(st.integers(0, 5))
        if choice == 0 and functions:
            return f"{draw(st.sampled_from(functions))}({left})"
        if choice == 1:
            return f"({left} + {draw(st.sampled_from(NAMES))})"
        if choice == 2:
            return f"sum(v + {left} for v in range(2))"
        if choice == 3:
            return f"(lambda q: q * {left})(3)"
        return left

    def statement(depth: int) -> list[str]:
        target = draw(st.sampled_from(NAMES))
        kind = draw(st.integers(0, 8 if depth < 2 else 3))
        if kind == 6 and depth > 0:
            kind = 0
        if kind == 0:
            return [f"{target} = {expr()}"]
        if kind == 1:
            return [f"{target} += {expr()}"]
        if kind == 2:
            return [f"{target} = ({draw(st.sampled_from(NAMES))} := {expr()}) + 1"]
        if kind == 3:
            return [f"{target}, {draw(st.sampled_from(NAMES))} = {expr()}, {expr()}"]
        if kind == 4:
            body = statement(depth + 1)
            other = statement(depth + 1)
            return [f"if {expr()} > 2:", *("    " + s for s in body), "else:", *("    " + s for s in other)]
        if kind == 5:
            body = statement(depth + 1)
            return [f"for {target} in range({expr()} % 3):", *("    " + s for s in body)]
        if kind == 6 and depth == 0:  # defined at the top level only, so always defined before a call
            name = f"f{len(functions)}"
            body = f"    return p + {expr()}"
            functions.append(name)
            return [f"def {name}(p):", body]
        if kind == 7:
            body = statement(depth + 1)
            return ["try:", *("    " + s for s in body), "except ZeroDivisionError:", f"    {target} = 0"]
        return [f"{target} = [w + {expr()} for w in range(2)][-1]"]

    lines: list[str] = []
    for _ in range(draw(st.integers(1, 6))):
        lines += statement(0)
    return "\n".join(lines) + "\n"


@FAST
@given(cells())
def test_the_analyser_finds_every_input_and_output(code: str) -> None:
    analysis = analyze(ast.parse(code))
    # Inputs get values; builtins (also reported as inputs) are found the usual way.
    namespace: dict[str, Any] = {name: 1 for name in analysis.inputs if not hasattr(builtins, name)}
    before = dict(namespace)
    bound_somewhere = set(analysis.outputs)
    try:
        exec(compile(code, "<cell>", "exec"), namespace)
    except NameError as error:
        # Only a name the cell binds on some path may be missing (a branch that did not run).
        assert error.name in bound_somewhere, f"{error.name!r} is read but not an input of:\n{code}"
    namespace.pop("__builtins__", None)
    changed = {name for name, value in namespace.items() if name not in before or value is not before[name]}
    assert changed <= bound_somewhere, f"{changed - bound_somewhere} bound but not outputs of:\n{code}"


# -- odd arguments and results of tasks -----------------------------------------------------------------


class RaisingEq:
    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no comparisons")

    def __hash__(self) -> int:
        raise RuntimeError("no hashing")


class RaisingAttributes:
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no attribute {name}")


class NotPicklable:
    def __reduce_ex__(self, protocol: Any) -> Any:
        raise ValueError("not picklable")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


def recursive_list() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


def recursive_dict() -> dict[str, Any]:
    value: dict[str, Any] = {"a": 1}
    value["self"] = value
    return value


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def numbers() -> Iterator[int]:
    yield 1


@nbflow.task
def describe(x: Any) -> str:
    return type(x).__name__


# (argument, whether it can be fingerprinted: then the second call is a hit)
ARGUMENTS = {
    "recursive list": (recursive_list, True),
    "recursive dict": (recursive_dict, True),
    "huge int": (lambda: 10**100_000, True),
    "negative huge int": (lambda: -(7**50_000), True),
    "eq and hash raise": (RaisingEq, True),
    "attributes raise": (RaisingAttributes, True),
    "nan": (lambda: float("nan"), True),
    "mixed set": (lambda: {1, "a", (2, 3), frozenset({4})}, True),
    "generator": (numbers, False),
    "not picklable": (NotPicklable, False),
    "nested too deep": (lambda: nested(100_000), False),
    "lock": (threading.Lock, False),
}


@pytest.mark.parametrize("name", list(ARGUMENTS))
def test_odd_arguments_run_and_cache_when_they_can(name: str) -> None:
    make, hashable = ARGUMENTS[name]
    value = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = describe(value, return_state=True)
        second = describe(value, return_state=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, NbflowWarning)]
    assert first.name == "Completed" and first.result() == type(value).__name__
    if hashable:
        assert messages == [] and second.name == "Cached"
    else:
        # The documented fallback: a warning naming the argument, and the task runs uncached.
        assert second.name == "Completed" and len(messages) == 2, messages
        assert "argument 'x' cannot be fingerprinted" in messages[0] and "runs uncached" in messages[0]


@nbflow.task
def give(kind: str) -> Any:
    if kind == "lambda":
        return lambda: 1
    if kind == "generator":
        return numbers()
    if kind == "lock":
        return threading.Lock()
    if kind == "reduce raises":
        return NotPicklable()
    if kind == "too deep":
        return nested(200_000)
    return {"fine": [1, 2], "bad": lambda: 2}


@pytest.mark.parametrize("kind", ["lambda", "generator", "lock", "reduce raises", "too deep", "inside a dict"])
def test_results_that_cannot_be_pickled_are_returned_with_one_warning(kind: str) -> None:
    from nbflow.engine.runtime import get_store

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = give(kind, return_state=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, NbflowWarning)]
    assert len(messages) == 1, messages
    assert "'give'" in messages[0] and "not persisted" in messages[0] and "persist_result=False" in messages[0]
    assert state.name == "Completed" and state.persisted is False
    assert state.result() is not None
    assert list(get_store().records()) == []


# -- fingerprints of generated values --------------------------------------------------------------------

HASHABLE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=10),
              st.binary(max_size=10)),
    lambda inner: st.one_of(st.tuples(inner, inner), st.frozensets(inner, max_size=4)),
    max_leaves=8,
)
VALUES = st.recursive(
    HASHABLE,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner), st.dictionaries(HASHABLE, inner, max_size=4),
        st.sets(HASHABLE, max_size=4),
    ),
    max_leaves=20,
)


def canonical(value: Any) -> Any:
    """A form equal exactly when two values are the same for caching: same types all the way down."""
    kind = type(value).__name__
    if isinstance(value, float):
        return (kind, "nan" if math.isnan(value) else struct.pack("<d", value))
    if isinstance(value, (list, tuple)):
        return (kind, tuple(canonical(item) for item in value))
    if isinstance(value, dict):
        return (kind, tuple(sorted((repr(canonical(k)), repr(canonical(v))) for k, v in value.items())))
    if isinstance(value, (set, frozenset)):
        return (kind, tuple(sorted(repr(canonical(item)) for item in value)))
    return (kind, value)


def reordered(value: Any) -> Any:
    """The same value with every dict and set built in the reverse order."""
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(item) for item in value]
    if isinstance(value, tuple):
        return tuple(reordered(item) for item in value)
    if isinstance(value, set):
        return set(reversed(list(value)))
    return value


@FAST
@given(VALUES)
def test_a_fingerprint_depends_on_the_value_only(value: Any) -> None:
    digest = fingerprint(value)
    assert len(digest) == 32 and fingerprint(value) == digest
    assert fingerprint(copy.deepcopy(value)) == digest
    assert fingerprint(pickle.loads(pickle.dumps(value))) == digest
    assert fingerprint(reordered(value)) == digest


@FAST
@given(VALUES, VALUES)
def test_different_values_have_different_fingerprints(left: Any, right: Any) -> None:
    same = canonical(left) == canonical(right)
    assert (fingerprint(left) == fingerprint(right)) == same, (left, right)


@FAST
@given(VALUES)
def test_changing_one_leaf_changes_the_fingerprint(value: Any) -> None:
    wrapped = [value, 1]
    changed = [value, 2]
    assert fingerprint(wrapped) != fingerprint(changed)
    assert fingerprint((value,)) != fingerprint([value])


def digests_in_a_new_process(seed: str) -> list[str]:
    code = (
        "import pickle, sys\n"
        "from nbflow.hashing import fingerprint\n"
        "values = pickle.load(sys.stdin.buffer)\n"
        "print('\\n'.join(fingerprint(v) for v in values))\n"
    )
    values = pickle.dumps(STABILITY_VALUES)
    result = subprocess.run([sys.executable, "-c", code], input=values, capture_output=True, timeout=120,
                            cwd=ROOT, env={**_env(), "PYTHONHASHSEED": seed})
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return result.stdout.decode().split()


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


STABILITY_VALUES: list[Any] = [
    {"b": 1, "a": [1.5, None, True], 3: "x", (1, "t"): frozenset({"p", "q", 2})},
    {frozenset({1, 2}): {"nested": {b"k": bytes(range(10))}}},
    {"s", "t", "u", 1, 2, 3, (4, 5)},
    [10**40, -(10**40), 0.1, -0.0, float("inf"), float("nan")],
    "ünïcödé ✓" * 10,
    Path("/tmp/some/path"),
]


def test_fingerprints_are_the_same_in_other_processes_and_hash_seeds() -> None:
    here = [fingerprint(value) for value in STABILITY_VALUES]
    assert digests_in_a_new_process("1") == here
    assert digests_in_a_new_process("4242") == here
