"""``ShapeSpec``: what the compiler knows about a tensor before any data flows."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class ShapeSpec:
    """Shape of one feature map, batch dimension excluded.

    ``stride`` is the distance in input pixels between two neighbouring positions of this map
    (1 for the input, 2 after a stride-2 conv, 1/2 after ``PI[2]``), so RoI operators can derive
    ``spatial_scale = 1 / stride``. ``height``/``width`` are None for outputs that are no longer
    maps (a vector of class probabilities).
    """

    channels: int
    height: int | None = None
    width: int | None = None
    stride: Fraction = Fraction(1)

    def __str__(self) -> str:
        if self.height is None:
            return f"{self.channels}"
        return f"{self.channels}x{self.height}x{self.width}"

    def with_(self, **changes) -> "ShapeSpec":
        values = {"channels": self.channels, "height": self.height, "width": self.width,
                  "stride": self.stride}
        values.update(changes)
        return ShapeSpec(**values)
