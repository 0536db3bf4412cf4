"""Triton kernels for DeNet's sparse sampling (semantics in ``reference.py``).

One program handles ``BLOCK_N`` boxes x ``BLOCK_F`` features of one image and walks the ``G x G``
grid: lanes run along the box axis, which is the contiguous axis of the output
``[B, G*G*F + 2, N]``, so every store is coalesced; the feature reads are data-dependent gathers.
The backward pass scatters with atomic adds into a float32 (float64 for float64 inputs) buffer,
as DeNet's ``atomicAdd`` kernel does, so its summation order is not deterministic.
FMA contraction is disabled so that sample coordinates round exactly as in the reference.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from .reference import acc_dtype, coord_dtype, grid_step

_BLOCK_N = 64
_BLOCK_F = 32


@triton.jit
def _axis(lo, hi, g, size, G: tl.constexpr, K: tl.constexpr):
    extent = hi - lo
    if G == 1:
        p = lo + extent * 0.5
    else:
        p = lo + (g * extent) * K
    p = p * size
    return tl.minimum(tl.maximum(p, 0.0), size - 1.0)


@triton.jit
def _lround(p, size):
    r = tl.floor(p)
    r = tl.where(p - r >= 0.5, r + 1.0, r)
    return tl.minimum(tl.maximum(r.to(tl.int32), 0), size - 1)


@triton.jit
def _load_boxes(box_ptr, b, n, N, nmask):
    base = box_ptr + (b * N + n) * 4
    x0 = tl.load(base + 0, mask=nmask, other=0.0)
    y0 = tl.load(base + 1, mask=nmask, other=0.0)
    x1 = tl.load(base + 2, mask=nmask, other=0.0)
    y1 = tl.load(base + 3, mask=nmask, other=0.0)
    return x0, y0, x1, y1


@triton.jit
def _sparse_sample_fwd_kernel(
    feat_ptr,
    box_ptr,
    out_ptr,
    N,
    F,
    H,
    W,
    G: tl.constexpr,
    K: tl.constexpr,
    BILINEAR: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_f = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    nmask = n < N
    fmask = f < F
    mask = fmask[:, None] & nmask[None, :]
    x0, y0, x1, y1 = _load_boxes(box_ptr, b, n, N, nmask)
    C = G * G * F + 2
    out_base = out_ptr + b * C * N
    feat_rows = feat_ptr + (b * F + f[:, None]) * H * W
    out_ty = out_ptr.dtype.element_ty
    for gy in range(G):
        py = _axis(y0, y1, gy, H, G, K)
        if BILINEAR:
            fy = tl.floor(py)
            ly = (py - fy).to(ACC)
            ylo = tl.minimum(tl.maximum(fy.to(tl.int32), 0), H - 1)
            yhi = tl.minimum(ylo + 1, H - 1)
        else:
            ys = _lround(py, H)
        for gx in range(G):
            px = _axis(x0, x1, gx, W, G, K)
            if BILINEAR:
                fx = tl.floor(px)
                lx = (px - fx).to(ACC)
                xlo = tl.minimum(tl.maximum(fx.to(tl.int32), 0), W - 1)
                xhi = tl.minimum(xlo + 1, W - 1)
                v00 = tl.load(feat_rows + (ylo * W + xlo)[None, :], mask=mask, other=0.0).to(ACC)
                v01 = tl.load(feat_rows + (ylo * W + xhi)[None, :], mask=mask, other=0.0).to(ACC)
                v10 = tl.load(feat_rows + (yhi * W + xlo)[None, :], mask=mask, other=0.0).to(ACC)
                v11 = tl.load(feat_rows + (yhi * W + xhi)[None, :], mask=mask, other=0.0).to(ACC)
                hy = 1.0 - ly
                hx = 1.0 - lx
                v = (
                    v00 * (hy * hx)[None, :]
                    + v01 * (hy * lx)[None, :]
                    + v10 * (ly * hx)[None, :]
                    + v11 * (ly * lx)[None, :]
                )
            else:
                xs = _lround(px, W)
                v = tl.load(feat_rows + (ys * W + xs)[None, :], mask=mask, other=0.0)
            c = (gy * G + gx) * F + f
            tl.store(out_base + c[:, None] * N + n[None, :], v.to(out_ty), mask=mask)
    if pid_f == 0:
        # DeNet's two extra channels: height first, then width.
        tl.store(out_base + (G * G * F) * N + n, (y1 - y0).to(out_ty), mask=nmask)
        tl.store(out_base + (G * G * F + 1) * N + n, (x1 - x0).to(out_ty), mask=nmask)


@triton.jit
def _sparse_sample_bwd_kernel(
    grad_ptr,
    box_ptr,
    acc_ptr,
    N,
    F,
    H,
    W,
    G: tl.constexpr,
    K: tl.constexpr,
    BILINEAR: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_f = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    nmask = n < N
    fmask = f < F
    mask = fmask[:, None] & nmask[None, :]
    x0, y0, x1, y1 = _load_boxes(box_ptr, b, n, N, nmask)
    C = G * G * F + 2
    grad_base = grad_ptr + b * C * N
    acc_rows = acc_ptr + (b * F + f[:, None]) * H * W
    for gy in range(G):
        py = _axis(y0, y1, gy, H, G, K)
        if BILINEAR:
            fy = tl.floor(py)
            ly = (py - fy).to(ACC)
            ylo = tl.minimum(tl.maximum(fy.to(tl.int32), 0), H - 1)
            yhi = tl.minimum(ylo + 1, H - 1)
        else:
            ys = _lround(py, H)
        for gx in range(G):
            c = (gy * G + gx) * F + f
            g = tl.load(grad_base + c[:, None] * N + n[None, :], mask=mask, other=0.0).to(ACC)
            px = _axis(x0, x1, gx, W, G, K)
            if BILINEAR:
                fx = tl.floor(px)
                lx = (px - fx).to(ACC)
                xlo = tl.minimum(tl.maximum(fx.to(tl.int32), 0), W - 1)
                xhi = tl.minimum(xlo + 1, W - 1)
                hy = 1.0 - ly
                hx = 1.0 - lx
                tl.atomic_add(
                    acc_rows + (ylo * W + xlo)[None, :], g * (hy * hx)[None, :], mask=mask
                )
                tl.atomic_add(
                    acc_rows + (ylo * W + xhi)[None, :], g * (hy * lx)[None, :], mask=mask
                )
                tl.atomic_add(
                    acc_rows + (yhi * W + xlo)[None, :], g * (ly * hx)[None, :], mask=mask
                )
                tl.atomic_add(
                    acc_rows + (yhi * W + xhi)[None, :], g * (ly * lx)[None, :], mask=mask
                )
            else:
                xs = _lround(px, W)
                tl.atomic_add(acc_rows + (ys * W + xs)[None, :], g, mask=mask)


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _grid(bsz: int, n: int, f: int):
    return (triton.cdiv(n, _BLOCK_N), triton.cdiv(f, _BLOCK_F), bsz)


def sparse_sample_forward(features: Tensor, boxes: Tensor, grid_size: int, mode: str) -> Tensor:
    features = features.contiguous()
    boxes = boxes.to(coord_dtype(boxes)).contiguous()
    bsz, f, h, w = features.shape
    n = boxes.shape[1]
    out = torch.empty(
        (bsz, grid_size * grid_size * f + 2, n), dtype=features.dtype, device=features.device
    )
    if out.numel() == 0:
        return out
    # At least one feature block, so that the height/width channels are written when F = 0.
    _sparse_sample_fwd_kernel[_grid(bsz, n, max(f, 1))](
        features,
        boxes,
        out,
        n,
        f,
        h,
        w,
        G=grid_size,
        K=grid_step(grid_size),
        BILINEAR=(mode == "bilinear"),
        ACC=_tl_acc(acc_dtype(features)),
        BLOCK_N=_BLOCK_N,
        BLOCK_F=_BLOCK_F,
        enable_fp_fusion=False,
    )
    return out


def sparse_sample_backward(
    grad: Tensor, boxes: Tensor, num_features: int, h: int, w: int, grid_size: int, mode: str
) -> Tensor:
    grad = grad.contiguous()
    boxes = boxes.to(coord_dtype(boxes)).contiguous()
    bsz, _, n = grad.shape
    acc = torch.zeros((bsz, num_features, h, w), dtype=acc_dtype(grad), device=grad.device)
    if n and acc.numel():
        _sparse_sample_bwd_kernel[_grid(bsz, n, num_features)](
            grad,
            boxes,
            acc,
            n,
            num_features,
            h,
            w,
            G=grid_size,
            K=grid_step(grid_size),
            BILINEAR=(mode == "bilinear"),
            ACC=_tl_acc(acc.dtype),
            BLOCK_N=_BLOCK_N,
            BLOCK_F=_BLOCK_F,
            enable_fp_fusion=False,
        )
    return acc.to(grad.dtype)
