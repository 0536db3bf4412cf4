"""Description string -> AST (:mod:`denet.dsl.ast`), with Lark's LALR parser.

Syntax errors become one :class:`~denet.errors.DescError` that names what was found and what was
expected, in words (``']'``, ``end of input``), with a caret under the offending character.
"""

from __future__ import annotations

import functools
import os

import lark
from lark import Lark, Transformer, v_args

from ..errors import DescError
from . import ast

_GRAMMAR = os.path.join(os.path.dirname(__file__), "grammar.lark")

# Lark's terminal names, as a user should read them.
_TERMINAL_NAMES = {
    "LSQB": "'['",
    "RSQB": "']'",
    "LPAR": "'('",
    "RPAR": "')'",
    "COMMA": "','",
    "VBAR": "'|'",
    "EQUAL": "'='",
    "$END": "end of input",
    "HEAD": "a layer type",
    "NAME": "a name",
    "INT": "a number",
    "FLOAT": "a number",
    "TAP": "a tap '@name'",
    "REF": "a reference '$name'",
}


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    with open(_GRAMMAR, encoding="utf-8") as f:
        grammar = f.read()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def _split_head(text: str) -> tuple[str, str]:
    type_, _, tags = text.partition(".")
    return type_, tags


class _ToAst(Transformer):
    """Lark tree -> AST dataclasses. Never raises: semantic checks happen in resolve."""

    def __init__(self, source: str):
        super().__init__()
        self.source = source

    def _written(self, head, args) -> str:
        """The token as the user typed it: its head and, when present, its ``[...]``."""
        end = args[1] if args else head.end_pos
        return self.source[head.start_pos : end]

    def start(self, items):
        return tuple(items)

    @v_args(meta=True)
    def layer(self, meta, children):
        head, args = children[0], children[1]
        type_, tags = _split_head(str(head))
        return ast.Layer(
            type_,
            tags,
            tuple(args[0] if args else ()),
            head.line,
            head.column,
            str(head),
            self._written(head, args),
        )

    @v_args(meta=True)
    def group(self, meta, children):
        head, args, *branches = children
        type_, tags = _split_head(str(head))
        return ast.Group(
            type_,
            tags,
            tuple(args[0] if args else ()),
            tuple(branches),
            head.line,
            head.column,
            str(head),
            self._written(head, args),
        )

    def branch(self, items):
        return tuple(items)

    def tap(self, children):
        tok = children[0]
        return ast.Tap(str(tok)[1:], tok.line, tok.column)

    def ref(self, children):
        tok = children[0]
        return ast.Ref(str(tok)[1:], tok.line, tok.column)

    @v_args(meta=True)
    def args(self, meta, children):
        return tuple(c for c in children if c is not None), meta.end_pos

    def positional(self, children):
        value, tok = children[0]
        return ast.Arg(value, None, tok.line, tok.column, str(tok))

    def keyword(self, children):
        name, (value, tok) = children
        return ast.Arg(value, str(name), name.line, name.column, str(tok))

    def int_value(self, children):
        tok = children[0]
        return int(tok), tok

    def float_value(self, children):
        tok = children[0]
        return float(tok), tok

    def name_value(self, children):
        tok = children[0]
        return str(tok), tok


def _describe_token(tok) -> str:
    if tok.type == "$END":
        return "end of input"
    return repr(str(tok))


def _expected(names) -> str:
    words = sorted({_TERMINAL_NAMES.get(n, n) for n in names})
    if not words:
        return ""
    if len(words) == 1:
        return f"; expected {words[0]}"
    return "; expected " + ", ".join(words[:-1]) + " or " + words[-1]


def parse(desc: str) -> ast.Description:
    """Parse a description string. Raises :class:`DescError` with a caret on a syntax error."""
    if not isinstance(desc, str):
        raise DescError(f"a description must be a string, not {type(desc).__name__}")
    try:
        tree = _parser().parse(desc)
    except lark.exceptions.UnexpectedCharacters as err:
        pos = err.pos_in_stream or 0
        ch = desc[pos] if pos < len(desc) else ""
        hint = ""
        if ch in "])":
            raise DescError(
                f"unbalanced brackets: {ch!r} without its opening bracket",
                desc,
                err.column,
                err.line,
            ) from None
        raise DescError(f"unexpected character {ch!r}{hint}", desc, err.column, err.line) from None
    except lark.exceptions.UnexpectedToken as err:
        tok = err.token
        expected = err.accepts or err.expected
        if tok.type == "$END":
            line, column = _end_position(desc)
            msg = "unexpected end of input"
            if "RSQB" in expected:
                msg = "unbalanced brackets: '[' is never closed"
            elif "RPAR" in expected:
                msg = "unbalanced brackets: '(' is never closed"
            raise DescError(msg + _expected(expected), desc, column, line) from None
        msg = f"unexpected {_describe_token(tok)}"
        if str(tok) in ("]", ")"):
            msg = f"unbalanced brackets: {str(tok)!r} without its opening bracket"
            expected = set()
        raise DescError(msg + _expected(expected), desc, tok.column, tok.line) from None
    except lark.exceptions.UnexpectedEOF as err:  # not raised by LALR, kept for safety
        line, column = _end_position(desc)
        raise DescError(
            "unexpected end of input" + _expected(err.expected), desc, column, line
        ) from None
    items = _ToAst(desc).transform(tree)
    return ast.Description(items, desc)


def _end_position(desc: str) -> tuple[int, int]:
    stripped = desc.rstrip()
    lines = stripped.split("\n") if stripped else [""]
    return len(lines), len(lines[-1]) + 1
