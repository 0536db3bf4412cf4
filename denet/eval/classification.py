"""Classification: top-1 / top-5 accuracy and the mean test loss.

- ``top1``, ``top5``: fraction in [0, 1] of samples whose label is among the 1 / 5 highest
  probabilities (``topk_correct``; with fewer than 5 classes top-5 counts every sample).
- ``loss``: mean over samples of ``-log p[label]`` with ``p`` clamped at 1e-30 first, exactly
  the trainer's test loss (``-log(probs.gather(1, labels[:, None]).clamp_min(1e-30))``).
- ``samples``: number of samples seen.

With no samples the three rates are nan. Outputs are the model's probabilities ``[B, K]``;
``targets[i]["label"]`` is an int or 0-d tensor, mapped through ``label_map`` (dataset label ->
model label) when one is given. A test set padded with repeats for distributed evaluation
counts the repeats, as the trainer does.
"""

from __future__ import annotations

import math

import torch

from .base import Evaluator
from .topk import topk_correct


class TopKEvaluator(Evaluator):
    primary = "top1"

    def __init__(self, label_map=None, classes=None, num_classes=None):
        """``classes``/``num_classes`` are accepted so every task takes the same keywords; they
        are not needed (the probabilities say how many classes there are)."""
        self.label_map = (
            None
            if label_map is None
            else torch.as_tensor(label_map, dtype=torch.int64).detach().cpu()
        )
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.top1, self.top5, self.n = 0.0, 0, 0, 0

    def update(self, outputs, targets) -> None:
        probs = outputs.detach()
        if probs.dim() != 2:
            raise ValueError(
                f"classification outputs must be [B, classes] probabilities, got "
                f"shape {tuple(probs.shape)}"
            )
        labels = torch.tensor([int(t["label"]) for t in list(targets)], dtype=torch.int64)
        if labels.numel() != probs.shape[0]:
            raise ValueError(f"{labels.numel()} targets for {probs.shape[0]} outputs")
        if self.label_map is not None:
            labels = self.label_map[labels]
        labels = labels.to(probs.device)
        p = probs.gather(1, labels[:, None]).clamp_min(1e-30)
        self.loss_sum += float(-torch.log(p).sum())
        c1, c5 = topk_correct(probs, labels, (1, 5))
        self.top1, self.top5, self.n = self.top1 + c1, self.top5 + c5, self.n + len(labels)

    def merge(self, other: Evaluator) -> None:
        self._check_mergeable(other)
        assert isinstance(other, TopKEvaluator)
        self.loss_sum += other.loss_sum
        self.top1, self.top5, self.n = (
            self.top1 + other.top1,
            self.top5 + other.top5,
            self.n + other.n,
        )

    def compute(self) -> dict[str, float]:
        n = self.n
        nan = math.nan
        return {
            "top1": self.top1 / n if n else nan,
            "top5": self.top5 / n if n else nan,
            "loss": self.loss_sum / n if n else nan,
            "samples": float(n),
        }

    def summary(self) -> str:
        m = self.compute()
        return (
            f"top-1 {100 * m['top1']:.2f}%  top-5 {100 * m['top5']:.2f}%  "
            f"loss {m['loss']:.4f}  ({self.n} samples)"
        )
