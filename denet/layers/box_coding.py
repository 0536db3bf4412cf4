"""Box deltas: how a box head encodes a ground-truth box relative to a RoI and decodes it back.

``(dx, dy, dw, dh) = (wx (gx - rx) / rw, wy (gy - ry) / rh, ww log(gw / rw), wh log(gh / rh))``
with centres (x, y) and sizes (w, h) of xyxy boxes. torchvision's ``BoxCoder`` uses weights
(10, 10, 5, 5) and clamps the size deltas at decoding; DeNet uses weights 1 and no clamp.
``plus1``: Detectron's pixel convention, a box's width is ``x2 - x1 + 1`` and a decoded box ends
at ``centre + w/2 - 1``.
"""

from __future__ import annotations

import torch

Weights = tuple[float, float, float, float]


def _centre_size(boxes: torch.Tensor, plus1: bool = False):
    one = 1.0 if plus1 else 0.0
    w, h = boxes[..., 2] - boxes[..., 0] + one, boxes[..., 3] - boxes[..., 1] + one
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(
    gt: torch.Tensor,
    rois: torch.Tensor,
    weights: Weights = (1.0, 1.0, 1.0, 1.0),
    plus1: bool = False,
) -> torch.Tensor:
    """Deltas that move ``rois`` onto ``gt`` (both ``[..., 4]`` xyxy)."""
    wx, wy, ww, wh = weights
    rx, ry, rw, rh = _centre_size(rois, plus1)
    gx, gy, gw, gh = _centre_size(gt, plus1)
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
    plus1: bool = False,
) -> torch.Tensor:
    """Inverse of :func:`encode`; ``clamp`` bounds the size deltas before ``exp``."""
    wx, wy, ww, wh = weights
    rx, ry, rw, rh = _centre_size(rois, plus1)
    dw, dh = deltas[..., 2] / ww, deltas[..., 3] / wh
    if clamp is not None:
        dw, dh = dw.clamp(max=clamp), dh.clamp(max=clamp)
    cx, cy = rx + deltas[..., 0] / wx * rw, ry + deltas[..., 1] / wy * rh
    w, h = rw * torch.exp(dw), rh * torch.exp(dh)
    one = 1.0 if plus1 else 0.0
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w - one, cy + 0.5 * h - one], -1)


def box_iou(a: torch.Tensor, b: torch.Tensor, plus1: bool = False) -> torch.Tensor:
    """[N, M] IoU of xyxy boxes; ``plus1``: Detectron's areas ``(x2 - x1 + 1)(y2 - y1 + 1)``."""
    if not plus1:
        from ..kernels import box_iou as iou

        return iou(a, b)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)
