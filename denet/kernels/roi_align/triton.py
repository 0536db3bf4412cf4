"""Triton kernels for RoIAlign and position-sensitive RoIAlign (semantics in ``reference.py``).

One program handles one RoI, a block of ``BLOCK_P`` output bins and a block of ``BLOCK_C``
channels, and walks that RoI's ``grid_h x grid_w`` sample grid (adaptive per RoI) itself, so
every lane of the tile runs the same loop. RoIAlign reads a channels-last copy of the map: the
channels of one neighbour are contiguous, so each of the four gathers per sample loads whole
cache lines. The per-RoI geometry (start, bin size, sample grid) is computed in the kernel in
the reference's order of operations, with IEEE division and without FMA contraction, so the
coordinates round exactly as there; the host only allocates and launches (a few small tensor
ops on the host would cost more than the kernel). The backward pass adds into a float32
(float64 for float64) buffer with atomics, as torchvision's CUDA kernel does, so its summation
order is not fixed.
"""

from contextlib import nullcontext

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

from .reference import acc_dtype

_BLOCK_P = 64
_BLOCK_C = 32


@triton.jit
def _div(a, b):
    """IEEE division: Triton's float32 ``/`` is the approximate ``div.full.f32``, which moves bin
    sizes and sample points by an ulp and so flips ``ceil``/``floor`` at exact integers
    (float64 ``/`` is already ``div.rn``)."""
    if a.dtype == tl.float32:
        return tl.math.div_rn(a, tl.cast(b, tl.float32))
    return a / tl.cast(b, a.dtype)


@triton.jit
def _corners(pos, size):
    """Bilinear neighbours along one axis and whether the sample counts (``reference.corners``)."""
    valid = (pos >= -1.0) & (pos <= size)
    pos = tl.minimum(
        tl.maximum(pos, 0.0), size * 1.0
    )  # the upper clamp keeps the int cast in range
    low = pos.to(tl.int32)
    edge = low >= size - 1
    low = tl.where(edge, size - 1, low)
    high = tl.where(edge, size - 1, low + 1)
    frac = tl.where(edge, 0.0, pos - low.to(pos.dtype))
    return low.to(tl.int64), high.to(tl.int64), 1.0 - frac, frac, valid


def scale_parts(spatial_scale: float):
    """``spatial_scale`` as three float32 numbers whose float64 sum is exactly the float64 value
    (Triton passes Python floats as float32); in float32 the sum rounds to ``float32(scale)``."""
    hi = float(np.float32(spatial_scale))
    mid = float(np.float32(spatial_scale - hi))
    return hi, mid, float(np.float32(spatial_scale - hi - mid))


