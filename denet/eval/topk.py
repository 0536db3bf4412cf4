"""Top-k classification accuracy.

A sample counts as correct at k when its label is among the k highest scores. Ties are broken
as ``torch.topk`` breaks them. ``k`` larger than the number of classes counts every sample as
correct (every class is "in the top k"), so top-5 of a 3-class problem is 1.
"""

from __future__ import annotations

import torch


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of samples whose label is in the top ``k`` of ``scores`` ``[N, classes]``, per k."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, classes], got shape {tuple(scores.shape)}")
    labels = labels.reshape(-1).to(scores.device)
    if labels.numel() != scores.shape[0]:
        raise ValueError(f"{labels.numel()} labels for {scores.shape[0]} score rows")
    if scores.shape[0] == 0:
        return [0 for _ in ks]
    classes = scores.shape[1]
    kmax = min(max(ks), classes)
    top = scores.topk(kmax, dim=1).indices  # [N, kmax], best first
    hit = top.eq(labels[:, None])
    out = []
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        out.append(int(hit[:, : min(k, classes)].any(dim=1).sum().item()))
    return out


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[float]:
    """Fraction in [0, 1] of samples whose label is in the top ``k``, per k."""
    n = scores.shape[0]
    return [c / n if n else 0.0 for c in topk_correct(scores, labels, ks)]
