"""``ShapeSpec``: what the compiler knows about a value before any data flows."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction

# What a value can be. A layer lists the kinds it accepts as input (``LayerDef.accepts``).
KINDS = {
    "map": "a feature map",  # [B, C, H, W]; also RoI features [R, C, h, w]
    "vector": "a vector",  # [B, C], e.g. class probabilities
    "boxes": "a set of boxes",  # [R, 5] rows (batch index, x1, y1, x2, y2), torchvision's RoIs
    "detections": "a list of detections",  # one dict per image (boxes, scores, labels)
    "corners": "corner log-probabilities",  # [B, 2, K, H, W], DeNet's DNC
}
ANY_KIND = tuple(KINDS)  # what identities, outputs and sub-networks accept


@dataclass(frozen=True)
class ShapeSpec:
    """Shape of one value, batch dimension excluded.

    ``stride`` is the distance in input pixels between two neighbouring positions of a map
    (1 for the input, 2 after a stride-2 conv, 1/2 after ``PI[2]``), so RoI operators can derive
    ``spatial_scale = 1 / stride``. ``height``/``width`` are None for values that are not maps;
    ``form`` names such a value's kind (see :data:`KINDS`): a map when it has a height, else a
    vector unless ``form`` says otherwise. For ``boxes``, ``channels`` is the number of boxes
    per image (0 when it depends on the data).
    """

    channels: int
    height: int | None = None
    width: int | None = None
    stride: Fraction = Fraction(1)
    form: str = field(default="", compare=True)

    @property
    def kind(self) -> str:
        if self.form:
            return self.form
        return "map" if self.height is not None else "vector"

    def describe(self) -> str:
        """The kind in words, for error messages (``a vector``)."""
        return KINDS[self.kind]

    def __str__(self) -> str:
        if self.kind == "map":
            return f"{self.channels}x{self.height}x{self.width}"
        if self.kind == "vector":
            return f"{self.channels}"
        if self.kind == "boxes":
            return f"{self.channels or '?'} boxes"
        return self.kind

    @property
    def h(self) -> int:
        """Height of a map (the resolver checks a value's kind before a layer sees it)."""
        if self.height is None:
            raise ValueError(f"{self} is {self.describe()}, not a feature map")
        return self.height

    @property
    def w(self) -> int:
        """Width of a map."""
        if self.width is None:
            raise ValueError(f"{self} is {self.describe()}, not a feature map")
        return self.width

    def with_(self, **changes) -> ShapeSpec:
        return replace(self, **changes)
