"""``A``: the activation chosen by ``--activation`` (or named in the layer: ``A[sigmoid]``)."""

from __future__ import annotations

import torch
from torch import nn

from .registry import Arg, Call, LayerDef

ACTIVATIONS = (
    "none",
    "sigmoid",
    "relu",
    "relu-safe",
    "elu",
    "tanh",
    "softmax",
    "softplus",
    "leaky-relu",
)


class ReLUSafe(nn.Module):
    """DeNet's ``relu-safe``: max(x, 0) (the same function as relu)."""

    def forward(self, x):
        return torch.clamp_min(x, 0.0)


def make_activation(name: str, inplace: bool = False) -> nn.Module | None:
    """The module for an activation name; None for ``none``."""
    if name == "none":
        return None
    if name == "relu":
        return nn.ReLU(inplace=inplace)
    if name == "relu-safe":
        return ReLUSafe()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "elu":
        return nn.ELU(inplace=inplace)
    if name == "tanh":
        return nn.Tanh()
    if name == "softmax":
        return nn.Softmax(dim=1)
    if name == "softplus":
        return nn.Softplus()
    if name == "leaky-relu":
        return nn.LeakyReLU(0.01, inplace=inplace)
    raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")


class Activation(LayerDef):
    type = "A"
    denet_name = "activation"
    accepts = ("map", "vector")  # element-wise
    doc = (
        "Activation: the global --activation, or the one named as argument. "
        "softmax is over channels."
    )
    args = (
        Arg(
            "kind",
            "str",
            None,
            choices=ACTIVATIONS,
            doc="activation (default: the global --activation)",
        ),
    )

    def shape(self, call: Call):
        return call.input

    def build(self, call: Call):
        return make_activation(call.args["kind"] or call.activation, inplace=False)
