"""``SKIPSRC[i]`` / ``SKIP[i]``: DeNet's skip connections.

``SKIPSRC[i]`` marks the current tensor as skip source i (identity; tag ``X`` also makes it a
split point, see ``SPLIT``). ``SKIP[i]`` adds that tensor to the current one; when the channel
counts differ the source first goes through a 1x1 conv (no bias, he-backward unless ``init=``):
DeNet's ``proj-add``. ``mode=concat`` concatenates instead (DeNet's JSON-only combine mode).
"""

from __future__ import annotations

import operator

import torch
from torch import nn

from .init import init_conv, parse_weight_init
from .registry import Arg, Call, FunctionOp, LayerDef


class ProjectAdd(nn.Conv2d):
    """``x + conv1x1(y)``; state-dict keys are the conv's (``weight``)."""

    def forward(self, x, y):
        return x + super().forward(y)


def _symbol(call: Call) -> str:
    return f"SKIPSRC[{call.args['index']}]"


class SkipSource(LayerDef):
    type = "SKIPSRC"
    denet_name = "skip-src"
    doc = "Marks the current tensor as skip source `index` (identity)."
    tags = {"X": "also a split point (checkpointed segment boundary, like SPLIT)"}
    args = (Arg("index", "int", 0, min=0, doc="skip index"),)

    def defines(self, call: Call):
        return _symbol(call)

    def split_point(self, call: Call) -> bool:
        return call.has("X")


class Skip(LayerDef):
    type = "SKIP"
    denet_name = "skip"
    doc = (
        "Adds skip source `index` to the current tensor, through a 1x1 projection when "
        "the channels differ (proj-add); mode=concat concatenates."
    )
    args = (Arg("index", "int", 0, min=0, doc="skip index"),)
    keywords = (
        Arg("mode", "str", "add", choices=("add", "concat"), doc="add (projection-add) or concat"),
    )
    has_params = True

    def uses(self, call: Call):
        return [_symbol(call)]

    def missing_message(self, call: Call, symbol: str) -> str:
        i = call.args["index"]
        return f"SKIP[{i}] has no SKIPSRC[{i}] before it"

    def shape(self, call: Call):
        x, y = call.inputs
        if (x.height, x.width) != (y.height, y.width):
            call.fail(
                f"spatial size mismatch at SKIP: the current tensor is {x}, "
                f"SKIPSRC[{call.args['index']}] is {y}"
            )
        if call.args["mode"] == "concat":
            return x.with_(channels=x.channels + y.channels)
        return x

    def build(self, call: Call):
        x, y = call.inputs
        if call.args["mode"] == "concat":
            return FunctionOp(torch.cat, pack=True, dim=1)
        if x.channels == y.channels:
            return FunctionOp(operator.add)
        conv = ProjectAdd(y.channels, x.channels, 1, bias=False)
        init = call.args.get("init")
        init_conv(conv, parse_weight_init(init if init is not None else "he-backward"))
        return conv
