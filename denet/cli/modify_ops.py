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
    """Which item of the input model each edited item comes from (by object identity), and, for
    a part of a split ``nRSN`` stage, which block of the original its first block is."""

    def __init__(self):
        # id(new) -> (new, original, block offset)
        self._origin: dict[int, tuple[object, object, int]] = {}

    def replace(self, old, new, blocks: int = 0):
        """Record that ``new`` stands for ``old`` (and for what ``old`` stood for); returns it.
        ``blocks``: block ``b`` of ``new`` is block ``b + blocks`` of ``old`` (a stage split)."""
        self._origin[id(new)] = (new, self.original(old), self.blocks(old) + blocks)
        return new

    def original(self, item):
        entry = self._origin.get(id(item))
        return entry[1] if entry is not None else item

    def blocks(self, item) -> int:
        """Block ``b`` of ``item`` is block ``b + blocks(item)`` of :meth:`original` (0 unless
        ``item`` is the second part of a split stage)."""
        entry = self._origin.get(id(item))
        return entry[2] if entry is not None else 0


def shift_block(suffix: str, blocks: int) -> str:
    """The state-dict key suffix of a stage's block moved by ``blocks``: an ``nRSN`` is an
    ``nn.Sequential`` of blocks, so ``.3.conv1.weight`` with 6 becomes ``.9.conv1.weight``."""
    if not blocks:
        return suffix
    head, _, rest = suffix[1:].partition(".")
    return f".{int(head) + blocks}.{rest}"


def _text(value) -> str:
    from ..dsl.printer import format_value

    return format_value(value)


def _ltype(item):
    ltype = REGISTRY.get(item.type)
    assert ltype is not None, item.type  # items of a compiled model are registered types
    return ltype


def get_arg(item, name: str):
    """The value of argument ``name`` as written (positional or keyword), or None."""
    for a in item.args:
        if a.name == name:
            return a.value
    pos = [a.name for a in _ltype(item).positional(item.tags)]
    given = [a for a in item.args if a.name is None]
    if name in pos and pos.index(name) < len(given):
        return given[pos.index(name)].value
    return None


def set_args(item, updates: dict, tags: str | None = None):
    """A copy of ``item`` with the arguments ``updates`` (name -> value) set: a positional
    argument given positionally is replaced in place, anything else becomes ``name=value``
    (the printer moves it into place when that is canonical)."""
    tags = item.tags if tags is None else tags
    pos_names = [a.name for a in _ltype(item).positional(tags)]
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
    first = items[0]
    assert isinstance(first, ast.Layer)
    return first.args[0].value


def modify_layer(items: list, type_: str, assignments: list[str], lineage: Lineage | None = None):
    """Set ``k=v`` on the first top-level item of type ``type_`` (ours, or DeNet's JSON name
    such as ``denet-sparse``); returns its index."""
    ltype = REGISTRY.resolve(type_)
    if ltype is None:
        hint = REGISTRY.suggest(type_)
        raise DenetError(
            f"--modify-layer: unknown layer type {type_!r}"
            + ("; did you mean " + " or ".join(map(repr, hint)) + "?" if hint else "")
        )
    type_ = ltype.type
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
    updates: dict[str, tuple[object, str]] = {}
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


# -- layer indices: ours and DeNet's (--denet-indices) --------------------------------------------
# Ours count top-level items from 0. DeNet's count DeNet's layer list: 0 is the input layer, a
# residual block is one layer (an nRSN[n,...] stage is n of them), R is two (a valid conv and the
# regression) and every other layer token one. Groups, taps and references have no DeNet layers,
# so DeNet's indices cannot be counted past them.
HINT = "DeNet's indices (0 = the input layer, one per residual block, R two) need --denet-indices"


def show(item, width: int = 40) -> str:
    """An item as the canonical string, shortened to ``width`` characters."""
    from ..dsl.printer import print_item

    text = print_item(item)
    return text if len(text) <= width else text[: width - 3] + "..."


def denet_layer_count(item) -> int | None:
    """How many of DeNet's layers a top-level item is; None for a group, tap or reference."""
    if not isinstance(item, ast.Layer):
        return None
    if item.type == "nRSN":
        num = get_arg(item, "num")
        if not isinstance(num, int) or isinstance(num, bool) or num < 1:
            raise DenetError(f"{show(item)}: the number of blocks must be a positive integer")
        return num
    return 2 if item.type == "R" else 1


def _span(first: int, n: int) -> str:
    return str(first) if n == 1 else f"{first}-{first + n - 1}"


def listing(items, denet: bool = False, last: int = 6) -> str:
    """The last ``last`` top-level items with their indices (ours, or DeNet's layer ranges),
    e.g. ``..., 5 nRSN.O[6,256,3,2], 6 nRSN.O[3,512,3,2], 7 P.A[7], 8 R.BT``."""
    rows, pos = [], 1
    for k, it in enumerate(items):
        if denet:
            n = denet_layer_count(it)
            if n is None:
                rows.append(f"? {show(it)}")
                continue
            rows.append(f"{_span(pos, n)} {show(it)}")
            pos += n
        else:
            rows.append(f"{k} {show(it)}")
    return ("..., " if len(rows) > last else "") + ", ".join(rows[-last:])


