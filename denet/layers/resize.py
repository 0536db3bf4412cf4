"""Resizing: ``UP`` (bilinear or nearest resizing by a factor or to a tapped map's size; an
FPN's top-down path is ``UP[to=c4,mode=nearest]``), ``BDC`` (DRN's and Deformable DeepLab's fixed bilinear transposed convolution) and
``CROP`` (Caffe's crop to a tapped map's size).

``UP[8,align_corners=1]`` is DRN's ``use_torch_up`` (``nn.UpsamplingBilinear2d(scale_factor=8)``);
``UP[0.75,align_corners=1,rule=deeplab]`` is DeepLab-v2's input resize to ``int(0.75 s) + 1``;
``@f ... UP[to=f]`` resizes to the height and width of the map tapped ``@f``. ``BDC[16,8,4]`` is
DRNSeg's ``up`` (exactly x8); Deformable DeepLab ends in ``BDC[32,16] CROP[8,to=input]``.

A tap argument ``to=input`` names the network's input (the images) unless the string tapped
``@input`` itself, so a map can be cropped or resized to the input's size.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Arg, Call, FunctionOp, LayerDef
from .shape import ShapeSpec

# The name of the images' node in the resolved graph (``denet.dsl.graph.INPUT``; layers do not
# import the compiler, a test checks the two agree).
INPUT = "input"
RULES = ("floor", "deeplab")
MODES = ("bilinear", "nearest")


def expand_with_input_tap(ltype: LayerDef, ctx, item, call: Call, current: str, arg: str) -> str:
    """``ctx.add_layer`` where the tap argument ``arg=input`` may name the network's input
    (unless the string made a tap ``@input`` of its own, which then wins)."""
    key = "@" + INPUT
    if call.args.get(arg) != INPUT or key in ctx.symbols:
        return ctx.add_layer(item, ltype, call, current)
    ctx.symbols[key] = INPUT
    try:
        return ctx.add_layer(item, ltype, call, current)
    finally:
        ctx.symbols.pop(key, None)


def _tapped_map(call: Call, arg: str) -> ShapeSpec:
    shape = call.taps[arg]
    if shape.kind != "map":
        call.fail(
            f"{arg}= must name a feature map, not {shape.describe()} ({shape})",
            arg,
        )
    return shape


# ------------------------------------------------------------------------------------------ UP
def scaled_size(size: int, factor: float, rule: str) -> int:
    """The output size of one dimension: ``floor(size * factor)`` (torch's ``F.interpolate``
    with ``scale_factor``) or DeepLab-v2's ``int(size * factor) + 1``."""
    if rule == "deeplab":
        return int(size * factor) + 1
    return math.floor(size * factor)


def _corners(mode: str, align_corners: bool) -> bool | None:
    return align_corners if mode == "bilinear" else None  # nearest takes no align_corners


def resize_by(
    x: torch.Tensor,
    factor: float,
    align_corners: bool = False,
    rule: str = "floor",
    mode: str = "bilinear",
):
    """Resizing by ``factor``; the output size follows ``rule`` (see :func:`scaled_size`).
    ``floor`` is exactly ``F.interpolate(x, scale_factor=factor)``."""
    corners = _corners(mode, align_corners)
    if rule == "deeplab":
        size = (scaled_size(x.shape[-2], factor, rule), scaled_size(x.shape[-1], factor, rule))
        return F.interpolate(x, size=size, mode=mode, align_corners=corners)
    return F.interpolate(x, scale_factor=factor, mode=mode, align_corners=corners)


def resize_to(
    x: torch.Tensor, to: torch.Tensor, align_corners: bool = False, mode: str = "bilinear"
):
    """Resizing of ``x`` to the height and width of ``to``."""
    return F.interpolate(
        x, size=to.shape[-2:], mode=mode, align_corners=_corners(mode, align_corners)
    )


def exact_fraction(value: float) -> Fraction:
    """``0.75`` -> 3/4: the decimal a user typed, for the stride of a resized map."""
    return Fraction(repr(value))


class Resize(LayerDef):
    type = "UP"
    doc = (
        "Bilinear (or mode=nearest) resizing by `factor` (output floor(s*factor), as "
        "F.interpolate(scale_factor=); "
        "rule=deeplab: int(s*factor)+1), or to the height and width of the map tapped by "
        "`to=` (`to=input`: the network's input). Stride divided by the factor."
    )
    args = (Arg("factor", "float", None, doc="resize factor (> 0); omitted with to="),)
    keywords = (
        Arg("to", "tap", None, doc="resize to this tapped map's size instead (input: the images)"),
        Arg("align_corners", "bool", False, doc="1: corner pixels aligned (DeepLab-v2, DRN)"),
        Arg("rule", "str", "floor", choices=RULES, doc="output size of a factor"),
        Arg("mode", "str", "bilinear", choices=MODES, doc="nearest: an FPN's top-down resize"),
    )

    def expand(self, ctx, item, call: Call, current: str) -> str:
        return expand_with_input_tap(self, ctx, item, call, current, "to")

    def shape(self, call: Call) -> ShapeSpec:
        a = call.args
        i = call.input
        if a["mode"] == "nearest" and a["align_corners"]:
            call.fail("align_corners is for bilinear resizing, not nearest", "align_corners")
        if a["to"] is not None:
            if a["factor"] is not None:
                call.fail("give a factor or to=, not both", "factor")
            if a["rule"] != "floor":
                call.fail("rule= sets the size of a factor; to= gives the size itself", "rule")
            t = _tapped_map(call, "to")
            return ShapeSpec(i.channels, t.h, t.w, t.stride)
        f = a["factor"]
        if f is None:
            call.fail("UP needs a factor (UP[2]) or a map to resize to (UP[to=tap])")
        if f <= 0:
            call.fail(f"the factor must be > 0, not {f:g}", "factor")
        if max(i.h, i.w) * f > 2**31 - 1:  # no tensor side is this long; floor(inf) would raise
            call.fail(f"the factor {f:g} makes the {i.h}x{i.w} map too large", "factor")
        h, w = scaled_size(i.h, f, a["rule"]), scaled_size(i.w, f, a["rule"])
        if h < 1 or w < 1:
            call.fail(f"output would be empty: {i.h}x{i.w} times {f:g} is {h}x{w}", "factor")
        return ShapeSpec(i.channels, h, w, i.stride / exact_fraction(f))

    def build(self, call: Call):
        a = call.args
        if a["to"] is not None:
            return FunctionOp(resize_to, align_corners=a["align_corners"], mode=a["mode"])
        return FunctionOp(
            resize_by,
            factor=a["factor"],
            align_corners=a["align_corners"],
            rule=a["rule"],
            mode=a["mode"],
        )


