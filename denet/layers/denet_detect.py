"""``DND``: DeNet's detection classifier over the RoIs of the ``DNS`` before it (reference:
denet-original.md 3.4, 4), v1 and v2.

One 1x1 conv with bias and zero-initialised weights on the RoI map ``[B, C, sn, sn]`` gives, per
RoI and in DeNet's channel order (so imported weights fit): the class logits (``C + 1``, null
last; with ``.J`` ``5C + 1``, index ``5c + f`` = class c at fitness bin f, null last), four
class-agnostic box deltas ``(dx, dy, dw, dh)`` when ``bbox_factor > 0`` (decoded as ``cx = dx sw
+ scx``, ``w = exp(dw) sw``: no normalisation, no clipping), and six independent-fitness logits
when ``indfit_factor > 0``. Boxes are normalised xyxy of the network input throughout.

Fitness bins: a RoI whose IoU u with a box exceeds ``t0 = overlap_threshold`` falls in bin
``f = clamp(int(5 (u - t0) / (1 - t0)), 0, 4)``, worth ``v_f = t0 + f (1 - t0) / 5`` (the bin's
lower edge: 0.5, 0.6, ... 0.9 for t0 = 0.5).

Training (targets with ``boxes`` in input pixels and 0-based ``labels``):

* ``loss_cls``: a RoI is positive for the class (with ``.J``: the class and bin) of *every* box
  with IoU > t0, soft targets normalised to sum 1, else null; ``cost_factor`` times the mean over
  the batch and the sn² RoIs of ``-sum t log p / ln(outputs)``.
* ``loss_box``: the best-IoU box of each RoI, valid when that IoU > ``bbox_overlap`` (default
  t0); the sum over four components of smooth L1 (beta 1), over valid RoIs, divided by sn²,
  averaged over the batch, times ``bbox_factor``. Components: the deltas' error against
  ``((gx - sx)/sw, (gy - sy)/sh, log(gw/sw), log(gh/sh))``; with ``.B`` (bounded IoU) the costs
  of the decoded box p against g, ``2|gx - px| / (gw + |gx - px| + e)`` (y alike) and
  ``1 - min(gw / (pw + e), pw / (gw + e))`` (h alike), e = 1e-3. DeNet's v2 code multiplies
  this loss by ``bbox_factor`` twice; here once (every published model uses 1).
* ``loss_fit`` (``indfit_factor > 0``): a 6-way softmax over bin 0 = no box with IoU > t0 and
  bins ``1 + f`` of the best IoU; ``indfit_factor`` times the mean cross-entropy / ln 6.

Evaluation: for the first ``DNS.counts[b]`` RoIs of each image, every class with Pr(c) >=
``score`` (DeNet's ``prThreshold``; with ``.J`` Pr(c) sums the class's bins) is a candidate,
scored Pr(c) (v1), ``sum_f v_f Pr(c, f)`` (``.J``) or ``Pr(c) sum_n v_n Pr_fit(n)`` with
``v_0 = 0`` (independent fitness); per class, DeNet's NMS (:func:`denet.kernels.denet_nms`: a
box falls when any higher-scored box of its class overlaps it by more than ``nms``, even a
fallen one) or, with ``soft_nms``, DeNet's Gaussian soft NMS (sigma ``nms``, scores below
exp(-6.9) dropped); ``nms`` outside (0, 1) applies none. Boxes in input pixels, best first, no
per-image cap. ``set_test_params`` changes the three test-time values of a built model
(``model-predict --params``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import box_iou, denet_nms, soft_nms
from .box_coding import decode, encode
from .denet_sparse import COUNTS, ROIS
from .registry import Arg, Call, LayerDef
from .shape import ShapeSpec

BINS = 5  # fitness bins above the overlap threshold
BOUNDED_EPS = 1e-3
SOFT_NMS_FLOOR = math.exp(-6.9)  # DeNet drops a box once its log score is below -6.9


def fitness_bins(iou: torch.Tensor, t0: float) -> torch.Tensor:
    """The fitness bin ``clamp(int(5 (iou - t0) / (1 - t0)), 0, 4)`` of each IoU (> t0)."""
    return (BINS * (iou - t0) / (1 - t0)).long().clamp(0, BINS - 1)


def fitness_values(t0: float, like: torch.Tensor) -> torch.Tensor:
    """``v_f = t0 + f (1 - t0) / 5``, the lower edge of every bin."""
    return t0 + torch.arange(BINS, dtype=like.dtype, device=like.device) * (1 - t0) / BINS


def soft_targets(rois, gt, labels, classes: int, threshold: float, joint: bool = False):
    """``[N, outputs]``: for each RoI, the class (with ``joint``: the class's fitness bin, index
    ``5c + f``) of every box with IoU > ``threshold``, summing to 1; the null class (last)
    where there is none."""
    width = classes * BINS if joint else classes
    t = torch.zeros(len(rois), width + 1, dtype=rois.dtype, device=rois.device)
    if len(gt):
        iou = box_iou(rois, gt)  # [N, M]
        hit = iou > threshold
        roi, box = hit.nonzero(as_tuple=True)
        col = labels[box] * BINS + fitness_bins(iou[roi, box], threshold) if joint else labels[box]
        t[roi, col] = 1.0  # two boxes on one output: still that output once
    t[:, width] = (t[:, :width].sum(1) == 0).to(rois.dtype)
    return t / t.sum(1, keepdim=True)


def fitness_targets(best_iou: torch.Tensor, threshold: float) -> torch.Tensor:
    """Independent fitness classes: 0 when the best IoU is <= threshold, else ``1 + bin``."""
    return torch.where(best_iou > threshold, 1 + fitness_bins(best_iou, threshold), 0)


def bounded_iou_costs(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """DeNet's bounded-IoU costs ``[N, 4]`` of predicted boxes against their targets (xyxy)."""
    pw, ph = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1]
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    dx = ((gt[:, 0] + gt[:, 2]) - (pred[:, 0] + pred[:, 2])).abs() / 2
    dy = ((gt[:, 1] + gt[:, 3]) - (pred[:, 1] + pred[:, 3])).abs() / 2
    e = BOUNDED_EPS
    return torch.stack(
        [
            2 * dx / (gw + dx + e),
            2 * dy / (gh + dy + e),
            1 - torch.minimum(gw / (pw + e), pw / (gw + e)),
            1 - torch.minimum(gh / (ph + e), ph / (gh + e)),
        ],
        -1,
    )


