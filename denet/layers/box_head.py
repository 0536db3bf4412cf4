"""``DET``: a box head over RoIs (Fast R-CNN's predictor).

Input: one feature map or vector per RoI ([R, C, h, w] from ``RA``/``MRA``, or [R, C]), and the
RoIs themselves by ``rois=`` (a tap after ``BOXES``, ``RPN`` or ``SAMPLE``). Two linear layers give
``classes + 1`` logits (0 is background) and box deltas per RoI: 4, class-agnostic, or with tag
``S`` 4 per class (background included, torchvision's ``FastRCNNPredictor``), encoded as
torchvision's ``BoxCoder`` with weights (10, 10, 5, 5). After an ``RT`` it works in the resized
frame and returns boxes in the input's pixels.

* Training (targets with ``boxes`` xyxy in input pixels and 0-based ``labels``): each RoI takes
  the label of the ground-truth box it overlaps most when that IoU is at least ``iou``, else
  background. ``loss_cls`` is the cross-entropy over every RoI; ``loss_box`` the smooth-L1
  (beta 1/9) of the deltas of foreground RoIs (of their class with ``S``), summed and divided by
  the number of RoIs (torchvision's ``fastrcnn_loss``). The head's output in training is one
  dict per image of its foreground RoIs (``boxes`` in input pixels, 0-based ``labels``,
  ``matched`` ground-truth index) for a mask or keypoint head after it.
* Evaluation: per image, the decoded boxes clipped to the image, per-class scores above
  ``score``, boxes smaller than ``min_size`` dropped, per-class NMS at ``nms``
  (:func:`denet.kernels.batched_nms`), the best ``max``: ``{"boxes" [N, 4] xyxy input pixels,
  "scores" [N], "labels" [N] 0-based}`` (torchvision's ``postprocess_detections``).

Detectron's conventions: ``plus1=1`` (widths ``x2 - x1 + 1`` in the box coder and the IoU, a
decoded box ends at ``centre + w/2 - 1``, boxes clipped to ``[0, W - 1]``) and ``beta=1`` (its
box loss's smooth L1).

Options for heads that make their own scores (R-FCN, Deformable ConvNets):

* ``deltas=t``: the input is the class logits ``[R, classes + 1]`` and the tap ``t`` the box
  deltas (``[R, 4]``; ``[R, 8]``, R-FCN's class-agnostic background and foreground deltas, of
  which the last 4 are used; with ``S`` ``[R, 4 (classes + 1)]``): the head has no layers of its
  own, the matching, losses and post-processing are the same.
* ``ohem=N``: online hard example mining (Deformable ConvNets' ``BoxAnnotatorOHEM``): every RoI's
  loss, cross-entropy plus the smooth L1 (beta 1) of its deltas (foreground RoIs), the ``N``
  largest per image kept and the rest ignored; ``loss_cls`` is the mean over the kept RoIs,
  ``loss_box`` their smooth L1 summed and divided by ``N`` times the images.
* ``soft_nms=sigma``: at test, Gaussian soft-NMS per class (:func:`denet.kernels.soft_nms`,
  ``s *= exp(-IoU^2 / sigma)``, Deformable ConvNets' ``SOFTNMS_THRESH`` 0.6) instead of NMS; the
  ``max`` best rescored detections are kept.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import batched_nms, soft_nms
from .box_coding import decode, encode
from .rcnn_transform import FRAME, boxes_from_frame, frame_sizes
from .registry import Arg, Call, LayerDef
from .roi_levels import roi_rows
from .roi_sampling import roi_labels, target_boxes
from .rpn import clip_boxes, remove_small
from .shape import ShapeSpec

WEIGHTS = (10.0, 10.0, 5.0, 5.0)
CLAMP = math.log(1000.0 / 16)  # largest exp() of a size delta, as torchvision


class BoxHead(nn.Module):
    def __init__(
        self,
        features: int,
        classes: int,
        per_class: bool,
        a: dict,
        precomputed: bool = False,
    ):
        super().__init__()
        if not precomputed:
            self.cls_score = nn.Linear(features, classes + 1)
            self.bbox_pred = nn.Linear(features, 4 * (classes + 1 if per_class else 1))
            nn.init.normal_(self.cls_score.weight, std=0.01)
            nn.init.normal_(self.bbox_pred.weight, std=0.001)
            nn.init.zeros_(self.cls_score.bias)
            nn.init.zeros_(self.bbox_pred.bias)
        self.precomputed = precomputed
        self.ohem, self.soft_nms = a.get("ohem", 0), a.get("soft_nms", 0.0)
        self.per_class = per_class
        self.iou, self.score, self.nms, self.max_detections = (
            a["iou"],
            a["score"],
            a["nms"],
            a["max"],
        )
        self.min_size = a["min_size"]
        self.plus1, self.beta = a.get("plus1", False), a.get("beta", 1 / 9)

    def forward(self, x, rois, images, frame=None, targets=None, deltas=None):
        rois = roi_rows(rois)
        x = x.flatten(1)
        if deltas is None:
            logits, deltas = self.cls_score(x), self.bbox_pred(x)
        else:  # the scores and deltas of the layers before (R-FCN's voting)
            logits, deltas = x, deltas.flatten(1)
        if targets is None:
            return self.detections(logits, deltas, rois, images, frame)
        sizes = frame_sizes(images, frame)
        labels, goals, matched = self.match(rois, targets, sizes)
        fg = torch.where(labels > 0)[0]
        if self.ohem:
            loss_cls, loss_box = self.ohem_losses(logits, deltas, labels, goals, rois, len(targets))
        else:
            loss_cls = F.cross_entropy(logits, labels)
            deltas = self.class_deltas(deltas, labels)[fg]
            loss_box = F.smooth_l1_loss(deltas, goals[fg], beta=self.beta, reduction="sum")
            loss_box = loss_box / max(1, labels.numel())
        positives = []
        for b in range(images.shape[0]):
            sel = fg[rois[fg, 0] == b]
            boxes = boxes_from_frame(rois[sel, 1:], sizes)
            positives.append({"boxes": boxes, "labels": labels[sel] - 1, "matched": matched[sel]})
        return positives, {"loss_cls": loss_cls, "loss_box": loss_box}

    def class_deltas(self, deltas, labels):
        """[R, 4]: each RoI's deltas for its label (class-agnostic: the last 4 columns)."""
        if self.per_class:
            return deltas.reshape(len(deltas), -1, 4)[torch.arange(len(deltas)), labels]
        return deltas[:, -4:]

    def ohem_losses(self, logits, deltas, labels, goals, rois, images: int):
        """Deformable ConvNets' OHEM: per-RoI loss (cross-entropy + smooth L1, beta 1, of the
        foreground deltas), the ``ohem`` largest per image kept."""
        cls = F.cross_entropy(logits, labels, reduction="none")
        box = F.smooth_l1_loss(self.class_deltas(deltas, labels), goals, beta=1.0, reduction="none")
        box = box.sum(1) * (labels > 0).to(box.dtype)
        keep = hardest(cls.detach() + box.detach(), rois[:, 0], self.ohem)
        loss_cls = cls[keep].sum() / max(1, keep.numel())
        return loss_cls, box[keep].sum() / (self.ohem * images)

    @torch.no_grad()
    def match(self, rois, targets, sizes):
        """Per RoI: the label (0 background, k+1 class k), the deltas to its matched box and
        that box's index."""
        labels = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
        matched = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
        goals = torch.zeros(len(rois), 4, dtype=rois.dtype, device=rois.device)
        for b, t in enumerate(targets):
            sel = torch.where(rois[:, 0] == b)[0]
            gt, gt_labels = target_boxes(t, sizes, rois)
            if len(sel) == 0 or len(gt) == 0:
                continue
            boxes = rois[sel, 1:]
            labels[sel], matched[sel] = roi_labels(boxes, gt, gt_labels, self.iou, 0.0, self.plus1)
            goals[sel] = encode(gt[matched[sel]], boxes, WEIGHTS, self.plus1)
        return labels, goals, matched

    @torch.no_grad()
    def detections(self, logits, deltas, rois, images, frame=None):
        sizes = frame_sizes(images, frame)
        height, width = sizes[0], sizes[1]
        probs = F.softmax(logits, -1)
        n, k = probs.shape
        p1 = self.plus1
        if self.per_class:
            boxes = decode(deltas.reshape(n, k, 4), rois[:, None, 1:], WEIGHTS, CLAMP, p1)
        else:
            boxes = decode(deltas[:, -4:], rois[:, 1:], WEIGHTS, CLAMP, p1)[:, None].expand(n, k, 4)
        boxes = clip_boxes(boxes, height, width, p1)
        classes = torch.arange(k - 1, device=probs.device).view(1, -1).expand(n, k - 1)
        out = []
        for b in range(images.shape[0]):
            sel = rois[:, 0] == b
            bx = boxes[sel][:, 1:].reshape(-1, 4)
            sc, cls = probs[sel][:, 1:].reshape(-1), classes[sel].reshape(-1)
            keep = torch.where(sc > self.score)[0]
            bx, sc, cls = bx[keep], sc[keep], cls[keep]
            keep = remove_small(bx, self.min_size, self.plus1)
            bx, sc, cls = bx[keep], sc[keep], cls[keep]
            if self.soft_nms and len(bx):
                # one class never suppresses another: move each class far from the others
                shifted = bx + cls.to(bx.dtype)[:, None] * (bx.abs().max() * 2 + 1)
                keep, sc = soft_nms(shifted, sc, self.soft_nms, score_threshold=0.0)
                keep, sc = keep[: self.max_detections], sc[: self.max_detections]
            else:
                keep = batched_nms(bx, sc, cls, self.nms)[: self.max_detections]
                sc = sc[keep]
            bx = boxes_from_frame(bx[keep], sizes)
            out.append({"boxes": bx, "scores": sc, "labels": cls[keep]})
        return out

    def extra_repr(self) -> str:
        return (
            f"iou={self.iou:g}, score={self.score:g}, nms={self.nms:g}, max={self.max_detections}"
            + (", per_class=True" if self.per_class else "")
            + (f", ohem={self.ohem}" if self.ohem else "")
            + (f", soft_nms={self.soft_nms:g}" if self.soft_nms else "")
        )


