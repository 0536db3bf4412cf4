"""model-convert --format drn / drnseg: fyu/drn's checkpoints become denet models.

``drn``: a classifier state dict of ``drn.py`` (``DRN`` for C and D, ``DRN_A`` for A). Keys:

* DRN-C: ``conv1``, ``bn1``, ``layer1`` ... ``layer8`` (residual stages), ``fc`` (1x1 conv);
* DRN-D: ``layer0.{0,1}`` (stem conv, BN), ``layer1/2/7/8.{3i,3i+1}`` (plain conv-BN-ReLU
  stacks), ``layer3`` ... ``layer6`` (residual stages), ``fc``;
* DRN-A: torchvision's names, ``conv1``, ``bn1``, ``layer1`` ... ``layer4``, ``fc`` (Linear).

Each maps onto ``examples/<arch>.desc`` (border mode half) in string order: the N-th
parameterised unit of the original (conv, BN, stage, fc) is the N-th ``C``/``BN``/``nRSN``/``R``
of the string, and inside a stage the block modules carry the same names (``conv1``, ``bn1``,
..., ``downsample.0``/``.1``). The classifier's output is ``R``'s softmax of DRN's logits.

``drnseg``: a state dict of segment.py's ``DRNSeg`` (``base.<i>.*`` = the classifier's children
without avgpool and fc, numbered as ``nn.Sequential``; ``seg.*``, the 1x1 conv to the classes;
``up.weight``, the frozen bilinear x8 transposed conv). The model is
``examples/drnseg_<arch>.desc`` with the class count of ``seg.weight``.
"""

from __future__ import annotations

import torch

from ..errors import DenetError, ModelFileError
from .convert import example_desc

# name -> (DRN kind, residual block, blocks per stage), drn.py's constructors (A-18/34: DRN_A
# with BasicBlock, for which drn.py has no function).
DRN_ARCHS: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "drn_a_18": ("A", "basic", (2, 2, 2, 2)),
    "drn_a_34": ("A", "basic", (3, 4, 6, 3)),
    "drn_a_50": ("A", "bottleneck", (3, 4, 6, 3)),
    "drn_c_26": ("C", "basic", (1, 1, 2, 2, 2, 2, 1, 1)),
    "drn_c_42": ("C", "basic", (1, 1, 3, 4, 6, 3, 1, 1)),
    "drn_c_58": ("C", "bottleneck", (1, 1, 3, 4, 6, 3, 1, 1)),
    "drn_d_22": ("D", "basic", (1, 1, 2, 2, 2, 2, 1, 1)),
    "drn_d_24": ("D", "basic", (1, 1, 2, 2, 2, 2, 2, 2)),
    "drn_d_38": ("D", "basic", (1, 1, 3, 4, 6, 3, 1, 1)),
    "drn_d_40": ("D", "basic", (1, 1, 3, 4, 6, 3, 2, 2)),
    "drn_d_54": ("D", "bottleneck", (1, 1, 3, 4, 6, 3, 1, 1)),
    "drn_d_56": ("D", "bottleneck", (1, 1, 3, 4, 6, 3, 2, 2)),
    "drn_d_105": ("D", "bottleneck", (1, 1, 3, 4, 23, 3, 1, 1)),
    "drn_d_107": ("D", "bottleneck", (1, 1, 3, 4, 23, 3, 2, 2)),
}
_UNIT_TYPES = ("C", "BN", "nRSN", "R")


def drn_units(arch: str) -> list[tuple[str, str]]:
    """(key prefix in fyu/drn's classifier, denet type) of every unit with weights, in order."""
    kind, _, layers = DRN_ARCHS[arch]
    units = [("conv1", "C"), ("bn1", "BN")] if kind in "AC" else [("layer0.0", "C")]
    if kind == "D":
        units.append(("layer0.1", "BN"))
    for i, n in enumerate(layers, start=1):
        if kind == "D" and i in (1, 2, 7, 8):  # _make_conv_layers: conv, BN, ReLU per layer
            for j in range(n):
                units += [(f"layer{i}.{3 * j}", "C"), (f"layer{i}.{3 * j + 1}", "BN")]
        else:
            units.append((f"layer{i}", "nRSN"))
    units.append(("fc", "R"))
    return units


