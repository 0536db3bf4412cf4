"""Named outputs and the per-pixel classification head.

``OUT[name]`` makes the current tensor a final output called ``name`` (identity in the chain).
``SEG`` is the segmentation head: its input, per-pixel class logits [B, classes, h, w], is the
output ``out`` (or ``name=``); with targets in training it adds ``loss_seg`` (``loss_seg_<name>``
for another name), the cross-entropy against each target's ``mask`` with ``ignore`` pixels left
out. When the logits are smaller or larger than the masks, the masks are resized to the logits
by nearest neighbour (DeepLab-v2's convention; put an upsampling layer before ``SEG`` to score at
the input size instead, as DRN does). Masks of one batch are padded with ``ignore`` to the
largest one, as the images are zero-padded.

After ``MSC[...](...)``, ``SEG[branches=1]`` also adds the loss to every branch output the
``MSC`` keeps (``ms0``, ``ms1`` ...: ``loss_seg_ms0`` ...), each against the masks resized to
that output (DeepLab-v2's four losses); ``$ms2 SEG[name=ms2]`` adds it to one. A ``SEG`` named
like the output it reads (through taps and references) takes that output's name over.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Arg, Call, LayerDef
from .shape import ANY_KIND


class Output(LayerDef):
    type = "OUT"
    doc = "Makes the current value a final output named `name` (identity in the chain)."
    accepts = ANY_KIND
    args = (Arg("name", "str", doc="output name (`out` is the main one)"),)

    def output_name(self, call: Call):
        return call.args["name"]


def stack_masks(targets, ignore: int, device) -> torch.Tensor:
    """[B, H, W] int64 masks of a batch, padded at the bottom/right with ``ignore``."""
    masks = [torch.as_tensor(t["mask"]) for t in targets]
    h = max(m.shape[-2] for m in masks)
    w = max(m.shape[-1] for m in masks)
    out = torch.full((len(masks), h, w), ignore, dtype=torch.int64, device=device)
    for i, m in enumerate(masks):
        out[i, : m.shape[-2], : m.shape[-1]] = m.to(device)
    return out


class PixelClassification(nn.Module):
    """Identity on the logits; with targets, also the per-pixel cross-entropy."""

    def __init__(self, loss_name: str, ignore: int):
        super().__init__()
        self.loss_name = loss_name
        self.ignore = ignore

    def forward(self, x, targets=None):
        if targets is None:
            return x
        labels = stack_masks(targets, self.ignore, x.device)
        if labels.shape[-2:] != x.shape[-2:]:
            labels = F.interpolate(labels[:, None].float(), size=x.shape[-2:], mode="nearest")
            labels = labels[:, 0].long()
        if bool((labels != self.ignore).any()):
            loss = F.cross_entropy(x, labels, ignore_index=self.ignore)
        else:  # every pixel ignored: no signal, but keep the graph
            loss = x.sum() * 0.0
        return x, {self.loss_name: loss}

    def extra_repr(self) -> str:
        return f"loss={self.loss_name}, ignore={self.ignore}"


class Segmentation(LayerDef):
    type = "SEG"
    doc = (
        "Segmentation head on per-pixel class logits: the output `name`; in training adds "
        "`loss_seg` (`loss_seg_<name>`), cross-entropy against the targets' `mask`, "
        "`ignore` pixels left out, masks resized (nearest) to the logits."
    )
    task = "segmentation"
    keywords = (
        Arg("name", "str", "out", doc="name of the output (and suffix of its loss)"),
        Arg("ignore", "int", 255, min=0, doc="label of pixels that count in no loss"),
        Arg("branches", "bool", False, doc="1: also on every branch output of the MSC before it"),
    )

    def expand(self, ctx, item, call: Call, current: str) -> str:
        kept = None
        if call.args["branches"]:
            kept = ctx.definitions.get(("MSC", _source(ctx, current)))
            if kept is None:
                call.fail(
                    "branches=1 adds the loss to the outputs of an MSC[...](...) right "
                    "before SEG; there is none here",
                    "branches",
                )
        end = ctx.add_layer(item, self, call, current)
        _take_name(ctx, current, call.args["name"])
        for name, node in kept or ():
            branch = dataclasses.replace(
                call,
                args={**call.args, "name": name, "branches": False},
                inputs=[ctx.shape_of(node)],
                taps={},
                out=None,
                name="",
            )
            branch.out = self.shape(branch)
            _take_name(ctx, node, name)
            branch.name = ctx.add_node(
                item,
                self.type,
                "",
                branch.args,
                [node],
                branch.out,
                branch,
                label=f"SEG_{name}",
                losses=self.losses(branch),
                reads_targets=True,
                output_name=name,
            )
        return end

    def _loss(self, call: Call) -> str:
        name = call.args["name"]
        return "loss_seg" if name == "out" else f"loss_seg_{name}"

    def losses(self, call: Call):
        return (self._loss(call),)

    def output_name(self, call: Call):
        return call.args["name"]

    def shape(self, call: Call):
        if call.classes is None:
            call.fail("SEG needs the number of classes: compile with classes=N")
        if call.input.channels != call.classes:
            call.fail(
                f"SEG takes one logit per class: {call.classes} channels, not "
                f"{call.input.channels} (end the network in C[{call.classes},1])"
            )
        return call.input

    def build(self, call: Call):
        return PixelClassification(self._loss(call), call.args["ignore"])


def _node(ctx, name: str):
    """The node called ``name`` (None for the images)."""
    return next((n for n in reversed(ctx.nodes) if n.name == name), None)


def _source(ctx, name: str) -> str:
    """The node whose value ``name`` is, looking through taps and references."""
    node = _node(ctx, name)
    while node is not None and node.type in ("@", "$"):
        name = node.inputs[0]
        node = _node(ctx, name)
    return name


def _take_name(ctx, name: str, output: str) -> None:
    """A head named like an output it reads (through taps and references) replaces it: the
    value is returned once, as the head's."""
    node = _node(ctx, name)
    while node is not None:
        if node.output_name == output:
            node.output_name = None
            return
        if node.type not in ("@", "$"):
            return
        node = _node(ctx, node.inputs[0])
