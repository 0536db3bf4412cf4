"""Border modes (``--border-mode``, the ``border=`` keyword) and the ``B`` (zero border) layer.

For a kernel of effective size ``e = dilation*(k-1)+1`` (Theano's formulas, DeNet's meaning):

========  ===============================  =====================================
mode      padding (before, after)          output size (stride s)
========  ===============================  =====================================
valid     0, 0                             floor((H - e)/s) + 1
half      e//2, e//2                       floor((H + 2(e//2) - e)/s) + 1
full      e-1, e-1                         floor((H + e - 2)/s) + 1
same      e-1-(e-1)//2, (e-1)//2           H (a full conv cropped at (e-1)//2; stride 1 only)
N         N, N                             floor((H + 2N - e)/s) + 1
========  ===============================  =====================================
"""

from __future__ import annotations

from torch import nn

from .registry import Arg, Call, LayerDef
from .shape import ShapeSpec


def border_padding(mode, k: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of one spatial dimension."""
    e = dilation * (k - 1) + 1
    if mode == "valid":
        return 0, 0
    if mode == "half":
        return e // 2, e // 2
    if mode == "full":
        return e - 1, e - 1
    if mode == "same":
        return e - 1 - (e - 1) // 2, (e - 1) // 2
    return int(mode), int(mode)


def conv_out(size: int, k: int, stride: int, pad: tuple[int, int], dilation: int = 1) -> int:
    e = dilation * (k - 1) + 1
    return (size + pad[0] + pad[1] - e) // stride + 1


class Border(LayerDef):
    type = "B"
    denet_name = "border"
    doc = "Zero border: pads n pixels of zeros on every side."
    args = (Arg("n", "int", 0, min=0, doc="pixels added on each side"),)

    def shape(self, call: Call) -> ShapeSpec:
        n = call.args["n"]
        i = call.input
        return i.with_(height=i.h + 2 * n, width=i.w + 2 * n)

    def build(self, call: Call):
        n = call.args["n"]
        return nn.ZeroPad2d(n) if n else None
