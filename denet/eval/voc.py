"""Detection: Pascal VOC mean average precision, as py-faster-rcnn's ``voc_eval.py``.

Per class, over all images: detections are sorted by score (descending; a stable sort, so ties
keep the model's order - the devkit's unstable ``argsort`` leaves them undefined) and each is
matched to the ground-truth box of its image and class with the highest IoU. IoU above 0.5
(strictly, as ``voc_eval.py``'s ``ovmax > ovthresh``) with a not yet matched box is a true
positive; with an already matched box, or IoU <= 0.5, a false positive. A detection whose best
box is ``difficult`` is neither, and difficult boxes do not count in the number of positives.
Then recall = TP / positives, precision = TP / (TP + FP) along the ranking and

- ``metric="voc07"`` (``use_07_metric=True``): the VOC2007 11-point AP, the mean over
  t = 0, 0.1, ..., 1 (``np.arange(0, 1.1, 0.1)``, as the devkit) of the highest precision at
  recall >= t;
- ``metric="voc12"``: VOC2010+'s area under the precision envelope (precision made monotone
  from the right, integrated over the recall steps).

Metrics: ``mAP`` and ``AP_<class name>`` per class. A class without (non-difficult) ground
truth has AP nan (the devkit divides by zero there) and is left out of the mean; ``mAP`` is nan
when no class has ground truth.

IoU is computed in continuous coordinates: width = x2 - x1. The original devkit and
``voc_eval.py`` treat boxes as inclusive pixel indices, width = x2 - x1 + 1; ``plus_one=True``
does that, to reproduce their numbers. Boxes of predictions and targets are mapped back to
original pixels with ``(v - offset) / scale`` when the targets' geometry is finite (IoU itself
does not change under that map unless ``plus_one``). Outputs/targets are read as by the COCO
evaluator (``boxes`` xyxy, ``scores``, ``labels``; targets ``boxes``, ``labels``, optional
``difficult``); an ``image_id`` seen twice counts once (the first occurrence).
"""

from __future__ import annotations

import math

import numpy as np