@triton.jit
def _setup(
    rois_ptr,
    S_HI,
    S_MID,
    S_LO,
    sampling_ratio,
    C,
    PH,
    PW,
    ALIGNED: tl.constexpr,
    PS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    k = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = (tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    pmask = p < PH * PW
    mask = pmask[:, None] & (c < C)[None, :]
    # torchvision's geometry (reference.roi_geometry), in the same order of operations
    scale = (tl.cast(S_HI, ACC) + tl.cast(S_MID, ACC)) + tl.cast(S_LO, ACC)  # exact: float32 parts
    roi = rois_ptr + k * 5
    b = tl.load(roi).to(tl.int64)  # C's int(): truncation
    x0 = tl.load(roi + 1).to(ACC) * scale
    y0 = tl.load(roi + 2).to(ACC) * scale
    x1 = tl.load(roi + 3).to(ACC) * scale
    y1 = tl.load(roi + 4).to(ACC) * scale
    if ALIGNED:
        x0 = x0 - 0.5
        y0 = y0 - 0.5
        x1 = x1 - 0.5
        y1 = y1 - 0.5
    roi_h = y1 - y0
    roi_w = x1 - x0
    if not ALIGNED:
        roi_h = tl.maximum(roi_h, 1.0)
        roi_w = tl.maximum(roi_w, 1.0)
    bin_h = _div(roi_h, PH)
    bin_w = _div(roi_w, PW)
    grid_h = _grid(bin_h, sampling_ratio)
    grid_w = _grid(bin_w, sampling_ratio)
    ystart = y0 + (p // PW).to(ACC) * bin_h
    xstart = x0 + (p % PW).to(ACC) * bin_w
    if PS:
        chan = c[None, :] * (PH * PW) + p[:, None]  # input channel of output channel c at bin p
    else:
        chan = c[None, :] + p[:, None] * 0
    out_off = (k * C + c[None, :]) * (PH * PW) + p[:, None]
    return (b, grid_h, grid_w, bin_h, bin_w, ystart, xstart, pmask, mask, chan, out_off)


@triton.jit
def _grid(bin_size, sampling_ratio):
    """``sampling_ratio`` if positive, else ``ceil(roi_size / pooled)`` (NaN -> 0, kept in int32)."""
    g = tl.ceil(bin_size)
    g = tl.minimum(tl.maximum(tl.where(g == g, g, 0.0), -1.0), 1.0e9)
    return tl.where(sampling_ratio > 0, sampling_ratio, g.to(tl.int32))


@triton.jit(do_not_specialize=["sampling_ratio"])
def _roi_align_fwd_kernel(
    x_ptr,
    rois_ptr,
    out_ptr,
    S_HI,
    S_MID,
    S_LO,
    sampling_ratio,
    C,
    H,
    W,
    s_n,
    s_c,
    s_h,
    s_w,
    PH,
    PW,
    ALIGNED: tl.constexpr,
    PS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    (b, grid_h, grid_w, bin_h, bin_w, ystart, xstart, pmask, mask, chan, out_off) = _setup(
        rois_ptr, S_HI, S_MID, S_LO, sampling_ratio, C, PH, PW, ALIGNED, PS, ACC, BLOCK_P, BLOCK_C
    )
    base = x_ptr + b * s_n + chan * s_c
    gh = tl.maximum(grid_h, 1).to(ACC)
    gw = tl.maximum(grid_w, 1).to(ACC)
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    for iy in range(0, grid_h):
        y = ystart + _div((iy + 0.5) * bin_h, gh)
        yl, yh, hy, ly, vy = _corners(y, H)
        for ix in range(0, grid_w):
            x = xstart + _div((ix + 0.5) * bin_w, gw)
            xl, xh, hx, lx, vx = _corners(x, W)
            m = (vy & vx & pmask)[:, None] & mask
            v1 = tl.load(base + (yl * s_h + xl * s_w)[:, None], mask=m, other=0.0).to(ACC)
            v2 = tl.load(base + (yl * s_h + xh * s_w)[:, None], mask=m, other=0.0).to(ACC)
            v3 = tl.load(base + (yh * s_h + xl * s_w)[:, None], mask=m, other=0.0).to(ACC)
            v4 = tl.load(base + (yh * s_h + xh * s_w)[:, None], mask=m, other=0.0).to(ACC)
            acc += (
                (hy * hx)[:, None] * v1
                + (hy * lx)[:, None] * v2
                + (ly * hx)[:, None] * v3
                + (ly * lx)[:, None] * v4
            )
    count = tl.maximum(grid_h * grid_w, 1).to(ACC)
    tl.store(out_ptr + out_off, _div(acc, count).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["sampling_ratio"])
def _roi_align_bwd_kernel(
    g_ptr,
    rois_ptr,
    gi_ptr,
    S_HI,
    S_MID,
    S_LO,
    sampling_ratio,
    C,
    H,
    W,
    s_n,
    s_c,
    s_h,
    s_w,
    PH,
    PW,
    ALIGNED: tl.constexpr,
    PS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    (b, grid_h, grid_w, bin_h, bin_w, ystart, xstart, pmask, mask, chan, out_off) = _setup(
        rois_ptr, S_HI, S_MID, S_LO, sampling_ratio, C, PH, PW, ALIGNED, PS, ACC, BLOCK_P, BLOCK_C
    )
    base = gi_ptr + b * s_n + chan * s_c
    gh = tl.maximum(grid_h, 1).to(ACC)
    gw = tl.maximum(grid_w, 1).to(ACC)
    count = tl.maximum(grid_h * grid_w, 1).to(ACC)
    g = _div(tl.load(g_ptr + out_off, mask=mask, other=0.0).to(ACC), count)
    for iy in range(0, grid_h):
        y = ystart + _div((iy + 0.5) * bin_h, gh)
        yl, yh, hy, ly, vy = _corners(y, H)
        for ix in range(0, grid_w):
            x = xstart + _div((ix + 0.5) * bin_w, gw)
            xl, xh, hx, lx, vx = _corners(x, W)
            m = (vy & vx & pmask)[:, None] & mask
            tl.atomic_add(
                base + (yl * s_h + xl * s_w)[:, None], (hy * hx)[:, None] * g, mask=m, sem="relaxed"
            )
            tl.atomic_add(
                base + (yl * s_h + xh * s_w)[:, None], (hy * lx)[:, None] * g, mask=m, sem="relaxed"
            )
            tl.atomic_add(
                base + (yh * s_h + xl * s_w)[:, None], (ly * hx)[:, None] * g, mask=m, sem="relaxed"
            )
            tl.atomic_add(
                base + (yh * s_h + xh * s_w)[:, None], (ly * lx)[:, None] * g, mask=m, sem="relaxed"
            )


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _launch_grid(k: int, bins: int, channels: int):
    block_p = min(triton.next_power_of_2(bins), _BLOCK_P)
    block_c = min(triton.next_power_of_2(channels), _BLOCK_C)
    return (k, triton.cdiv(bins, block_p), triton.cdiv(channels, block_c)), block_p, block_c


def sample_forward(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    position_sensitive: bool,
) -> Tensor:
    """RoIAlign (``position_sensitive=False``) or PSRoIAlign (``True``, always aligned)."""
    n_img, channels, height, width = input.shape
    bins = pooled_height * pooled_width
    c_out = channels // bins if position_sensitive else channels
    k = rois.shape[0]
    out = torch.empty(
        (k, c_out, pooled_height, pooled_width), dtype=input.dtype, device=input.device
    )
    if out.numel() == 0 or height == 0 or width == 0:
        return out.zero_()
    # Channels-last for RoIAlign: the tile's channels of one neighbour are contiguous. The
    # position-sensitive bins of a tile read different channels, so NCHW serves as well there.
    x = (
        input.contiguous()
        if position_sensitive
        else input.contiguous(memory_format=torch.channels_last)
    )
    grid, block_p, block_c = _launch_grid(k, bins, c_out)
    with torch.cuda.device(input.device) if input.is_cuda else nullcontext():
        _roi_align_fwd_kernel[grid](
            x,
            rois.contiguous(),
            out,
            *scale_parts(spatial_scale),
            sampling_ratio,
            c_out,
            height,
            width,
            *x.stride(),
            pooled_height,
            pooled_width,
            ALIGNED=aligned,
            PS=position_sensitive,
            ACC=_tl_dtype(acc_dtype(input.dtype)),
            BLOCK_P=block_p,
            BLOCK_C=block_c,
            num_warps=4,
            enable_fp_fusion=False,
        )
    return out


def sample_backward(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    sampling_ratio: int,
    aligned: bool,
    position_sensitive: bool,
) -> Tensor:
    bins = pooled_height * pooled_width
    c_out = channels // bins if position_sensitive else channels
    k = rois.shape[0]
    acc = acc_dtype(grad.dtype)
    if k == 0 or c_out == 0 or batch_size * channels * height * width == 0:
        return grad.new_zeros((batch_size, channels, height, width))
    if position_sensitive:
        gi = torch.zeros((batch_size, channels, height, width), dtype=acc, device=grad.device)
    else:  # channels-last, so the atomics of one neighbour's channels are contiguous
        gi = torch.zeros(
            (batch_size, height, width, channels), dtype=acc, device=grad.device
        ).permute(0, 3, 1, 2)
    g = grad.contiguous()
    grid, block_p, block_c = _launch_grid(k, bins, c_out)
    with torch.cuda.device(grad.device) if grad.is_cuda else nullcontext():
        _roi_align_bwd_kernel[grid](
            g,
            rois.contiguous(),
            gi,
            *scale_parts(spatial_scale),
            sampling_ratio,
            c_out,
            height,
            width,
            *gi.stride(),
            pooled_height,
            pooled_width,
            ALIGNED=aligned,
            PS=position_sensitive,
            ACC=_tl_dtype(acc),
            BLOCK_P=block_p,
            BLOCK_C=block_c,
            num_warps=4,
            enable_fp_fusion=False,
        )
    return gi.to(grad.dtype, memory_format=torch.contiguous_format)


def roi_align_forward(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    return sample_forward(
        input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, False
    )


def roi_align_backward(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    return sample_backward(
        grad,
        rois,
        spatial_scale,
        pooled_height,
        pooled_width,
        batch_size,
        channels,
        height,
        width,
        sampling_ratio,
        aligned,
        False,
    )
