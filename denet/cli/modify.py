"""model-modify: change a model file's input size, classifier or layers, keeping the weights of
every layer that is unchanged.

Operations run in DeNet's order: ``--image-size`` / ``--class-num``, ``--merge``,
``--use-cudnn-pool``, ``--convert-bn-relu``, ``--modify-bn``, ``--modify-layer``,
``--layer-remove``, ``--layer-insert`` (applied one after another), ``--layer-append``. Layer
indices are top-level item positions, as ``--summary`` shows them, or, with ``--denet-indices``,
positions in DeNet's layer list (the input layer, one layer per residual block, ``R`` two), so
that DeNet's scripts run as written. The input file is only read.
The edits themselves are in :mod:`denet.cli.modify_ops`.
"""

from __future__ import annotations

import argparse
import os

import torch

from ..errors import DenetError
from . import modify_ops as ops
from ._common import ArgumentParser, tool_main
from .modify_ops import modify_layer  # noqa: F401  (public since the first model-modify)


def _parse_items(desc: str):
    from ..dsl import parse

    return list(parse(desc).items)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
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
        "--merge",
        action="store_true",
        help="remove the split points (DeNet's --merge): SPLIT items go, SKIPSRC.X[i] becomes "
        "SKIPSRC[i]; the maths is unchanged",
    )
    p.add_argument(
        "--use-cudnn-pool",
        action="store_true",
        help="DeNet's cuDNN pooling: every ceil-mode P.B[k,s] becomes the padded floor-mode "
        "P[k,s,1] (same size on even inputs, windows shifted by one pixel; see "
        "docs/model-modify.md)",
    )
    p.add_argument(
        "--convert-bn-relu",
        action="store_true",
        help="every BN directly followed by a relu A becomes one BNA (weights kept, same maths); "
        "residual blocks are left as they are",
    )
    p.add_argument(
        "--modify-bn",
        nargs=3,
        metavar=("ENABLED", "MOMENTUM", "EPS"),
        help="set momentum (DeNet-style, e.g. 0.9) and eps of every BN, BNA and residual "
        "block; ENABLED is read as DeNet did, bool(string), so any value (even 0) means on",
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
        help="remove the last N top-level layers (DeNet's last N layers with --denet-indices)",
    )
    p.add_argument(
        "--layer-insert",
        nargs="+",
        default=[],
        metavar="IDX:DESC",
        help="insert DESC so that it starts at top-level index IDX (after the first "
        "IDX layers; with --denet-indices, after DeNet's layers 0..IDX-1); several are applied "
        "one after another, each shifting the later indices",
    )
    p.add_argument(
        "--layer-append", nargs="+", default=[], metavar="DESC", help="append layers at the end"
    )
    p.add_argument(
        "--denet-indices",
        action="store_true",
        help="--layer-remove and --layer-insert count DeNet's layer list, so that DeNet's "
        "scripts work as written: 0 is the input layer, each residual block is one layer (an "
        "nRSN[n,...] stage is n), R is two (conv and regression), any other layer one; an "
        "insert between two blocks of a stage splits the stage (weights kept)",
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

    from ..dsl import ast, print_items
    from ..model_file import model_from_payload, read_payload

    if args.output is None and not args.summary:
        raise DenetError(
            "--output M2 is required (or --summary alone, to look at the result without writing it)"
        )
    if args.output is not None and os.path.abspath(args.output) == os.path.abspath(args.input):
        raise DenetError("--output must differ from --input (the input file is never changed)")
    bn = ops.parse_modify_bn(args.modify_bn) if args.modify_bn else None
    payload = read_payload(args.input)
    old = model_from_payload(payload, args.input)

    items = list(old.graph.desc.items)
    lineage = ops.Lineage()  # which input item each edited item stands for
    notes = []
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
    if args.merge:
        n = ops.merge(items, lineage)
        notes.append(f"--merge: {n} split point(s) removed")
    if args.use_cudnn_pool:
        n = ops.use_cudnn_pool(items, lineage)
        notes.append(f"--use-cudnn-pool: {n} ceil-mode pool(s) P.B now padded P[k,s,1]")
    if args.convert_bn_relu:
        n = ops.convert_bn_relu(items, lineage, old.options.get("activation", "relu"))
        notes.append(f"--convert-bn-relu: {n} BN A pair(s) now BNA")
    if bn is not None:
        n = ops.modify_bn(items, lineage, *bn)
        notes.append(f"--modify-bn: momentum {bn[0]:g}, eps {bn[1]:g} on {n} layer(s)")
    for spec in args.modify_layer or []:
        if len(spec) < 2:
            raise DenetError("--modify-layer needs TYPE and at least one k=v")
        ops.modify_layer(items, spec[0], spec[1:], lineage)
    if args.layer_remove < 0:
        raise DenetError(f"--layer-remove {args.layer_remove}: the count cannot be negative")
    if args.layer_remove and args.denet_indices:
        notes.append(ops.denet_remove(items, lineage, args.layer_remove))
    elif args.layer_remove:
        if args.layer_remove > len(items):
            raise DenetError(
                f"--layer-remove {args.layer_remove}: the model has {len(items)} top-level "
                f"layers ({ops.listing(items)})"
            )
        del items[len(items) - args.layer_remove :]
    for spec in args.layer_insert:
        idx, colon, desc = spec.partition(":")
        if not colon or not idx.strip().isdigit():
            raise DenetError(f"--layer-insert expects IDX:DESC, not {spec!r}")
        idx = int(idx)
        if args.denet_indices:
            notes.append(ops.denet_insert(items, lineage, idx, _parse_items(desc), spec))
            continue
        if idx > len(items):
            raise DenetError(
                f"--layer-insert {spec}: index {idx} is past the end: the model has "
                f"{len(items)} top-level layers ({ops.listing(items)}), so {len(items)} "
                f"appends; {ops.HINT}"
            )
        items[idx:idx] = _parse_items(desc)
    for desc in args.layer_append:
        items.extend(_parse_items(desc))

    desc = print_items(items)
    torch.manual_seed(args.seed)
    model = denet.compile(desc, input_shape, classes, **old.options)
    model.class_names = class_names

    # Token j of the new string stands for token origin[j] of the old one (None: a new item);
    # state-dict keys are l{token}_{TYPE}..., so the same layer may have a new name. The nodes
    # of one token (several for REP copies) are matched in order.
    old_index = {id(it): i for i, it in enumerate(ast.walk(old.graph.desc.items))}
    origin = [old_index.get(id(lineage.original(it))) for it in ast.walk(items)]
    # block b of the second part of a split nRSN stage is block b + shift of the original
    shift = [lineage.blocks(it) for it in ast.walk(items)]
    old_by_token: dict[int, list] = {}
    for n in old.graph.nodes:
        old_by_token.setdefault(n.index, []).append(n.name)
    new_by_token: dict[int, list] = {}
    for n in model.graph.nodes:
        new_by_token.setdefault(n.index, []).append(n.name)
    old_state = old.state_dict()
    new_state = model.state_dict()
    kept, fresh = 0, []
    with torch.no_grad():
        for n in model.graph.nodes:
            name = n.name
            keys = [key for key in new_state if key.startswith(name + ".")]
            if not keys:
                continue
            k = new_by_token[n.index].index(name)
            old_names = old_by_token.get(origin[n.index], []) if origin[n.index] is not None else []
            old_name = old_names[k] if k < len(old_names) else None
            old_key = {
                key: f"{old_name}{ops.shift_block(key[len(name) :], shift[n.index])}"
                for key in keys
            }
            ok = old_name is not None and all(
                old_key[key] in old_state and old_state[old_key[key]].shape == new_state[key].shape
                for key in keys
            )
            if ok:
                for key in keys:
                    new_state[key].copy_(old_state[old_key[key]])
                kept += 1
            else:
                fresh.append(name)
    if args.output is not None:
        denet.save(model, args.output)
    if args.summary:
        print(denet.summary(model))
    for note in notes:
        print(note)
    done = f"wrote {args.output}" if args.output is not None else "not written (no --output)"
    print(
        f"{done}: kept the weights of {kept} layer(s)"
        + (f", new weights for {', '.join(fresh)}" if fresh else "")
    )
    return 0
