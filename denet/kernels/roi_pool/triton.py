"""Triton kernels for RoIPool (semantics in ``reference.py``).

The forward program handles one RoI, ``BLOCK_P`` bins and ``BLOCK_C`` channels of a
channels-last copy of the map. It computes the integer bin windows itself, in the reference's
order of operations (the host only allocates and launches), and scans the largest window of its
bins row by row with a strict ``>``, so ties keep the first position as torchvision's loop does.
The backward pass adds each output gradient at its argmax with an atomic add into a float32
(float64 for float64) buffer. ``ps_roi_pool`` reuses :func:`pool_window`.
"""

from contextlib import nullcontext

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..roi_align.reference import acc_dtype
from ..roi_align.triton import _div, scale_parts
from .reference import FLT_MAX

_BLOCK_P = 64
_BLOCK_C = 32
_BLOCK = 1024


@triton.jit
def _round_half_away(v):
    """C's round(): halves away from zero. ``v - floor(v)`` is exact, so this is too."""
    fl = tl.floor(v)
    frac = v - fl
    up = tl.where(v >= 0, frac >= 0.5, frac > 0.5)
    return fl + up.to(v.dtype)


@triton.jit
def _corner(ptr, scale, ACC: tl.constexpr):
    v = _round_half_away(tl.load(ptr).to(ACC) * scale)
    v = tl.minimum(tl.maximum(tl.where(v == v, v, 0.0), -1.0e15), 1.0e15)  # NaN and overflow guards
    return v.to(tl.int64)


