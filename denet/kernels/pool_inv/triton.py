"""Triton kernels for pool-inverse (nearest upsampling by an integer factor) and its block-sum
gradient. Both are one pass over contiguous memory with one program per ``BLOCK`` elements."""

import torch
import triton
import triton.language as tl
from torch import Tensor

_BLOCK = 1024


@triton.jit
def _pool_inv_fwd_kernel(
    x_ptr, out_ptr, total, H, W, SH: tl.constexpr, SW: tl.constexpr, BLOCK: tl.constexpr
):
    # One lane per output element: stores are contiguous, each input is read sh*sw times from cache.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    ow_ = W * SW
    ox = offs % ow_
    t = offs // ow_
    oy = t % (H * SH)
    bc = t // (H * SH)
    src = (bc * H + oy // SH) * W + ox // SW
    v = tl.load(x_ptr + src, mask=mask)
    tl.store(out_ptr + offs, v, mask=mask)


@triton.jit
def _pool_inv_bwd_kernel(
    g_ptr,
    out_ptr,
    total,
    H,
    W,
    SH: tl.constexpr,
    SW: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One lane per input element, summing its sh x sw block: a gather, so no atomics are needed.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    x = offs % W
    t = offs // W
    y = t % H
    bc = t // H
    ow_ = W * SW
    base = (bc * (H * SH) + y * SH) * ow_ + x * SW
    acc = tl.zeros([BLOCK], dtype=ACC)
    for i in tl.static_range(SH):
        for j in tl.static_range(SW):
            acc += tl.load(g_ptr + base + i * ow_ + j, mask=mask, other=0).to(ACC)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def pool_inv_forward(x: Tensor, sh: int, sw: int) -> Tensor:
    x = x.contiguous()
    b, c, h, w = x.shape
    out = torch.empty((b, c, h * sh, w * sw), dtype=x.dtype, device=x.device)
    total = out.numel()
    if total:
        _pool_inv_fwd_kernel[(triton.cdiv(total, _BLOCK),)](
            x, out, total, h, w, SH=sh, SW=sw, BLOCK=_BLOCK
        )
    return out


def pool_inv_backward(grad: Tensor, sh: int, sw: int) -> Tensor:
    grad = grad.contiguous()
    b, c, oh, ow = grad.shape
    h, w = oh // sh, ow // sw
    out = torch.empty((b, c, h, w), dtype=grad.dtype, device=grad.device)
    total = out.numel()
    if total:
        acc = tl.float64 if grad.dtype == torch.float64 else tl.float32
        _pool_inv_bwd_kernel[(triton.cdiv(total, _BLOCK),)](
            grad, out, total, h, w, SH=sh, SW=sw, ACC=acc, BLOCK=_BLOCK
        )
    return out
