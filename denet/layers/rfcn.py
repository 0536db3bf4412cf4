"""R-FCN and Deformable R-FCN pieces (Dai et al. 2016, 2017; Deformable ConvNets'
``rfcn/symbols/resnet_v1_101_rfcn{,_dcn}.py``), and the deformable RoI pooling of its
Faster R-CNN (2fc) head.

* ``PSC[k, D]``: the position-sensitive score maps, a 1x1 convolution with bias to ``k*k*D``
  channels, channel ``(d*k + gh)*k + gw`` for output ``d`` and bin ``(gh, gw)``; ``D`` may be the
  word ``classes`` and ``background=1`` adds one (R-FCN's ``rfcn_cls``: ``PSC[7,classes,
  background=1]``; ``rfcn_bbox``: ``PSC[7,8]``, class-agnostic background and foreground deltas).
  Weights N(0, 0.01) unless ``init=`` (Deformable ConvNets' init).
* ``PSP[k, rois=r]``: position-sensitive RoI pooling of such maps at the RoIs (``pool=avg``:
  :func:`denet.kernels.ps_roi_pool`, every bin the average of its pixels; ``pool=align``:
  :func:`denet.kernels.ps_roi_align`), then average voting over the ``k*k`` bins: ``[R, D]``.
  Tag ``M`` keeps the bins (``[R, D, k, k]``, no voting).
* ``DPSP[k, rois=r, offsets=t]``: deformable position-sensitive RoI pooling
  (:func:`denet.kernels.deform_roi_pool`, group ``k``, part ``part``, ``spp`` samples per part
  and axis, ``trans_std``) with voting. It owns its offset branch, as ``DCN`` owns its offset
  conv: a 1x1 convolution with bias (zero init, learning rate times ``offset_lr``) of the map
  tapped ``offsets=`` to ``2*sets*part*part`` channels, pooled without offsets (the same op, no
  trans) into ``[R, 2*sets, part, part]`` part offsets (dx, dy per set). ``sets`` is ``D``
  (one set per output: R-FCN's class maps) or divides it (1: the box maps).
* ``DRP[k, rois=r]``: deformable RoI pooling (group 1) of a map with ``C`` channels:
  ``[R, C, k, k]``. Its offsets come from a fully connected layer (zero init, ``offset_lr=0.01``)
  on the same pooling without offsets, reshaped to ``[R, 2, part, part]`` (Deformable ConvNets'
  2fc Faster R-CNN head).

Spatial scales come from the map's stride; RoIs are ``[R, 5]`` rows in the frame of the layers
(after ``RPN`` / ``SAMPLE``), as for ``RA``.
"""

from __future__ import annotations

from fractions import Fraction

from torch import nn

from ..kernels import deform_roi_pool, ps_roi_align, ps_roi_pool
from .init import init_conv, parse_weight_init
from .registry import Arg, Call, LayerDef
from .roi_levels import roi_rows
from .shape import ShapeSpec

BINS_TAG = {"M": "keep the bins: [R, D, k, k] (no average voting)"}


def check_rois(call: Call) -> ShapeSpec:
    rois = call.taps["rois"]
    if rois.kind not in ("boxes", "detections"):
        call.fail(f"rois= must name a set of boxes, not {rois.describe()}", "rois")
    return rois


def ps_channels(call: Call, k: int, what: str = "the map") -> int:
    """``D`` of a map with ``k*k*D`` channels; a description error otherwise."""
    c = call.input.channels
    if c % (k * k):
        call.fail(
            f"{call.type} needs a map of k*k*D channels for k={k} ({k * k}*D), and {what} has "
            f"{c}, not a multiple of {k * k}"
        )
    return c // (k * k)


def vote_shape(call: Call, d: int, k: int) -> ShapeSpec:
    return ShapeSpec(d, k, k, Fraction(1)) if call.has("M") else ShapeSpec(d)


def rois_elements(call: Call) -> int:
    out = call.out
    assert out is not None  # called after shape()
    n = out.channels * ((out.height or 1) * (out.width or 1))
    return max(1, call.taps["rois"].channels) * n


