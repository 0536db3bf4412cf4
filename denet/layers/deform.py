"""``DCN[filters, size, stride=1]``: deformable convolution (Dai et al. 2017; with tag ``M`` the
modulated DCNv2 of Zhu et al. 2019) that owns its offset convolution, on
:func:`denet.kernels.deform_conv2d`.

The token makes two nodes: ``l{i}_DCN_offset``, a ``C.B`` conv on the same input (k x k, the same
stride, dilation ``offset_dilation``, zero-initialised weight and bias, learning rate ``lr`` times
``offset_lr``) with ``2*k*k*deform_groups`` offset channels (``+ k*k*deform_groups`` mask
channels with ``M``), and ``l{i}_DCN``, the deformable conv that samples its input at the kernel
taps displaced by those offsets. State-dict keys: ``l{i}_DCN.weight`` (``.bias`` with ``B``),
``l{i}_DCN_offset.weight``, ``l{i}_DCN_offset.bias``.

Offsets follow torchvision's (and Deformable ConvNets') layout: for offset group g and tap
k = i*kw + j, channel ``g*2*k*k + 2k`` is dy and ``+ 1`` is dx; with ``M`` the mask logits are the
last ``k*k*deform_groups`` channels (DCNv2's example slices one 27-channel conv this way) and the
mask is ``mask_scale * sigmoid`` (2: Deformable ConvNets' DCNv2 example, so a zero init gives 1;
1: the paper's plain sigmoid). The offset conv is padded so that its output matches the
deformable conv's: Deformable DeepLab's ``DCN[512,3,dilation=2,offset_dilation=1]`` under border
half pads the offset conv by 1 and the deformable conv by 2.

The same deformable conv, with the offset conv as its child ``offset``, makes the k x k convs of
residual blocks deformable (``nRSN[...,deform=1]``, :mod:`denet.layers.resnet`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..kernels import deform_conv2d
from .border import border_padding
from .conv import Conv, conv_shape
from .init import init_conv
from .registry import Arg, Call, LayerDef
from .shape import ShapeSpec

BOUNDARIES = ("v1", "v2")
_OFFSET = "DCN.offset"  # the symbol through which the DCN node reads its offset conv
_CONV = Conv()


class DeformableConv2d(nn.Conv2d):
    """The weights of a k x k conv applied by :func:`~denet.kernels.deform_conv2d`:
    ``forward(x, offset_mask)`` with the output of an offset conv (offsets, then mask logits
    when ``modulated``), or ``forward(x)`` when it owns that conv as ``self.offset``."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        *,
        deform_groups: int = 1,
        modulated: bool = False,
        mask_scale: float = 2.0,
        boundary: str = "v2",
        offset: nn.Module | None = None,
    ):
        super().__init__(cin, cout, k, stride, padding, dilation, groups, bias)
        self.deform_groups = deform_groups
        self.modulated = modulated
        self.mask_scale = mask_scale
        self.boundary = boundary
        self.offset = offset

    def forward(self, x, offset_mask=None):
        if offset_mask is None:
            if self.offset is None:
                raise ValueError("DeformableConv2d needs the output of its offset conv")
            offset_mask = self.offset(x)
        kh, kw = self.kernel_size
        n = 2 * self.deform_groups * kh * kw
        mask = None
        if self.modulated:
            mask = self.mask_scale * torch.sigmoid(offset_mask[:, n:])
        return deform_conv2d(
            x,
            offset_mask[:, :n],
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            mask,
            boundary=self.boundary,
        )

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", deform_groups={self.deform_groups}"
        if self.modulated:
            s += f", modulated, mask={self.mask_scale:g}*sigmoid"
        return s + f", boundary={self.boundary}"


def offset_channels(k: int, deform_groups: int, modulated: bool) -> int:
    return (3 if modulated else 2) * k * k * deform_groups


def offset_padding(pad: int, k: int, dilation: int, offset_dilation: int) -> int | None:
    """The padding that gives a k x k conv of ``offset_dilation`` the output size of one of
    ``dilation`` padded by ``pad`` (any stride), or None when no padding does."""
    diff = (dilation - offset_dilation) * (k - 1)  # difference of the effective sizes
    if diff % 2 or pad - diff // 2 < 0:
        return None
    return pad - diff // 2


def make_offset_conv(cin: int, k: int, stride: int, pad: int, dilation: int, channels: int):
    """The offset conv: k x k with a bias, zero weight and bias (the layer starts as a plain
    conv)."""
    conv = nn.Conv2d(cin, channels, k, stride, pad, dilation, bias=True)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()  # type: ignore[union-attr]
    return conv


