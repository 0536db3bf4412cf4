"""Box deltas: how a box head encodes a ground-truth box relative to a RoI and decodes it back.

``(dx, dy, dw, dh) = (wx (gx - rx) / rw, wy (gy - ry) / rh, ww log(gw / rw), wh log(gh / rh))``
with centres (x, y) and sizes (w, h) of xyxy boxes. torchvision's ``BoxCoder`` uses weights
(10, 10, 5, 5) and clamps the size deltas at decoding; DeNet uses weights 1 and no clamp.
"""

from __future__ import annotations

import torch

Weights = tuple[float, float, float, float]


def _centre_size(boxes: torch.Tensor):
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(
    gt: torch.Tensor, rois: torch.Tensor, weights: Weights = (1.0, 1.0, 1.0, 1.0)
) -> torch.Tensor:
    """Deltas that move ``rois`` onto ``gt`` (both ``[..., 4]`` xyxy)."""
    wx, wy, ww, wh = weights
    rx, ry, rw, rh = _centre_size(rois)
    gx, gy, gw, gh = _centre_size(gt)
    return torch.stack(
        [
            wx * (gx - rx) / rw,
            wy * (gy - ry) / rh,
            ww * torch.log(gw / rw),
            wh * torch.log(gh / rh),
        ],
        -1,
    )


def decode(
    deltas: torch.Tensor,
    rois: torch.Tensor,
    weights: Weights = (1.0, 1.0, 1.0, 1.0),
    clamp: float | None = None,
) -> torch.Tensor:
    """Inverse of :func:`encode`; ``clamp`` bounds the size deltas before ``exp``."""
    wx, wy, ww, wh = weights
    rx, ry, rw, rh = _centre_size(rois)
    dw, dh = deltas[..., 2] / ww, deltas[..., 3] / wh
    if clamp is not None:
        dw, dh = dw.clamp(max=clamp), dh.clamp(max=clamp)
    cx, cy = rx + deltas[..., 0] / wx * rw, ry + deltas[..., 1] / wy * rh
    w, h = rw * torch.exp(dw), rh * torch.exp(dh)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)
