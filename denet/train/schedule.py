"""Learning-rate schedules (``--learn-schedule``).

``anneal`` (the default) is DeNet's: after epoch ``e`` (0-based) the rate is multiplied by
``--learn-anneal`` if ``e + 1`` is in ``--learn-anneal-epochs``, or after every epoch when that
list is empty. The rate of an epoch is therefore a function of the epoch alone, which is what
makes ``--resume`` exact.

``poly`` is DeepLab's and DRN's ``lr * (1 - it / max_it) ** 0.9``, per optimizer step
(:class:`PolySchedule`).

Both set each parameter group's rate to the schedule's rate times the group's ``lr_mult`` (the
layer's ``lr=`` multiplier of the description string)."""

from __future__ import annotations

from ..errors import DenetError


class AnnealSchedule:
    """``lr(epoch) = base_lr * anneal ** (number of annealings before epoch)``."""

    per_step = False

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


POLY_POWER = 0.9


class PolySchedule:
    """DeepLab's and DRN's ``poly`` rate, ``lr = base_lr * (1 - it / max_it) ** 0.9``, taken per
    optimizer step (DeepLab's choice): ``it`` counts the optimizer steps before the current
    one (0 for the first step of the run) and ``max_it`` is the run's number of steps,
    ``--epochs`` times the steps of one epoch. DRN evaluated the same curve once per epoch
    (``it / max_it = epoch / epochs``); per step the rate falls smoothly to ``base_lr *
    (1 / max_it) ** 0.9`` at the last step instead of staying flat for an epoch.

    The rate is a function of the step count alone, which the checkpoint saves, so ``--resume``
    with the same ``--epochs`` continues the curve exactly; a larger ``--epochs`` stretches the
    rest of the curve (``max_it`` grows)."""

    per_step = True

    def __init__(self, base_lr: float, max_iterations: int, power: float = POLY_POWER):
        if base_lr < 0:
            raise DenetError(f"--learn-rate must be >= 0, not {base_lr}")
        if int(max_iterations) < 1:
            raise DenetError("--learn-schedule poly needs at least one optimizer step")
        self.base_lr = float(base_lr)
        self.max_iterations = int(max_iterations)
        self.power = float(power)

    def lr(self, iteration: int) -> float:
        """The learning rate of optimizer step ``iteration`` (0-based over the whole run)."""
        frac = min(max(int(iteration), 0), self.max_iterations) / self.max_iterations
        return self.base_lr * (1.0 - frac) ** self.power

    def apply(self, optimizer, iteration: int) -> float:
        """Set every group's rate to ``lr(iteration) * lr_mult`` (the layer's multiplier)."""
        lr = self.lr(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr

    def state_dict(self) -> dict:
        return {
            "kind": "poly",
            "base_lr": self.base_lr,
            "max_iterations": self.max_iterations,
            "power": self.power,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> PolySchedule:
        return cls(state["base_lr"], state["max_iterations"], state["power"])


SCHEDULES = ("anneal", "poly")