class DetectionClassifier(nn.Module):
    def __init__(
        self,
        cin: int,
        classes: int,
        overlap: float,
        bbox_overlap: float,
        cost_factor: float,
        bbox_factor: float,
        indfit_factor: float = 0.0,
        joint: bool = False,
        bounded: bool = False,
        score: float = 0.01,
        nms: float = 0.5,
        soft: bool = False,
    ):
        super().__init__()
        self.classes, self.joint, self.bounded = classes, joint, bounded
        self.outputs = classes * (BINS if joint else 1) + 1
        self.regress, self.indfit = bbox_factor > 0, indfit_factor > 0
        width = self.outputs + (4 if self.regress else 0) + (BINS + 1 if self.indfit else 0)
        self.conv = nn.Conv2d(cin, width, 1, bias=True)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)  # type: ignore[arg-type]
        self.overlap, self.bbox_overlap = overlap, bbox_overlap
        self.cost_factor, self.bbox_factor, self.indfit_factor = (
            cost_factor,
            bbox_factor,
            indfit_factor,
        )
        self.score, self.nms, self.soft = score, nms, soft

    def set_test_params(self, score=None, nms=None, soft_nms=None) -> None:
        """DeNet's ``prThreshold``, ``nmsThreshold`` and ``useSoftNMS``; None keeps a value."""
        if score is not None:
            self.score = float(score)
        if nms is not None:
            self.nms = float(nms)
        if soft_nms is not None:
            self.soft = bool(soft_nms)

    def forward(self, x, rois, counts, images, targets=None):
        out = self.conv(x).flatten(2).transpose(1, 2)  # [B, sn², width]: RoI i = row i // sn
        logp = torch.log_softmax(out[..., : self.outputs], -1)
        end = self.outputs + (4 if self.regress else 0)
        deltas = out[..., self.outputs : end] if self.regress else None
        fit = torch.log_softmax(out[..., end:], -1) if self.indfit else None
        if targets is None:
            return self.detections(logp, deltas, fit, rois, counts, images)
        return logp, self.losses(logp, deltas, fit, rois, images, targets)

    def losses(self, logp, deltas, fit, rois, images, targets):
        b, n = logp.shape[:2]
        scale = self._scale(images, rois)
        cls_terms, box_terms, fit_terms = [], [], []
        for i, t in enumerate(targets):
            gt = torch.as_tensor(t["boxes"], device=rois.device).reshape(-1, 4).to(rois.dtype)
            gt = gt / scale
            labels = torch.as_tensor(t["labels"], device=rois.device).long().reshape(-1)
            st = soft_targets(rois[i], gt, labels, self.classes, self.overlap, self.joint)
            cls_terms.append(-(st * logp[i]).sum() / math.log(self.outputs))
            best, which = box_iou(rois[i], gt).max(1) if len(gt) else (rois.new_zeros(n), None)
            if fit is not None:
                goal = fitness_targets(best, self.overlap)
                fit_terms.append(F.nll_loss(fit[i], goal, reduction="sum") / math.log(BINS + 1))
            if deltas is not None and which is not None:
                valid = best > self.bbox_overlap
                box_terms.append(self._box_loss(deltas[i][valid], rois[i][valid], gt[which[valid]]))
        losses = {"loss_cls": self.cost_factor * torch.stack(cls_terms).sum() / (n * b)}
        if deltas is not None:
            total = torch.stack(box_terms).sum() if box_terms else deltas.sum() * 0.0
            losses["loss_box"] = self.bbox_factor * total / (n * b)
        if fit is not None:
            losses["loss_fit"] = self.indfit_factor * torch.stack(fit_terms).sum() / (n * b)
        return losses

    def _box_loss(self, deltas, rois, gt):
        if self.bounded:
            cost = bounded_iou_costs(decode(deltas, rois), gt)
            return F.smooth_l1_loss(cost, torch.zeros_like(cost), beta=1.0, reduction="sum")
        return F.smooth_l1_loss(deltas, encode(gt, rois), beta=1.0, reduction="sum")

    @staticmethod
    def _scale(images, like):
        h, w = images.shape[-2:]
        return like.new_tensor([w, h, w, h])

    def class_scores(self, logp, fit):
        """``(Pr(c), score(c))``, each ``[..., classes]``: the candidate test and the ranking."""
        if self.joint:
            pr_cf = logp[..., :-1].exp().unflatten(-1, (self.classes, BINS))
            return pr_cf.sum(-1), pr_cf @ fitness_values(self.overlap, logp)
        pr = logp[..., :-1].exp()
        if fit is None:
            return pr, pr
        v = torch.cat([fit.new_zeros(1), fitness_values(self.overlap, fit)])
        return pr, pr * (fit.exp() @ v)[..., None]

    @torch.no_grad()
    def detections(self, logp, deltas, fit, rois, counts, images):
        boxes = decode(deltas, rois) if deltas is not None else rois
        scale = self._scale(images, boxes)
        out = []
        for i in range(logp.shape[0]):
            n = int(counts[i])
            pr, score = self.class_scores(logp[i, :n], None if fit is None else fit[i, :n])
            idx, cls = (pr >= self.score).nonzero(as_tuple=True)
            bx, sc = boxes[i, idx], score[idx, cls]
            if 0 < self.nms < 1 and len(bx):
                # one class never suppresses another: move each class far from the others
                shifted = bx + cls.to(bx.dtype)[:, None] * (bx.abs().max() * 2 + 1)
                if self.soft:  # soft NMS rescores: its scores replace the candidates'
                    keep, kept = soft_nms(shifted, sc, self.nms, score_threshold=SOFT_NMS_FLOOR)
                else:
                    keep = denet_nms(shifted, sc, self.nms)
                    kept = sc[keep]
            else:
                keep = sc.argsort(descending=True)
                kept = sc[keep]
            out.append({"boxes": bx[keep] * scale, "scores": kept, "labels": cls[keep]})
        return out

    def extra_repr(self) -> str:
        tags = ", joint fitness" * self.joint + ", bounded IoU" * self.bounded
        return (
            f"classes={self.classes}{tags}, overlap={self.overlap:g}, "
            f"bbox_overlap={self.bbox_overlap:g}, cost_factor={self.cost_factor:g}, "
            f"bbox_factor={self.bbox_factor:g}, indfit_factor={self.indfit_factor:g}, "
            f"score={self.score:g}, nms={self.nms:g}, soft_nms={int(self.soft)}"
        )


