"""The edits model-modify makes to a description's items, DeNet's options among them.

Every function takes the list of top-level items and a :class:`Lineage`, edits the list in place
and returns how many items it changed. An edited item is a new AST object; the lineage remembers
which item of the input model it stands for, so that model-modify can copy its weights across
(token indices, hence state-dict keys, shift when items are merged or removed).
"""

from __future__ import annotations

import math

from ..dsl import ast
from ..errors import DenetError
from ..layers import REGISTRY

RESIDUAL = ("RSN", "nRSN")


class Lineage:
    """Which item of the input model each edited item comes from (by object identity)."""

    def __init__(self):
        self._origin: dict[int, tuple[object, object]] = {}  # id(new) -> (new, original)

    def replace(self, old, new):
        """Record that ``new`` stands for ``old`` (and for what ``old`` stood for); returns it."""
        self._origin[id(new)] = (new, self.original(old))
        return new

    def original(self, item):
        entry = self._origin.get(id(item))
        return entry[1] if entry is not None else item


def _text(value) -> str:
    from ..dsl.printer import format_value

    return format_value(value)


def get_arg(item, name: str):
    """The value of argument ``name`` as written (positional or keyword), or None."""
    for a in item.args:
        if a.name == name:
            return a.value
    pos = [a.name for a in REGISTRY.get(item.type).positional(item.tags)]
    given = [a for a in item.args if a.name is None]
    if name in pos and pos.index(name) < len(given):
        return given[pos.index(name)].value
    return None


def set_args(item, updates: dict, tags: str | None = None):
    """A copy of ``item`` with the arguments ``updates`` (name -> value) set: a positional
    argument given positionally is replaced in place, anything else becomes ``name=value``
    (the printer moves it into place when that is canonical)."""
    tags = item.tags if tags is None else tags
    pos_names = [a.name for a in REGISTRY.get(item.type).positional(tags)]
    args = list(item.args)
    for key, (value, text) in updates.items():
        positional = [a for a in args if a.name is None]
        if key in pos_names and pos_names.index(key) < len(positional):
            target = positional[pos_names.index(key)]
            args[args.index(target)] = ast.Arg(value, None, target.line, target.column, text)
        else:
            args = [a for a in args if a.name != key]
            args.append(ast.Arg(value, key, item.line, item.column, text))
    return type(item)(**{**item.__dict__, "tags": tags, "args": tuple(args)})


def rewrite(items: list, lineage: Lineage, edit) -> int:
    """Apply ``edit(seq) -> (new_seq, count)`` to every group branch (innermost first) and then
    to the top-level list; groups whose branches changed are replaced. Returns the total count."""

    def visit(seq):
        out, total = [], 0
        for it in seq:
            if isinstance(it, ast.Group):
                branches, changed = [], False
                for b in it.branches:
                    nb, n = visit(list(b))
                    total += n
                    changed |= len(nb) != len(b) or any(x is not y for x, y in zip(nb, b))
                    branches.append(tuple(nb))
                if changed:
                    new = type(it)(**{**it.__dict__, "branches": tuple(branches)})
                    it = lineage.replace(it, new)
            out.append(it)
        out, n = edit(out)
        return out, total + n

    new, count = visit(items)
    items[:] = new
    return count


def _is_layer(item, type_: str) -> bool:
    return isinstance(item, ast.Layer) and item.type == type_


# -- --convert-bn-relu ----------------------------------------------------------------------------
def convert_bn_relu(items: list, lineage: Lineage, activation: str) -> int:
    """``BN A`` (a relu ``A``) -> ``BNA`` with the BN's momentum, eps and training keywords, at
    every level; batch-renorm arguments (inert: renorm is refused) are dropped, as DeNet's
    batchnorm-relu has none. Residual blocks are modules and stay as they are."""
    keep = {"momentum", "eps", "lr", "frozen", "init"}

    def is_relu(a) -> bool:
        if not _is_layer(a, "A"):
            return False
        kind = get_arg(a, "kind")
        return (activation if kind is None else kind) == "relu"

    def edit(seq):
        out, n, k = [], 0, 0
        while k < len(seq):
            it = seq[k]
            if _is_layer(it, "BN") and k + 1 < len(seq) and is_relu(seq[k + 1]):
                args = tuple(
                    a for j, a in enumerate(it.args) if (a.name is None and j < 2) or a.name in keep
                )
                new = ast.Layer("BNA", "", args, it.line, it.column, "BNA", "BNA")
                out.append(lineage.replace(it, new))
                n, k = n + 1, k + 2
                continue
            out.append(it)
            k += 1
        return out, n

    return rewrite(items, lineage, edit)


