"""``D``: inverted dropout (scaled by 1/(1-p)), active in training only."""

from __future__ import annotations

from torch import nn

from .registry import Arg, Call, LayerDef


class Dropout(LayerDef):
    type = "D"
    denet_name = "dropout"
    accepts = ("map", "vector")  # element-wise
    doc = "Inverted dropout: zeroes activations with probability rate in training."
    args = (
        Arg("rate", "float", 0.5, min=0.0, max=1.0, doc="probability of dropping an activation"),
    )

    def shape(self, call: Call):
        if call.args["rate"] >= 1.0:
            call.fail("a dropout rate of 1 drops everything; use a rate below 1", "rate")
        return call.input

    def build(self, call: Call):
        return nn.Dropout(call.args["rate"]) if call.args["rate"] > 0 else None
