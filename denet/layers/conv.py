"""``C`` (convolution) and ``DC`` (transposed convolution, DeNet's "deconv").

DeNet's code decides the bias: **``C.B`` turns the conv bias on and plain ``C`` has none** (the
seed README says the opposite; the code, which the released models follow, wins). ``DC`` keeps the
README convention: ``DC.B`` disables its bias.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .border import border_padding, conv_out
from .init import init_conv
from .registry import TORCH_INT_MAX, Arg, Call, LayerDef
from .shape import ShapeSpec

_SQUARE = (
    Arg("filters", "int", min=1, doc="output channels"),
    Arg("size", "int", 1, min=1, doc="kernel size (square)"),
    Arg("stride", "int", 1, min=1, max=TORCH_INT_MAX, doc="stride"),
)
_RECT = (
    Arg("filters", "int", min=1, doc="output channels"),
    Arg("kh", "int", min=1, doc="kernel height"),
    Arg("kw", "int", min=1, doc="kernel width"),
    Arg("sh", "int", 1, min=1, max=TORCH_INT_MAX, doc="vertical stride"),
    Arg("sw", "int", 1, min=1, max=TORCH_INT_MAX, doc="horizontal stride"),
)


def kernel_stride(call: Call) -> tuple[tuple[int, int], tuple[int, int]]:
    a = call.args
    if call.has("X"):
        return (a["kh"], a["kw"]), (a["sh"], a["sw"])
    return (a["size"], a["size"]), (a["stride"], a["stride"])


class PaddedConv2d(nn.Conv2d):
    """A conv with asymmetric zero padding (``same`` border with an even kernel): pads
    (left, right, top, bottom) first, then convolves without padding."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k,
        stride,
        *,
        dilation: int,
        groups: int,
        bias: bool,
        pad: tuple[int, int, int, int],
    ):
        super().__init__(cin, cout, k, stride, 0, dilation, groups, bias)
        self.pad = pad

    def forward(self, x):
        return super().forward(F.pad(x, self.pad))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", pad={self.pad}"


def make_conv(cin: int, cout: int, k, stride, border, dilation=1, groups=1, bias=False):
    """nn.Conv2d with DeNet's border-mode padding."""
    ph = border_padding(border, k[0], dilation)
    pw = border_padding(border, k[1], dilation)
    if ph[0] == ph[1] and pw[0] == pw[1]:
        return nn.Conv2d(cin, cout, k, stride, (ph[0], pw[0]), dilation, groups, bias)
    return PaddedConv2d(
        cin,
        cout,
        k,
        stride,
        dilation=dilation,
        groups=groups,
        bias=bias,
        pad=(pw[0], pw[1], ph[0], ph[1]),
    )


def conv_shape(call: Call, cin: ShapeSpec, cout: int, k, s, border, dilation=1) -> ShapeSpec:
    if border == "same" and s != (1, 1):
        call.fail("border mode 'same' needs stride 1 (it crops a full convolution)")
    ph = border_padding(border, k[0], dilation)
    pw = border_padding(border, k[1], dilation)
    h = conv_out(cin.h, k[0], s[0], ph, dilation)
    w = conv_out(cin.w, k[1], s[1], pw, dilation)
    if h < 1 or w < 1:
        call.fail(
            f"output would be empty: a {k[0]}x{k[1]} kernel (dilation {dilation}, border "
            f"{border}) does not fit the {cin.h}x{cin.w} input"
        )
    return ShapeSpec(cout, h, w, cin.stride * s[0])


