"""Inputs and outputs of a cell, found from its AST."""

from __future__ import annotations

import ast

import pytest

from nbflow.ipython.analysis import analyze, normalized_digest


def io(source: str) -> tuple[list[str], list[str]]:
    result = analyze(ast.parse(source))
    return result.inputs, result.outputs


@pytest.mark.parametrize(
    ("source", "inputs", "outputs"),
    [
        ("raw = load_table(path)\nX = build(raw, window=7)\nprint(X.shape)\nX.head()",
         ["load_table", "path", "build", "print"], ["raw", "X"]),
        ("x = x + 1", ["x"], ["x"]),
        ("total += step", ["step", "total"], ["total"]),
        ("a = 1\nb = a", [], ["a", "b"]),
        ("for i in items:\n    acc = i", ["items"], ["i", "acc"]),
        ("with open(p) as f:\n    text = f.read()", ["open", "p"], ["f", "text"]),
        ("import numpy as np\nimport os.path\nfrom json import dumps as d", [], ["np", "os", "d"]),
        ("def f(a, b=default):\n    return a + helper(b) + CONST", ["default", "helper", "CONST"], ["f"]),
        ("class C(Base):\n    size = N\n    def m(self):\n        return other", ["Base", "N", "other"], ["C"]),
        ("ys = [x * k for x in xs]", ["xs", "k"], ["ys"]),
        ("g = lambda v: v + off", ["off"], ["g"]),
        # changed in place: inputs (the engine sees the change after the cell and stores them as outputs)
        ("df['c'] = df['a'] + 1", ["df"], []),
        ("model.coef = fit(data)", ["fit", "data", "model"], []),
        ("plt.rcParams['figure.figsize'] = (6, 4)", ["plt"], []),
        ("to_celsius = lambda f: (f - 32) * 5 / 9", [], ["to_celsius"]),
        ("if (n := size()) > 3:\n    big = n", ["size"], ["n", "big"]),
        ("try:\n    v = risky()\nexcept Exception as err:\n    v = None", ["risky", "Exception"], ["v", "err"]),
        ("x: int = 3\ny: int", [], ["x"]),
        ("a, *rest = seq", ["seq"], ["a", "rest"]),
        ("def f():\n    return f()\nf()", [], ["f"]),
        # a comprehension's and a lambda's variables are their own, in an expression statement too
        ("print([name.upper() for name in names])", ["print", "names"], []),
        ("sorted(n for n in xs)\nf(lambda q: q)", ["sorted", "xs", "f"], []),
    ],
)
def test_inputs_and_outputs(source: str, inputs: list[str], outputs: list[str]) -> None:
    found_inputs, found_outputs = io(source)
    assert sorted(found_inputs) == sorted(inputs)
    assert found_outputs == outputs


def test_definitions_are_the_top_level_def_class_import_and_lambda_statements() -> None:
    result = analyze(ast.parse("import os\ndef f(): pass\nclass C: pass\nx = 1\nif x:\n    def g(): pass\n"
                               "h = k = lambda v: v + x\n"))
    assert result.definitions == ["os", "f", "C", "h", "k"]
    assert len(result.definition_nodes) == 4


def test_the_normalized_digest_ignores_comments_and_formatting() -> None:
    a = normalized_digest(ast.parse("x = f(1,2)  # note\n"))
    b = normalized_digest(ast.parse("# header\n\nx = f(1, 2)\n"))
    c = normalized_digest(ast.parse("x = f(1, 3)\n"))
    assert a == b != c
