"""``MRA``: RoIAlign over several feature levels (torchvision's ``MultiScaleRoIAlign``, FPN's RoI
level assignment).

``MRA[7, rois=r, sampling_ratio=2]($p2 | $p3 | $p4 | $p5)``: each RoI of the set tapped ``@r``
(boxes, or detections) is pooled from one level, ``k = floor(level + log2(sqrt(area) / canonical)
+ 1e-6)`` clamped to the levels given (their strides 2^k: FPN's rule, canonical 224 at level 4),
by :func:`denet.kernels.roi_align` with ``spatial_scale = 1 / stride`` of that level. Output
``[R, C, size, size]`` in the RoIs' order. With one level it is ``RA``. Detections (a box head's
output, input pixels) are mapped into the frame of an ``RT`` before pooling. ``aligned=1`` is
torchvision's ``aligned=True`` (half-pixel offset); torchvision's and Detectron's FPN models use
``aligned=0``.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import nn

from ..kernels import roi_align
from .rcnn_transform import FRAME, boxes_to_frame, frame_sizes
from .registry import Arg, Call, LayerDef
from .shape import ShapeSpec


def roi_rows(rois, sizes=None) -> torch.Tensor:
    """``[R, 5]`` rows (batch index, x1, y1, x2, y2) of a set of boxes (already in the heads'
    frame) or of detections (one dict per image with ``boxes`` in input pixels, mapped into the
    frame of ``sizes``, see :func:`frame_sizes`)."""
    if isinstance(rois, torch.Tensor):
        return rois
    rows = []
    for b, d in enumerate(rois):
        boxes = d["boxes"] if sizes is None else boxes_to_frame(d["boxes"], sizes)
        rows.append(torch.cat([torch.full_like(boxes[:, :1], b), boxes], 1))
    return torch.cat(rows, 0)


def roi_levels(
    boxes: torch.Tensor, k_min: int, k_max: int, canonical: float, level: float, plus1=False
):
    """FPN's level of each box ([R, 4]), minus ``k_min``: torchvision's ``LevelMapper``
    (``floor(level + log2(s / canonical) + 1e-6)``), or with ``plus1`` Detectron's
    ``map_rois_to_fpn_levels`` (+1 widths, ``floor(level + log2(s / canonical + 1e-6))``)."""
    one = 1.0 if plus1 else 0.0
    s = torch.sqrt((boxes[:, 2] - boxes[:, 0] + one) * (boxes[:, 3] - boxes[:, 1] + one))
    eps = torch.tensor(1e-6, dtype=s.dtype)
    if plus1:
        k = torch.floor(level + torch.log2(s / canonical + eps))
    else:
        k = torch.floor(level + torch.log2(s / canonical) + eps)
    return (k.clamp(min=k_min, max=k_max).to(torch.int64) - k_min).to(torch.int64)


class MultiLevelRoIAlign(nn.Module):
    def __init__(self, output_size, strides, sampling_ratio, aligned, canonical, level, plus1):
        super().__init__()
        self.plus1 = plus1
        self.output_size, self.strides = output_size, strides
        self.sampling_ratio, self.aligned = sampling_ratio, aligned
        self.canonical, self.level = canonical, level

    def forward(self, *levels, rois, images, frame=None):
        rois = roi_rows(rois, frame_sizes(images, frame))
        o, x0 = self.output_size, levels[0]

        def pool(x, r, stride):
            return roi_align(x, r, o, 1.0 / stride, self.sampling_ratio, self.aligned)

        if len(levels) == 1:
            return pool(x0, rois, self.strides[0])
        k_min, k_max = (int(math.log2(s)) for s in (self.strides[0], self.strides[-1]))
        which = roi_levels(rois[:, 1:], k_min, k_max, self.canonical, self.level, self.plus1)
        out = x0.new_zeros((len(rois), x0.shape[1], o, o))
        for k, (x, stride) in enumerate(zip(levels, self.strides)):
            idx = torch.where(which == k)[0]
            out[idx] = pool(x, rois[idx], stride).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, strides={self.strides}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


class MultiLevelRoIAlignDef(LayerDef):
    type = "MRA"
    doc = (
        "RoIAlign over the feature levels given as branches: each RoI (`rois=` tap: boxes or "
        "detections) pooled from its FPN level (canonical 224 at level 4): [R, C, size, size]."
    )
    is_group = True
    min_branches = 1
    max_branches = 8
    args = (Arg("output_size", "int", min=1, max=256, doc="bins per side of each RoI"),)
    keywords = (
        Arg("rois", "tap", doc="tap holding the RoIs (after RPN, SAMPLE or a box head)"),
        Arg("sampling_ratio", "int", -1, max=64, doc="samples per bin per axis (<= 0: adaptive)"),
        Arg("aligned", "bool", False, doc="1: pixel-centre alignment (torchvision aligned=True)"),
        Arg("canonical", "float", 224.0, min=1.0, doc="box side that maps to `level`"),
        Arg("level", "int", 4, min=0, max=16, doc="FPN level of a canonical box"),
        Arg("plus1", "bool", False, doc="1: Detectron's level rule (+1 widths)"),
    )

    def reads_images(self, call: Call) -> bool:
        return True

    def optional_uses(self, call: Call) -> dict[str, str]:
        return {"frame": FRAME}

    def shape(self, call: Call) -> ShapeSpec:
        rois = call.taps["rois"]
        if rois.kind not in ("boxes", "detections"):
            call.fail(f"rois= must name boxes or detections, not {rois.describe()}", "rois")
        first = call.inputs[0]
        prev = None
        for k, s in enumerate(call.inputs, start=1):
            if s.channels != first.channels:
                call.fail(
                    f"MRA's levels must have the same channels: level 1 has {first.channels}, "
                    f"level {k} has {s.channels}"
                )
            if len(call.inputs) > 1:
                log = math.log2(s.stride) if s.stride > 0 else 0.5
                if s.stride.denominator != 1 or not float(log).is_integer():
                    call.fail(f"MRA's level {k} has stride {s.stride}, not a power of 2")
                if prev is not None and s.stride != 2 * prev:
                    call.fail("MRA's levels must be in order, each twice the stride of the last")
                prev = s.stride
        o = call.args["output_size"]
        return ShapeSpec(first.channels, o, o, Fraction(1))

    def output_elements(self, call: Call) -> int:
        o = call.args["output_size"]
        return max(1, call.taps["rois"].channels) * call.inputs[0].channels * o * o

    def build(self, call: Call):
        a = call.args
        return MultiLevelRoIAlign(
            a["output_size"],
            [float(s.stride) for s in call.inputs],
            a["sampling_ratio"],
            a["aligned"],
            a["canonical"],
            a["level"],
            a["plus1"],
        )
