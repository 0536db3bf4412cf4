"""``DET``: a box head over RoIs (Fast R-CNN's predictor, class-agnostic box regression).

Input: one feature map or vector per RoI ([R, C, h, w] from ``RA``, or [R, C]), and the RoIs
themselves by ``rois=`` (a tap after ``BOXES``). Two linear layers give ``classes + 1`` logits
(0 is background) and 4 box deltas per RoI, encoded as torchvision's ``BoxCoder`` with weights
(10, 10, 5, 5).

* Training (targets with ``boxes`` xyxy in input pixels and 0-based ``labels``): each RoI takes
  the label of the ground-truth box it overlaps most when that IoU is at least ``iou``, else
  background. ``loss_cls`` is the cross-entropy over every RoI; ``loss_box`` the smooth-L1
  (beta 1/9) of the deltas of foreground RoIs, summed and divided by the number of RoIs
  (torchvision's ``fastrcnn_loss``).
* Evaluation: per image, the decoded boxes clipped to the image, per-class scores above
  ``score``, per-class NMS at ``nms`` (:func:`denet.kernels.batched_nms`), the best ``max``:
  ``{"boxes" [N, 4] xyxy input pixels, "scores" [N], "labels" [N] 0-based}``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import batched_nms, box_iou
from .box_coding import decode, encode
from .registry import Arg, Call, LayerDef
from .shape import ShapeSpec

WEIGHTS = (10.0, 10.0, 5.0, 5.0)
CLAMP = math.log(1000.0 / 16)  # largest exp() of a size delta, as torchvision


class BoxHead(nn.Module):
    def __init__(
        self, features: int, classes: int, iou: float, score: float, nms: float, max_detections: int
    ):
        super().__init__()
        self.cls_score = nn.Linear(features, classes + 1)
        self.bbox_pred = nn.Linear(features, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        self.iou, self.score, self.nms, self.max_detections = iou, score, nms, max_detections

    def forward(self, x, rois, images, targets=None):
        x = x.flatten(1)
        logits, deltas = self.cls_score(x), self.bbox_pred(x)
        if targets is None:
            return self.detections(logits, deltas, rois, images)
        labels, goals = self.match(rois, targets)
        loss_cls = F.cross_entropy(logits, labels)
        fg = labels > 0
        loss_box = F.smooth_l1_loss(deltas[fg], goals[fg], beta=1 / 9, reduction="sum")
        return logits, {"loss_cls": loss_cls, "loss_box": loss_box / max(1, labels.numel())}

    @torch.no_grad()
    def match(self, rois, targets):
        """Per RoI: the label (0 background, k+1 class k) and the deltas to its matched box."""
        labels = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
        goals = torch.zeros(len(rois), 4, dtype=rois.dtype, device=rois.device)
        for b, t in enumerate(targets):
            sel = (rois[:, 0] == b).nonzero().flatten()
            gt = torch.as_tensor(t["boxes"], dtype=rois.dtype, device=rois.device).reshape(-1, 4)
            if len(sel) == 0 or len(gt) == 0:
                continue
            boxes = rois[sel, 1:]
            best, which = box_iou(boxes, gt).max(1)
            gt_labels = torch.as_tensor(t["labels"], device=rois.device).long()
            labels[sel] = torch.where(best >= self.iou, gt_labels[which] + 1, 0)
            goals[sel] = encode(gt[which], boxes, WEIGHTS)
        return labels, goals

    @torch.no_grad()
    def detections(self, logits, deltas, rois, images):
        height, width = images.shape[-2:]
        probs = logits.softmax(1)[:, 1:]
        boxes = decode(deltas, rois[:, 1:], WEIGHTS, CLAMP)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        out = []
        for b in range(images.shape[0]):
            sel = rois[:, 0] == b
            p, bx = probs[sel], boxes[sel]
            idx, cls = (p > self.score).nonzero(as_tuple=True)
            cand, scores = bx[idx], p[idx, cls]
            keep = batched_nms(cand, scores, cls, self.nms)[: self.max_detections]
            out.append({"boxes": cand[keep], "scores": scores[keep], "labels": cls[keep]})
        return out

    def extra_repr(self) -> str:
        return (
            f"iou={self.iou:g}, score={self.score:g}, nms={self.nms:g}, max={self.max_detections}"
        )


class BoxHeadDef(LayerDef):
    type = "DET"
    doc = (
        "Box head over RoIs (`rois=` tap): class logits (+ background) and class-agnostic "
        "box deltas; in training adds `loss_cls` and `loss_box`; in evaluation returns one "
        "dict per image (boxes, scores, labels) after per-class NMS."
    )
    task = "detection"
    accepts = ("map", "vector")
    has_params = True
    keywords = (
        Arg("rois", "tap", doc="tap holding the RoIs the features were pooled from"),
        Arg("iou", "float", 0.5, min=0.0, max=1.0, doc="IoU that makes a RoI foreground"),
        Arg("score", "float", 0.05, min=0.0, max=1.0, doc="lowest score kept at test"),
        Arg("nms", "float", 0.5, min=0.0, max=1.0, doc="IoU threshold of per-class NMS"),
        Arg("max", "int", 100, min=1, doc="detections kept per image"),
    )

    def losses(self, call: Call):
        return ("loss_cls", "loss_box")

    def reads_images(self, call: Call) -> bool:
        return True

    def shape(self, call: Call):
        if call.classes is None:
            call.fail("DET needs the number of classes: compile with classes=N")
        if call.taps["rois"].kind != "boxes":
            call.fail(f"rois= must name a set of boxes, not {call.taps['rois'].describe()}", "rois")
        return ShapeSpec(call.classes, form="detections")

    def build(self, call: Call):
        i = call.input
        features = i.channels * (i.height or 1) * (i.width or 1)
        a = call.args
        assert call.classes is not None  # shape() refused a missing class count
        return BoxHead(features, call.classes, a["iou"], a["score"], a["nms"], a["max"])
