"""Triton kernels for position-sensitive RoI pooling (semantics in ``reference.py``).

The kernels compute the integer windows themselves (``roi_pool.triton.pool_window``, with
torchvision's forward clip to ``H - 1`` / ``W - 1``); the host only allocates and launches.
One program handles one RoI, ``BLOCK_P`` bins and ``BLOCK_C`` output
channels; output channel ``c`` at bin ``p`` averages input channel ``c * PH * PW + p``. The
backward pass spreads ``g / area`` over the same windows with atomic adds into a float32
(float64 for float64) buffer, so it is the exact gradient of this forward.
"""

from contextlib import nullcontext

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..roi_align.reference import acc_dtype
from ..roi_align.triton import _div, scale_parts
from ..roi_pool.triton import pool_window

_BLOCK_P = 64
_BLOCK_C = 16


@triton.jit
def _windows(
    rois_ptr,
    S_HI,
    S_MID,
    S_LO,
    C,
    H,
    W,
    PH,
    PW,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    k = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = (tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    pmask = p < PH * PW
    mask = pmask[:, None] & (c < C)[None, :]
    b, hs, he, ws, we = pool_window(rois_ptr, k, p, S_HI, S_MID, S_LO, PH, PW, H - 1, W - 1, 0, ACC)
    chan = c[None, :] * (PH * PW) + p[:, None]
    out_off = (k * C + c[None, :]) * (PH * PW) + p[:, None]
    area = (he - hs) * (we - ws)
    empty = (he <= hs) | (we <= ws)
    rows = tl.max(tl.where(pmask, he - hs, 0), axis=0)
    cols = tl.max(tl.where(pmask, we - ws, 0), axis=0)
    return hs, he, ws, we, b, chan, out_off, area, empty, rows, cols, pmask, mask


@triton.jit
def _ps_roi_pool_fwd_kernel(
    x_ptr,
    rois_ptr,
    out_ptr,
    S_HI,
    S_MID,
    S_LO,
    C,
    H,
    W,
    s_n,
    s_c,
    s_h,
    s_w,
    PH,
    PW,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    hs, he, ws, we, b, chan, out_off, area, empty, rows, cols, pmask, mask = _windows(
        rois_ptr, S_HI, S_MID, S_LO, C, H, W, PH, PW, ACC, BLOCK_P, BLOCK_C
    )
    base = x_ptr + b * s_n + chan * s_c
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    for dh in range(0, rows):
        h = hs + dh
        for dw in range(0, cols):
            w = ws + dw
            m = ((h < he) & (w < we) & pmask)[:, None] & mask
            acc += tl.load(
                base + (h.to(tl.int64) * s_h + w.to(tl.int64) * s_w)[:, None], mask=m, other=0.0
            ).to(ACC)
    out = tl.where(empty[:, None], 0.0, _div(acc, tl.maximum(area, 1)[:, None]))
    tl.store(out_ptr + out_off, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ps_roi_pool_bwd_kernel(
    g_ptr,
    rois_ptr,
    gi_ptr,
    S_HI,
    S_MID,
    S_LO,
    C,
    H,
    W,
    s_n,
    s_c,
    s_h,
    s_w,
    PH,
    PW,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    hs, he, ws, we, b, chan, out_off, area, empty, rows, cols, pmask, mask = _windows(
        rois_ptr, S_HI, S_MID, S_LO, C, H, W, PH, PW, ACC, BLOCK_P, BLOCK_C
    )
    base = gi_ptr + b * s_n + chan * s_c
    g = _div(tl.load(g_ptr + out_off, mask=mask, other=0.0).to(ACC), tl.maximum(area, 1)[:, None])
    for dh in range(0, rows):
        h = hs + dh
        for dw in range(0, cols):
            w = ws + dw
            m = ((h < he) & (w < we) & pmask)[:, None] & mask
            tl.atomic_add(
                base + (h.to(tl.int64) * s_h + w.to(tl.int64) * s_w)[:, None],
                g,
                mask=m,
                sem="relaxed",
            )


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _grid(k, bins, c_out):
    block_p = min(triton.next_power_of_2(bins), _BLOCK_P)
    block_c = min(triton.next_power_of_2(c_out), _BLOCK_C)
    return (k, triton.cdiv(bins, block_p), triton.cdiv(c_out, block_c)), block_p, block_c


def ps_roi_pool_forward(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> Tensor:
    n_img, channels, height, width = input.shape
    bins = pooled_height * pooled_width
    c_out = channels // bins
    k = rois.shape[0]
    out = torch.empty(
        (k, c_out, pooled_height, pooled_width), dtype=input.dtype, device=input.device
    )
    if out.numel() == 0 or height == 0 or width == 0:
        return out.zero_()
    x = input.contiguous()
    grid, block_p, block_c = _grid(k, bins, c_out)
    with torch.cuda.device(input.device) if input.is_cuda else nullcontext():
        _ps_roi_pool_fwd_kernel[grid](
            x,
            rois.contiguous(),
            out,
            *scale_parts(spatial_scale),
            c_out,
            height,
            width,
            *x.stride(),
            pooled_height,
            pooled_width,
            ACC=_tl_dtype(acc_dtype(input.dtype)),
            BLOCK_P=block_p,
            BLOCK_C=block_c,
            num_warps=4,
            enable_fp_fusion=False,
        )
    return out


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
    gi = torch.zeros((batch_size, channels, height, width), dtype=acc, device=grad.device)
    if k == 0 or c_out == 0 or gi.numel() == 0:
        return gi.to(grad.dtype)
    g = grad.contiguous()
    grid, block_p, block_c = _grid(k, bins, c_out)
    with torch.cuda.device(grad.device) if grad.is_cuda else nullcontext():
        _ps_roi_pool_bwd_kernel[grid](
            g,
            rois.contiguous(),
            gi,
            *scale_parts(spatial_scale),
            c_out,
            height,
            width,
            *gi.stride(),
            pooled_height,
            pooled_width,
            ACC=_tl_dtype(acc),
            BLOCK_P=block_p,
            BLOCK_C=block_c,
            num_warps=4,
            enable_fp_fusion=False,
        )
    return gi.to(grad.dtype)