@triton.jit
def pool_window(
    rois_ptr,
    k,
    p,
    S_HI,
    S_MID,
    S_LO,
    PH,
    PW,
    CLIP_H,
    CLIP_W,
    PLUS_ONE: tl.constexpr,
    ACC: tl.constexpr,
):
    """Batch index and the window ``[hs, he) x [ws, we)`` of bins ``p`` of RoI ``k``
    (``reference.pool_windows``)."""
    scale = (tl.cast(S_HI, ACC) + tl.cast(S_MID, ACC)) + tl.cast(S_LO, ACC)  # exact: float32 parts
    roi = rois_ptr + k * 5
    b = tl.load(roi).to(tl.int64)
    x1 = _corner(roi + 1, scale, ACC)
    y1 = _corner(roi + 2, scale, ACC)
    x2 = _corner(roi + 3, scale, ACC)
    y2 = _corner(roi + 4, scale, ACC)
    bin_h = _div(tl.maximum(y2 - y1 + PLUS_ONE, 1).to(ACC), PH)
    bin_w = _div(tl.maximum(x2 - x1 + PLUS_ONE, 1).to(ACC), PW)
    ph = (p // PW).to(ACC)
    pw = (p % PW).to(ACC)
    hs = tl.minimum(tl.maximum(tl.floor(ph * bin_h).to(tl.int64) + y1, 0), CLIP_H)
    he = tl.minimum(tl.maximum(tl.ceil((ph + 1) * bin_h).to(tl.int64) + y1, 0), CLIP_H)
    ws = tl.minimum(tl.maximum(tl.floor(pw * bin_w).to(tl.int64) + x1, 0), CLIP_W)
    we = tl.minimum(tl.maximum(tl.ceil((pw + 1) * bin_w).to(tl.int64) + x1, 0), CLIP_W)
    return b, hs, he, ws, we


@triton.jit
def _roi_pool_fwd_kernel(
    x_ptr,
    rois_ptr,
    out_ptr,
    arg_ptr,
    S_HI,
    S_MID,
    S_LO,
    NEG_MAX,
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
    k = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = (tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    pmask = p < PH * PW
    mask = pmask[:, None] & (c < C)[None, :]
    b, hs, he, ws, we = pool_window(rois_ptr, k, p, S_HI, S_MID, S_LO, PH, PW, H, W, 1, ACC)
    base = x_ptr + b * s_n + c[None, :] * s_c
    empty = (
        (he <= hs) | (we <= ws) | ~pmask
    )  # padding lanes start at 0: their cast must not overflow
    best = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC) + tl.where(empty, 0.0, NEG_MAX).to(ACC)[:, None]
    arg = tl.full([BLOCK_P, BLOCK_C], -1, dtype=tl.int32)
    rows = tl.max(tl.where(pmask, he - hs, 0), axis=0)
    cols = tl.max(tl.where(pmask, we - ws, 0), axis=0)
    for dh in range(0, rows):
        h = hs + dh
        for dw in range(0, cols):
            w = ws + dw
            m = ((h < he) & (w < we) & pmask)[:, None] & mask
            v = tl.load(base + (h * s_h + w * s_w)[:, None], mask=m, other=float("-inf")).to(ACC)
            better = v > best  # NaN never wins, as in torchvision's scan
            best = tl.where(better, v, best)
            arg = tl.where(better, (h * W + w).to(tl.int32)[:, None], arg)
    out_off = (k * C + c[None, :]) * (PH * PW) + p[:, None]
    tl.store(out_ptr + out_off, best.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(arg_ptr + out_off, arg, mask=mask)


@triton.jit
def _roi_pool_bwd_kernel(
    g_ptr,
    arg_ptr,
    rois_ptr,
    gi_ptr,
    total,
    C,
    HW,
    BINS,
    ACC: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # int32 index arithmetic unless the gradient has 2**31 elements: int64 division is slow
    if WIDE:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < total
    a = tl.load(arg_ptr + offs, mask=m, other=-1)
    kc = offs // BINS
    k = kc // C
    b = tl.load(rois_ptr + k * 5, mask=m, other=0).to(tl.int64)
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(ACC)
    tl.atomic_add(gi_ptr + (b * C + (kc - k * C)) * HW + a, g, mask=m & (a >= 0), sem="relaxed")


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def roi_pool_forward(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
):
    n_img, channels, height, width = input.shape
    k = rois.shape[0]
    shape = (k, channels, pooled_height, pooled_width)
    out = torch.empty(shape, dtype=input.dtype, device=input.device)
    arg = torch.empty(shape, dtype=torch.int32, device=input.device)
    if out.numel() == 0 or height == 0 or width == 0:
        return out.zero_(), arg.fill_(-1)
    x = input.contiguous(memory_format=torch.channels_last)
    bins = pooled_height * pooled_width
    block_p = min(triton.next_power_of_2(bins), _BLOCK_P)
    block_c = min(triton.next_power_of_2(channels), _BLOCK_C)
    grid = (k, triton.cdiv(bins, block_p), triton.cdiv(channels, block_c))
    with torch.cuda.device(input.device) if input.is_cuda else nullcontext():
        _roi_pool_fwd_kernel[grid](
            x,
            rois.contiguous(),
            out,
            arg,
            *scale_parts(spatial_scale),
            -FLT_MAX,
            channels,
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
    return out, arg


def roi_pool_backward(
    grad: Tensor,
    rois: Tensor,
    argmax: Tensor,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    acc = acc_dtype(grad.dtype)
    gi = torch.zeros((batch_size, channels, height, width), dtype=acc, device=grad.device)
    total = grad.numel()
    if total == 0 or gi.numel() == 0:
        return gi.to(grad.dtype)
    bins = grad.shape[2] * grad.shape[3]
    with torch.cuda.device(grad.device) if grad.is_cuda else nullcontext():
        _roi_pool_bwd_kernel[(triton.cdiv(total, _BLOCK),)](
            grad.contiguous(),
            argmax.contiguous(),
            rois.contiguous(),
            gi,
            total,
            channels,
            height * width,
            bins,
            ACC=_tl_dtype(acc),
            WIDE=total >= 2**31,
            BLOCK=_BLOCK,
        )
    return gi.to(grad.dtype)
