"""model-convert --format drn: fyu/drn's checkpoints become denet models.

``drn``: a classifier state dict of ``drn.py`` (``DRN`` for C and D, ``DRN_A`` for A). Keys:

* DRN-C: ``conv1``, ``bn1``, ``layer1`` ... ``layer8`` (residual stages), ``fc`` (1x1 conv);
* DRN-D: ``layer0.{0,1}`` (stem conv, BN), ``layer1/2/7/8.{3i,3i+1}`` (plain conv-BN-ReLU
  stacks), ``layer3`` ... ``layer6`` (residual stages), ``fc``;
* DRN-A: torchvision's names, ``conv1``, ``bn1``, ``layer1`` ... ``layer4``, ``fc`` (Linear).

Each maps onto ``examples/<arch>.desc`` (border mode half) in string order: the N-th
parameterised unit of the original (conv, BN, stage, fc) is the N-th ``C``/``BN``/``nRSN``/``R``
of the string, and inside a stage the block modules carry the same names (``conv1``, ``bn1``,
..., ``downsample.0``/``.1``). The classifier's output is ``R``'s softmax of DRN's logits.
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


def _unit_nodes(model, types=_UNIT_TYPES) -> list:
    return [n for n in model.graph.nodes if n.name in model._modules and n.type in types]


def _check_arch(arch: str) -> None:
    if arch not in DRN_ARCHS:
        raise DenetError(f"--arch {arch}: not a DRN ({', '.join(DRN_ARCHS)})")


def _listing(keys, n=3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def port_state(model, state: dict, rename, unrename, what: str, reshape_ok=()) -> None:
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
        if new is None or new not in target:
            unexpected.append(key)
            continue
        want = target[new]
        if tuple(value.shape) != tuple(want.shape):
            if not (key in reshape_ok and value.numel() == want.numel()):
                raise ModelFileError(
                    f"{key}: shape {tuple(value.shape)} does not fit {what} "
                    f"({tuple(want.shape)}); is --arch right?"
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
        raise ModelFileError(
            f"the checkpoint does not match {what}: {'; '.join(parts)} (is --arch right?)"
        )
    for k, v in target.items():  # the counters the checkpoint lacks keep the model's values
        converted.setdefault(k, v)
    model.load_state_dict(converted, strict=True)


def _prefix_map(units: list[tuple[str, str]], nodes: list, arch: str) -> dict[str, str]:
    if [t for _, t in units] != [n.type for n in nodes]:
        raise DenetError(f"examples/{arch}.desc does not have fyu/drn's {arch} layout")
    return {prefix: node.name for (prefix, _), node in zip(units, nodes)}


def _renamer(prefixes: dict[str, str]):
    """(rename, unrename): original key <-> denet key through a map of key prefixes."""
    inverse = {v: k for k, v in prefixes.items()}

    def rename(key: str) -> str | None:
        parts = key.split(".")
        for n in (2, 1):  # 'layer1.3.weight' (a plain conv of DRN-D) before 'layer3.0.conv1...'
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
    prefixes = _prefix_map(drn_units(arch), _unit_nodes(model), arch)
    rename, unrename = _renamer(prefixes)
    port_state(model, state, rename, unrename, f"fyu/drn's {arch}", reshape_ok=("fc.weight",))
    model.class_names = class_names
    return model
