"""``DNC``: DeNet's corner layer (reference: denet-original.md section 3.1).

A 1x1 conv with bias makes K corner logits (TL, TR, BL, BR; and the centre with ``.C``) and
``sample_feat`` feature channels. The corner logits ``lh`` become log-probabilities
``log_softmax(stack([lh, -lh]), dim=1)``: ``[B, 2, K, H, W]``, index 1 "corner present", so
P(present) = sigmoid(-2 lh). The corner weights start at zero and their biases at 5 (P about
4.5e-5); the feature channels take the layer's weight init and a zero bias.

The main chain passes through unchanged. The corner log-probabilities and the features are side
outputs, ``DNC.corners`` and ``DNC.sample``, for ``DNS``.

Training, with targets (``boxes`` xyxy in input pixels, normalised by the input's width and
height): a corner cell is 1 at ``x0 = round(bx0 W)``, ``y0 = round(by0 H)``,
``x1 = max(x0, round(bx1 W) - 1)``, ``y1 = max(y0, round(by1 H) - 1)`` (and the centre at
``(round(cx W), round(cy H))``), rounding halves to even as Python's ``round``, when it lies on
the map; every other cell is 0. ``loss_corner`` is the mean over the batch of the summed
cross-entropy over (2, K, H, W), divided by W H K and by ln 2 (bits per position), times
``cost_factor``. ``dropout`` zeroes whole target cells (k, y, x) with that probability and
rescales the rest by 1 / (1 - dropout).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .init import WeightInit, init_conv
from .registry import Arg, Call, LayerDef
from .shape import ShapeSpec

CORNERS = "DNC.corners"
SAMPLE = "DNC.sample"


def corner_targets(
    boxes: torch.Tensor, corners: int, height: int, width: int, image_size: tuple[int, int]
) -> torch.Tensor:
    """``[K, H, W]`` 0/1 corner map of one image's ``boxes`` ``[N, 4]`` (xyxy input pixels)."""
    out = torch.zeros(corners, height, width, device=boxes.device)
    if boxes.numel() == 0:
        return out
    b = boxes.double() / boxes.new_tensor(image_size[::-1] * 2, dtype=torch.float64)
    x0 = torch.round(b[:, 0] * width)
    y0 = torch.round(b[:, 1] * height)
    x1 = torch.maximum(x0, torch.round(b[:, 2] * width) - 1)
    y1 = torch.maximum(y0, torch.round(b[:, 3] * height) - 1)
    xs, ys = [x0, x1, x0, x1], [y0, y0, y1, y1]
    if corners == 5:
        xs.append(torch.round((b[:, 0] + b[:, 2]) / 2 * width))
        ys.append(torch.round((b[:, 1] + b[:, 3]) / 2 * height))
    for k, (x, y) in enumerate(zip(xs, ys)):
        on = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        out[k, y[on].long(), x[on].long()] = 1.0
    return out


class Corners(nn.Module):
    def __init__(
        self,
        cin: int,
        corners: int,
        features: int,
        cost_factor: float,
        dropout: float,
        init: WeightInit,
    ):
        super().__init__()
        self.corners, self.cost_factor, self.dropout = corners, cost_factor, dropout
        self.conv = nn.Conv2d(cin, corners + features, 1, bias=True)
        init_conv(self.conv, init)  # the features' init; zero biases
        bias = self.conv.bias
        assert bias is not None
        with torch.no_grad():
            self.conv.weight[:corners].zero_()
            bias[:corners] = 5.0

    def forward(self, x, images, targets=None):
        out = self.conv(x)
        lh = out[:, : self.corners]
        logp = torch.log_softmax(torch.stack([lh, -lh], 1), dim=1)
        sides = {CORNERS: logp, SAMPLE: out[:, self.corners :]}
        if targets is None:
            return x, sides
        return x, sides, {"loss_corner": self.loss(logp, images, targets)}

    def loss(self, logp, images, targets):
        b, _, k, h, w = logp.shape
        size = (images.shape[-2], images.shape[-1])
        t = torch.stack(
            [
                corner_targets(
                    torch.as_tensor(tg["boxes"], device=logp.device).reshape(-1, 4), k, h, w, size
                )
                for tg in targets
            ]
        )
        t = torch.stack([1 - t, t], 1).to(logp.dtype)
        if self.dropout > 0:
            keep = torch.rand(b, 1, k, h, w, device=logp.device) >= self.dropout
            t = t * keep / (1 - self.dropout)
        bits = -(t * logp).sum((1, 2, 3, 4)) / (w * h * k) / math.log(2)
        return self.cost_factor * bits.mean()

    def extra_repr(self) -> str:
        return f"corners={self.corners}, cost_factor={self.cost_factor}, dropout={self.dropout}"


class CornerLayer(LayerDef):
    type = "DNC"
    denet_name = "denet-corner"
    doc = (
        "DeNet's corner layer: 1x1 conv to corner log-probabilities (side output "
        "`DNC.corners`, [B, 2, K, H, W]) and `sample_feat` features (`DNC.sample`); the main "
        "chain passes through; in training adds `loss_corner` (bits per position)."
    )
    tags = {"C": "also the centre corner (K = 5)"}
    args = (
        Arg("sample_feat", "int", min=1, doc="feature channels for the sparse sampling"),
        Arg("cost_factor", "float", 1.0, min=0.0, doc="weight of loss_corner"),
        Arg("dropout", "float", 0.0, min=0.0, max=0.99, doc="target-cell dropout rate"),
    )
    has_params = True

    def _k(self, call: Call) -> int:
        return 5 if call.has("C") else 4

    def losses(self, call: Call):
        return ("loss_corner",)

    def reads_images(self, call: Call) -> bool:
        return True

    def side_outputs(self, call: Call) -> dict[str, ShapeSpec]:
        i = call.input
        return {
            CORNERS: i.with_(channels=self._k(call), form="corners"),
            SAMPLE: i.with_(channels=call.args["sample_feat"]),
        }

    def build(self, call: Call):
        a = call.args
        return Corners(
            call.input.channels,
            self._k(call),
            a["sample_feat"],
            a["cost_factor"],
            a["dropout"],
            call.init,
        )
