"""Learning-rate schedules (``--learn-schedule``).

``anneal`` (the default) is DeNet's: after epoch ``e`` (0-based) the rate is multiplied by
``--learn-anneal`` if ``e + 1`` is in ``--learn-anneal-epochs``, or after every epoch when that
list is empty. The rate of an epoch is therefore a function of the epoch alone, which is what
makes ``--resume`` exact.

``poly`` is DeepLab's and DRN's ``lr * (1 - it / max_it) ** 0.9``, per optimizer step
(:class:`PolySchedule`).

``steps`` is Detectron's ``steps_with_decay``: the rate of optimizer step ``it`` (0-based over
the run) is ``lr * gamma ** (number of steps S <= it)`` (:class:`StepSchedule`); the steps are
written as iterations (``60000``) or epochs (``8e``, :func:`parse_iterations`), epochs becoming
``8 * steps per epoch`` iterations.

``--learn-warmup ITERS [FACTOR]`` (:class:`LinearWarmup`, Detectron's ``WARM_UP_METHOD
linear``) multiplies any of them by ``FACTOR * (1 - a) + a``, ``a = it / ITERS``, for the first
ITERS optimizer steps.

Every schedule answers ``rate(epoch, iteration)``, a function of the epoch and the optimizer
step count alone (both in the checkpoint), which is what makes ``--resume`` exact. The trainer
sets each parameter group's rate to that times the group's ``lr_mult`` (the layer's ``lr=``
multiplier of the description string, :func:`set_rate`)."""

from __future__ import annotations

import re

from ..errors import DenetError


