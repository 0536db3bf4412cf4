"""Weight initialisation as DeNet names it (``--weight-init``).

``he-backward`` (the default) draws from N(0, sqrt(2 / (kh*kw*out))), ``he-forward`` uses the
input channels instead; ``xavier-*`` uses 1 instead of 2. A ``uniform`` word draws from
U(-b, b) with the same b (DeNet's convention, not a variance-matched bound). A number is the
standard deviation itself; 0 gives zeros. Words may be joined by ``-`` or ``,``:
``xavier-forward-uniform`` and ``uniform,xavier-forward`` are the same.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WeightInit:
    rule: str | None = "he"  # he | xavier | None (fixed std)
    direction: str = "backward"  # forward (fan-in) | backward (fan-out)
    uniform: bool = False
    std: float | None = None  # set for a fixed std
    text: str = "he-backward"

    def bound(self, fan_in: int, fan_out: int) -> float:
        if self.std is not None:
            return self.std
        gain = 2.0 if self.rule == "he" else 1.0
        fan = fan_in if self.direction == "forward" else fan_out
        return math.sqrt(gain / fan)

    @torch.no_grad()
    def apply(self, weight: torch.Tensor, fan_in: int, fan_out: int) -> None:
        b = self.bound(fan_in, fan_out)
        if b == 0:
            weight.zero_()
        elif self.uniform:
            weight.uniform_(-b, b)
        else:
            weight.normal_(0.0, b)


def parse_weight_init(value) -> WeightInit:
    """``"he-backward"``, ``"xavier-forward-uniform"``, ``0.01`` ... -> :class:`WeightInit`.
    Raises ``ValueError`` naming what is wrong."""
    if isinstance(value, WeightInit):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a weight-init std must be a finite number >= 0, not {value}")
        return WeightInit(None, "backward", False, float(value), f"{float(value)!r}")
    if not isinstance(value, str):
        raise ValueError(f"unknown weight init {value!r}")
    try:
        std = float(value)  # "0.01"; also "nan" and "inf", refused as numbers
    except ValueError:
        pass
    else:
        return parse_weight_init(std)
    words = [w for w in re.split(r"[-,\s]+", value.strip().lower()) if w]
    rules = [w for w in words if w in ("he", "xavier")]
    dirs = [w for w in words if w in ("forward", "backward")]
    dists = [w for w in words if w in ("uniform", "normal")]
    other = [
        w for w in words if w not in ("he", "xavier", "forward", "backward", "uniform", "normal")
    ]
    if other or len(rules) != 1 or len(dirs) != 1 or len(dists) > 1:
        raise ValueError(
            f"unknown weight init {value!r}: expected he|xavier, forward|backward "
            f"and optionally uniform|normal (e.g. he-backward, xavier-forward-uniform)"
            f", or a std such as 0.01"
        )
    uniform = bool(dists) and dists[0] == "uniform"
    text = f"{rules[0]}-{dirs[0]}" + ("-uniform" if uniform else "")
    return WeightInit(rules[0], dirs[0], uniform, None, text)


def init_conv(
    conv: torch.nn.modules.conv._ConvNd, init: WeightInit, transposed: bool = False
) -> None:
    """Initialise a conv (or transposed conv) weight the DeNet way; zero its bias."""
    w = conv.weight
    k = w.shape[2] * w.shape[3]
    groups = getattr(conv, "groups", 1)
    if transposed:  # weight is (in, out/groups, kh, kw)
        fan_in, fan_out = w.shape[0] // groups * k, w.shape[1] * groups * k
    else:  # weight is (out, in/groups, kh, kw); DeNet's fan-out is out*kh*kw
        fan_in, fan_out = w.shape[1] * k, w.shape[0] * k
    init.apply(w, fan_in, fan_out)
    if conv.bias is not None:
        with torch.no_grad():
            conv.bias.zero_()
