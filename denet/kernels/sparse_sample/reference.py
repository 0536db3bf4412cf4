"""DeNet's sparse sampling in plain torch: the CPU path and the test oracle.

For every box ``(x0, y0, x1, y1)`` (normalised to [0, 1]) a ``G x G`` grid of sample points spans
the box edges inclusively, as in DeNet's CUDA kernel (``denet_sparse_op.py``)::

    k = 1 / (G - 1)                        # in the coordinate dtype, as DeNet's float k
    y = y0 + (gy * (y1 - y0)) * k          # the same operation order as DeNet
    py = clamp(y * H, 0, H - 1)            # pixel coordinate, no half-pixel offset

``G = 1`` is defined here as the box centre ``y0 + 0.5 * (y1 - y0)``. DeNet's kernel computes
``k = 1/0 = inf`` and ``0 * h * inf = NaN`` there, which its ``fminf`` clamp turns into the last
row and column of the map whatever the box is, so there is nothing to preserve.

``mode="nearest"`` (DeNet) reads pixel ``lroundf(py)``: halves round away from zero. It is
computed as ``r = floor(py); r += (py - r >= 0.5)``, which is exact, whereas ``floor(py + 0.5)``
misrounds the float just below 0.5 (the addition rounds up to 1.0). ``mode="bilinear"``
interpolates the four neighbours of ``(py, px)`` with the usual weights, the upper neighbour
clamped at the border. Coordinates are computed in ``promote_types(boxes.dtype, float32)``.
Neither mode passes a gradient to the boxes (DeNet declares it undefined; the boxes come from a
non-differentiable proposal step).
"""

import torch
from torch import Tensor


def coord_dtype(boxes: Tensor) -> torch.dtype:
    return torch.promote_types(boxes.dtype, torch.float32)


def acc_dtype(features: Tensor) -> torch.dtype:
    return torch.promote_types(features.dtype, torch.float32)


def grid_step(grid_size: int) -> float:
    """DeNet's ``k = 1 / (G - 1)``; unused when G = 1."""
    return 1.0 / (grid_size - 1) if grid_size > 1 else 0.0


def _axis_points(lo: Tensor, hi: Tensor, grid_size: int, size: int) -> Tensor:
    """Clamped pixel coordinates ``[B, N, G]`` of the grid along one axis."""
    extent = hi - lo
    if grid_size == 1:
        p = lo[..., None] + extent[..., None] * 0.5
    else:
        g = torch.arange(grid_size, dtype=lo.dtype, device=lo.device)
        k = torch.tensor(grid_step(grid_size), dtype=lo.dtype, device=lo.device)
        p = lo[..., None] + (g * extent[..., None]) * k
    return torch.clamp(p * size, 0, size - 1)


def _points(boxes: Tensor, grid_size: int, h: int, w: int) -> tuple[Tensor, Tensor]:
    b = boxes.to(coord_dtype(boxes))
    x0, y0, x1, y1 = b.unbind(-1)
    return _axis_points(y0, y1, grid_size, h), _axis_points(x0, x1, grid_size, w)


def _lround(p: Tensor, size: int) -> Tensor:
    r = torch.floor(p)
    r = r + (p - r >= 0.5).to(r.dtype)
    # The integer clamp only matters for NaN coordinates; it keeps every read in bounds.
    return r.long().clamp_(0, size - 1)


def _taps(boxes: Tensor, grid_size: int, h: int, w: int, mode: str, dtype: torch.dtype):
    """Flat pixel indices ``[B, N*G*G]`` and weights ``[B, N*G*G]`` (None for nearest) of each tap,
    grid point order ``(gy, gx)``."""
    py, px = _points(boxes, grid_size, h, w)
    bsz, n, g = py.shape
    if mode == "nearest":
        lin = _lround(py, h)[..., :, None] * w + _lround(px, w)[..., None, :]
        return [(lin.reshape(bsz, n * g * g), None)]
    y_lo = torch.floor(py)
    x_lo = torch.floor(px)
    ly = (py - y_lo).to(dtype)
    lx = (px - x_lo).to(dtype)
    y_lo = y_lo.long().clamp_(0, h - 1)
    x_lo = x_lo.long().clamp_(0, w - 1)
    y_hi = (y_lo + 1).clamp_(max=h - 1)
    x_hi = (x_lo + 1).clamp_(max=w - 1)
    taps = []
    for yi, wy in ((y_lo, 1 - ly), (y_hi, ly)):
        for xi, wx in ((x_lo, 1 - lx), (x_hi, lx)):
            lin = yi[..., :, None] * w + xi[..., None, :]
            weight = wy[..., :, None] * wx[..., None, :]
            taps.append((lin.reshape(bsz, n * g * g), weight.reshape(bsz, n * g * g)))
    return taps


def sparse_sample_forward(features: Tensor, boxes: Tensor, grid_size: int, mode: str) -> Tensor:
    bsz, f, h, w = features.shape
    n = boxes.shape[1]
    g2 = grid_size * grid_size
    acc = acc_dtype(features)
    # [B, H*W, F]: one advanced-indexing gather per tap reads whole feature vectors.
    table = features.reshape(bsz, f, h * w).transpose(1, 2)
    batch = torch.arange(bsz, device=features.device)[:, None]
    vals: Tensor | None = None
    for lin, weight in _taps(boxes, grid_size, h, w, mode, acc):
        v = table[batch, lin]  # [B, N*G*G, F]
        if weight is not None:
            v = v.to(acc) * weight[..., None]
        vals = v if vals is None else vals + v
    assert vals is not None  # _taps gives one tap (nearest) or four (bilinear)
    vals = vals.to(features.dtype).reshape(bsz, n, g2 * f).transpose(1, 2)
    b = boxes.to(coord_dtype(boxes))
    hw = torch.stack((b[..., 3] - b[..., 1], b[..., 2] - b[..., 0]), dim=1).to(features.dtype)
    return torch.cat((vals, hw), dim=1)


def sparse_sample_backward(
    grad: Tensor, boxes: Tensor, num_features: int, h: int, w: int, grid_size: int, mode: str
) -> Tensor:
    bsz, _, n = grad.shape
    f = num_features
    g2 = grid_size * grid_size
    acc = acc_dtype(grad)
    # [B, N*G*G, F] in the order of the taps.
    src = (
        grad[:, : g2 * f].to(acc).reshape(bsz, g2, f, n).permute(0, 3, 1, 2).reshape(bsz, n * g2, f)
    )
    out = torch.zeros(bsz * h * w, f, dtype=acc, device=grad.device)
    offset = (torch.arange(bsz, device=grad.device) * (h * w))[:, None]
    for lin, weight in _taps(boxes, grid_size, h, w, mode, acc):
        contrib = src if weight is None else src * weight[..., None]
        out.index_add_(0, (lin + offset).reshape(-1), contrib.reshape(-1, f))
    return out.reshape(bsz, h, w, f).permute(0, 3, 1, 2).contiguous().to(grad.dtype)
