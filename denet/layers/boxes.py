"""Boxes on a feature map and the RoI operators that read them.

``BOXES[size]`` places one square box of ``size`` input pixels centred on every position of the
current map (position (i, j) of a stride-s map is centred at ((j + 0.5)s, (i + 0.5)s)): a fixed
set of RoIs, torchvision's ``[R, 5]`` rows ``(batch index, x1, y1, x2, y2)``, R = B·H·W.

``RA[output_size, rois=r]`` is RoIAlign (:func:`denet.kernels.roi_align`) of the current map at
the boxes tapped ``@r``, with ``spatial_scale = 1 / stride`` from the map's shape: [R, C, o, o].
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import nn

from ..kernels import roi_align
from .registry import Arg, Call, LayerDef
from .shape import ShapeSpec


class BoxGrid(nn.Module):
    def __init__(self, size: float, stride: float):
        super().__init__()
        self.size = float(size)
        self.stride = float(stride)

    def forward(self, x):
        b, _, h, w = x.shape
        ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) * self.stride
        xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) * self.stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        half = self.size / 2
        boxes = torch.stack([cx - half, cy - half, cx + half, cy + half], -1).reshape(-1, 4)
        index = torch.arange(b, device=x.device, dtype=x.dtype).repeat_interleave(h * w)
        return torch.cat([index[:, None], boxes.repeat(b, 1)], 1)

    def extra_repr(self) -> str:
        return f"size={self.size:g}, stride={self.stride:g}"


class Boxes(LayerDef):
    type = "BOXES"
    doc = (
        "A square box of `size` input pixels centred on every position of the current map: "
        "RoIs [B*H*W, 5] (batch index, x1, y1, x2, y2)."
    )
    args = (Arg("size", "float", min=1e-3, doc="side of each box in input pixels"),)

    def shape(self, call: Call):
        i = call.input
        extent = max(i.h, i.w) * i.stride  # the input image's size in pixels
        if call.args["size"] > extent:
            # RoI operators sample a box by its size: a larger one is only more work
            call.fail(
                f"a box of {call.args['size']:g} pixels is larger than the {float(extent):g}-pixel "
                f"image",
                "size",
            )
        return ShapeSpec(i.h * i.w, stride=i.stride, form="boxes")

    def build(self, call: Call):
        return BoxGrid(call.args["size"], float(call.input.stride))


class RoIAlignLayer(nn.Module):
    def __init__(self, output_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, x, rois):
        return roi_align(
            x, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale:g}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


class RoIAlign(LayerDef):
    type = "RA"
    doc = (
        "RoIAlign of the current map at the boxes tapped by `rois=` "
        "(denet.kernels.roi_align, spatial_scale = 1/stride): [R, C, size, size]."
    )
    args = (Arg("output_size", "int", min=1, doc="bins per side of each RoI"),)
    keywords = (
        Arg("rois", "tap", doc="tap holding the boxes (e.g. @r after BOXES)"),
        Arg("sampling_ratio", "int", -1, doc="samples per bin per axis (<= 0: adaptive)"),
        Arg("aligned", "bool", False, doc="1: pixel-centre alignment (torchvision aligned=True)"),
    )

    def shape(self, call: Call):
        rois = call.taps["rois"]
        if rois.kind != "boxes":
            call.fail(
                f"rois= must name a set of boxes (a tap after BOXES), not {rois.describe()}", "rois"
            )
        o, ratio = call.args["output_size"], call.args["sampling_ratio"]
        i = call.input
        if ratio > max(i.h, i.w):
            # more samples per bin than the map has pixels per side add work, not information
            call.fail(
                f"sampling_ratio={ratio} is more samples per bin than the {i.h}x{i.w} map has "
                f"pixels per side",
                "sampling_ratio",
            )
        return ShapeSpec(i.channels, o, o, Fraction(1))

    def output_elements(self, call: Call) -> int:
        # one C x size x size map per RoI (boxes per image; at least one when data-dependent)
        o = call.args["output_size"]
        return max(1, call.taps["rois"].channels) * call.input.channels * o * o

    def build(self, call: Call):
        return RoIAlignLayer(
            call.args["output_size"],
            float(1 / call.input.stride),
            call.args["sampling_ratio"],
            call.args["aligned"],
        )
