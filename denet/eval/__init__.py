"""Evaluation: one ``Evaluator`` per task, chosen with ``make_evaluator``.

====================  =====================  ==========================================
task                  evaluator              primary metric / other keys
====================  =====================  ==========================================
classification        ``TopKEvaluator``      ``top1``; ``top5``, ``loss``, ``samples``
detection (coco)      ``CocoEvaluator``      ``AP``; ``AP50`` ... ``ARl`` (pycocotools)
detection (voc07/12)  ``VocEvaluator``       ``mAP``; ``AP_<class>``
segmentation          ``MIoUEvaluator``      ``mIoU``; ``pixel_acc``, ``mean_acc``,
                                             ``fwIoU``, ``IoU_<k>``
====================  =====================  ==========================================
"""

from __future__ import annotations

from .base import Evaluator, merge_across_ranks
from .classification import TopKEvaluator
from .coco import CocoEvaluator
from .segmentation import MIoUEvaluator
from .voc import VocEvaluator

TASKS = ("classification", "detection", "segmentation")
DETECTION_METRICS = ("coco", "voc07", "voc12")


def make_evaluator(task: str, **kwargs) -> Evaluator:
    """The evaluator of ``task``.

    - ``classification``: ``label_map`` (dataset label -> model label), optional.
    - ``detection``: ``metric`` = ``"coco"`` (default), ``"voc07"`` or ``"voc12"``; ``classes``
      (names) or ``num_classes``; for coco also ``coco_gt`` (a pycocotools COCO or an
      annotation-file path; then classes may be left out) and ``category_ids``; for voc also
      ``plus_one`` and ``iou_threshold``.
    - ``segmentation``: ``num_classes`` (or ``classes``), ``ignore_index`` (255).

    ``classes`` and ``num_classes`` are accepted by every task. Unknown keywords are a
    TypeError, an unknown task or metric a ValueError.
    """
    if task == "classification":
        return TopKEvaluator(**kwargs)
    if task == "detection":
        metric = kwargs.pop("metric", "coco") or "coco"
        if metric == "coco":
            return CocoEvaluator(**kwargs)
        if metric in ("voc07", "voc12"):
            return VocEvaluator(use_07_metric=metric == "voc07", **kwargs)
        raise ValueError(
            f"unknown detection metric {metric!r}; use one of {', '.join(DETECTION_METRICS)}"
        )
    if task == "segmentation":
        return MIoUEvaluator(**kwargs)
    raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")


__all__ = [
    "Evaluator",
    "TopKEvaluator",
    "CocoEvaluator",
    "VocEvaluator",
    "MIoUEvaluator",
    "make_evaluator",
    "merge_across_ranks",
]
