"""``P`` (max / average pooling, global when no size is given) and ``PI`` (DeNet's pool inverse,
:func:`denet.kernels.pool_inv`)."""

from __future__ import annotations

import math

from torch import nn

from ..kernels import pool_inv
from .registry import TORCH_INT_MAX, Arg, Call, FunctionOp, LayerDef
from .shape import ShapeSpec


def pool_out(size: int, k: int, s: int, pad: int, ceil: bool) -> int:
    """Output length, as PyTorch (and Theano's pool_2d for stride <= size) computes it."""
    if not ceil:
        return (size + 2 * pad - k) // s + 1
    out = math.ceil((size + 2 * pad - k) / s) + 1
    if (out - 1) * s >= size + pad:  # the last window must start inside the input
        out -= 1
    return out


class Pool(LayerDef):
    type = "P"
    denet_name = "pool"
    doc = (
        "Max pooling, or average pooling with tag A (padding counted, Theano's "
        "average_inc_pad). Without a size it pools the whole map (global pooling), as "
        "the seed README documents."
    )
    tags = {
        "A": "average pooling (padding included in the count)",
        "B": "ceil mode (Theano ignore_border=False): partial windows at the border",
    }
    args = (
        Arg(
            "size",
            "int",
            None,
            min=1,
            max=TORCH_INT_MAX,
            doc="window size (default: the whole input)",
        ),
        Arg(
            "stride",
            "int",
            lambda call: call.args["size"],
            min=1,
            max=TORCH_INT_MAX,
            doc="stride (default: size)",
        ),
        Arg("pad", "int", 0, min=0, doc="zero padding on each side"),
    )

    def shape(self, call: Call) -> ShapeSpec:
        a, i = call.args, call.input
        if a["size"] is None:
            if a["pad"]:
                call.fail("global pooling (P without a size) takes no padding", "pad")
            return ShapeSpec(i.channels, 1, 1, i.stride * max(i.h, i.w))
        k, s, p = a["size"], a["stride"], a["pad"]
        if 2 * p > k:
            call.fail(f"pad ({p}) must be at most half the window size ({k})", "pad")
        h = pool_out(i.h, k, s, p, call.has("B"))
        w = pool_out(i.w, k, s, p, call.has("B"))
        if h < 1 or w < 1:
            call.fail(
                f"output would be empty: a {k}x{k} window does not fit the {i.h}x{i.w} input",
                "size",
            )
        return ShapeSpec(i.channels, h, w, i.stride * s)

    def build(self, call: Call):
        a = call.args
        if a["size"] is None:
            return nn.AdaptiveAvgPool2d(1) if call.has("A") else nn.AdaptiveMaxPool2d(1)
        if call.has("A"):
            return nn.AvgPool2d(
                a["size"], a["stride"], a["pad"], ceil_mode=call.has("B"), count_include_pad=True
            )
        return nn.MaxPool2d(a["size"], a["stride"], a["pad"], ceil_mode=call.has("B"))


class PoolInverse(LayerDef):
    type = "PI"
    denet_name = "pool-inv"
    doc = (
        "Pool inverse: nearest-neighbour upsampling by an integer factor (each pixel "
        "copied into a size x size block; the gradient is the block sum). Runs "
        "`denet.kernels.pool_inv` (Triton on CUDA)."
    )
    args = (Arg("size", "int", min=1, doc="upsampling factor"),)

    def shape(self, call: Call) -> ShapeSpec:
        i, n = call.input, call.args["size"]
        return ShapeSpec(i.channels, i.h * n, i.w * n, i.stride / n)

    def build(self, call: Call):
        n = call.args["size"]
        return FunctionOp(pool_inv, size=n) if n > 1 else None
