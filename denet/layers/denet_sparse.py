"""``DNS``: DeNet's directed sparse sampling layer (reference: denet-original.md 3.2-3.3).

It reads the side outputs of the ``DNC`` before it: the corner log-probabilities become RoIs with
:func:`denet.kernels.denet_rois` (``sample_num``² boxes at most, best first), and the sample
features are read at a ``grid_size`` x ``grid_size`` grid over each RoI with
:func:`denet.kernels.sparse_sample`. The output replaces the main chain: the RoIs as a map
``[B, G²F + 2, sn, sn]`` (RoI i at row i // sn, column i % sn), so the head's 1x1 convs are
per-RoI fully connected layers. The RoIs themselves (normalised xyxy, ``[B, sn², 4]``) and how
many of them are real per image (``[B]``) are side outputs ``DNS.rois`` and ``DNS.counts`` for
``DND``.

In training (with targets) the RoI set is DeNet's: when more than ``n = sn² - floor(random_sample
sn²)`` boxes were found, a random subset of n (order lost, as ``random.sample``); then uniformly
random boxes up to sn² (``x0 ~ U(0, 1)``, ``x1 ~ U(x0, 1)``, likewise y); then, unless tagged
``G``, the last ``len(GT)`` entries become the ground-truth boxes (normalised by the input size).
Every RoI counts in training. Randomness comes from torch's global generator, so ``--seed`` and
``--resume`` reproduce it. No gradient flows through the RoI selection.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import nn

from ..kernels import denet_rois, sparse_sample
from .denet_corner import CORNERS, SAMPLE
from .registry import Arg, Call, LayerDef
from .shape import ShapeSpec

ROIS = "DNS.rois"
COUNTS = "DNS.counts"


class SparseSampling(nn.Module):
    def __init__(
        self,
        grid_size: int,
        sample_num: int,
        corner_threshold: float,
        random_sample: float,
        local_max: int,
        cluster_threshold: float,
        insert_gt: bool,
    ):
        super().__init__()
        self.grid_size, self.sample_num = grid_size, sample_num
        self.corner_threshold, self.random_sample = corner_threshold, random_sample
        self.local_max, self.cluster_threshold = local_max, cluster_threshold
        self.insert_gt = insert_gt

    def forward(self, x, corners, sample, images, targets=None):
        with torch.no_grad():
            boxes, _, counts = denet_rois(
                corners.detach(),
                self.sample_num,
                self.corner_threshold,
                self.local_max,
                self.cluster_threshold,
            )
            if targets is not None:
                boxes = self.training_set(boxes, counts, images, targets)
                counts = torch.full_like(counts, boxes.shape[1])
        b, n = boxes.shape[:2]
        out = sparse_sample(sample, boxes.to(sample.dtype), self.grid_size)
        out = out.reshape(b, out.shape[1], self.sample_num, self.sample_num)
        return out, {ROIS: boxes, COUNTS: counts}

    def training_set(self, boxes, counts, images, targets):
        total = self.sample_num**2
        keep = total - math.floor(self.random_sample * total)
        height, width = images.shape[-2:]
        scale = boxes.new_tensor([width, height, width, height])
        out = torch.empty_like(boxes)
        for i, t in enumerate(targets):
            found = boxes[i, : int(counts[i])]
            if len(found) > keep:
                found = found[torch.randperm(len(found))[:keep].to(found.device)]
            x0, y0 = torch.rand(2, total - len(found), device=boxes.device, dtype=boxes.dtype)
            x1 = x0 + torch.rand_like(x0) * (1 - x0)
            y1 = y0 + torch.rand_like(y0) * (1 - y0)
            out[i] = torch.cat([found, torch.stack([x0, y0, x1, y1], 1)])
            gt = torch.as_tensor(t["boxes"], device=boxes.device).reshape(-1, 4)
            if self.insert_gt and len(gt):
                gt = (gt.to(boxes.dtype) / scale)[-total:]
                out[i, total - len(gt) :] = gt
        return out

    def extra_repr(self) -> str:
        return (
            f"grid_size={self.grid_size}, sample_num={self.sample_num}, "
            f"corner_threshold={self.corner_threshold:g}, "
            f"random_sample={self.random_sample:g}, local_max={self.local_max}, "
            f"cluster_threshold={self.cluster_threshold:g}, insert_gt={self.insert_gt}"
        )


class SparseSamplingLayer(LayerDef):
    type = "DNS"
    denet_name = "denet-sparse"
    doc = (
        "DeNet's sparse sampling: RoIs from the corners of the DNC before it "
        "(denet.kernels.denet_rois), features read at a grid over each (sparse_sample): "
        "[B, G*G*F+2, sn, sn]; side outputs `DNS.rois`, `DNS.counts`; in training DeNet's "
        "RoI set (random subset, random boxes, ground truth inserted unless G)."
    )
    tags = {"G": "no ground-truth boxes inserted into the training RoIs"}
    args = (
        Arg("grid_size", "int", min=1, doc="G: samples per side of each RoI"),
        Arg("sample_num", "int", min=1, doc="sn: sn*sn RoIs per image"),
        Arg("corner_threshold", "float", 0.01, min=0.0, max=1.0, doc="corner probability"),
        Arg(
            "random_sample",
            "float",
            0.1,
            min=0.0,
            max=1.0,
            doc="share of training RoIs that are random boxes",
        ),
        Arg("local_max", "int", 0, min=0, doc="local-maximum window of corner candidates"),
        Arg(
            "nms_threshold",
            "float",
            1.0,
            min=0.0,
            max=1.0,
            doc="corner-clustering IoU (v2); 1 = off",
        ),
    )

    def uses(self, call: Call):
        return [CORNERS, SAMPLE]

    def missing_message(self, call: Call, symbol: str) -> str:
        return "DNS reads the corners of a DNC layer: put DNC[...] before it"

    def reads_targets(self, call: Call) -> bool:
        return True

    def reads_images(self, call: Call) -> bool:
        return True

    def shape(self, call: Call):
        corners, sample = call.inputs[1], call.inputs[2]
        r = call.args["local_max"]
        if corners.height is not None and r > max(corners.h, corners.w):
            # the window is 2r wide: a larger one covers the map all the same, at more cost
            call.fail(
                f"local_max={r} is wider than the {corners.h}x{corners.w} corner map",
                "local_max",
            )
        g, sn = call.args["grid_size"], call.args["sample_num"]
        return ShapeSpec(g * g * sample.channels + 2, sn, sn, Fraction(1))

    def side_outputs(self, call: Call) -> dict[str, ShapeSpec]:
        sn = call.args["sample_num"]
        return {ROIS: ShapeSpec(sn * sn, form="boxes"), COUNTS: ShapeSpec(1, form="vector")}

    def build(self, call: Call):
        a = call.args
        return SparseSampling(
            a["grid_size"],
            a["sample_num"],
            a["corner_threshold"],
            a["random_sample"],
            a["local_max"],
            a["nms_threshold"],
            not call.has("G"),
        )
