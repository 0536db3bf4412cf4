"""model-modify: change a model file's input size, classifier or layers, keeping the weights of
every layer that is unchanged.

Operations run in DeNet's order: ``--image-size`` / ``--class-num``, ``--modify-layer``,
``--layer-remove``, ``--layer-insert`` (applied one after another), ``--layer-append``. Layer
indices are top-level item positions, as ``--summary`` shows them. The input file is only read.
"""

from __future__ import annotations

import argparse
import os

import torch

from ..errors import DenetError, DescError
from ._common import tool_main


def _parse_items(desc: str):
    from ..dsl import parse

    return list(parse(desc).items)


def _parse_value(text: str):
    from ..dsl import parse

    try:
        items = parse(f"X[{text}]").items
    except DescError:
        raise DenetError(f"--modify-layer: cannot read the value {text!r}") from None
    return items[0].args[0].value


def modify_layer(items, type_: str, assignments: list[str]):
    """Set ``k=v`` on the first item of type ``type_`` (searching branches too)."""
    from ..dsl import ast
    from ..layers import REGISTRY

    def find(seq):
        for k, it in enumerate(seq):
            if isinstance(it, (ast.Layer, ast.Group)) and it.type == type_:
                return seq, k
            if isinstance(it, ast.Group):
                for b in it.branches:
                    r = find(list(b))
                    if r:
                        return r
        return None

    ltype = REGISTRY.get(type_)
    if ltype is None:
        hint = REGISTRY.suggest(type_)
        raise DenetError(
            f"--modify-layer: unknown layer type {type_!r}"
            + ("; did you mean " + " or ".join(map(repr, hint)) + "?" if hint else "")
        )
    for it in items:
        if isinstance(it, (ast.Layer, ast.Group)) and it.type == type_:
            break
    else:
        if not any(
            isinstance(i, (ast.Layer, ast.Group)) and i.type == type_ for i in ast.walk(items)
        ):
            raise DenetError(f"--modify-layer: the model has no {type_} layer")
    # top-level first; otherwise the first in reading order inside groups
    found = None
    for k, it in enumerate(items):
        if isinstance(it, (ast.Layer, ast.Group)) and it.type == type_:
            found = (items, k)
            break
    if found is None:
        raise DenetError(
            f"--modify-layer: the first {type_} is inside a group; edit the "
            f"group with --layer-remove/--layer-insert instead"
        )
    seq, k = found
    item = seq[k]
    pos_names = [a.name for a in ltype.positional(item.tags)]
    args = list(item.args)
    for assignment in assignments:
        key, eq, text = assignment.partition("=")
        if not eq or not key:
            raise DenetError(f"--modify-layer: expected k=v, not {assignment!r}")
        value = _parse_value(text)
        positional = [a for a in args if a.name is None]
        if key in pos_names and pos_names.index(key) < len(positional):
            target = positional[pos_names.index(key)]
            args[args.index(target)] = ast.Arg(value, None, target.line, target.column, text)
        else:
            args = [a for a in args if a.name != key]
            args.append(ast.Arg(value, key, item.line, item.column, text))
    seq[k] = type(item)(**{**item.__dict__, "args": tuple(args)})
    return k


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="model-modify",
        description="Modify a denet model file and write the result to a new file. Weights of "
        "layers that are unchanged (same token, same shapes) are kept; new or "
        "reshaped layers are initialised as in a fresh model. The input file is "
        "never changed.",
    )
    p.add_argument("--input", required=True, metavar="M", help="model file to read")
    p.add_argument(
        "--output",
        metavar="M2",
        help="model file to write; without it, --summary shows the result and nothing is written",
    )
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="new input image size (height width)",
    )
    p.add_argument(
        "--class-num",
        type=int,
        metavar="N",
        help="new number of classes: the classifier (R) gets N outputs and new "
        "weights; stored class names are dropped",
    )
    p.add_argument(
        "--modify-layer",
        nargs="+",
        action="append",
        metavar=("TYPE", "K=V"),
        help="set arguments of the first top-level layer of TYPE, e.g. "
        "--modify-layer BN momentum=0.99 (argument names as in "
        "docs/language.md); may be repeated",
    )
    p.add_argument(
        "--layer-remove",
        type=int,
        default=0,
        metavar="N",
        help="remove the last N top-level layers",
    )
    p.add_argument(
        "--layer-insert",
        nargs="+",
        default=[],
        metavar="IDX:DESC",
        help="insert DESC so that it starts at top-level index IDX (after the first "
        "IDX layers); several are applied one after another",
    )
    p.add_argument(
        "--layer-append", nargs="+", default=[], metavar="DESC", help="append layers at the end"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=23455,
        help="random seed for the weights of new layers (default 23455, DeNet's)",
    )
    p.add_argument("--summary", action="store_true", help="print the layer table of the new model")
    return p


