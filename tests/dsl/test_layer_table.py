"""The documentation shows what the code does: the generated layer table is current, and the
error messages quoted in docs/language.md and README.md are the real ones."""

import os
import re

import pytest

import denet
from denet.dsl.layer_table import END, START, layer_table, with_table
from denet.layers import REGISTRY

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def test_layer_table_in_docs_is_the_registry():
    text = read("docs/language.md")
    assert with_table(text, layer_table(REGISTRY)) == text, (
        "docs/language.md is out of date: run python -m denet.dsl.layer_table --write"
    )
    table = text.split(START)[1].split(END)[0]
    for name in REGISTRY.names():
        assert f"| `{name}` |" in table


def quoted_errors(text):
    """Every ``` block of an error: first line a message ending in (column N), then the string
    and a caret."""
    blocks, current = [], None
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return [b for b in blocks if re.search(r"\(column \d+\)\n  .*\n +\^$", b)]


@pytest.mark.parametrize("doc", ["docs/language.md", "README.md"])
def test_quoted_error_messages_are_real(doc):
    blocks = quoted_errors(read(doc))
    assert blocks, f"{doc} quotes no error message"
    for block in blocks:
        desc = block.split("\n")[1][2:]
        with pytest.raises(denet.DescError) as err:
            denet.compile(desc, (3, 32, 32), 10)
        assert str(err.value) == block