class PSScoreMaps(LayerDef):
    type = "PSC"
    doc = (
        "Position-sensitive score maps (R-FCN): 1x1 conv with bias to k*k*D channels, channel "
        "(d*k + gh)*k + gw; D may be `classes`, background=1 adds one; N(0, 0.01) weights."
    )
    has_params = True
    args = (
        Arg("size", "int", min=1, max=64, doc="k: bins per side of the pooling after it"),
        Arg("dim", "int", min=1, max=1_000_000, doc="D: outputs per RoI (may be `classes`)"),
    )
    keywords = (Arg("background", "bool", False, doc="1: D + 1 outputs (the background)"),)

    def channels(self, call: Call) -> int:
        k = call.args["size"]
        return k * k * (call.args["dim"] + call.args["background"])

    def shape(self, call: Call) -> ShapeSpec:
        return call.input.with_(channels=self.channels(call))

    def params(self, call: Call) -> int:
        c = self.channels(call)
        return call.input.channels * c + c

    def build(self, call: Call):
        conv = nn.Conv2d(call.input.channels, self.channels(call), 1)
        init = call.init if call.args.get("init") is not None else parse_weight_init(0.01)
        init_conv(conv, init)
        return conv


class PSRoIPooling(nn.Module):
    def __init__(self, size: int, spatial_scale: float, pool: str, sampling_ratio: int, vote):
        super().__init__()
        self.size, self.spatial_scale = size, spatial_scale
        self.pool, self.sampling_ratio, self.vote = pool, sampling_ratio, vote

    def forward(self, x, rois):
        rois = roi_rows(rois).to(x.dtype)
        if self.pool == "align":
            y = ps_roi_align(x, rois, self.size, self.spatial_scale, self.sampling_ratio)
        else:
            y = ps_roi_pool(x, rois, self.size, self.spatial_scale)
        return y.mean((2, 3)) if self.vote else y

    def extra_repr(self) -> str:
        return f"size={self.size}, spatial_scale={self.spatial_scale:g}, pool={self.pool}" + (
            "" if self.vote else ", vote=False"
        )


class PSRoIPoolingDef(LayerDef):
    type = "PSP"
    doc = (
        "Position-sensitive RoI pooling (R-FCN) of a k*k*D-channel map at the RoIs (`rois=` "
        "tap; pool=avg: ps_roi_pool, align: ps_roi_align), then average voting: [R, D]."
    )
    tags = BINS_TAG
    args = (Arg("size", "int", min=1, max=64, doc="k: bins per side (the group size)"),)
    keywords = (
        Arg("rois", "tap", doc="tap holding the RoIs (after RPN, SAMPLE)"),
        Arg("pool", "str", "avg", choices=("avg", "align"), doc="ps_roi_pool or ps_roi_align"),
        Arg("sampling_ratio", "int", -1, max=64, doc="align: samples per bin (<= 0: adaptive)"),
    )

    def shape(self, call: Call) -> ShapeSpec:
        check_rois(call)
        k = call.args["size"]
        return vote_shape(call, ps_channels(call, k), k)

    def output_elements(self, call: Call) -> int:
        return rois_elements(call)

    def build(self, call: Call):
        a = call.args
        scale = float(1 / call.input.stride)
        return PSRoIPooling(a["size"], scale, a["pool"], a["sampling_ratio"], not call.has("M"))


class DeformablePSRoIPooling(nn.Module):
    def __init__(self, cin, size, part, sets, spatial_scale, spp, trans_std, offset_lr, vote):
        super().__init__()
        self.offset = nn.Conv2d(cin, 2 * sets * part * part, 1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        for p in self.offset.parameters():
            p.lr_mult = offset_lr
        self.size, self.part, self.sets = size, part, sets
        self.spatial_scale, self.spp, self.trans_std, self.vote = (
            spatial_scale,
            spp,
            trans_std,
            vote,
        )

    def part_offsets(self, offsets, rois):
        """[R, 2*sets, part, part]: the offset maps pooled at the RoIs without offsets."""
        t = self.offset(offsets)
        p = self.part
        return deform_roi_pool(t, rois, None, p, self.spatial_scale, p, p, self.spp, 0.0)

    def forward(self, x, rois, offsets):
        rois = roi_rows(rois).to(x.dtype)
        trans = self.part_offsets(offsets, rois)
        k = self.size
        y = deform_roi_pool(
            x, rois, trans, k, self.spatial_scale, k, self.part, self.spp, self.trans_std
        )
        return y.mean((2, 3)) if self.vote else y

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, part={self.part}, sets={self.sets}, "
            f"spatial_scale={self.spatial_scale:g}, spp={self.spp}, trans_std={self.trans_std:g}"
            + ("" if self.vote else ", vote=False")
        )


