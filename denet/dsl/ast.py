"""AST of a description string: what the parser produces and the printer consumes.

Every node carries the 1-based ``line`` and ``column`` of its first character, so that any later
error (unknown type, bad argument, channel mismatch) can point a caret at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Arg:
    """One argument inside ``[...]``: positional when ``name`` is None, else ``name=value``."""

    value: int | float | str
    name: str | None = None
    line: int = 1
    column: int = 1
    text: str = ""  # the value as written, for error messages


@dataclass(frozen=True)
class Layer:
    """``TYPE.TAGS[args]``."""

    type: str
    tags: str = ""
    args: tuple[Arg, ...] = ()
    line: int = 1
    column: int = 1
    text: str = ""  # the head as written, e.g. "C.B"
    written: str = field(default="", compare=False)  # head and arguments as typed


@dataclass(frozen=True)
class Group:
    """``TYPE[args](branch | branch ...)``: a combinator over branches of items."""

    type: str
    tags: str = ""
    args: tuple[Arg, ...] = ()
    branches: tuple[tuple[Item, ...], ...] = ()
    line: int = 1
    column: int = 1
    text: str = ""
    written: str = field(default="", compare=False)  # head and arguments as typed


@dataclass(frozen=True)
class Tap:
    """``@name``: names the current tensor."""

    name: str
    line: int = 1
    column: int = 1


@dataclass(frozen=True)
class Ref:
    """``$name``: the current tensor becomes the one named ``@name`` earlier."""

    name: str
    line: int = 1
    column: int = 1


Item = Layer | Group | Tap | Ref


@dataclass(frozen=True)
class Description:
    """A whole description string: its items and the source text."""

    items: tuple[Item, ...] = field(default_factory=tuple)
    source: str = ""


def walk(items):
    """Every item in reading order, descending into group branches (group before its branches)."""
    for item in items:
        yield item
        if isinstance(item, Group):
            for branch in item.branches:
                yield from walk(branch)
