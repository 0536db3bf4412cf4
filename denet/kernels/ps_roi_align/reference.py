"""Position-sensitive RoIAlign (R-FCN) in plain torch: the CPU path and the test oracle.

torchvision's ``ps_roi_align``: the geometry of ``roi_align(aligned=True)`` (half-pixel offset,
no minimum RoI size, adaptive ``ceil(roi_size / output_size)`` samples when
``sampling_ratio <= 0``), but output channel ``c`` at bin ``(ph, pw)`` reads input channel
``(c * PH + ph) * PW + pw``, so the output is ``[K, C / (PH * PW), PH, PW]``.

One deliberate difference: a bin without samples (a zero-size RoI with adaptive sampling gives
``ceil(0) = 0`` samples) is 0 here, as in ``roi_align``; torchvision divides by the zero count and
returns NaN.

The computation is RoIAlign's sparse sampling matrix (see ``roi_align.reference``), with each
bin reading its own plane of a ``[N, PH * PW, H, W, C_out]`` channels-last copy of the input.
"""

import torch
from torch import Tensor

from ..roi_align.reference import (
    acc_dtype,
    check_batch_index,
    csr_matmul,
    csr_transpose_matmul,
    roi_geometry,
    sampling_matrix,
)


def _matrix(
    rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, n_img, height, width, dtype
):
    bins = pooled_height * pooled_width
    batch, start, bin_size, grid = roi_geometry(
        rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, True, dtype
    )
    check_batch_index(batch, n_img, "ps_roi_align")
    planes = batch[:, None] * bins + torch.arange(bins, device=rois.device)
    return sampling_matrix(
        planes, start, bin_size, grid, pooled_height, pooled_width, height, width
    )


def ps_roi_align_forward(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
) -> Tensor:
    n_img, channels, height, width = input.shape
    bins = pooled_height * pooled_width
    c_out = channels // bins
    k = rois.shape[0]
    acc = acc_dtype(input.dtype)
    if k == 0 or c_out == 0 or height == 0 or width == 0:
        return input.new_zeros((k, c_out, pooled_height, pooled_width))
    crow, col, val = _matrix(
        rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, n_img, height, width, acc
    )
    flat = input.view(n_img, c_out, bins, height, width).permute(0, 2, 3, 4, 1)
    flat = flat.to(acc).reshape(n_img * bins * height * width, c_out)
    out = csr_matmul(crow, col, val, k * bins, flat.shape[0], flat)  # [K * bins, C_out]
    out = out.view(k, pooled_height, pooled_width, c_out).permute(0, 3, 1, 2)
    return out.to(input.dtype, memory_format=torch.contiguous_format)


def ps_roi_align_backward(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    bins = pooled_height * pooled_width
    c_out = channels // bins
    k = rois.shape[0]
    acc = acc_dtype(grad.dtype)
    if k == 0 or c_out == 0 or height == 0 or width == 0 or batch_size == 0:
        return grad.new_zeros((batch_size, channels, height, width))
    crow, col, val = _matrix(
        rois,
        spatial_scale,
        pooled_height,
        pooled_width,
        sampling_ratio,
        batch_size,
        height,
        width,
        acc,
    )
    g = grad.permute(0, 2, 3, 1).to(acc).reshape(k * bins, c_out)
    out = csr_transpose_matmul(crow, col, val, k * bins, batch_size * bins * height * width, g)
    out = out.view(batch_size, bins, height, width, c_out).permute(0, 4, 1, 2, 3)
    return out.reshape(batch_size, channels, height, width).to(
        grad.dtype, memory_format=torch.contiguous_format
    )
