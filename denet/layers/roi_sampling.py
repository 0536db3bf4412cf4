"""``SAMPLE``: the RoIs a two-stage detector trains its box head on (torchvision's
``RoIHeads.select_training_samples``, Detectron's ``fast_rcnn`` targets).

``SAMPLE[512, 0.25, iou=0.5]`` after an ``RPN``: in training (with targets) the proposals of each
image plus its ground-truth boxes, each matched to the ground truth (IoU >= ``iou`` foreground,
``bg_iou`` <= IoU < ``iou`` background, lower ignored; torchvision's ``bg_iou`` is 0), ``batch`` of them sampled with at most
``positive`` foreground, kept in their order. In evaluation the proposals pass through. The box
head after it (``DET``) matches its RoIs by the same rule, so the two agree on every label.
"""

from __future__ import annotations

import torch
from torch import nn

from .box_coding import box_iou
from .matching import BACKGROUND, balanced_sample, match
from .rcnn_transform import FRAME, boxes_to_frame, frame_sizes
from .registry import Arg, Call, LayerDef


def roi_labels(
    rois: torch.Tensor, gt: torch.Tensor, gt_labels: torch.Tensor, iou, bg_iou, plus1=False
):
    """Per RoI ([N, 4]): 0-based class + 1 (0 background, -1 ignored) and the index of its
    matched ground-truth box (0 where there is none)."""
    if len(gt) == 0:
        zeros = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
        return zeros, zeros
    overlaps = box_iou(gt, rois, plus1)
    matches = match(overlaps, iou, iou)
    which = matches.clamp(min=0)
    labels = gt_labels[which] + 1
    labels[matches == BACKGROUND] = 0
    if bg_iou > 0:  # Detectron's BG_THRESH_LO: too little overlap to be a useful negative
        labels[overlaps.max(0).values < bg_iou] = -1
    return labels, which


def target_boxes(t: dict, sizes, like: torch.Tensor):
    """A target's boxes ([G, 4], in the head's frame) and 0-based labels ([G])."""
    gt = torch.as_tensor(t["boxes"], dtype=like.dtype, device=like.device).reshape(-1, 4)
    labels = torch.as_tensor(t["labels"], device=like.device).long().reshape(-1)
    return boxes_to_frame(gt, sizes), labels


class RoISampler(nn.Module):
    def __init__(self, batch: int, positive: float, iou: float, bg_iou: float, plus1: bool):
        super().__init__()
        self.batch, self.positive, self.iou, self.bg_iou = batch, positive, iou, bg_iou
        self.plus1 = plus1

    def forward(self, rois, images, frame=None, targets=None):
        if targets is None:
            return rois
        sizes = frame_sizes(images, frame)
        out = []
        for b, t in enumerate(targets):
            gt, gt_labels = target_boxes(t, sizes, rois)
            boxes = torch.cat([rois[rois[:, 0] == b, 1:], gt])
            labels, _ = roi_labels(boxes, gt, gt_labels, self.iou, self.bg_iou, self.plus1)
            pos, neg = balanced_sample(labels, self.batch, self.positive)
            keep = torch.where(pos | neg)[0]
            index = torch.full((len(keep), 1), b, dtype=rois.dtype, device=rois.device)
            out.append(torch.cat([index, boxes[keep]], 1))
        return torch.cat(out, 0)

    def extra_repr(self) -> str:
        return f"batch={self.batch}, positive={self.positive:g}, iou={self.iou:g}"


class RoISampling(LayerDef):
    type = "SAMPLE"
    doc = (
        "Training RoIs of a box head: proposals plus ground-truth boxes, matched at `iou`, "
        "`batch` sampled per image with at most `positive` foreground; identity in evaluation."
    )
    accepts = ("boxes",)
    args = (
        Arg("batch", "int", 512, min=1, max=1_000_000, doc="RoIs sampled per image"),
        Arg("positive", "float", 0.25, min=0.0, max=1.0, doc="foreground fraction at most"),
    )
    keywords = (
        Arg("iou", "float", 0.5, min=0.0, max=1.0, doc="IoU that makes a RoI foreground"),
        Arg("bg_iou", "float", 0.0, min=0.0, max=1.0, doc="lowest IoU of a background RoI"),
        Arg("plus1", "bool", False, doc="1: Detectron's IoU (+1 widths)"),
    )

    def reads_targets(self, call: Call) -> bool:
        return True

    def reads_images(self, call: Call) -> bool:
        return True

    def optional_uses(self, call: Call) -> dict[str, str]:
        return {"frame": FRAME}

    def shape(self, call: Call):
        return call.input.with_(channels=max(call.input.channels, call.args["batch"]))

    def build(self, call: Call):
        a = call.args
        return RoISampler(a["batch"], a["positive"], a["iou"], a["bg_iou"], a["plus1"])
