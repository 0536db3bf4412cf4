"""Triton kernels for deformable (position-sensitive) RoI pooling (semantics in ``reference.py``).

One program handles ``BLOCK`` output elements (channel, bin) of one RoI, the original's thread
layout; each lane loops over its ``sample_per_part**2`` samples. The backward pass recounts the
valid samples, then scatters ``grad / count`` into a float32 (float64 for float64 inputs) input
gradient with atomic adds and accumulates the lane's offset gradient over its samples in
registers before one atomic add per lane, so its summation order is not deterministic. The
atomics are relaxed: Triton's default (acq_rel) brackets every one with a memory barrier and an
L1 invalidation on sm_90, and only atomicity is needed here. FMA
contraction is disabled so that sample positions round exactly as in the reference.
"""

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._dispatch import interpreting
from .reference import compute_dtype


@triton.jit
def _round_half_away(x):
    a = tl.abs(x)
    r = tl.floor(a)
    r = tl.where(a - r >= 0.5, r + 1.0, r)
    return tl.where(x < 0, -r, r)


@triton.jit
def _bins(
    rois_ptr,
    off_ptr,
    k,
    e,
    e_ok,
    spatial_scale,
    trans_std,
    C,
    H,
    W,
    D,
    CEACH,
    NCLS,
    OH: tl.constexpr,
    OW: tl.constexpr,
    PART_H: tl.constexpr,
    PART_W: tl.constexpr,
    G: tl.constexpr,
    SPP: tl.constexpr,
    HAS_OFF: tl.constexpr,
    ACC: tl.constexpr,
):
    """Per output element ``e = (d*OH + ph)*OW + pw`` of RoI ``k``: the input plane, the first
    sample and the sub-bin steps, plus what the offset gradient needs."""
    r = rois_ptr + k * 5
    bidx = tl.load(r).to(tl.int64)
    sw = _round_half_away(tl.load(r + 1).to(ACC)) * spatial_scale - 0.5
    sh = _round_half_away(tl.load(r + 2).to(ACC)) * spatial_scale - 0.5
    ew = (_round_half_away(tl.load(r + 3).to(ACC)) + 1.0) * spatial_scale - 0.5
    eh = (_round_half_away(tl.load(r + 4).to(ACC)) + 1.0) * spatial_scale - 0.5
    roi_w = tl.maximum(ew - sw, 0.1)
    roi_h = tl.maximum(eh - sh, 0.1)
    bin_w = roi_w / OW
    bin_h = roi_h / OH
    sub_w = bin_w / SPP
    sub_h = bin_h / SPP
    pw = e % OW
    ph = (e // OW) % OH
    d = e // (OH * OW)
    gw = tl.minimum((pw * G) // OW, G - 1)
    gh = tl.minimum((ph * G) // OH, G - 1)
    c = (d * G + gh) * G + gw
    plane = (bidx * C + c) * H * W
    wstart = pw.to(ACC) * bin_w + sw
    hstart = ph.to(ACC) * bin_h + sh
    cls = d // CEACH
    t_off = ((k * NCLS + cls) * 2 * PART_H + (ph * PART_H) // OH) * PART_W + (pw * PART_W) // OW
    if HAS_OFF:
        tx = tl.load(off_ptr + t_off, mask=e_ok, other=0.0).to(ACC) * trans_std
        ty = tl.load(off_ptr + t_off + PART_H * PART_W, mask=e_ok, other=0.0).to(ACC) * trans_std
        wstart = wstart + tx * roi_w
        hstart = hstart + ty * roi_h
    return plane, wstart, hstart, sub_w, sub_h, roi_w, roi_h, t_off


@triton.jit
def _sample(wstart, hstart, sub_w, sub_h, ih, iw, H, W):
    w = wstart + iw * sub_w
    h = hstart + ih * sub_h
    valid = (w >= -0.5) & (w <= W - 0.5) & (h >= -0.5) & (h <= H - 0.5)
    w = tl.minimum(tl.maximum(w, 0.0), W - 1.0)
    h = tl.minimum(tl.maximum(h, 0.0), H - 1.0)
    x0 = tl.floor(w)
    y0 = tl.floor(h)
    dx = w - x0
    dy = h - y0
    x1 = tl.ceil(w).to(tl.int32)
    y1 = tl.ceil(h).to(tl.int32)
    return valid, x0.to(tl.int32), y0.to(tl.int32), x1, y1, dx, dy


@triton.jit
def _fwd_kernel(
    x_ptr,
    rois_ptr,
    off_ptr,
    out_ptr,
    params_ptr,
    C,
    H,
    W,
    D,
    CEACH,
    NCLS,
    OH: tl.constexpr,
    OW: tl.constexpr,
    PART_H: tl.constexpr,
    PART_W: tl.constexpr,
    G: tl.constexpr,
    SPP: tl.constexpr,
    HAS_OFF: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    k = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    e_ok = e < D * OH * OW
    plane, wstart, hstart, sub_w, sub_h, roi_w, roi_h, t_off = _bins(
        rois_ptr,
        off_ptr,
        k,
        e,
        e_ok,
        tl.load(params_ptr),
        tl.load(params_ptr + 1),
        C,
        H,
        W,
        D,
        CEACH,
        NCLS,
        OH,
        OW,
        PART_H,
        PART_W,
        G,
        SPP,
        HAS_OFF,
        ACC,
    )
    total = tl.zeros((BLOCK,), dtype=ACC)
    count = tl.zeros((BLOCK,), dtype=ACC)
    for ih in range(SPP):
        for iw in range(SPP):
            valid, x0, y0, x1, y1, dx, dy = _sample(wstart, hstart, sub_w, sub_h, ih, iw, H, W)
            ok = valid & e_ok
            u00 = tl.load(x_ptr + plane + y0 * W + x0, mask=ok, other=0.0).to(ACC)
            u01 = tl.load(x_ptr + plane + y1 * W + x0, mask=ok, other=0.0).to(ACC)
            u10 = tl.load(x_ptr + plane + y0 * W + x1, mask=ok, other=0.0).to(ACC)
            u11 = tl.load(x_ptr + plane + y1 * W + x1, mask=ok, other=0.0).to(ACC)
            v = (
                (1 - dx) * (1 - dy) * u00
                + (1 - dx) * dy * u01
                + dx * (1 - dy) * u10
                + dx * dy * u11
            )
            total += tl.where(ok, v, 0.0)
            count += tl.where(ok, 1.0, 0.0)
    out = tl.where(count > 0, total / tl.maximum(count, 1.0), 0.0)
    tl.store(out_ptr + k * (D * OH * OW) + e, out.to(out_ptr.dtype.element_ty), mask=e_ok)


@triton.jit
def _bwd_kernel(
    x_ptr,
    rois_ptr,
    off_ptr,
    grad_ptr,
    gx_ptr,
    goff_ptr,
    params_ptr,
    C,
    H,
    W,
    D,
    CEACH,
    NCLS,
    OH: tl.constexpr,
    OW: tl.constexpr,
    PART_H: tl.constexpr,
    PART_W: tl.constexpr,
    G: tl.constexpr,
    SPP: tl.constexpr,
    HAS_OFF: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    k = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    e_ok = e < D * OH * OW
    std = tl.load(params_ptr + 1)
    plane, wstart, hstart, sub_w, sub_h, roi_w, roi_h, t_off = _bins(
        rois_ptr,
        off_ptr,
        k,
        e,
        e_ok,
        tl.load(params_ptr),
        std,
        C,
        H,
        W,
        D,
        CEACH,
        NCLS,
        OH,
        OW,
        PART_H,
        PART_W,
        G,
        SPP,
        HAS_OFF,
        ACC,
    )
    count = tl.zeros((BLOCK,), dtype=ACC)
    for ih in range(SPP):
        for iw in range(SPP):
            valid, x0, y0, x1, y1, dx, dy = _sample(wstart, hstart, sub_w, sub_h, ih, iw, H, W)
            count += tl.where(valid & e_ok, 1.0, 0.0)
    g = tl.load(grad_ptr + k * (D * OH * OW) + e, mask=e_ok, other=0.0).to(ACC)
    diff = tl.where(count > 0, g / tl.maximum(count, 1.0), 0.0)
    gtx = tl.zeros((BLOCK,), dtype=ACC)
    gty = tl.zeros((BLOCK,), dtype=ACC)
    for ih in range(SPP):
        for iw in range(SPP):
            valid, x0, y0, x1, y1, dx, dy = _sample(wstart, hstart, sub_w, sub_h, ih, iw, H, W)
            ok = valid & e_ok
            tl.atomic_add(
                gx_ptr + plane + y0 * W + x0, (1 - dx) * (1 - dy) * diff, mask=ok, sem="relaxed"
            )
            tl.atomic_add(
                gx_ptr + plane + y1 * W + x0, (1 - dx) * dy * diff, mask=ok, sem="relaxed"
            )
            tl.atomic_add(
                gx_ptr + plane + y0 * W + x1, dx * (1 - dy) * diff, mask=ok, sem="relaxed"
            )
            tl.atomic_add(gx_ptr + plane + y1 * W + x1, dx * dy * diff, mask=ok, sem="relaxed")
            if HAS_OFF:
                u00 = tl.load(x_ptr + plane + y0 * W + x0, mask=ok, other=0.0).to(ACC)
                u01 = tl.load(x_ptr + plane + y1 * W + x0, mask=ok, other=0.0).to(ACC)
                u10 = tl.load(x_ptr + plane + y0 * W + x1, mask=ok, other=0.0).to(ACC)
                u11 = tl.load(x_ptr + plane + y1 * W + x1, mask=ok, other=0.0).to(ACC)
                gtx += tl.where(ok, ((u11 - u01) * dy + (u10 - u00) * (1 - dy)) * diff, 0.0)
                gty += tl.where(ok, ((u11 - u10) * dx + (u01 - u00) * (1 - dx)) * diff, 0.0)
    if HAS_OFF:
        tl.atomic_add(goff_ptr + t_off, gtx * (std * roi_w), mask=e_ok, sem="relaxed")
        tl.atomic_add(
            goff_ptr + t_off + PART_H * PART_W, gty * (std * roi_h), mask=e_ok, sem="relaxed"
        )


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _launch(
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    output_size,
    group_size,
    part_size,
    sample_per_part,
):
    c = input.shape[1]
    d = c // (group_size * group_size)
    ncls = offset.shape[1] // 2 if offset is not None else 1
    n_out = d * output_size[0] * output_size[1]
    block = max(16, min(1024 if interpreting() else 128, triton.next_power_of_2(n_out)))
    grid = (rois.shape[0], triton.cdiv(n_out, block))
    consts = dict(
        OH=output_size[0],
        OW=output_size[1],
        PART_H=part_size[0],
        PART_W=part_size[1],
        G=group_size,
        SPP=sample_per_part,
        HAS_OFF=offset is not None,
        ACC=_tl_acc(compute_dtype(input.dtype)),
        BLOCK=block,
        num_warps=4,
        enable_fp_fusion=False,
    )
    return grid, (c, input.shape[2], input.shape[3], d, d // ncls, ncls), consts


_PARAMS: dict[tuple[float, float, torch.dtype, torch.device], Tensor] = {}


def _params(spatial_scale: float, trans_std: float, input: Tensor) -> Tensor:
    # The float arguments travel in a tensor of the compute dtype: Triton passes Python floats as
    # float32, which would cost float64 inputs their exactness. Cached: a fresh host-to-device
    # copy per call would cost more than the forward kernel of a small problem.
    key = (float(spatial_scale), float(trans_std), compute_dtype(input.dtype), input.device)
    t = _PARAMS.get(key)
    if t is None:
        if len(_PARAMS) > 64:
            _PARAMS.clear()
        t = _PARAMS[key] = torch.tensor(key[:2], dtype=key[2], device=key[3])
    return t


def deform_roi_pool_forward(
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    output_size: Sequence[int],
    spatial_scale: float,
    group_size: int,
    part_size: Sequence[int],
    sample_per_part: int,
    trans_std: float,
) -> Tensor:
    d = input.shape[1] // (group_size * group_size)
    out = torch.empty(
        (rois.shape[0], d, output_size[0], output_size[1]), dtype=input.dtype, device=input.device
    )
    if out.numel() == 0:
        return out
    grid, sizes, consts = _launch(
        input, rois, offset, output_size, group_size, part_size, sample_per_part
    )
    x = input.contiguous()
    rois = rois.to(compute_dtype(input.dtype)).contiguous()
    off = offset.contiguous() if offset is not None else rois
    _fwd_kernel[grid](x, rois, off, out, _params(spatial_scale, trans_std, input), *sizes, **consts)
    return out


def deform_roi_pool_backward(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    output_size: Sequence[int],
    spatial_scale: float,
    group_size: int,
    part_size: Sequence[int],
    sample_per_part: int,
    trans_std: float,
):
    acc = compute_dtype(input.dtype)
    g_in = torch.zeros(input.shape, dtype=acc, device=input.device)
    g_off = (
        torch.zeros(offset.shape, dtype=acc, device=input.device)
        if offset is not None
        else input.new_empty((0,))
    )
    if grad.numel() and g_in.numel():
        grid, sizes, consts = _launch(
            input, rois, offset, output_size, group_size, part_size, sample_per_part
        )
        x = input.contiguous()
        rois = rois.to(acc).contiguous()
        off = offset.contiguous() if offset is not None else rois
        _bwd_kernel[grid](
            x,
            rois,
            off,
            grad.contiguous(),
            g_in,
            g_off,
            _params(spatial_scale, trans_std, input),
            *sizes,
            **consts,
        )
    return g_in.to(input.dtype), g_off.to(offset.dtype if offset is not None else input.dtype)
