"""Matching boxes to ground truth and balanced sampling: the two training rules every R-CNN head
shares (torchvision's ``Matcher`` and ``BalancedPositiveNegativeSampler``, Detectron's
``fast_rcnn`` / ``rpn`` target rules).

* :func:`match`: each box takes the ground-truth box it overlaps most; IoU below ``low`` is
  background (-1), between ``low`` and ``high`` ignored (-2); with ``low_quality`` every
  ground-truth box also keeps the boxes it overlaps most (ties included), as the RPN needs.
* :func:`balanced_sample`: at most ``batch`` boxes per image, ``positive`` of them foreground,
  chosen by ``torch.randperm`` in torchvision's order (positives first, then negatives), so a
  seeded run samples what torchvision's would.
"""

from __future__ import annotations

import torch

BACKGROUND, IGNORED = -1, -2


def match(iou: torch.Tensor, high: float, low: float, low_quality: bool = False) -> torch.Tensor:
    """``iou`` [G, N] (ground truth x boxes) -> [N] index of the matched ground-truth box, or
    ``BACKGROUND`` / ``IGNORED``."""
    best, matches = iou.max(0)
    keep = matches.clone() if low_quality else None
    matches[best < low] = BACKGROUND
    matches[(best >= low) & (best < high)] = IGNORED
    if keep is not None:
        # every ground-truth box keeps its best boxes, whatever their IoU
        highest = iou.max(1).values
        boxes = torch.where(iou == highest[:, None])[1]
        matches[boxes] = keep[boxes]
    return matches


def balanced_sample(labels: torch.Tensor, batch: int, positive: float):
    """``labels`` [N] (> 0 foreground, 0 background, < 0 ignored) -> boolean masks
    (positives, negatives) of the sampled boxes."""
    pos = torch.where(labels >= 1)[0]
    neg = torch.where(labels == 0)[0]
    n_pos = min(pos.numel(), int(batch * positive))
    n_neg = min(neg.numel(), batch - n_pos)
    pos = pos[torch.randperm(pos.numel(), device=pos.device)[:n_pos]]
    neg = neg[torch.randperm(neg.numel(), device=neg.device)[:n_neg]]
    pos_mask = torch.zeros_like(labels, dtype=torch.bool)
    neg_mask = torch.zeros_like(labels, dtype=torch.bool)
    pos_mask[pos] = True
    neg_mask[neg] = True
    return pos_mask, neg_mask