# ----------------------------------------------------------------------------------------- BDC
def bilinear_kernel(size: int) -> torch.Tensor:
    """DRN's ``fill_up_weights`` (and MXNet's ``Bilinear`` initializer): ``f = ceil(size/2)``,
    ``c = (2f - 1 - f % 2) / (2f)``, ``w[i, j] = (1 - |i/f - c|) (1 - |j/f - c|)``."""
    f = math.ceil(size / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    t = 1 - (torch.arange(size, dtype=torch.float64) / f - c).abs()
    return (t[:, None] * t[None, :]).float()


class BilinearUpsampling(nn.ConvTranspose2d):
    """A depthwise transposed convolution (``groups = channels``, no bias) whose weights are the
    fixed bilinear kernel: kept in the state dict, never trained (``requires_grad`` False)."""

    def __init__(self, channels: int, size: int, stride: int, pad: int):
        super().__init__(channels, channels, size, stride, pad, groups=channels, bias=False)
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(size).to(self.weight.device).expand_as(self.weight))
        self.weight.requires_grad_(False)


class BilinearDeconv(LayerDef):
    type = "BDC"
    doc = (
        "Fixed bilinear upsampling (DRN's `up`, Deformable DeepLab's deconv): depthwise transposed "
        "conv, no bias, H_out = (H-1)*stride - 2*pad + size, weights DRN's fill_up_weights, in "
        "the state dict (`weight`) but frozen (not trained, not in the optimizer)."
    )
    args = (
        Arg("size", "int", min=1, doc="kernel size (16 for x8 with stride 8, pad 4)"),
        Arg("stride", "int", min=1, doc="stride (the upsampling factor)"),
        Arg("pad", "int", 0, min=0, doc="padding removed from each side"),
    )

    def shape(self, call: Call) -> ShapeSpec:
        a = call.args
        k, s, p = a["size"], a["stride"], a["pad"]
        if p > k - 1:
            call.fail(f"pad must be < size ({k}), not {p}", "pad")
        i = call.input
        h, w = (i.h - 1) * s - 2 * p + k, (i.w - 1) * s - 2 * p + k
        return ShapeSpec(i.channels, h, w, i.stride / s)

    def params(self, call: Call) -> int:
        return call.input.channels * call.args["size"] ** 2  # frozen, but stored

    def build(self, call: Call):
        a = call.args
        return BilinearUpsampling(call.input.channels, a["size"], a["stride"], a["pad"])


# ---------------------------------------------------------------------------------------- CROP
def crop_to(x: torch.Tensor, to: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Caffe's ``Crop`` (axis 2): ``x[..., offset:offset + H, offset:offset + W]`` for the
    height and width of ``to``."""
    h, w = to.shape[-2], to.shape[-1]
    if x.shape[-2] < offset + h or x.shape[-1] < offset + w:
        raise ValueError(
            f"CROP: a {x.shape[-2]}x{x.shape[-1]} map cannot be cropped to {h}x{w} at offset "
            f"{offset}"
        )
    return x[:, :, offset : offset + h, offset : offset + w]


class Crop(LayerDef):
    type = "CROP"
    doc = (
        "Caffe's crop: the current map cut to the height and width of the map tapped by `to=` "
        "(`to=input`: the network's input), starting at row and column `offset`."
    )
    args = (Arg("offset", "int", 0, min=0, doc="first row and column kept"),)
    keywords = (Arg("to", "tap", doc="the map whose size to crop to (input: the images)"),)

    def expand(self, ctx, item, call: Call, current: str) -> str:
        return expand_with_input_tap(self, ctx, item, call, current, "to")

    def shape(self, call: Call) -> ShapeSpec:
        i, t, off = call.input, _tapped_map(call, "to"), call.args["offset"]
        if off + t.h > i.h or off + t.w > i.w:
            call.fail(
                f"the {i.h}x{i.w} map is too small to crop {t.h}x{t.w} at offset {off}", "offset"
            )
        return ShapeSpec(i.channels, t.h, t.w, i.stride)

    def build(self, call: Call):
        return FunctionOp(crop_to, offset=call.args["offset"])
