"""Segmentation: intersection over union from a confusion matrix of pixels.

``confusion[g, p]`` counts pixels of ground-truth class g predicted as p (int64, accumulated
with ``torch.bincount``). Pixels labelled ``ignore_index`` (255) are skipped, and so are labels
outside ``0..K-1``, as DRN's ``fast_hist`` and torchvision's reference ``ConfusionMatrix`` do.

- ``IoU_<k>`` = TP / (TP + FP + FN) of class k: nan when class k is neither in the ground truth
  nor predicted (union 0);
- ``mIoU``: mean of IoU over the classes whose union is > 0 (DRN's ``nanmean``; torchvision's
  reference averages all K and gives nan if any class never occurs);
- ``pixel_acc``: correct pixels / labelled pixels;
- ``mean_acc``: mean over the classes present in the ground truth of TP / (TP + FN);
- ``fwIoU``: sum over classes of (ground-truth pixels of k / labelled pixels) * IoU_k.

All are nan with no labelled pixels.

Outputs: the model's dict of per-pixel logits with ``out`` first (torchvision's convention;
``out`` is read, auxiliary heads are ignored) or the ``[B, K, h, w]`` tensor itself. Targets:
``mask`` int ``[H, W]`` per image. The batch's images are zero-padded at the bottom/right to the
largest H, W in the batch, and that padded size is taken to be the largest mask H, W: logits of
another size are first resized bilinearly (``align_corners=False``) to it, then each image's
logits are cropped from the top-left to its own mask before the argmax. (Masks collated into
one tensor are padded with 255, which gives the same counts.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Evaluator


class MIoUEvaluator(Evaluator):
    primary = "mIoU"

    def __init__(self, num_classes=None, ignore_index=255, classes=None):
        if num_classes is None:
            if classes is None:
                raise ValueError("MIoUEvaluator needs num_classes or classes")
            num_classes = len(classes)
        elif classes is not None and len(classes) != int(num_classes):
            raise ValueError(f"{len(classes)} classes but num_classes={num_classes}")
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.reset()

    def reset(self) -> None:
        k = self.num_classes
        self.confusion = torch.zeros(k, k, dtype=torch.int64)

    def update(self, outputs, targets) -> None:
        logits = outputs["out"] if isinstance(outputs, dict) else outputs
        logits = logits.detach()
        masks = [torch.as_tensor(t["mask"]) for t in list(targets)]
        k = self.num_classes
        if logits.dim() != 4 or logits.shape[1] != k:
            raise ValueError(
                f"segmentation logits must be [B, {k}, h, w], got shape {tuple(logits.shape)}"
            )
        if len(masks) != logits.shape[0]:
            raise ValueError(f"{len(masks)} masks for {logits.shape[0]} outputs")
        if not masks:
            return
        size = (max(m.shape[-2] for m in masks), max(m.shape[-1] for m in masks))
        if tuple(logits.shape[-2:]) != size:
            if not logits.is_floating_point():
                logits = logits.float()
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        pred = logits.argmax(1)  # [B, H, W]
        counts = torch.zeros(k * k, dtype=torch.int64, device=pred.device)
        for i, mask in enumerate(masks):
            h, w = mask.shape[-2:]
            gt = mask.reshape(h, w).to(pred.device, torch.int64)
            p = pred[i, :h, :w]
            valid = (gt >= 0) & (gt < k) & (gt != self.ignore_index)
            counts += torch.bincount(gt[valid] * k + p[valid], minlength=k * k)
        self.confusion += counts.cpu().reshape(k, k)

    def merge(self, other: Evaluator) -> None:
        self._check_mergeable(other, "num_classes", "ignore_index")
        assert isinstance(other, MIoUEvaluator)
        self.confusion += other.confusion

    def compute(self) -> dict[str, float]:
        cm = self.confusion.double()
        tp, gt, pr = cm.diag(), cm.sum(1), cm.sum(0)
        total = float(cm.sum())
        union = gt + pr - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))
        present = union > 0
        has_gt = gt > 0
        nan = math.nan
        out = {
            "mIoU": float(iou[present].mean()) if present.any() else nan,
            "pixel_acc": float(tp.sum()) / total if total else nan,
            "mean_acc": float((tp[has_gt] / gt[has_gt]).mean()) if has_gt.any() else nan,
            "fwIoU": float((gt[has_gt] / total * iou[has_gt]).sum()) if total else nan,
        }
        out.update({f"IoU_{c}": float(v) for c, v in enumerate(iou.tolist())})
        return out

    def summary(self) -> str:
        m = self.compute()
        return (
            f"mIoU {100 * m['mIoU']:.1f}%  pixel acc {100 * m['pixel_acc']:.1f}%  "
            f"mean acc {100 * m['mean_acc']:.1f}%"
        )
