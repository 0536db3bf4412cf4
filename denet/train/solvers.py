"""DeNet's three solvers (``--solver sgd | nesterov | torch | adam``), update rules as in DeNet's
``ModelCNN.build_train_func``. In every rule the L2 decay of a parameter group is first added to
the gradient, ``g <- g + decay * p``; :meth:`denet.Model.param_groups` gives decay only to
conv / linear weights, as DeNet did (never to biases or batch-norm parameters).

``sgd`` (:class:`DenetSGD`), an exponential moving average of the gradient::

    rho = momentum if step > 0 else 0
    m   <- rho * m + (1 - rho) * g
    p   <- p - lr * m

``nesterov`` (alias ``torch``)::

    m <- mu * m + g          (m = g at the first step)
    p <- p - lr * (g + mu * m)

which is exactly ``torch.optim.SGD(momentum=mu, nesterov=True)`` (plain SGD when mu = 0).

``adam``: bias-corrected Adam with ``betas = (momentum[0], momentum[1])`` and ``eps = 1e-8``
and the decay added to g (L2, not AdamW), which is exactly ``torch.optim.Adam``.

``--learn-momentum`` is DeNet's list: index 0 is the momentum of ``sgd``/``nesterov``; ``adam``
takes two values ``[beta1, beta2]`` (DeNet's default ``[0.0, 0.0]``).
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from ..errors import DenetError

SOLVERS = ("sgd", "nesterov", "torch", "adam")
ADAM_EPS = 1e-8


class DenetSGD(Optimizer):
    """DeNet's ``sgd``: EMA momentum ``m <- rho m + (1 - rho) g`` with ``rho = 0`` at the first
    step, then ``p <- p - lr m``. Per-parameter state: ``momentum_buffer`` and ``step``."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, not {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), not {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, not {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, rho0, decay = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if decay != 0:
                    g = g.add(p, alpha=decay)
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
                m = state["momentum_buffer"]
                rho = rho0 if state["step"].item() > 0 else 0.0
                m.mul_(rho).add_(g, alpha=1.0 - rho)
                p.add_(m, alpha=-lr)
                state["step"] += 1
        return loss


def check_solver_args(solver: str, momentum, lr: float, weight_decay: float) -> list[float]:
    """Validate ``--solver``, ``--learn-momentum``, ``--learn-rate`` and ``--learn-decay``;
    returns the momentum list as floats."""
    momentum = [float(m) for m in (momentum if isinstance(momentum, (list, tuple)) else [momentum])]
    if solver not in SOLVERS:
        raise DenetError(
            f"--solver: unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}"
        )
    if not momentum:
        raise DenetError("--learn-momentum needs at least one value")
    if lr < 0:
        raise DenetError(f"--learn-rate must be >= 0, not {lr}")
    if weight_decay < 0:
        raise DenetError(f"--learn-decay must be >= 0, not {weight_decay}")
    for m in momentum:
        if not 0.0 <= m < 1.0:
            raise DenetError(f"--learn-momentum: {m} must lie in [0, 1)")
    if solver == "adam":
        if len(momentum) != 2:
            raise DenetError(
                f"--learn-momentum: adam needs two values, beta1 beta2 (got {len(momentum)})"
            )
    elif len(momentum) > 2:
        raise DenetError(
            f"--learn-momentum: {solver} uses one value (the first); give at most "
            "two as DeNet's default [0.0, 0.0] does"
        )
    return momentum


def make_optimizer(
    solver: str, param_groups, lr: float, momentum, weight_decay: float = 0.0
) -> Optimizer:
    """The optimizer for ``--solver``. ``param_groups`` come from ``Model.param_groups`` (each
    with its own ``lr`` and ``weight_decay``); ``momentum`` is ``--learn-momentum`` (a list)."""
    momentum = check_solver_args(solver, momentum, lr, weight_decay)
    groups = list(param_groups)
    if not groups:
        raise DenetError("the model has no trainable parameters")
    if solver == "sgd":
        return DenetSGD(groups, lr=lr, momentum=momentum[0], weight_decay=weight_decay)
    if solver in ("nesterov", "torch"):
        mu = momentum[0]
        return torch.optim.SGD(
            groups, lr=lr, momentum=mu, nesterov=mu > 0, dampening=0.0, weight_decay=weight_decay
        )
    return torch.optim.Adam(
        groups,
        lr=lr,
        betas=(momentum[0], momentum[1]),
        eps=ADAM_EPS,
        weight_decay=weight_decay,
        foreach=False,
    )
