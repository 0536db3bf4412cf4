"""The compiler knows no layer type: no string or name in denet/dsl's code (docstrings and
comments aside) is a registered type, so a new layer never touches the compiler."""

import ast
import glob
import os
import re

from denet.layers import REGISTRY

DSL = os.path.join(os.path.dirname(__file__), "..", "..", "denet", "dsl")


def docstrings(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                yield body[0].value


def mentions(text, name):
    if len(name) == 1:  # C, P, R...: only a string that is exactly the type
        return text == name
    return re.search(rf"(?<![A-Za-z_]){re.escape(name)}(?![A-Za-z_])", text) is not None


def test_no_layer_type_in_the_compiler():
    names = REGISTRY.names()
    found = []
    for path in sorted(glob.glob(os.path.join(DSL, "*.py"))):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        skip = {id(d) for d in docstrings(tree)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in skip:
                    found += [(path, node.lineno, n) for n in names if mentions(node.value, n)]
            elif isinstance(node, ast.Name):
                found += [(path, node.lineno, n) for n in names if node.id == n]
    assert not found, found
