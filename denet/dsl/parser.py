"""Description string -> AST (:mod:`denet.dsl.ast`), with Lark's LALR parser.

Syntax errors become one :class:`~denet.errors.DescError` that names what was found and what was
expected, in words (``']'``, ``end of input``), with a caret under the offending character.
"""

from __future__ import annotations

import functools
import math
import os
import re

import lark
from lark import Lark, Transformer, v_args

from ..errors import DescError
from . import ast
from .limits import Limits, current, describe

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
        digits = str(tok).lstrip("+-").lstrip("0")
        # checked before int(): Python refuses to convert more than 4300 digits
        value = int(tok) if len(digits) <= len(str(INT_MAX)) else INT_MAX + 1
        if not -INT_MAX - 1 <= value <= INT_MAX:
            raise self._error(
                f"the integer {_abbreviated(tok)} is too large (integers must fit in 64 bits, "
                f"-{INT_MAX + 1} to {INT_MAX})",
                tok,
            )
        return value, tok

    def float_value(self, children):
        tok = children[0]
        value = float(tok)
        if not math.isfinite(value):
            raise self._error(
                f"the number {_abbreviated(tok)} is too large (it is not a finite 64-bit "
                f"float; at most about 1.8e308)",
                tok,
            )
        return value, tok

    def _error(self, message: str, tok) -> DescError:
        return DescError(message, self.source, tok.column, tok.line)

    def name_value(self, children):
        tok = children[0]
        return str(tok), tok


INT_MAX = 2**63 - 1  # integers are 64-bit, as torch's sizes


def _abbreviated(tok) -> str:
    text = str(tok)
    return repr(text if len(text) <= 24 else text[:12] + "…" + text[-6:])


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


_VALUE_TERMINALS = frozenset({"INT", "FLOAT", "NAME"})


def parse(desc: str, limits: Limits | None = None) -> ast.Description:
    """Parse a description string. Raises :class:`DescError` with a caret on a syntax error,
    and on a string longer or more deeply nested than ``limits`` (default: the limits in force,
    :mod:`denet.dsl.limits`) allows, before parsing it."""
    if not isinstance(desc, str):
        raise DescError(f"a description must be a string, not {type(desc).__name__}")
    limits = limits or current()
    if len(desc) > limits.chars:
        raise DescError(
            f"the description is {len(desc):,} characters long, more than "
            f"{describe('chars', limits.chars)}"
        )
    _prescan(desc, limits)
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
        if tok.type in ("RSQB", "RPAR", "COMMA") and _VALUE_TERMINALS <= set(expected):
            msg = f"a value is missing {_before(desc, tok)}"
            expected = {"INT", "NAME"}
        elif str(tok) in ("]", ")"):
            msg = f"unbalanced brackets: {str(tok)!r} without its opening bracket"
            expected = set()
        raise DescError(msg + _expected(expected), desc, tok.column, tok.line) from None
    except lark.exceptions.UnexpectedEOF as err:  # not raised by LALR, kept for safety
        line, column = _end_position(desc)
        raise DescError(
            "unexpected end of input" + _expected(err.expected), desc, column, line
        ) from None
    try:
        items = _ToAst(desc).transform(tree)
    except lark.exceptions.VisitError as err:
        if isinstance(err.orig_exc, DescError):
            raise err.orig_exc from None
        raise
    return ast.Description(items, desc)


def _before(desc: str, tok) -> str:
    """Where a missing value belongs, in words: ``after 'filters='``, ``after ','``."""
    before = desc[: tok.start_pos].rstrip()
    if before.endswith("="):
        name = re.search(r"([A-Za-z_][A-Za-z0-9_\-]*)\s*=$", before)
        return f"after {(name.group(1) if name else '') + '='!r}"
    if before.endswith(","):
        return "after ','"
    return f"before {str(tok)!r}"


_SCAN = re.compile(r"#[^\n]*|[()\[\]|]|[A-Za-z_@$][A-Za-z0-9_.\-]*")
_HEAD_END = re.compile(r"[A-Za-z0-9_.]*\s*(\[[^\[\]()]*\])?\s*$")


def _group_start(desc: str, paren: int) -> int:
    """Where the group whose ``(`` is at ``paren`` begins: its head (``SUM``, ``REP[2]``), or
    the ``(`` itself when none is written before it."""
    before = desc[max(0, paren - 1000) : paren]
    m = _HEAD_END.search(before)
    start = paren - len(before) + m.start() if m else paren
    return start if start < paren and desc[start].isalpha() else paren


def _prescan(desc: str, limits: Limits) -> None:
    """Before anything recursive (the parse tree's transformer, the resolver, the printer) or
    slow (the parser) sees the string: refuses groups nested deeper than ``limits.depth`` and
    more items and branches than ``limits.nodes`` (each becomes at least one node of the graph,
    or is an error). Comments are skipped as the lexer skips them; what is inside ``[...]`` is
    not counted; unbalanced brackets are left to the parser."""
    depth = brackets = count = 0
    groups: list[int] = []  # where the open groups' "(" are
    for m in _SCAN.finditer(desc):
        ch = m.group()[0]
        if ch == "#":
            continue
        if ch == "[":
            brackets += 1
        elif ch == "]":
            brackets = max(0, brackets - 1)
        elif brackets:
            continue
        elif ch == "(":
            depth += 1
            groups.append(m.start())
            if depth > limits.depth:
                raise _error_at(
                    f"groups nested {depth} deep, more than {describe('depth', limits.depth)}",
                    desc,
                    _group_start(desc, m.start()),
                )
        elif ch == ")":
            depth = max(0, depth - 1)
            if groups:
                groups.pop()
        else:  # an item (a layer, a group, a tap, a reference) or a branch
            count += 1
            if count > limits.nodes:
                where = _group_start(desc, groups[-1]) if ch == "|" and groups else m.start()
                raise _error_at(
                    f"the string has more items and branches than {describe('nodes', limits.nodes)} "
                    f"allows (each makes a node of the graph)",
                    desc,
                    where,
                )


def _error_at(message: str, desc: str, pos: int) -> DescError:
    line = desc.count("\n", 0, pos) + 1
    column = pos - (desc.rfind("\n", 0, pos) + 1) + 1
    return DescError(message, desc, column, line)


def _end_position(desc: str) -> tuple[int, int]:
    stripped = desc.rstrip()
    lines = stripped.split("\n") if stripped else [""]
    return len(lines), len(lines[-1]) + 1
