"""Triton kernels for box IoU and the NMS family (semantics in ``reference.py``).

- ``_iou_kernel``: the IoU matrix tile by tile (``box_iou`` and soft-NMS's rescoring table).
- ``_nms_mask_kernel``: torchvision's CUDA scheme, a suppression bitmask in score order:
  bit ``i % 32`` of ``mask[j, i // 32]`` is set when box j (earlier in the order) has
  IoU > threshold with box i; with ``STRICT`` also only when j's score is strictly higher
  (DeNet's rule, where equal scores do not suppress).
- ``_or_rows_kernel``: OR of the mask rows of the boxes still kept, i.e. the set of boxes they
  suppress. Greedy NMS repeats it to the fixed point of ``reference.greedy_keep`` (rounds =
  longest suppression chain); DeNet's rule needs a single pass over all rows.

IoU uses round-to-nearest division and no FMA contraction, so it equals torchvision's (and the
reference's) bit for bit, and the threshold is rounded down as in the reference.
"""

from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from .reference import descending_order, iou_dtype, soft_nms_loop, soft_nms_weights, threshold_below

_WORD = 32  # boxes per mask word (int32)


@triton.jit
def _iou(ax0, ay0, ax1, ay1, bx0, by0, bx1, by1, CDT: tl.constexpr, DIV_RN: tl.constexpr):
    # The intersection extent is formed in the input dtype, then upcast (torchvision's _upcast).
    w = (tl.minimum(ax1, bx1) - tl.maximum(ax0, bx0)).to(CDT)
    h = (tl.minimum(ay1, by1) - tl.maximum(ay0, by0)).to(CDT)
    w = tl.maximum(w, 0.0)
    h = tl.maximum(h, 0.0)
    inter = w * h
    area_a = (ax1.to(CDT) - ax0.to(CDT)) * (ay1.to(CDT) - ay0.to(CDT))
    area_b = (bx1.to(CDT) - bx0.to(CDT)) * (by1.to(CDT) - by0.to(CDT))
    union = area_a + area_b - inter
    if DIV_RN:
        return tl.div_rn(inter, union)
    else:
        return inter / union


@triton.jit
def _load_box(ptr, idx, mask):
    base = ptr + idx * 4
    return (
        tl.load(base + 0, mask=mask, other=0.0),
        tl.load(base + 1, mask=mask, other=0.0),
        tl.load(base + 2, mask=mask, other=0.0),
        tl.load(base + 3, mask=mask, other=0.0),
    )


