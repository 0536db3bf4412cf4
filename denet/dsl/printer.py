"""AST / LayerGraph -> canonical description string.

The canonical form: items separated by one space; tags sorted; positional arguments as given
(trailing arguments equal to their fixed default dropped); keyword arguments in schema order,
dropped when equal to their default; numbers in Python's shortest form; groups written
``TYPE[args](a b | c)``; comments and line breaks removed. ``parse(canonical(s))`` resolves to the
same graph as ``s``.
"""

from __future__ import annotations

from ..layers import REGISTRY
from ..layers.registry import REQUIRED
from . import ast


def format_value(value) -> str:
    """Shortest exact form; a float stays a float ("1.0"), so it resolves the same way."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _canonical_args(item, registry) -> list[str]:
    ltype = registry.get(item.type)
    if ltype is None:  # unknown type: keep the arguments exactly as written
        return [(f"{a.name}=" if a.name else "") + format_value(a.value) for a in item.args]
    pos = list(ltype.positional(item.tags))
    kws = list(ltype.all_keywords(item.tags))
    positional = [a for a in item.args if a.name is None]
    named = {a.name: a for a in item.args if a.name is not None}
    known = {a.name for a in pos + kws}
    if (
        len(positional) > len(pos)
        or len(named) + len(positional) != len(item.args)
        or not set(named) <= known
    ):
        # not a valid use (the resolver reports it): keep the arguments as written
        return [(f"{a.name}=" if a.name else "") + format_value(a.value) for a in item.args]
    # keyword-given positional arguments continue the positional list when contiguous
    values = [a.value for a in positional]
    for spec in pos[len(values) :]:
        if spec.name in named:
            values.append(named.pop(spec.name).value)
        else:
            break
    # drop trailing positional values equal to a fixed default
    while values:
        spec = pos[len(values) - 1]
        d = spec.default
        if d is REQUIRED or callable(d) or not _equal(spec, values[-1], d):
            break
        values.pop()
    out = [format_value(v) for v in values]
    for spec in pos + kws:
        if spec.name in named:
            v = named[spec.name].value
            d = spec.default
            if d is not REQUIRED and not callable(d) and _equal(spec, v, d):
                continue
            out.append(f"{spec.name}={format_value(v)}")
    return out


def _equal(spec, value, default) -> bool:
    try:
        return spec.convert(value) == default
    except ValueError:
        return False


def print_item(item, shallow: bool = False, registry=None) -> str:
    registry = registry or REGISTRY
    if isinstance(item, ast.Tap):
        return "@" + item.name
    if isinstance(item, ast.Ref):
        return "$" + item.name
    head = item.type + ("." + "".join(sorted(set(item.tags))) if item.tags else "")
    args = _canonical_args(item, registry)
    text = head + ("[" + ",".join(args) + "]" if args else "")
    if isinstance(item, ast.Group):
        if shallow:
            return text + "(…)"
        text += "(" + " | ".join(print_items(b, registry) for b in item.branches) + ")"
    return text


def print_items(items, registry=None) -> str:
    return " ".join(print_item(i, registry=registry) for i in items)


def canonical(desc: str) -> str:
    """The canonical form of a description string (parsed, not resolved: it needs no input
    shape). Raises :class:`~denet.errors.DescError` on a syntax error."""
    from .parser import parse

    return print_items(parse(desc).items)


def print_graph(graph) -> str:
    """Canonical string of a resolved :class:`~denet.dsl.resolve.LayerGraph`."""
    return print_items(graph.desc.items)