def denet_total(items) -> int | None:
    """How many of DeNet's layers follow the input layer; None if a group, tap or reference."""
    total = 0
    for it in items:
        n = denet_layer_count(it)
        if n is None:
            return None
        total += n
    return total


def _uncountable(option: str, item, k: int) -> DenetError:
    return DenetError(
        f"{option}: DeNet's indices cannot be counted at or past {show(item)} (our index {k}): "
        f"DeNet had no groups, taps or references; give our index without --denet-indices"
    )


def split_stage(item, lineage: Lineage, blocks: int) -> tuple[object, object]:
    """``nRSN[n,...]`` -> ``nRSN[blocks,...]`` and ``nRSN[n-blocks,...]``: the second keeps
    every tag and keyword but has stride 1 and no ``first_dilation`` (only the stage's first
    block has those), so the two compute what the stage did. Weights follow (:class:`Lineage`)."""
    n = int(get_arg(item, "num"))
    assert 0 < blocks < n
    first = set_args(item, {"num": (blocks, str(blocks))})
    second = set_args(item, {"num": (n - blocks, str(n - blocks)), "stride": (1, "1")})
    args = tuple(a for a in second.args if a.name != "first_dilation")
    second = type(item)(**{**second.__dict__, "args": args})
    return lineage.replace(item, first), lineage.replace(item, second, blocks)


def denet_insert(items: list, lineage: Lineage, index: int, new: list, spec: str) -> str:
    """DeNet's ``--layer-insert IDX:DESC``: ``new`` goes after DeNet's layers ``0..index-1``,
    splitting an ``nRSN`` stage when it lands between two of its blocks. Returns a note."""
    option = f"--layer-insert {spec}"
    if index < 1:
        raise DenetError(
            f"{option}: DeNet's index 0 is its input layer; inserting after the input is index 1"
        )
    pos = 1  # DeNet's index of items[k]'s first layer
    for k, it in enumerate(items):
        n = denet_layer_count(it)
        if pos == index and not isinstance(it, (ast.Tap, ast.Ref)):  # before or after a tap?
            items[k:k] = new
            after = f"after {show(items[k - 1])}" if k else "first"
            return f"{option}: DeNet's index {index} is our index {k} ({after})"
        if n is None:
            raise _uncountable(option, it, k)
        if index < pos + n:
            where = f"DeNet's layers {_span(pos, n)}, our index {k}"
            if it.type != "nRSN":
                raise DenetError(
                    f"{option}: DeNet's index {index} falls between the conv and the regression "
                    f"of {show(it)} ({where}), which is one layer here and cannot be split"
                )
            j = index - pos
            first, second = split_stage(it, lineage, j)
            items[k : k + 1] = [first, *new, second]
            return (
                f"{option}: DeNet's index {index} is after block {j} of {n} of {show(it)} "
                f"({where}): the stage is split into {show(first)} and {show(second)}"
            )
        pos += n
    if pos == index:
        items.extend(new)
        last = f"after {show(items[-len(new) - 1])}" if len(items) > len(new) else "first"
        return f"{option}: DeNet's index {index} is our index {len(items) - len(new)} ({last})"
    raise DenetError(
        f"{option}: DeNet's index {index} is past the end: after the input layer 0 the model has "
        f"{pos - 1} DeNet layers ({listing(items, denet=True)}); {pos} appends"
    )


def denet_remove(items: list, lineage: Lineage, count: int) -> str:
    """DeNet's ``--layer-remove N``: drop DeNet's last N layers; a stage that N ends inside
    keeps its first blocks (``nRSN[n,...]`` -> ``nRSN[n-m,...]``). Returns a note."""
    option = f"--layer-remove {count}"
    total = denet_total(items)
    if total is not None and count > total:
        raise DenetError(
            f"{option}: after the input layer the model has {total} DeNet layers "
            f"({listing(items, denet=True)})"
        )
    left, k = count, len(items)
    while left > 0:
        it = items[k - 1]
        n = denet_layer_count(it)
        if n is None:
            raise _uncountable(option, it, k - 1)
        if n <= left:
            left, k = left - n, k - 1
            continue
        if it.type != "nRSN":
            raise DenetError(
                f"{option}: DeNet's last {count} layer(s) end between the conv and the regression "
                f"of {show(it)} (our index {k - 1}), which is one layer here and cannot be split"
            )
        items[k - 1] = lineage.replace(it, set_args(it, {"num": (n - left, str(n - left))}))
        removed = items[k:]
        del items[k:]
        return f"{option} (DeNet's layers): removed the last {left} block(s) of {show(it)}" + (
            f" and {' '.join(show(r) for r in removed)}" if removed else ""
        )
    removed = items[k:]
    del items[k:]
    return f"{option} (DeNet's layers): removed {' '.join(show(r) for r in removed)}"
