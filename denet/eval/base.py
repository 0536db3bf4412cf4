"""The interface every evaluator shares, so a trainer or a prediction tool can score any task.

An evaluator accumulates per-batch state with ``update(outputs, targets)`` and turns it into
named metrics with ``compute()``:

- ``outputs`` is what the model returns in evaluation mode for the batch;
- ``targets`` is a list of per-image dicts, as the datasets yield them and ``collate`` batches
  them.

State is CPU tensors, numpy arrays and python numbers only, so an evaluator pickles; after
``torch.distributed.all_gather_object`` each rank's evaluator can be folded into one with
``merge`` (``merge_across_ranks`` does both steps). ``compute()`` returns plain python floats;
a metric is ``float('nan')`` only when it is undefined (no samples, no ground truth for it).
"""

from __future__ import annotations

import abc
import math

import torch


class Evaluator(abc.ABC):
    """Accumulates one task's predictions and ground truth; see the module docstring."""

    primary: str = ""  # key of the headline metric in compute()

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget everything accumulated."""

    @abc.abstractmethod
    def update(self, outputs, targets) -> None:
        """Add one batch: the model's eval-mode ``outputs`` and the batch's ``targets``."""

    @abc.abstractmethod
    def merge(self, other: Evaluator) -> None:
        """Add ``other``'s accumulated state (an evaluator of the same kind and settings)."""

    @abc.abstractmethod
    def compute(self) -> dict[str, float]:
        """Named metrics as python floats (``nan`` where undefined)."""

    def summary(self) -> str:
        """One line for people; subclasses print their usual form."""
        m = self.compute()
        return f"{self.primary} {m[self.primary]:.4f}"

    def _check_mergeable(self, other, *fields) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for f in fields:
            a, b = getattr(self, f), getattr(other, f)
            same = (
                torch.equal(a, b)
                if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                else a == b
            )
            if not same:
                raise ValueError(
                    f"cannot merge {type(self).__name__}s with different {f}: {a!r} and {b!r}"
                )


def per_image(outputs, targets) -> list[tuple]:
    """``(output, target)`` for every image of a detector's batch; the counts must agree."""
    outputs, targets = list(outputs), list(targets)
    if len(outputs) != len(targets):
        raise ValueError(f"{len(outputs)} outputs for {len(targets)} targets")
    return list(zip(outputs, targets))


def finite_geometry(target) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(scale, offset)`` as float64 ``[2]`` (x, y) when the target has both, finite and with a
    non-zero scale; else None (no geometry, or a rotation, for which they are NaN)."""
    if "scale" not in target or "offset" not in target:
        return None
    scale = torch.as_tensor(target["scale"], dtype=torch.float64).reshape(-1).cpu()
    offset = torch.as_tensor(target["offset"], dtype=torch.float64).reshape(-1).cpu()
    if scale.numel() != 2 or offset.numel() != 2:
        return None
    if not (torch.isfinite(scale).all() and torch.isfinite(offset).all()) or (scale == 0).any():
        return None
    return scale, offset


def nan_if_negative(value) -> float:
    """pycocotools writes -1 for an undefined average; report it as nan."""
    v = float(value)
    return float("nan") if v < 0 or math.isnan(v) else v


def merge_across_ranks(evaluator: Evaluator) -> Evaluator:
    """Gather every rank's evaluator with ``all_gather_object`` and merge the other ranks' state
    into ``evaluator`` (whose own state is kept as is), so each rank holds the total. A no-op
    outside an initialised process group. Call it on every rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return evaluator
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, evaluator)
    rank = dist.get_rank()
    for r, other in enumerate(gathered):
        if r != rank:
            evaluator.merge(other)
    return evaluator