def hardest(loss: torch.Tensor, image: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` largest ``loss`` values of each image (``image``: the RoIs' batch
    index), image by image, each image's in descending order."""
    keep = []
    for b in torch.unique(image):
        sel = torch.where(image == b)[0]
        keep.append(sel[loss[sel].argsort(descending=True, stable=True)[:n]])
    return torch.cat(keep) if keep else loss.new_zeros(0, dtype=torch.int64)


class BoxHeadDef(LayerDef):
    type = "DET"
    doc = (
        "Box head over RoIs (`rois=` tap): class logits (+ background) and class-agnostic "
        "box deltas (tag S: per class); in training adds `loss_cls` and `loss_box`; in "
        "evaluation returns one dict per image (boxes, scores, labels) after per-class NMS."
    )
    tags = {"S": "class-specific box deltas (torchvision's and Detectron's predictors)"}
    task = "detection"
    accepts = ("map", "vector")
    has_params = True
    keywords = (
        Arg("rois", "tap", doc="tap holding the RoIs the features were pooled from"),
        Arg("iou", "float", 0.5, min=0.0, max=1.0, doc="IoU that makes a RoI foreground"),
        Arg("score", "float", 0.05, min=0.0, max=1.0, doc="lowest score kept at test"),
        Arg("nms", "float", 0.5, min=0.0, max=1.0, doc="IoU threshold of per-class NMS"),
        Arg("max", "int", 100, min=1, doc="detections kept per image"),
        Arg("min_size", "float", 0.01, min=0.0, doc="smallest detection side in pixels"),
        Arg("deltas", "tap", None, doc="box deltas made before: the input is then the logits"),
        Arg("ohem", "int", 0, min=0, max=1_000_000, doc="hardest RoIs kept per image (0: all)"),
        Arg("soft_nms", "float", 0.0, min=0.0, doc="Gaussian soft-NMS sigma at test (0: NMS)"),
        Arg("beta", "float", 1 / 9, min=0.0, doc="smooth-L1 beta of loss_box (Detectron: 1)"),
        Arg("plus1", "bool", False, doc="1: Detectron's boxes (+1 widths, clip W-1)"),
    )

    def losses(self, call: Call):
        return ("loss_cls", "loss_box")

    def reads_images(self, call: Call) -> bool:
        return True

    def optional_uses(self, call: Call) -> dict[str, str]:
        return {"frame": FRAME}

    def shape(self, call: Call):
        if call.classes is None:
            call.fail("DET needs the number of classes: compile with classes=N")
        if call.taps["rois"].kind != "boxes":
            call.fail(f"rois= must name a set of boxes, not {call.taps['rois'].describe()}", "rois")
        if call.args["deltas"] is not None:
            self.check_precomputed(call)
        return ShapeSpec(call.classes, form="detections")

    def check_precomputed(self, call: Call) -> None:
        """With ``deltas=``: the input is [R, classes + 1] logits, the tap [R, 4 or 8] deltas
        ([R, 4 (classes + 1)] with S)."""
        assert call.classes is not None
        i, d, k = call.input, call.taps["deltas"], call.classes + 1
        if i.kind != "vector" or i.channels != k:
            call.fail(f"DET with deltas= takes {k} class logits per RoI (classes + 1), not {i}")
        widths = (4 * k,) if call.has("S") else (4, 8)
        if d.kind != "vector" or d.channels not in widths:
            want = " or ".join(map(str, widths))
            call.fail(f"deltas= must name {want} box deltas per RoI, not {d}", "deltas")

    def params(self, call: Call) -> int:
        if call.args["deltas"] is not None:
            return 0
        return super().params(call)

    def build(self, call: Call):
        i = call.input
        features = i.channels * (i.height or 1) * (i.width or 1)
        assert call.classes is not None  # shape() refused a missing class count
        precomputed = call.args["deltas"] is not None
        return BoxHead(features, call.classes, call.has("S"), call.args, precomputed)