from .base import Evaluator, finite_geometry, per_image
from .coco import _np, _unmap_xy


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from the recall/precision arrays along the ranking (devkit ``voc_ap``)."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            hit = rec >= t
            ap += (float(np.max(prec[hit])) if hit.any() else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def box_iou(a: np.ndarray, b: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """IoU ``[len(a), len(b)]`` of xyxy boxes; ``plus_one`` uses inclusive pixel widths."""
    e = 1.0 if plus_one else 0.0
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + e
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + e
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    area_a = (a[:, 2] - a[:, 0] + e) * (a[:, 3] - a[:, 1] + e)
    area_b = (b[:, 2] - b[:, 0] + e) * (b[:, 3] - b[:, 1] + e)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


class VocEvaluator(Evaluator):
    primary = "mAP"

    def __init__(
        self, classes=None, num_classes=None, use_07_metric=False, plus_one=False, iou_threshold=0.5
    ):
        if classes is None:
            if num_classes is None:
                raise ValueError("VocEvaluator needs classes or num_classes")
            classes = [str(i) for i in range(int(num_classes))]
        elif num_classes is not None and len(classes) != int(num_classes):
            raise ValueError(f"{len(classes)} classes but num_classes={num_classes}")
        self.classes = [str(c) for c in classes]
        self.use_07_metric, self.plus_one = bool(use_07_metric), bool(plus_one)
        self.iou_threshold = float(iou_threshold)
        self.reset()

    def reset(self) -> None:
        self.records: list[dict] = []

    def update(self, outputs, targets) -> None:
        for out, tgt in per_image(outputs, targets):
            geom = finite_geometry(tgt)
            labels = _np(tgt["labels"], np.int64).reshape(-1)
            rec = {
                "image_id": int(tgt["image_id"]) if "image_id" in tgt else None,
                "boxes": _unmap_xy(_np(out["boxes"], np.float64).reshape(-1, 4), geom),
                "scores": _np(out["scores"], np.float64).reshape(-1),
                "labels": _np(out["labels"], np.int64).reshape(-1),
                "gt_boxes": _unmap_xy(_np(tgt["boxes"], np.float64).reshape(-1, 4), geom),
                "gt_labels": labels,
                "gt_difficult": _np(tgt["difficult"], bool).reshape(-1)
                if "difficult" in tgt
                else np.zeros(len(labels), bool),
            }
            if not len(rec["boxes"]) == len(rec["scores"]) == len(rec["labels"]):
                raise ValueError("outputs' boxes, scores and labels differ in length")
            for key in ("labels", "gt_labels"):
                bad = rec[key][(rec[key] < 0) | (rec[key] >= len(self.classes))]
                if len(bad):
                    raise ValueError(f"label {int(bad[0])} outside the {len(self.classes)} classes")
            if len(rec["gt_difficult"]) != len(labels):
                raise ValueError("targets' difficult and labels differ in length")
            self.records.append(rec)

    def merge(self, other: Evaluator) -> None:
        self._check_mergeable(other, "classes", "use_07_metric", "plus_one", "iou_threshold")
        assert isinstance(other, VocEvaluator)
        self.records.extend(other.records)

    def _unique(self) -> list[dict]:
        seen, out = set(), []
        for r in self.records:
            if r["image_id"] is None or r["image_id"] not in seen:
                seen.add(r["image_id"])
                out.append(r)
        return out

    def _match(self, boxes, gt_boxes, difficult):
        """TP/FP flags of one image's detections of one class, in descending score order."""
        nd = len(boxes)
        tp, fp = np.zeros(nd), np.zeros(nd)
        ious = box_iou(boxes, gt_boxes, self.plus_one) if len(gt_boxes) else None
        taken = np.zeros(len(gt_boxes), bool)
        for k in range(nd):
            if ious is None:
                fp[k] = 1
                continue
            j = int(np.argmax(ious[k]))
            if ious[k, j] > self.iou_threshold:
                if not difficult[j]:
                    if not taken[j]:
                        tp[k], taken[j] = 1, True
                    else:
                        fp[k] = 1
            else:
                fp[k] = 1
        return tp, fp

    def _aps(self, records) -> list[float]:
        """AP of every class: TP/FP flags are found image by image (matching only looks at one
        image's boxes), then ranked together by score."""
        k = len(self.classes)
        npos = np.zeros(k, np.int64)
        scores, tps, fps = ([[] for _ in range(k)] for _ in range(3))
        for r in records:
            npos += np.bincount(r["gt_labels"][~r["gt_difficult"]], minlength=k)
            for c in np.unique(r["labels"]).tolist():
                d, g = r["labels"] == c, r["gt_labels"] == c
                order = np.argsort(-r["scores"][d], kind="stable")
                tp, fp = self._match(r["boxes"][d][order], r["gt_boxes"][g], r["gt_difficult"][g])
                scores[c].append(r["scores"][d][order])
                tps[c].append(tp)
                fps[c].append(fp)
        aps = []
        for c in range(k):
            if npos[c] == 0:
                aps.append(math.nan)
                continue
            if not scores[c]:
                aps.append(0.0)
                continue
            order = np.argsort(-np.concatenate(scores[c]), kind="stable")
            tp = np.cumsum(np.concatenate(tps[c])[order])
            fp = np.cumsum(np.concatenate(fps[c])[order])
            rec = tp / float(npos[c])
            prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
            aps.append(voc_ap(rec, prec, self.use_07_metric))
        return aps

    def compute(self) -> dict[str, float]:
        aps = self._aps(self._unique())
        valid = [a for a in aps if not math.isnan(a)]
        out = {"mAP": float(np.mean(valid)) if valid else math.nan}
        out.update({f"AP_{name}": float(a) for name, a in zip(self.classes, aps)})
        return out

    def summary(self) -> str:
        kind = "VOC07 11-point" if self.use_07_metric else "VOC2010+ area"
        return f"mAP {self.compute()['mAP']:.3f} ({kind}, {len(self._unique())} images)"
