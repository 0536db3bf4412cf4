"""DeNet's learning-rate schedule: after epoch ``e`` (0-based) the rate is multiplied by
``--learn-anneal`` if ``e + 1`` is in ``--learn-anneal-epochs``, or after every epoch when that
list is empty. The rate of an epoch is therefore a function of the epoch alone, which is what
makes ``--resume`` exact."""

from __future__ import annotations

from ..errors import DenetError


class AnnealSchedule:
    """``lr(epoch) = base_lr * anneal ** (number of annealings before epoch)``."""

    def __init__(self, base_lr: float, anneal: float = 1.0, anneal_epochs=()):
        if base_lr < 0:
            raise DenetError(f"--learn-rate must be >= 0, not {base_lr}")
        if anneal < 0:
            raise DenetError(f"--learn-anneal must be >= 0, not {anneal}")
        epochs = [int(e) for e in anneal_epochs]
        if any(e < 1 for e in epochs):
            raise DenetError(
                "--learn-anneal-epochs: epochs are counted from 1 (the rate drops "
                "after that many epochs)"
            )
        self.base_lr = float(base_lr)
        self.anneal = float(anneal)
        self.anneal_epochs = sorted(set(epochs))

    def annealings_before(self, epoch: int) -> int:
        """How many times the rate has been annealed when epoch ``epoch`` starts."""
        if not self.anneal_epochs:
            return max(0, int(epoch))
        return sum(1 for e in self.anneal_epochs if e <= epoch)

    def lr(self, epoch: int) -> float:
        """The learning rate used during epoch ``epoch`` (0-based)."""
        lr = self.base_lr
        for _ in range(self.annealings_before(epoch)):  # repeated products, as DeNet computed it
            lr *= self.anneal
        return lr

    def apply(self, optimizer, epoch: int) -> float:
        """Set every group's rate to ``lr(epoch) * lr_mult`` (the layer's multiplier)."""
        lr = self.lr(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr

    def state_dict(self) -> dict:
        return {
            "base_lr": self.base_lr,
            "anneal": self.anneal,
            "anneal_epochs": list(self.anneal_epochs),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> AnnealSchedule:
        return cls(state["base_lr"], state["anneal"], state["anneal_epochs"])