def _default_sets(call: Call) -> int:
    k = call.args["size"]
    return max(1, call.input.channels // (k * k))


class DeformablePSRoIPoolingDef(LayerDef):
    type = "DPSP"
    doc = (
        "Deformable position-sensitive RoI pooling (Deformable R-FCN) with average voting: "
        "[R, D]; part offsets from its own zero-initialised 1x1 conv on the `offsets=` map, "
        "PS-pooled without offsets (2*sets*part*part channels)."
    )
    tags = BINS_TAG
    has_params = True
    args = (Arg("size", "int", min=1, max=64, doc="k: bins per side (the group size)"),)
    keywords = (
        Arg("rois", "tap", doc="tap holding the RoIs (after RPN, SAMPLE)"),
        Arg("offsets", "tap", doc="the map the offset conv reads (R-FCN: conv_new_1's output)"),
        Arg("part", "int", lambda call: call.args["size"], min=1, max=64, doc="part cells"),
        Arg("sets", "int", _default_sets, min=1, doc="offset sets (D: one per output)"),
        Arg("spp", "int", 4, min=1, max=16, doc="samples per part cell and axis"),
        Arg("trans_std", "float", 0.1, min=0.0, doc="offset scale (times the RoI size)"),
        Arg("offset_lr", "float", 1.0, min=0.0, doc="learning-rate multiplier of the offsets"),
    )

    def shape(self, call: Call) -> ShapeSpec:
        check_rois(call)
        a = call.args
        k = a["size"]
        d = ps_channels(call, k)
        if d % a["sets"]:
            call.fail(f"sets={a['sets']} must divide the {d} outputs (channels / {k * k})", "sets")
        off = call.taps["offsets"]
        if off.kind != "map" or off.h != call.input.h or off.w != call.input.w:
            call.fail(
                f"offsets= must name a map of the score maps' size {call.input.h}x"
                f"{call.input.w}, not {off}",
                "offsets",
            )
        return vote_shape(call, d, k)

    def params(self, call: Call) -> int:
        a = call.args
        c = 2 * a["sets"] * a["part"] ** 2
        return call.taps["offsets"].channels * c + c

    def output_elements(self, call: Call) -> int:
        return rois_elements(call)

    def build(self, call: Call):
        a = call.args
        return DeformablePSRoIPooling(
            call.taps["offsets"].channels,
            a["size"],
            a["part"],
            a["sets"],
            float(1 / call.input.stride),
            a["spp"],
            a["trans_std"],
            a["offset_lr"],
            not call.has("M"),
        )


class DeformableRoIPooling(nn.Module):
    def __init__(self, channels, size, part, spatial_scale, spp, trans_std, offset_lr):
        super().__init__()
        self.offset = nn.Linear(channels * size * size, 2 * part * part)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        for p in self.offset.parameters():
            p.lr_mult = offset_lr
        self.size, self.part = size, part
        self.spatial_scale, self.spp, self.trans_std = spatial_scale, spp, trans_std

    def forward(self, x, rois):
        rois = roi_rows(rois).to(x.dtype)
        k, p, s = self.size, self.part, self.spatial_scale
        plain = deform_roi_pool(x, rois, None, k, s, 1, p, self.spp, 0.0)
        trans = self.offset(plain.flatten(1)).view(-1, 2, p, p)
        return deform_roi_pool(x, rois, trans, k, s, 1, p, self.spp, self.trans_std)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, part={self.part}, spatial_scale={self.spatial_scale:g}, "
            f"spp={self.spp}, trans_std={self.trans_std:g}"
        )


class DeformableRoIPoolingDef(LayerDef):
    type = "DRP"
    doc = (
        "Deformable RoI pooling (group 1) at the RoIs (`rois=` tap): [R, C, size, size]; "
        "offsets from its own zero-initialised fully connected layer on the pooling without "
        "offsets (Deformable ConvNets' 2fc Faster R-CNN)."
    )
    has_params = True
    args = (Arg("size", "int", min=1, max=64, doc="bins per side"),)
    keywords = (
        Arg("rois", "tap", doc="tap holding the RoIs (after RPN, SAMPLE)"),
        Arg("part", "int", lambda call: call.args["size"], min=1, max=64, doc="part cells"),
        Arg("spp", "int", 4, min=1, max=16, doc="samples per part cell and axis"),
        Arg("trans_std", "float", 0.1, min=0.0, doc="offset scale (times the RoI size)"),
        Arg("offset_lr", "float", 0.01, min=0.0, doc="learning-rate multiplier of the offsets"),
    )

    def shape(self, call: Call) -> ShapeSpec:
        check_rois(call)
        k = call.args["size"]
        return ShapeSpec(call.input.channels, k, k, Fraction(1))

    def params(self, call: Call) -> int:
        a = call.args
        c = 2 * a["part"] ** 2
        return call.input.channels * a["size"] ** 2 * c + c

    def output_elements(self, call: Call) -> int:
        return rois_elements(call)

    def build(self, call: Call):
        a = call.args
        return DeformableRoIPooling(
            call.input.channels,
            a["size"],
            a["part"],
            float(1 / call.input.stride),
            a["spp"],
            a["trans_std"],
            a["offset_lr"],
        )
