"""``DND``: DeNet's detection classifier over the RoIs of the ``DNS`` before it (reference:
denet-original.md 3.4, 4.1-4.2), v1 semantics.

A 1x1 conv with bias and zero-initialised weights on the RoI map ``[B, C, sn, sn]`` gives
``classes + 1`` logits (the null class last) and, when ``bbox_factor > 0``, four class-agnostic
box deltas ``(dx, dy, dw, dh)`` per RoI, decoded as ``cx = dx sw + scx``, ``w = exp(dw) sw``
(no normalisation, no clipping). Boxes are normalised xyxy of the network input throughout.

Training (targets with ``boxes`` in input pixels and 0-based ``labels``):

* ``loss_cls``: a RoI is positive for the class of *every* ground-truth box with IoU >
  ``overlap_threshold`` (soft multi-label targets, normalised to sum 1), else null; the loss is
  ``cost_factor`` times the mean over the batch and the sn² RoIs of ``-sum t log p / ln(C + 1)``.
* ``loss_box``: the best-IoU ground truth of each RoI, valid when that IoU >
  ``bbox_overlap`` (default: ``overlap_threshold``); targets ``((gx - sx)/sw, (gy - sy)/sh,
  log(gw/sw), log(gh/sh))``; ``bbox_factor`` times the sum over the four components of smooth L1
  (beta 1) over valid RoIs, divided by sn² and averaged over the batch.

Evaluation: for the first ``DNS.counts[b]`` RoIs of each image, every class with Pr(c) >=
``score`` (DeNet's ``prThreshold``, 0.01) is a candidate scored Pr(c); per class, DeNet's NMS
(:func:`denet.kernels.denet_nms`: a box falls when any higher-scored box of its class overlaps it
by more than ``nms``, even a fallen one; ``nms`` outside (0, 1) applies none); boxes in input
pixels, no per-image cap. The v2 parts (``.J`` joint fitness, ``.B`` bounded IoU,
``indfit_factor``) are not built yet and are refused.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import box_iou, denet_nms
from .box_coding import decode, encode
from .denet_sparse import COUNTS, ROIS
from .registry import Arg, Call, LayerDef
from .shape import ShapeSpec


def soft_targets(rois, gt, labels, classes: int, threshold: float) -> torch.Tensor:
    """``[N, classes + 1]``: each RoI's classes of every box with IoU > ``threshold``, summing to
    1; the null class (last) where there is none."""
    t = torch.zeros(len(rois), classes + 1, dtype=rois.dtype, device=rois.device)
    if len(gt):
        hit = (box_iou(rois, gt) > threshold).to(rois.dtype)  # [N, M]
        t[:, :classes].index_add_(1, labels, hit)
        t[:, :classes].clamp_(max=1.0)  # two boxes of one class: still that class once
    t[:, classes] = (t[:, :classes].sum(1) == 0).to(rois.dtype)
    return t / t.sum(1, keepdim=True)


class DetectionClassifier(nn.Module):
    def __init__(
        self,
        cin: int,
        classes: int,
        overlap: float,
        bbox_overlap: float,
        cost_factor: float,
        bbox_factor: float,
        score: float,
        nms: float,
    ):
        super().__init__()
        self.classes, self.regress = classes, bbox_factor > 0
        self.conv = nn.Conv2d(cin, classes + 1 + (4 if self.regress else 0), 1, bias=True)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)  # type: ignore[arg-type]
        self.overlap, self.bbox_overlap = overlap, bbox_overlap
        self.cost_factor, self.bbox_factor = cost_factor, bbox_factor
        self.score, self.nms = score, nms

    def forward(self, x, rois, counts, images, targets=None):
        out = self.conv(x).flatten(2).transpose(1, 2)  # [B, sn², s]: RoI i = row i // sn
        logp = torch.log_softmax(out[..., : self.classes + 1], -1)
        deltas = out[..., self.classes + 1 :] if self.regress else None
        if targets is None:
            return self.detections(logp, deltas, rois, counts, images)
        return logp, self.losses(logp, deltas, rois, images, targets)

    def losses(self, logp, deltas, rois, images, targets):
        b, n = logp.shape[:2]
        scale = self._scale(images, rois)
        cls_terms, box_terms = [], []
        for i, t in enumerate(targets):
            gt = torch.as_tensor(t["boxes"], device=rois.device).reshape(-1, 4).to(rois.dtype)
            gt = gt / scale
            labels = torch.as_tensor(t["labels"], device=rois.device).long().reshape(-1)
            st = soft_targets(rois[i], gt, labels, self.classes, self.overlap)
            cls_terms.append(-(st * logp[i]).sum() / math.log(self.classes + 1))
            if deltas is not None and len(gt):
                best, which = box_iou(rois[i], gt).max(1)
                valid = best > self.bbox_overlap
                goal = encode(gt[which[valid]], rois[i][valid])
                box_terms.append(
                    F.smooth_l1_loss(deltas[i][valid], goal, beta=1.0, reduction="sum")
                )
        losses = {"loss_cls": self.cost_factor * torch.stack(cls_terms).sum() / (n * b)}
        if deltas is not None:
            total = torch.stack(box_terms).sum() if box_terms else deltas.sum() * 0.0
            losses["loss_box"] = self.bbox_factor * total / (n * b)
        return losses

    @staticmethod
    def _scale(images, like):
        h, w = images.shape[-2:]
        return like.new_tensor([w, h, w, h])

    @torch.no_grad()
    def detections(self, logp, deltas, rois, counts, images):
        boxes = decode(deltas, rois) if deltas is not None else rois
        scale = self._scale(images, boxes)
        out = []
        for i in range(logp.shape[0]):
            n = int(counts[i])
            pr = logp[i, :n, : self.classes].exp()
            idx, cls = (pr >= self.score).nonzero(as_tuple=True)
            bx, sc = boxes[i, idx], pr[idx, cls]
            if 0 < self.nms < 1 and len(bx):
                offset = cls.to(bx.dtype)[:, None] * (bx.abs().max() * 2 + 1)
                keep = denet_nms(bx + offset, sc, self.nms)
            else:
                keep = sc.argsort(descending=True)
            out.append({"boxes": bx[keep] * scale, "scores": sc[keep], "labels": cls[keep]})
        return out

    def extra_repr(self) -> str:
        return (
            f"classes={self.classes}, overlap={self.overlap:g}, "
            f"bbox_overlap={self.bbox_overlap:g}, cost_factor={self.cost_factor:g}, "
            f"bbox_factor={self.bbox_factor:g}, score={self.score:g}, nms={self.nms:g}"
        )


class DetectionClassifierLayer(LayerDef):
    type = "DND"
    doc = (
        "DeNet's detection classifier over the RoIs of the DNS before it: soft multi-label "
        "classes + null and class-agnostic box deltas; in training adds `loss_cls` and "
        "`loss_box`; in evaluation returns one dict per image after DeNet's NMS. v1; the v2 "
        "tags and `indfit_factor` are refused until built."
    )
    task = "detection"
    tags = {"J": "joint fitness (v2, not built yet)", "B": "bounded IoU loss (v2, not built yet)"}
    args = (
        Arg(
            "overlap_threshold",
            "float",
            0.5,
            min=0.0,
            max=1.0,
            doc="IoU above which a RoI is positive for a box's class",
        ),
        Arg("cost_factor", "float", 1.0, min=0.0, doc="weight of loss_cls"),
        Arg("bbox_factor", "float", 1.0, min=0.0, doc="weight of loss_box (0: no regression)"),
        Arg("indfit_factor", "float", 0.0, min=0.0, doc="independent fitness (v2, not built)"),
    )
    keywords = (
        Arg(
            "bbox_overlap",
            "float",
            None,
            min=0.0,
            max=1.0,
            doc="IoU above which a RoI regresses its box (default overlap_threshold)",
        ),
        Arg("score", "float", 0.01, min=0.0, max=1.0, doc="prThreshold: lowest Pr(c) kept"),
        Arg("nms", "float", 0.5, min=0.0, max=1.0, doc="DeNet NMS IoU; 0 or 1: none"),
    )
    has_params = True

    def uses(self, call: Call):
        return [ROIS, COUNTS]

    def missing_message(self, call: Call, symbol: str) -> str:
        return "DND classifies the RoIs of a DNS layer: put DNS[...] before it"

    def losses(self, call: Call):
        return ("loss_cls", "loss_box") if call.args["bbox_factor"] > 0 else ("loss_cls",)

    def reads_images(self, call: Call) -> bool:
        return True

    def shape(self, call: Call):
        if call.classes is None:
            call.fail("DND needs the number of classes: compile with classes=N")
        for tag in call.tags:
            call.fail(f"the v2 tag .{tag} is not built yet (DeNet detection issue)")
        if call.args["indfit_factor"] > 0:
            call.fail("independent fitness (indfit_factor > 0) is not built yet", "indfit_factor")
        return ShapeSpec(call.classes, form="detections")

    def build(self, call: Call):
        a = call.args
        assert call.classes is not None  # shape() refused a missing class count
        overlap = a["overlap_threshold"]
        bbox_overlap = overlap if a["bbox_overlap"] is None else a["bbox_overlap"]
        return DetectionClassifier(
            call.input.channels,
            call.classes,
            overlap,
            bbox_overlap,
            a["cost_factor"],
            a["bbox_factor"],
            a["score"],
            a["nms"],
        )