class DeformableConv(LayerDef):
    type = "DCN"
    doc = (
        "Deformable convolution (v1; v2 with M) owning its offset conv `l{i}_DCN_offset` "
        "(k x k, same stride, zero init, 2*k*k*deform_groups channels, + k*k*deform_groups mask "
        "channels with M, padded to the deformable conv's output size); runs "
        "denet.kernels.deform_conv2d. No bias unless tagged B; padding from the border mode."
    )
    tags = {
        "B": "add a bias (as C.B)",
        "M": "modulated (DCNv2): a mask, mask_scale*sigmoid of the offset conv's last channels",
    }
    args = (
        Arg("filters", "int", min=1, doc="output channels"),
        Arg("size", "int", min=1, doc="kernel size (square)"),
        Arg("stride", "int", 1, min=1, doc="stride (also the offset conv's)"),
    )
    keywords = (
        Arg("dilation", "int", 1, min=1, doc="dilation of the deformable conv"),
        Arg("groups", "int", 1, min=1, doc="grouped convolution"),
        Arg("deform_groups", "int", 1, min=1, doc="offset groups (input channel chunks)"),
        Arg("offset_dilation", "int", None, min=1, doc="dilation of the offset conv"),
        Arg("offset_lr", "float", 1.0, min=0.0, doc="lr multiplier of the offset conv"),
        Arg("mask_scale", "float", 2.0, min=0.0, doc="with M: mask = mask_scale*sigmoid"),
        Arg("boundary", "str", "v2", choices=BOUNDARIES, doc="sampling rule at the border"),
        Arg("border", "border", None, doc="border mode of this layer (default: global)"),
    )
    has_params = True

    def _check(self, call: Call) -> tuple[int, int]:
        """Validates the arguments; the paddings of the deformable conv and its offset conv."""
        a = call.args
        k, d = a["size"], a["dilation"]
        cin = call.input.channels
        od = a["offset_dilation"] or d
        if not call.has("M") and a["mask_scale"] != 2.0:
            call.fail("mask_scale sets the mask of a modulated DCN (tag M)", "mask_scale")
        if call.border == "half" and k % 2 == 0:
            call.fail(
                f"border half needs an odd size (an even kernel makes the map one larger), not {k}",
                "size",
            )
        pad = border_padding(call.border, k, d)
        if pad[0] != pad[1]:
            call.fail(
                f"border {call.border} pads the {k}x{k} kernel unevenly ({pad[0]} before, "
                f"{pad[1]} after); deform_conv2d pads both sides alike",
                "border",
            )
        g, dg = a["groups"], a["deform_groups"]
        if cin % g or a["filters"] % g:
            call.fail(
                f"groups={g} must divide the input channels ({cin}) and the filters "
                f"({a['filters']})",
                "groups",
            )
        if cin % dg:
            call.fail(f"deform_groups={dg} must divide the input channels ({cin})", "deform_groups")
        opad = offset_padding(pad[0], k, d, od)
        if opad is None:
            call.fail(
                f"no padding gives the offset conv (dilation {od}) the output size of the "
                f"deformable conv (dilation {d}, padding {pad[0]})",
                "offset_dilation",
            )
        return pad[0], opad

    def _offset_call(self, call: Call, opad: int) -> Call:
        a = call.args
        args = {
            "filters": offset_channels(a["size"], a["deform_groups"], call.has("M")),
            "size": a["size"],
            "stride": a["stride"],
            "dilation": a["offset_dilation"] or a["dilation"],
            "groups": 1,
            "border": opad,
            "lr": a["lr"] * a["offset_lr"],
            "frozen": a["frozen"],
            "init": 0.0,  # zeros: the layer starts as a plain conv
        }
        return dataclasses.replace(
            call, type="C", tags="B", args=args, inputs=[call.input], taps={}, out=None, name=""
        )

    def expand(self, ctx, item, call: Call, current: str) -> str:
        src = ctx.shape_of(current)
        if src.kind != "map":
            call.fail(f"DCN needs a feature map as input, not {src.describe()} ({src})")
        call.inputs = [src]
        _, opad = self._check(call)
        offset = self._offset_call(call, opad)
        offset.out = _CONV.shape(offset)
        offset.name = ctx.add_node(
            item, "C", "B", offset.args, [current], offset.out, offset, label="DCN_offset"
        )
        ctx.symbols[_OFFSET] = offset.name
        try:
            return ctx.add_layer(item, self, call, current)
        finally:
            ctx.symbols.pop(_OFFSET, None)

    def uses(self, call: Call) -> list[str]:
        return [_OFFSET]

    def shape(self, call: Call) -> ShapeSpec:
        a = call.args
        k, s = a["size"], a["stride"]
        out = conv_shape(call, call.input, a["filters"], (k, k), (s, s), call.border, a["dilation"])
        off = call.inputs[1]
        if (off.height, off.width) != (out.height, out.width):  # pragma: no cover - padded to it
            call.fail(f"the offsets ({off}) do not match the output ({out})")
        return out

    def params(self, call: Call) -> int:
        a = call.args
        k, cout = a["size"], a["filters"]
        own = call.input.channels // a["groups"] * cout * k * k + cout * call.has("B")
        n = offset_channels(k, a["deform_groups"], call.has("M"))
        return own + call.input.channels * n * k * k + n  # with the offset conv's

    def build(self, call: Call):
        a = call.args
        pad, _ = self._check(call)
        conv = DeformableConv2d(
            call.input.channels,
            a["filters"],
            a["size"],
            a["stride"],
            pad,
            a["dilation"],
            a["groups"],
            call.has("B"),
            deform_groups=a["deform_groups"],
            modulated=call.has("M"),
            mask_scale=a["mask_scale"],
            boundary=a["boundary"],
        )
        init_conv(conv, call.init)
        return conv