def drn_children(arch: str) -> list[str]:
    """The classifier's children in registration order, avgpool and fc left out: what
    ``DRNSeg.base`` numbers 0, 1, 2, ... (parameter-free children included)."""
    kind, _, layers = DRN_ARCHS[arch]
    if kind == "A":
        return ["conv1", "bn1", "relu", "maxpool", *(f"layer{i}" for i in range(1, 5))]
    stem = ["conv1", "bn1", "relu"] if kind == "C" else ["layer0"]
    return stem + [f"layer{i}" for i in range(1, len(layers) + 1)]


def unit_nodes(model, types=_UNIT_TYPES) -> list:
    """The nodes of ``types`` that own their modules, in string order (the copies that an
    ``MSC`` or ``USE`` makes of a body share the first one's modules and are left out)."""
    return [
        n
        for n in model.graph.nodes
        if n.name in model._modules and n.type in types and n.shared is None
    ]


def _check_arch(arch: str) -> None:
    if arch not in DRN_ARCHS:
        raise DenetError(f"--arch {arch}: not a DRN ({', '.join(DRN_ARCHS)})")


def _listing(keys, n=3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def port_state(
    model, state: dict, rename, unrename, what: str, reshape_ok=(), hint="is --arch right?"
) -> None:
    """Load ``state`` (the original's keys) into ``model`` through ``rename(key) -> denet key or
    None``. Keys that map nowhere, model entries nothing fills (``num_batches_tracked`` aside:
    checkpoints of PyTorch < 0.4 have none; named in the original's terms by ``unrename``) and
    shapes that differ are one-line errors naming a few. A value may change shape without
    changing size only for keys in ``reshape_ok`` (a Linear classifier becoming a 1x1 conv)."""
    target = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state.items():
        new = rename(key)
        if new is not None and new not in target and key.endswith(".num_batches_tracked"):
            continue  # a BN counter where the model has a frozen norm without one
        if new is None or new not in target:
            unexpected.append(key)
            continue
        want = target[new]
        if tuple(value.shape) != tuple(want.shape):
            if not (key in reshape_ok and value.numel() == want.numel()):
                raise ModelFileError(
                    f"{key}: shape {tuple(value.shape)} does not fit {what} "
                    f"({tuple(want.shape)}); {hint}"
                )
        converted[new] = value.reshape(want.shape).to(want.dtype)
    missing = [
        unrename(k) or k
        for k in target
        if k not in converted and not k.endswith(".num_batches_tracked")
    ]
    if unexpected or missing:
        parts = []
        if unexpected:
            parts.append(f"unexpected keys {_listing(unexpected)}")
        if missing:
            parts.append(f"missing {_listing(missing)}")
        raise ModelFileError(f"the checkpoint does not match {what}: {'; '.join(parts)} ({hint})")
    for k, v in target.items():  # the counters the checkpoint lacks keep the model's values
        converted.setdefault(k, v)
    model.load_state_dict(converted, strict=True)


def _prefix_map(units: list[tuple[str, str]], nodes: list, arch: str) -> dict[str, str]:
    if [t for _, t in units] != [n.type for n in nodes]:
        raise DenetError(f"examples/{arch}.desc does not have fyu/drn's {arch} layout")
    return {prefix: node.name for (prefix, _), node in zip(units, nodes)}


def renamer(prefixes: dict[str, str]):
    """(rename, unrename): original key <-> denet key through a map of key prefixes."""
    inverse = {v: k for k, v in prefixes.items()}

    def rename(key: str) -> str | None:
        parts = key.split(".")
        for n in range(len(parts) - 1, 0, -1):  # the longest prefix: 'layer1.3' before 'layer1'
            head = ".".join(parts[:n])
            if head in prefixes and len(parts) > n:
                return ".".join([prefixes[head], *parts[n:]])
        return None

    def unrename(key: str) -> str | None:
        head, _, rest = key.partition(".")
        return f"{inverse[head]}.{rest}" if head in inverse else None

    return rename, unrename


def drn_classifier(arch: str, state: dict, image_size=(224, 224), class_names=None):
    """The denet model of a fyu/drn classifier state dict."""
    import denet

    _check_arch(arch)
    if "fc.weight" not in state:
        raise ModelFileError(f"the checkpoint has no fc.weight: not a fyu/drn {arch} classifier")
    classes = state["fc.weight"].shape[0]
    model = denet.compile(example_desc(arch), (3, *image_size), classes, border_mode="half")
    prefixes = _prefix_map(drn_units(arch), unit_nodes(model), arch)
    rename, unrename = renamer(prefixes)
    port_state(model, state, rename, unrename, f"fyu/drn's {arch}", reshape_ok=("fc.weight",))
    model.class_names = class_names
    return model


# ------------------------------------------------------------------------------------ DRNSeg
def drn_segmenter(
    arch: str, state: dict, classes: int | None = None, image_size=(512, 512), class_names=None
):
    """The denet model of a segment.py ``DRNSeg`` state dict; ``up.weight`` may be absent
    (the bilinear kernel the model starts with stays)."""
    import denet

    _check_arch(arch)
    if "seg.weight" not in state:
        raise ModelFileError(f"the checkpoint has no seg.weight: not a fyu/drn DRNSeg ({arch})")
    k = state["seg.weight"].shape[0]
    if classes is not None and classes != k:
        raise DenetError(f"--classes {classes} does not match the checkpoint's seg.weight ({k})")
    model = denet.compile(example_desc(f"drnseg_{arch}"), (3, *image_size), k, border_mode="half")
    units = [u for u in drn_units(arch) if u[0] != "fc"]
    nodes = unit_nodes(model, _UNIT_TYPES)
    body, head = nodes[: len(units)], nodes[len(units) :]
    prefixes = _prefix_map(units, body, arch)
    if [n.type for n in head[:1]] != ["C"]:
        raise DenetError(f"examples/drnseg_{arch}.desc has no seg conv after the DRN body")
    up = [n for n in model.graph.nodes if n.type == "BDC"]
    if len(up) != 1:
        raise DenetError(f"examples/drnseg_{arch}.desc needs one BDC (DRNSeg's up)")
    base = {str(i): child for i, child in enumerate(drn_children(arch))}
    index = {child: i for i, child in base.items()}
    classifier, unclassifier = renamer(prefixes)
    own = {"seg": head[0].name, "up": up[0].name}

    def rename(key: str) -> str | None:
        parts = key.split(".")
        if parts[0] == "base" and len(parts) > 2 and parts[1] in base:
            return classifier(".".join([base[parts[1]], *parts[2:]]))
        if key in ("seg.weight", "seg.bias", "up.weight"):
            return f"{own[parts[0]]}.{parts[1]}"
        return None

    def unrename(key: str) -> str | None:
        head_, _, rest = key.partition(".")
        for name, module in own.items():
            if head_ == module:
                return f"{name}.{rest}"
        orig = unclassifier(key)
        if orig is None:
            return None
        for child, i in index.items():  # 'layer0.1.weight' -> 'base.0.1.weight'
            if orig.startswith(child + "."):
                return f"base.{i}.{orig[len(child) + 1 :]}"
        return None

    if "up.weight" not in state:
        state = {**state, "up.weight": model.state_dict()[f"{up[0].name}.weight"]}
    port_state(model, state, rename, unrename, f"fyu/drn's DRNSeg({arch})")
    model.class_names = class_names
    return model