class DetectionClassifierLayer(LayerDef):
    type = "DND"
    denet_name = "denet-detect"
    doc = (
        "DeNet's detection classifier over the RoIs of the DNS before it: soft multi-label "
        "classes + null, class-agnostic box deltas and (v2) fitness; in training adds "
        "`loss_cls`, `loss_box` and `loss_fit`; in evaluation returns one dict per image after "
        "DeNet's NMS or soft NMS."
    )
    task = "detection"
    tags = {
        "J": "joint fitness: 5 IoU bins per class, scored by expected fitness (v2)",
        "B": "bounded IoU box loss on the decoded box (v2)",
    }
    args = (
        Arg(
            "overlap_threshold",
            "float",
            0.5,
            min=0.0,
            max=0.99,
            doc="IoU above which a RoI is positive for a box's class (t0 of the fitness bins)",
        ),
        Arg("cost_factor", "float", 1.0, min=0.0, doc="weight of loss_cls"),
        Arg("bbox_factor", "float", 0.0, min=0.0, doc="weight of loss_box (0: no regression)"),
        Arg("indfit_factor", "float", 0.0, min=0.0, doc="weight of loss_fit (0: no fitness)"),
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
        Arg("nms", "float", 0.5, min=0.0, max=1.0, doc="NMS IoU (soft NMS: sigma); 0 or 1: none"),
        Arg("soft_nms", "bool", False, doc="DeNet's Gaussian soft NMS instead of its hard NMS"),
    )
    has_params = True

    def uses(self, call: Call):
        return [ROIS, COUNTS]

    def missing_message(self, call: Call, symbol: str) -> str:
        return "DND classifies the RoIs of a DNS layer: put DNS[...] before it"

    def losses(self, call: Call):
        a = call.args
        return (
            ("loss_cls",)
            + ("loss_box",) * (a["bbox_factor"] > 0)
            + ("loss_fit",) * (a["indfit_factor"] > 0)
        )

    def reads_images(self, call: Call) -> bool:
        return True

    def shape(self, call: Call):
        if call.classes is None:
            call.fail("DND needs the number of classes: compile with classes=N")
        a = call.args
        if "J" in call.tags and a["indfit_factor"] > 0:
            call.fail(
                "joint fitness (.J) and independent fitness (indfit_factor > 0) both score "
                "fitness: choose one",
                "indfit_factor",
            )
        if "B" in call.tags and a["bbox_factor"] == 0:
            call.fail("the bounded IoU loss (.B) needs box regression: bbox_factor > 0")
        return ShapeSpec(call.classes, form="detections")

    def build(self, call: Call):
        a = call.args
        assert call.classes is not None  # shape() refused a missing class count
        overlap = a["overlap_threshold"]
        return DetectionClassifier(
            call.input.channels,
            call.classes,
            overlap,
            overlap if a["bbox_overlap"] is None else a["bbox_overlap"],
            a["cost_factor"],
            a["bbox_factor"],
            a["indfit_factor"],
            joint="J" in call.tags,
            bounded="B" in call.tags,
            score=a["score"],
            nms=a["nms"],
            soft=a["soft_nms"],
        )