@triton.jit
def _iou_kernel(
    a_ptr,
    b_ptr,
    out_ptr,
    N,
    M,
    CDT: tl.constexpr,
    DIV_RN: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    batch = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    cmask = cols < M
    ax0, ay0, ax1, ay1 = _load_box(a_ptr + batch * N * 4, rows, rmask)
    bx0, by0, bx1, by1 = _load_box(b_ptr + batch * M * 4, cols, cmask)
    iou = _iou(
        ax0[:, None],
        ay0[:, None],
        ax1[:, None],
        ay1[:, None],
        bx0[None, :],
        by0[None, :],
        bx1[None, :],
        by1[None, :],
        CDT,
        DIV_RN,
    )
    out = out_ptr + batch * N * M + rows[:, None].to(tl.int64) * M + cols[None, :]
    tl.store(out, iou, mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _nms_mask_kernel(
    box_ptr,
    score_ptr,
    thr_ptr,
    mask_ptr,
    n,
    n_words,
    CDT: tl.constexpr,
    DIV_RN: tl.constexpr,
    STRICT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    words = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    bit = tl.arange(0, 32)
    rmask = rows < n
    cols = words[:, None] * 32 + bit[None, :]  # [BLOCK_W, 32]
    cmask = cols < n
    thr = tl.load(thr_ptr)
    ax0, ay0, ax1, ay1 = _load_box(box_ptr, rows, rmask)
    bx0, by0, bx1, by1 = _load_box(box_ptr, cols, cmask)
    iou = _iou(
        ax0[:, None, None],
        ay0[:, None, None],
        ax1[:, None, None],
        ay1[:, None, None],
        bx0[None, :, :],
        by0[None, :, :],
        bx1[None, :, :],
        by1[None, :, :],
        CDT,
        DIV_RN,
    )
    sup = (iou > thr) & (cols[None, :, :] > rows[:, None, None]) & cmask[None, :, :]
    if STRICT:
        sa = tl.load(score_ptr + rows, mask=rmask, other=0.0)
        sb = tl.load(score_ptr + cols, mask=cmask, other=0.0)
        sup = sup & (sa[:, None, None] > sb[None, :, :])
    # Distinct powers of two, so their sum is their OR (bit 31 wraps to the sign bit).
    packed = tl.sum(tl.where(sup, 1 << bit[None, None, :], 0), axis=2)
    out = mask_ptr + rows[:, None].to(tl.int64) * n_words + words[None, :]
    tl.store(out, packed, mask=rmask[:, None] & (words[None, :] < n_words))


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _or_rows_kernel(
    mask_ptr, keep_ptr, out_ptr, n, n_words, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    words = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    rmask = rows < n
    wmask = words < n_words
    keep = tl.load(keep_ptr + rows, mask=rmask, other=0) != 0
    m = tl.load(
        mask_ptr + rows[:, None].to(tl.int64) * n_words + words[None, :],
        mask=(rmask & keep)[:, None] & wmask[None, :],
        other=0,
    )
    acc = tl.reduce(m, 0, _bit_or)
    tl.atomic_or(out_ptr + words, acc, mask=wmask & (acc != 0))


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``[B, N, 4] x [B, M, 4] -> [B, N, M]``."""
    cdt = iou_dtype(boxes1.dtype)
    b1 = boxes1.contiguous()
    b2 = boxes2.to(boxes1.dtype).contiguous()
    bsz, n, m = b1.shape[0], b1.shape[1], b2.shape[1]
    out = torch.empty((bsz, n, m), dtype=cdt, device=b1.device)
    if out.numel():
        block_n, block_m = 32, 64
        grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m), bsz)
        _iou_kernel[grid](
            b1,
            b2,
            out,
            n,
            m,
            CDT=_tl_dtype(cdt),
            DIV_RN=(cdt == torch.float32),
            BLOCK_N=block_n,
            BLOCK_M=block_m,
            enable_fp_fusion=False,
        )
    return out


def _suppression_mask(
    boxes_sorted: Tensor, scores_sorted: Tensor, iou_threshold: float, strict: bool
) -> Tensor:
    n = boxes_sorted.shape[0]
    n_words = triton.cdiv(n, _WORD)
    cdt = iou_dtype(boxes_sorted.dtype)
    thr = torch.full(
        (1,), threshold_below(iou_threshold, cdt), dtype=cdt, device=boxes_sorted.device
    )
    mask = torch.empty((n, n_words), dtype=torch.int32, device=boxes_sorted.device)
    block_r, block_w = 32, 2
    grid = (triton.cdiv(n, block_r), triton.cdiv(n_words, block_w))
    _nms_mask_kernel[grid](
        boxes_sorted.contiguous(),
        scores_sorted.contiguous(),
        thr,
        mask,
        n,
        n_words,
        CDT=_tl_dtype(cdt),
        DIV_RN=(cdt == torch.float32),
        STRICT=strict,
        BLOCK_R=block_r,
        BLOCK_W=block_w,
        enable_fp_fusion=False,
    )
    return mask


def _suppressed_by(mask: Tensor, keep: Tensor) -> Tensor:
    """Boolean [n]: some kept row of ``mask`` has the box's bit set."""
    n, n_words = mask.shape
    words = torch.zeros(n_words, dtype=torch.int32, device=mask.device)
    block_r, block_w = 64, 32
    grid = (triton.cdiv(n, block_r), triton.cdiv(n_words, block_w))
    _or_rows_kernel[grid](mask, keep, words, n, n_words, BLOCK_R=block_r, BLOCK_W=block_w)
    shifts = torch.arange(_WORD, dtype=torch.int32, device=mask.device)
    return ((words[:, None] >> shifts) & 1).view(-1)[:n].bool()


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    order = descending_order(scores)
    mask = _suppression_mask(boxes[order], scores[order], iou_threshold, strict=False)
    keep = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    while True:  # the fixed point of reference.greedy_keep, on the bitmask
        new = ~_suppressed_by(mask, keep)
        if torch.equal(new, keep):
            return order[keep]
        keep = new


def denet_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    order = descending_order(scores)
    mask = _suppression_mask(boxes[order], scores[order], iou_threshold, strict=True)
    everything = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    return order[~_suppressed_by(mask, everything)]


_SOFT_NMS_TABLE = 4096  # up to this many boxes the weight table is built at once (64 MB in float32)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    sigma: float,
    iou_threshold: float,
    method: str,
    score_threshold: float,
) -> tuple[Tensor, Tensor]:
    boxes = boxes.contiguous()
    weight_row: Callable[[Tensor], Tensor]
    if boxes.shape[0] <= _SOFT_NMS_TABLE:
        table = soft_nms_weights(box_iou(boxes[None], boxes[None])[0], sigma, iou_threshold, method)
        weight_row = table.__getitem__
    else:

        def computed_row(i: Tensor) -> Tensor:
            iou = box_iou(boxes[i][None, None], boxes[None])[0, 0]
            return soft_nms_weights(iou, sigma, iou_threshold, method)

        weight_row = computed_row

    return soft_nms_loop(weight_row, scores, score_threshold)