# -- --modify-bn ----------------------------------------------------------------------------------
def parse_modify_bn(values: list[str]) -> tuple[float, float]:
    """DeNet's ``--modify-bn ENABLED MOMENTUM EPS``: ENABLED is read as ``bool(str)``, so any
    non-empty string (even "0" or "False") means enabled; the empty string, which DeNet would
    read as False (BN switched off), cannot be reproduced and is an error."""
    enabled, momentum, eps = values
    if not bool(enabled):
        raise DenetError(
            "--modify-bn: an empty ENABLED is False in DeNet (batch norm switched off), "
            "which denet cannot do; give any non-empty value (DeNet reads even 0 as True)"
        )
    out = []
    for name, text, low, high in (("MOMENTUM", momentum, 0.0, 1.0), ("EPS", eps, 0.0, math.inf)):
        try:
            value = float(text)
        except ValueError:
            raise DenetError(f"--modify-bn: {name} must be a number, not {text!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            bound = f"between {low:g} and {high:g}" if high < math.inf else f"at least {low:g}"
            raise DenetError(f"--modify-bn: {name} must be {bound}, not {text!r}")
        out.append(value)
    return out[0], out[1]


def modify_bn(items: list, lineage: Lineage, momentum: float, eps: float) -> int:
    """Set momentum and eps of every ``BN``, ``BNA`` and batch-norm residual block."""
    updates = {"momentum": (momentum, _text(momentum)), "eps": (eps, _text(eps))}

    def edit(seq):
        out, n = [], 0
        for it in seq:
            if isinstance(it, ast.Layer) and (
                it.type in ("BN", "BNA")
                or (it.type in RESIDUAL and (get_arg(it, "norm") or "bn") == "bn")
            ):
                it = lineage.replace(it, set_args(it, updates))
                n += 1
            out.append(it)
        return out, n

    return rewrite(items, lineage, edit)


# -- --use-cudnn-pool -----------------------------------------------------------------------------
def use_cudnn_pool(items: list, lineage: Lineage) -> int:
    """DeNet's ``ignore_border=False`` pool -> ``pad=(1,1)``, ``ignore_border=True``: every
    ceil-mode ``P.B[k,s,p]`` becomes the floor-mode ``P[k,s,1]``. Global pooling (``P.B``
    without a size) has no border and is left as it is."""

    def edit(seq):
        out, n = [], 0
        for it in seq:
            if _is_layer(it, "P") and "B" in it.tags and get_arg(it, "size") is not None:
                size = get_arg(it, "size")
                if not isinstance(size, int) or size < 2:
                    raise DenetError(
                        f"--use-cudnn-pool: {it.written or it.text} cannot become a padded pool "
                        f"(pad 1 needs a window of at least 2)"
                    )
                tags = it.tags.replace("B", "")
                it = lineage.replace(it, set_args(it, {"pad": (1, "1")}, tags=tags))
                n += 1
            out.append(it)
        return out, n

    return rewrite(items, lineage, edit)


# -- --merge --------------------------------------------------------------------------------------
def merge(items: list, lineage: Lineage) -> int:
    """DeNet's ``--merge``: ``SPLIT`` items are removed and ``SKIPSRC.X[i]`` becomes
    ``SKIPSRC[i]`` (no split points left; the maths is unchanged)."""

    def edit(seq):
        out, n = [], 0
        for it in seq:
            if _is_layer(it, "SPLIT"):
                n += 1
                continue
            if _is_layer(it, "SKIPSRC") and "X" in it.tags:
                tags = it.tags.replace("X", "")
                it = lineage.replace(it, type(it)(**{**it.__dict__, "tags": tags}))
                n += 1
            out.append(it)
        return out, n

    return rewrite(items, lineage, edit)


# -- --modify-layer -------------------------------------------------------------------------------
def _parse_value(text: str):
    from ..dsl import parse
    from ..errors import DescError

    try:
        items = parse(f"X[{text}]").items
    except DescError:
        raise DenetError(f"--modify-layer: cannot read the value {text!r}") from None
    return items[0].args[0].value


def modify_layer(items: list, type_: str, assignments: list[str], lineage: Lineage | None = None):
    """Set ``k=v`` on the first top-level item of type ``type_``; returns its index."""
    ltype = REGISTRY.get(type_)
    if ltype is None:
        hint = REGISTRY.suggest(type_)
        raise DenetError(
            f"--modify-layer: unknown layer type {type_!r}"
            + ("; did you mean " + " or ".join(map(repr, hint)) + "?" if hint else "")
        )
    found = None
    for k, it in enumerate(items):
        if isinstance(it, (ast.Layer, ast.Group)) and it.type == type_:
            found = k
            break
    if found is None:
        if not any(
            isinstance(i, (ast.Layer, ast.Group)) and i.type == type_ for i in ast.walk(items)
        ):
            raise DenetError(f"--modify-layer: the model has no {type_} layer")
        raise DenetError(
            f"--modify-layer: the first {type_} is inside a group; edit the "
            f"group with --layer-remove/--layer-insert instead"
        )
    updates = {}
    for assignment in assignments:
        key, eq, text = assignment.partition("=")
        if not eq or not key:
            raise DenetError(f"--modify-layer: expected k=v, not {assignment!r}")
        updates.pop(key, None)
        updates[key] = (_parse_value(text), text)
    item = items[found]
    new = set_args(item, updates)
    items[found] = lineage.replace(item, new) if lineage is not None else new
    return found