@tool_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import denet

    from ..dsl import print_items
    from ..model_file import model_from_payload, read_payload

    if args.output is None and not args.summary:
        raise DenetError(
            "--output M2 is required (or --summary alone, to look at the result without writing it)"
        )
    if args.output is not None and os.path.abspath(args.output) == os.path.abspath(args.input):
        raise DenetError("--output must differ from --input (the input file is never changed)")
    payload = read_payload(args.input)
    old = model_from_payload(payload, args.input)

    items = list(old.graph.desc.items)
    origin: list[int | None] = list(range(len(items)))  # old top-level index of each item
    input_shape = tuple(old.input_shape)
    classes = old.classes
    class_names = old.class_names
    if args.image_size:
        if min(args.image_size) < 1:
            raise DenetError("--image-size must be positive")
        input_shape = (input_shape[0], *args.image_size)
    if args.class_num is not None:
        if args.class_num < 1:
            raise DenetError("--class-num must be positive")
        if args.class_num != classes:
            classes, class_names = args.class_num, None
    for spec in args.modify_layer or []:
        if len(spec) < 2:
            raise DenetError("--modify-layer needs TYPE and at least one k=v")
        modify_layer(items, spec[0], spec[1:])
    if args.layer_remove:
        if not 0 < args.layer_remove <= len(items):
            raise DenetError(
                f"--layer-remove {args.layer_remove}: the model has {len(items)} top-level layers"
            )
        del items[len(items) - args.layer_remove :]
        del origin[len(origin) - args.layer_remove :]
    for spec in args.layer_insert:
        idx, colon, desc = spec.partition(":")
        if not colon or not idx.strip().isdigit():
            raise DenetError(f"--layer-insert expects IDX:DESC, not {spec!r}")
        idx = int(idx)
        if idx > len(items):
            raise DenetError(
                f"--layer-insert {spec}: index {idx} is past the end "
                f"({len(items)} top-level layers)"
            )
        new = _parse_items(desc)
        items[idx:idx] = new
        origin[idx:idx] = [None] * len(new)
    for desc in args.layer_append:
        new = _parse_items(desc)
        items.extend(new)
        origin.extend([None] * len(new))

    desc = print_items(items)
    torch.manual_seed(args.seed)
    model = denet.compile(desc, input_shape, classes, **old.options)
    model.class_names = class_names

    # map the modules of every kept item, node by node, and copy what still fits
    old_by_top: dict[int, list] = {}
    for n in old.graph.nodes:
        old_by_top.setdefault(n.top, []).append(n.name)
    new_by_top: dict[int, list] = {}
    for n in model.graph.nodes:
        new_by_top.setdefault(n.top, []).append(n.name)
    old_state = old.state_dict()
    new_state = model.state_dict()
    kept, fresh = 0, []
    with torch.no_grad():
        for new_top, old_top in enumerate(origin):
            for k, name in enumerate(new_by_top.get(new_top, [])):
                keys = [key for key in new_state if key.startswith(name + ".")]
                if not keys:
                    continue
                old_name = old_by_top[old_top][k] if old_top is not None else None
                ok = old_name is not None and all(
                    old_name + key[len(name) :] in old_state
                    and old_state[old_name + key[len(name) :]].shape == new_state[key].shape
                    for key in keys
                )
                if ok:
                    for key in keys:
                        new_state[key].copy_(old_state[old_name + key[len(name) :]])
                    kept += 1
                else:
                    fresh.append(name)
    if args.output is not None:
        denet.save(model, args.output)
    if args.summary:
        print(denet.summary(model))
    done = f"wrote {args.output}" if args.output is not None else "not written (no --output)"
    print(
        f"{done}: kept the weights of {kept} layer(s)"
        + (f", new weights for {', '.join(fresh)}" if fresh else "")
    )
    return 0
