"""Position-sensitive RoI pooling (R-FCN) in plain torch: the CPU path and the test oracle.

torchvision's ``ps_roi_pool``: RoI corners are ``round(coordinate * spatial_scale)`` (halves away
from zero) with ``roi_h = max(y2 - y1, 1)`` (no ``+ 1``, unlike ``roi_pool``), bins are
``[floor(ph * bin_h), ceil((ph + 1) * bin_h))`` shifted by ``y1``, and output channel ``c`` at bin
``(ph, pw)`` averages input channel ``(c * PH + ph) * PW + pw`` over its window (0 when empty).

torchvision's forward clips the windows to ``H - 1`` and ``W - 1``, so the last row and column
of the map are never pooled, while its backward clips to ``H`` and ``W`` and so is not the
gradient of its forward. We keep the forward (outputs match torchvision) and return its true
gradient.

The average is a sparse matrix product, as in ``ps_roi_align``: each bin's row holds
``1 / area`` on the pixels of its window in a ``[N, PH * PW, H, W, C_out]`` channels-last copy.
"""

import torch
from torch import Tensor

from ..roi_align.reference import (
    acc_dtype,
    check_batch_index,
    csr_matmul,
    csr_transpose_matmul,
    window_matrix,
)
from ..roi_pool.reference import pool_windows


def _axis(lo: Tensor, hi: Tensor):
    """Window start, length and the weights ``1 / length`` of its rows (or columns)."""
    length = (hi - lo).clamp(min=0)
    span = max(int(length.max()), 1)
    s = torch.arange(span, device=lo.device)
    weight = torch.where(
        s < length[..., None], 1.0 / length.clamp(min=1).to(torch.float64)[..., None], 0.0
    )
    return lo, length, weight


def _matrix(rois, spatial_scale, pooled_height, pooled_width, n_img, height, width, dtype):
    batch, hs, he, ws, we = pool_windows(
        rois,
        spatial_scale,
        pooled_height,
        pooled_width,
        height,
        width,
        dtype,
        False,
        height - 1,
        width - 1,
    )
    check_batch_index(batch, n_img, "ps_roi_pool")
    bins = pooled_height * pooled_width
    planes = batch[:, None] * bins + torch.arange(bins, device=rois.device)
    (ylo, ylen, ay), (xlo, xlen, ax) = _axis(hs, he), _axis(ws, we)
    # an empty window in either direction gives the bin no entries, so it is 0
    return window_matrix(
        planes, (ylo, ylen, ay.to(dtype)), (xlo, xlen, ax.to(dtype)), height, width
    )


def ps_roi_pool_forward(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> Tensor:
    n_img, channels, height, width = input.shape
    bins = pooled_height * pooled_width
    c_out = channels // bins
    k = rois.shape[0]
    acc = acc_dtype(input.dtype)
    if k == 0 or c_out == 0 or height == 0 or width == 0:
        return input.new_zeros((k, c_out, pooled_height, pooled_width))
    crow, col, val = _matrix(
        rois, spatial_scale, pooled_height, pooled_width, n_img, height, width, acc
    )
    flat = input.view(n_img, c_out, bins, height, width).permute(0, 2, 3, 4, 1)
    flat = flat.to(acc).reshape(n_img * bins * height * width, c_out)
    out = csr_matmul(crow, col, val, k * bins, flat.shape[0], flat)
    out = out.view(k, pooled_height, pooled_width, c_out).permute(0, 3, 1, 2)
    return out.to(input.dtype, memory_format=torch.contiguous_format)


def ps_roi_pool_backward(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    bins = pooled_height * pooled_width
    c_out = channels // bins
    k = rois.shape[0]
    acc = acc_dtype(grad.dtype)
    if k == 0 or c_out == 0 or batch_size * height * width == 0:
        return grad.new_zeros((batch_size, channels, height, width))
    crow, col, val = _matrix(
        rois, spatial_scale, pooled_height, pooled_width, batch_size, height, width, acc
    )
    g = grad.permute(0, 2, 3, 1).to(acc).reshape(k * bins, c_out)
    out = csr_transpose_matmul(crow, col, val, k * bins, batch_size * bins * height * width, g)
    out = out.view(batch_size, bins, height, width, c_out).permute(0, 4, 1, 2, 3)
    return out.reshape(batch_size, channels, height, width).to(
        grad.dtype, memory_format=torch.contiguous_format
    )
