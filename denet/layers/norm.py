"""Normalisation layers: ``BN``, ``BNA`` (BN + ReLU), ``FBN`` (frozen BN), ``AC`` (affine
channel) and ``GN`` (group norm).

DeNet gives BN momentum as the weight of the *old* running value (0.9); PyTorch's momentum is the
weight of the new batch value, so ``BN[0.9]`` becomes ``nn.BatchNorm2d(momentum=0.1)``. DeNet
averaged the inverse std where PyTorch averages the variance; at a fixed point both agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Arg, Call, LayerDef

NORMS = ("bn", "frozen", "affine", "gn")


class BatchNormReLU(nn.BatchNorm2d):
    """``BNA``: batch norm followed by ReLU (DeNet fused them in one cuDNN op to save memory)."""

    ends_in_activation = True  # its output is its ReLU's: nothing may overwrite it in place

    def forward(self, x):
        return F.relu(super().forward(x), inplace=True)


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (Detectron's frozen BN): all four
    are buffers, so nothing is trained and train/eval mode behave the same. Same state-dict keys
    as ``nn.BatchNorm2d`` (``num_batches_tracked`` excepted)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # loadable from a BatchNorm2d
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x):
        # one fused kernel (evaluation-mode batch norm), not a multiply and an add: half the
        # memory traffic of the two-pass form on a large map
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class AffineChannel2d(nn.Module):
    """Per-channel learnable scale and bias, no statistics (Detectron's AffineChannel)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        return x * self.weight[None, :, None, None] + self.bias[None, :, None, None]

    def extra_repr(self) -> str:
        return f"{self.num_features}"


def make_norm(
    kind: str, channels: int, momentum: float = 0.9, eps: float = 1e-5, groups: int = 32
) -> nn.Module:
    """A norm module by name (``norm=`` keyword of residual blocks); momentum DeNet-style."""
    if kind == "bn":
        return nn.BatchNorm2d(channels, eps=eps, momentum=1.0 - momentum)
    if kind == "frozen":
        return FrozenBatchNorm2d(channels, eps=eps)
    if kind == "affine":
        return AffineChannel2d(channels)
    if kind == "gn":
        return nn.GroupNorm(groups, channels, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; expected one of {', '.join(NORMS)}")


_MOMENTUM = Arg(
    "momentum",
    "float",
    0.9,
    min=0.0,
    max=1.0,
    doc="running-average weight of the old value (DeNet; PyTorch's is 1-this)",
)
_EPS = Arg("eps", "float", 1e-5, min=0.0, doc="added to the variance")


class BatchNorm(LayerDef):
    type = "BN"
    denet_name = "batchnorm"
    doc = (
        "Batch normalisation over (batch, height, width) per channel. Momentum DeNet-style, "
        "the weight of the old value (BN[0.9] is PyTorch's momentum 0.1); batch "
        "renormalisation is refused (DeNet's code had it commented out)."
    )
    args = (
        _MOMENTUM,
        _EPS,
        Arg("renorm_r", "float", 1.0, min=1.0, doc="batch renorm r_max (1: off)"),
        Arg("renorm_d", "float", 0.0, min=0.0, doc="batch renorm d_max (0: off)"),
        Arg("renorm_it", "int", 0, min=0, doc="batch renorm warm-up iterations"),
    )
    has_params = True

    def shape(self, call: Call):
        if call.args["renorm_r"] != 1.0 or call.args["renorm_d"] != 0.0:
            call.fail(
                "batch renormalisation is not supported (DeNet's own code has it "
                "commented out); leave renorm_r=1 and renorm_d=0",
                "renorm_r",
            )
        return call.input

    def params(self, call: Call) -> int:
        return 2 * call.input.channels  # weight and bias per channel

    def build(self, call: Call):
        return make_norm("bn", call.input.channels, call.args["momentum"], call.args["eps"])


class BatchNormReLUDef(LayerDef):
    type = "BNA"
    denet_name = "batchnorm-relu"
    doc = "Batch normalisation followed by ReLU (the maths of `BN A` with relu)."
    args = (_MOMENTUM, _EPS)
    has_params = True

    def shape(self, call: Call):
        return call.input

    def params(self, call: Call) -> int:
        return 2 * call.input.channels  # weight and bias per channel

    def build(self, call: Call):
        return BatchNormReLU(
            call.input.channels, eps=call.args["eps"], momentum=1.0 - call.args["momentum"]
        )


class FrozenBatchNorm(LayerDef):
    type = "FBN"
    doc = (
        "Frozen batch norm: fixed statistics and affine parameters (buffers), the same "
        "in training and evaluation (Detectron)."
    )
    args = (_EPS,)

    def shape(self, call: Call):
        return call.input

    def build(self, call: Call):
        return FrozenBatchNorm2d(call.input.channels, eps=call.args["eps"])


class AffineChannel(LayerDef):
    type = "AC"
    doc = "Affine channel: learnable per-channel scale and bias, no statistics."
    has_params = True

    def shape(self, call: Call):
        return call.input

    def params(self, call: Call) -> int:
        return 2 * call.input.channels  # weight and bias per channel

    def build(self, call: Call):
        return AffineChannel2d(call.input.channels)


class GroupNorm(LayerDef):
    type = "GN"
    doc = "Group normalisation."
    args = (Arg("groups", "int", 32, min=1, doc="number of channel groups"), _EPS)
    has_params = True

    def shape(self, call: Call):
        if call.input.channels % call.args["groups"]:
            call.fail(
                f"groups={call.args['groups']} must divide the "
                f"{call.input.channels} input channels",
                "groups",
            )
        return call.input

    def params(self, call: Call) -> int:
        return 2 * call.input.channels  # weight and bias per channel

    def build(self, call: Call):
        return nn.GroupNorm(call.args["groups"], call.input.channels, eps=call.args["eps"])