def set_rate(optimizer, lr: float) -> float:
    """Set every parameter group's rate to ``lr * lr_mult`` (the layer's multiplier)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    return lr


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

    def rate(self, epoch: int, iteration: int) -> float:
        return self.lr(epoch)

    def apply(self, optimizer, epoch: int) -> float:
        """Set every group's rate to ``lr(epoch) * lr_mult`` (the layer's multiplier)."""
        return set_rate(optimizer, self.lr(epoch))

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

    def rate(self, epoch: int, iteration: int) -> float:
        return self.lr(iteration)

    def apply(self, optimizer, iteration: int) -> float:
        """Set every group's rate to ``lr(iteration) * lr_mult`` (the layer's multiplier)."""
        return set_rate(optimizer, self.lr(iteration))

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


_ITERATIONS = re.compile(r"(\d+)(e?)")


def parse_iterations(token, option: str) -> tuple[int, str]:
    """``"60000"`` -> ``(60000, "it")`` (optimizer steps), ``"8e"`` -> ``(8, "epochs")``; a
    DenetError naming ``option`` otherwise."""
    text = str(token).strip().lower()
    m = _ITERATIONS.fullmatch(text)
    if m is None:
        raise DenetError(
            f"{option}: {str(token)!r} is neither a number of iterations (an integer >= 0, "
            "optimizer steps) nor of epochs (an integer followed by e, like 8e)"
        )
    return int(m.group(1)), "epochs" if m.group(2) else "it"


def to_iterations(token, steps_per_epoch: int, option: str) -> int:
    """A :func:`parse_iterations` token as optimizer steps (epochs times the steps of one)."""
    value, unit = parse_iterations(token, option)
    return value * int(steps_per_epoch) if unit == "epochs" else value


def parse_steps(tokens) -> list[tuple[int, str]]:
    """``--learn-steps`` tokens, checked: each >= 1, all of one unit, increasing."""
    tokens = list(tokens)
    parsed = [parse_iterations(t, "--learn-steps") for t in tokens]
    if not parsed:
        raise DenetError(
            "--learn-schedule steps needs --learn-steps S1 S2 ... (iterations, or epochs as 8e)"
        )
    if any(v < 1 for v, _ in parsed):
        raise DenetError(
            "--learn-steps: steps count from 1 (the rate drops after that many iterations or "
            "epochs; Detectron's leading 0 is the start and is not written)"
        )
    if len({u for _, u in parsed}) > 1:
        raise DenetError("--learn-steps: write all steps in iterations or all in epochs (8e)")
    for (a, _), (b, _), ta, tb in zip(parsed, parsed[1:], tokens, tokens[1:]):
        if b <= a:
            raise DenetError(f"--learn-steps must increase: {tb} comes after {ta}")
    return parsed


def parse_warmup(tokens) -> tuple[int, str, float] | None:
    """``--learn-warmup ITERS [FACTOR]`` -> (amount, unit, factor), None when empty."""
    tokens = list(tokens)
    if not tokens:
        return None
    if len(tokens) > 2:
        raise DenetError(
            f"--learn-warmup takes ITERS [FACTOR], not {len(tokens)} values: "
            + " ".join(map(str, tokens))
        )
    value, unit = parse_iterations(tokens[0], "--learn-warmup")
    if value < 1:
        raise DenetError("--learn-warmup: the warm-up must last at least 1 iteration")
    factor = WARMUP_FACTOR
    if len(tokens) == 2:
        try:
            factor = float(tokens[1])
        except (TypeError, ValueError):
            raise DenetError(f"--learn-warmup: FACTOR {tokens[1]!r} is not a number") from None
        if not 0.0 <= factor <= 1.0:
            raise DenetError(f"--learn-warmup: FACTOR must be in [0, 1], not {tokens[1]}")
    return value, unit, factor


class StepSchedule:
    """Detectron's ``steps_with_decay``: ``lr = base_lr * gamma ** k`` where k is the number of
    steps ``S <= it`` and ``it`` counts the optimizer steps before the current one (0 for the
    run's first). So with steps ``[60000, 80000]`` steps 0..59999 run at ``base_lr``, steps
    60000..79999 at ``base_lr * gamma`` (Detectron's ``STEPS [0, 60000, 80000]``)."""

    per_step = True

    def __init__(self, base_lr: float, steps, gamma: float):
        if base_lr < 0:
            raise DenetError(f"--learn-rate must be >= 0, not {base_lr}")
        if gamma < 0:
            raise DenetError(f"--learn-anneal must be >= 0, not {gamma}")
        steps = [int(s) for s in steps]
        if any(b <= a for a, b in zip(steps, steps[1:])) or any(s < 1 for s in steps):
            raise DenetError(f"--learn-steps must be increasing iterations >= 1, not {steps}")
        self.base_lr, self.steps, self.gamma = float(base_lr), steps, float(gamma)

    def lr(self, iteration: int) -> float:
        lr = self.base_lr
        for s in self.steps:  # repeated products, as the anneal schedule computes them
            if s <= iteration:
                lr *= self.gamma
        return lr

    def rate(self, epoch: int, iteration: int) -> float:
        return self.lr(iteration)

    def apply(self, optimizer, iteration: int) -> float:
        return set_rate(optimizer, self.lr(iteration))

    def state_dict(self) -> dict:
        return {
            "kind": "steps",
            "base_lr": self.base_lr,
            "steps": list(self.steps),
            "gamma": self.gamma,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> StepSchedule:
        return cls(state["base_lr"], state["steps"], state["gamma"])


WARMUP_FACTOR = 1.0 / 3.0


class LinearWarmup:
    """Detectron's linear warm-up around any schedule: for ``it < iterations`` the rate is the
    schedule's times ``factor * (1 - a) + a`` with ``a = it / iterations``; from then on the
    schedule's own. The rate is set before every optimizer step."""

    per_step = True

    def __init__(self, schedule, iterations: int, factor: float = WARMUP_FACTOR):
        if int(iterations) < 1:
            raise DenetError("--learn-warmup: the warm-up must last at least 1 iteration")
        if not 0.0 <= float(factor) <= 1.0:
            raise DenetError(f"--learn-warmup: FACTOR must be in [0, 1], not {factor}")
        self.schedule, self.iterations, self.factor = schedule, int(iterations), float(factor)

    def multiplier(self, iteration: int) -> float:
        if iteration >= self.iterations:
            return 1.0
        a = max(int(iteration), 0) / self.iterations
        return self.factor * (1.0 - a) + a

    def rate(self, epoch: int, iteration: int) -> float:
        return self.schedule.rate(epoch, iteration) * self.multiplier(iteration)

    def state_dict(self) -> dict:
        return {
            "kind": "warmup",
            "iterations": self.iterations,
            "factor": self.factor,
            "schedule": self.schedule.state_dict(),
        }


SCHEDULES = ("anneal", "poly", "steps")