class Conv(LayerDef):
    type = "C"
    denet_name = "conv"
    doc = (
        "2-D convolution; padding from the border mode. No bias unless tagged B: DeNet's "
        "code, which its released models follow, turns the bias ON with C.B (its README "
        "says the opposite)."
    )
    tags = {"B": "add a bias (DeNet code semantics)", "X": "rectangular: [filters, kh, kw, sh, sw]"}
    keywords = (
        Arg("dilation", "int", 1, min=1, max=TORCH_INT_MAX, doc="dilation of the kernel"),
        Arg("groups", "int", 1, min=1, doc="grouped convolution"),
        Arg("border", "border", None, doc="border mode of this layer (default: global)"),
    )
    has_params = True

    def positional(self, tags):
        return _RECT if "X" in tags else _SQUARE

    def shape(self, call: Call) -> ShapeSpec:
        k, s = kernel_stride(call)
        g = call.args["groups"]
        if call.input.channels % g or call.args["filters"] % g:
            call.fail(
                f"groups={g} must divide the input channels ({call.input.channels}) "
                f"and the filters ({call.args['filters']})",
                "groups",
            )
        return conv_shape(
            call, call.input, call.args["filters"], k, s, call.border, call.args["dilation"]
        )

    def params(self, call: Call) -> int:
        (kh, kw), _ = kernel_stride(call)
        cout = call.args["filters"]
        return call.input.channels // call.args["groups"] * cout * kh * kw + cout * call.has("B")

    def build(self, call: Call):
        k, s = kernel_stride(call)
        conv = make_conv(
            call.input.channels,
            call.args["filters"],
            k,
            s,
            call.border,
            call.args["dilation"],
            call.args["groups"],
            call.has("B"),
        )
        init_conv(conv, call.init)
        return conv


class Deconv(LayerDef):
    type = "DC"
    denet_name = "deconv"
    doc = (
        "Transposed convolution (DeNet 'deconv'): H_out = H*s - 2*(k//2) + k - 1. "
        "Border mode half only, as DeNet; or pad=p: torch's ConvTranspose2d padding, "
        "H_out = (H-1)*s - 2p + k (Mask R-CNN's DC[256,2,2,pad=0]). Bias on unless tagged B."
    )
    tags = {
        "B": "no bias (README convention, as DeNet's DC code)",
        "X": "rectangular: [filters, kh, kw, sh, sw]",
    }
    keywords = (
        Arg("border", "border", None, doc="must be half (default: global)"),
        Arg("pad", "int", None, min=0, max=TORCH_INT_MAX, doc="explicit padding (torch's)"),
    )
    has_params = True

    def positional(self, tags):
        return _RECT if "X" in tags else _SQUARE

    def shape(self, call: Call) -> ShapeSpec:
        pad = call.args["pad"]
        if pad is not None:
            (kh, kw), (sh, sw) = kernel_stride(call)
            i = call.input
            h, w = (i.h - 1) * sh - 2 * pad + kh, (i.w - 1) * sw - 2 * pad + kw
            return ShapeSpec(call.args["filters"], h, w, i.stride / sh)
        if call.border != "half":
            call.fail(
                f"DC supports only border mode half (as DeNet), not {call.border!r}; "
                f"write DC[...,border=half] or compile with border_mode='half'"
            )
        k, s = kernel_stride(call)
        i = call.input
        h = i.h * s[0] - 2 * (k[0] // 2) + k[0] - 1
        w = i.w * s[1] - 2 * (k[1] // 2) + k[1] - 1
        return ShapeSpec(call.args["filters"], h, w, i.stride / s[0])

    def params(self, call: Call) -> int:
        (kh, kw), _ = kernel_stride(call)
        cout = call.args["filters"]
        return call.input.channels * cout * kh * kw + cout * (not call.has("B"))

    def build(self, call: Call):
        k, s = kernel_stride(call)
        pad = call.args["pad"]
        conv = nn.ConvTranspose2d(
            call.input.channels,
            call.args["filters"],
            k,
            s,
            padding=(k[0] // 2, k[1] // 2) if pad is None else pad,
            output_padding=(s[0] - 1, s[1] - 1) if pad is None else 0,
            bias=not call.has("B"),
        )
        init_conv(conv, call.init, transposed=True)
        return conv
