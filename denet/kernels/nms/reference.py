"""Box IoU and the NMS family in plain torch: the CPU path and the test oracle.

Conventions shared with the Triton path (``triton.py``):

- IoU is torchvision's ``inter / (area1 + area2 - inter)`` on ``(x1, y1, x2, y2)`` boxes, computed
  in ``promote_types(dtype, float32)`` (torchvision's ``_upcast``), with no "+1" pixel. Two empty
  boxes give 0/0 = NaN, which suppresses nothing.
- ``iou > threshold`` means what torchvision's CPU kernel means: the float IoU against the double
  threshold. Comparing in float32 against ``float32(threshold)`` differs when that rounds up (0.3,
  0.7, ...), so the threshold is rounded *down* to the IoU dtype (:func:`threshold_below`), which
  gives the same answer for every float.
- Order: a stable sort by decreasing score, so ties keep their input order (torchvision's CPU
  kernel; its CUDA kernel sorts unstably).
"""

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor


def iou_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def threshold_below(threshold: float, dtype: torch.dtype) -> float:
    """The largest value of ``dtype`` that is <= ``threshold``: ``x > it`` iff ``x > threshold``
    for every ``x`` of that dtype."""
    if dtype == torch.float64 or math.isnan(threshold) or math.isinf(threshold):
        return float(threshold)
    t = torch.tensor(threshold, dtype=dtype)
    if float(t) > threshold:
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
    return float(t)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``[..., N, 4] x [..., M, 4] -> [..., N, M]``, torchvision's arithmetic step for step."""
    area1 = _area(boxes1)
    area2 = _area(boxes2)
    lt = torch.max(boxes1[..., None, :2], boxes2[..., None, :, :2])
    rb = torch.min(boxes1[..., None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).to(iou_dtype(boxes1.dtype)).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., None] + area2[..., None, :] - inter
    return inter / union


def _area(boxes: Tensor) -> Tensor:
    b = boxes.to(iou_dtype(boxes.dtype))
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def descending_order(scores: Tensor) -> Tensor:
    return torch.sort(scores, descending=True, stable=True)[1]


def greedy_keep(suppress: Tensor) -> Tensor:
    """Greedy NMS on a suppression matrix in score order (``suppress[j, i]`` for j before i).

    ``keep[i] = not any_{j < i}(keep[j] and suppress[j, i])`` is solved by fixed-point iteration
    from "keep everything". Entry i depends only on earlier entries, so the fixed point is unique
    and after t rounds the first t entries are final; it stops after (longest chain of
    suppressions) rounds, each one vectorised over all pairs.
    """
    keep = torch.ones(suppress.shape[0], dtype=torch.bool, device=suppress.device)
    while True:
        new = ~(suppress & keep[:, None]).any(dim=0)
        if torch.equal(new, keep):
            return keep
        keep = new


_BAND_ELEMENTS = 1 << 22


def _suppression(boxes: Tensor, iou_threshold: float) -> Tensor:
    """``iou > threshold`` for all pairs, as a bool matrix. The float IoU temporaries are built a
    band of rows at a time so that they stay near ``_BAND_ELEMENTS`` whatever N is (10k boxes
    would otherwise need several GB); the values are the same as in one piece."""
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros((0, 0), dtype=torch.bool, device=boxes.device)
    thr = threshold_below(iou_threshold, iou_dtype(boxes.dtype))
    rows = max(1, _BAND_ELEMENTS // n)
    return torch.cat([box_iou(boxes[i : i + rows], boxes) > thr for i in range(0, n, rows)])


_NMS_BLOCK = 256  # boxes decided together; measured best for 2k-10k boxes on the CPU


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS in score order (ties in input order); see :func:`sparse_nms_mask`."""
    if not sparse_applies(boxes, iou_threshold):
        return blocked_nms(boxes, scores, iou_threshold)
    order = descending_order(scores)
    keep = sparse_nms_mask(boxes, scores, torch.zeros_like(order), iou_threshold, order)
    return order[keep[order]]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each category, torchvision's per-category strategy: the same kept set as one
    NMS per category (the IoU of original, unshifted boxes), and the same final sort."""
    if sparse_applies(boxes, iou_threshold):
        mask = sparse_nms_mask(boxes, scores, idxs, iou_threshold, descending_order(scores))
    else:
        mask = torch.zeros_like(scores, dtype=torch.bool)
        for class_id in torch.unique(idxs):
            curr = torch.where(idxs == class_id)[0]
            mask[curr[blocked_nms(boxes[curr], scores[curr], iou_threshold)]] = True
    keep = torch.where(mask)[0]
    return keep[scores[keep].sort(descending=True)[1]]


# A box meets only boxes it intersects: with a threshold >= 0 a pair without a positive-area
# intersection (IoU 0, -0 or NaN) suppresses nothing, so only intersecting pairs need an IoU.
# Detection boxes are small against the image, which makes those pairs a small fraction of N^2
# (10k random boxes: about 1% of the pairs), and NMS becomes a sweep plus a sparse greedy pass.

_PAIR_CHUNK = 1 << 22  # candidate pairs whose IoU is computed at once (bounds the temporaries)


def sparse_applies(boxes: Tensor, iou_threshold: float) -> bool:
    """The sweep needs ordered coordinates (no NaN or inf) and a threshold at which disjoint
    boxes do not suppress each other; anything else takes the dense :func:`blocked_nms`."""
    return iou_threshold >= 0 and bool(torch.isfinite(boxes).all())


def strips(boxes: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each box enters every horizontal strip its y-range touches (strips half a median box
    high, so three or so per box): ``(box, strip, cell, first)`` per entry, where ``cell``
    numbers the (group, strip) pairs and ``first`` is the box's first strip. Two boxes that overlap in y
    share the strip of the larger ``y1``, which is the larger ``first``: a pair is reported
    there only, so once."""
    y1, y2 = boxes[:, 1].to(torch.float64), boxes[:, 3].to(torch.float64)
    top = float(y1.min())
    height = (y2 - y1).median().item() / 2  # measured: fewer candidates, few more entries
    height = max(height, (float(y2.max()) - top) / 256, 1e-300)  # at most 256 strips
    first = torch.floor((y1 - top) / height).to(torch.int64)
    span = (torch.floor((y2 - top) / height).to(torch.int64) - first).clamp(min=0) + 1
    box = torch.repeat_interleave(torch.arange(boxes.shape[0], device=boxes.device), span)
    strip = first.index_select(0, box) + _run_position(span, box)
    group = torch.unique(groups, return_inverse=True)[1]
    cell = torch.unique(group[box] * (int(strip.max()) + 1) + strip, return_inverse=True)[1]
    return box, strip, cell, first


def _run_position(count: Tensor, owner: Tensor) -> Tensor:
    """For ``owner = repeat_interleave(arange, count)``: each element's index within its run."""
    run_start = torch.cumsum(count, 0) - count
    return torch.arange(owner.shape[0], device=owner.device) - run_start.index_select(0, owner)


def candidate_pairs(boxes: Tensor, groups: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    """Every pair ``(a, b)`` of boxes of the same group that overlap in x and y (a superset of
    the pairs that intersect: the IoU decides), in chunks of about ``_PAIR_CHUNK`` candidates.

    Within each cell of :func:`strips`, a sweep over x: entries are sorted by
    ``key = cell * big + x1`` in float64, ``big`` wide enough that cells never mix, and the
    partners of the entry at sorted position p are positions p+1 .. end - 1, with ``end`` the
    first key above ``cell * big + x2``. Rounding of the keys is monotone, so ``x1_b < x2_a``
    still gives ``key(x1_b) <= key(x2_a)``: no overlapping pair is lost.
    """
    box, strip, cell, first = strips(boxes, groups)
    n = box.shape[0]
    x1, x2 = boxes[box, 0].to(torch.float64), boxes[box, 2].to(torch.float64)
    big = 4 * (float(torch.maximum(x1.abs().max(), x2.abs().max())) + 1)
    base = cell.to(torch.float64) * big
    order = torch.argsort(base + x1)
    key = (base + x1)[order]
    box, strip = box[order], strip[order]
    end = torch.searchsorted(key, (base + x2)[order], right=True)
    count = (end - torch.arange(1, n + 1, device=boxes.device)).clamp(min=0)
    reach = torch.cumsum(count, 0)
    lo = 0
    while lo < n:  # rows [lo, hi) give about _PAIR_CHUNK candidates
        done = int(reach[lo - 1]) if lo else 0
        hi = int(torch.searchsorted(reach, done + _PAIR_CHUNK, right=True))
        hi = min(max(hi, lo + 1), n)
        rows = torch.arange(lo, hi, device=boxes.device)
        p = torch.repeat_interleave(rows, count[lo:hi])
        q = p + 1 + _run_position(count[lo:hi], p - lo)
        # index_select: several times faster than advanced indexing for 1-d gathers
        a, b = box.index_select(0, p), box.index_select(0, q)
        larger = torch.maximum(first.index_select(0, a), first.index_select(0, b))
        once = (strip.index_select(0, p) == larger).nonzero()[:, 0]  # the strip of the larger y1
        yield a.index_select(0, once), b.index_select(0, once)
        lo = hi


def pair_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of row i of ``a`` with row i of ``b``: :func:`box_iou`'s arithmetic, element-wise."""
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    wh = (rb - lt).to(iou_dtype(a.dtype)).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (_area(a) + _area(b) - inter)


def sparse_nms_mask(
    boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float, order: Tensor
) -> Tensor:
    """Greedy NMS within each group (``order``: the visiting order), as a bool mask over the
    boxes. Only pairs from :func:`candidate_pairs` get an IoU; the pairs above the threshold
    become edges from the earlier to the later box in ``order``, and :func:`greedy_edges`
    walks them."""
    n = boxes.shape[0]
    thr = threshold_below(iou_threshold, iou_dtype(boxes.dtype))
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=order.device)
    src, dst = [], []
    for a, b in candidate_pairs(boxes, groups):
        hit = (pair_iou(boxes.index_select(0, a), boxes.index_select(0, b)) > thr).nonzero()[:, 0]
        ra = rank.index_select(0, a.index_select(0, hit))
        rb = rank.index_select(0, b.index_select(0, hit))
        src.append(torch.minimum(ra, rb))
        dst.append(torch.maximum(ra, rb))
    kept = (
        greedy_edges(n, torch.cat(src), torch.cat(dst)) if src else torch.ones(n, dtype=torch.bool)
    )
    return kept.to(boxes.device)[rank]


def greedy_edges(n: int, src: Tensor, dst: Tensor) -> Tensor:
    """``keep[i] = not any(keep[j] for edges j -> i)``, edges pointing forward (j < i), solved by
    visiting the sources in order on the host, as torchvision's CPU loop does: one numpy step per
    box that suppresses something, nothing for the others. Returns a CPU bool tensor."""
    by_src = torch.argsort(src)
    heads, counts = torch.unique_consecutive(src[by_src], return_counts=True)
    targets = dst[by_src].cpu().numpy()
    removed = np.zeros(n, dtype=bool)
    start = 0
    for head, count in zip(heads.tolist(), counts.tolist()):
        if not removed[head]:
            removed[targets[start : start + count]] = True
        start += count
    return torch.from_numpy(~removed)


def blocked_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS a block of boxes at a time, in score order. A block's boxes first meet the boxes
    already kept (a box that any of them overlaps is gone), then the survivors settle among
    themselves with :func:`greedy_keep`. The IoU is computed only against kept boxes, as in
    torchvision's CPU loop, instead of for all N^2 pairs; the result is the same."""
    order = descending_order(scores)
    ranked = boxes[order]
    thr = threshold_below(iou_threshold, iou_dtype(boxes.dtype))
    kept, kept_boxes = [], ranked[:0]
    for start in range(0, ranked.shape[0], _NMS_BLOCK):
        block = ranked[start : start + _NMS_BLOCK]
        candidates = (~(box_iou(kept_boxes, block) > thr).any(dim=0)).nonzero()[:, 0]
        inner = block[candidates]
        chosen = candidates[greedy_keep((box_iou(inner, inner) > thr).triu_(diagonal=1))]
        kept.append(chosen + start)
        kept_boxes = torch.cat([kept_boxes, block[chosen]])
    return order[torch.cat(kept)] if kept else order


def denet_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    # DeNet's rule needs no ordering: a box goes when any strictly better box overlaps it,
    # whether or not that box survives.
    sup = _suppression(boxes, iou_threshold) & (scores[:, None] > scores[None, :])
    keep = ~sup.any(dim=0)
    order = descending_order(scores)
    return order[keep[order]]


def soft_nms_weights(iou: Tensor, sigma: float, iou_threshold: float, method: str) -> Tensor:
    """The factor a pick applies to the scores of boxes with this IoU to it."""
    iou = iou.nan_to_num(nan=0.0)  # two empty boxes (0/0) do not overlap
    if method == "gaussian":
        return torch.exp(-(iou * iou) / sigma)
    thr = threshold_below(iou_threshold, iou.dtype)
    return torch.where(iou > thr, 1 - iou, torch.ones_like(iou))


_SOFT_NMS_SYNC = 32  # selection steps between checks for "nothing left"


def soft_nms_loop(
    weight_row: Callable[[Tensor], Tensor], scores: Tensor, score_threshold: float
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017); ``weight_row(i)`` gives the factors that picking box ``i``
    (a 0-dim index tensor) applies to every score. Returns (keep, scores at selection).

    Selection is sequential by nature (each pick rescales the scores that decide the next pick),
    so this loops over selection steps, one per kept box, with every rescoring vectorised.
    Dropped and picked boxes hold -inf, so a step needs no mask; the host checks whether any box
    is left only every ``_SOFT_NMS_SYNC`` steps and trims the -inf picks made after the end.
    """
    n = scores.shape[0]
    neg_inf = torch.tensor(-math.inf, dtype=iou_dtype(scores.dtype), device=scores.device)
    cur = scores.to(neg_inf.dtype)
    cur = torch.where(cur >= score_threshold, cur, neg_inf)
    keep = torch.empty(n, dtype=torch.int64, device=scores.device)
    kept = torch.empty(n, dtype=cur.dtype, device=scores.device)
    steps = 0
    while steps < n:
        if steps % _SOFT_NMS_SYNC == 0 and not bool(torch.isfinite(cur).any()):
            break
        step = steps
        steps += 1
        # argmax returns the first maximum: ties go to the lowest index, as DeNet's list scan does.
        i = torch.argmax(cur)
        keep[step] = i
        kept[step] = cur[i]
        cur[i] = -math.inf
        cur = cur * weight_row(i).to(cur.dtype)
        cur = torch.where(
            cur >= score_threshold, cur, neg_inf
        )  # also turns -inf * 0 = NaN into -inf
    # Once nothing is left every pick is -inf, so the finite picks are a prefix of the steps.
    count = int(torch.isfinite(kept[:steps]).sum())
    return keep[:count], kept[:count].to(scores.dtype)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    sigma: float,
    iou_threshold: float,
    method: str,
    score_threshold: float,
) -> tuple[Tensor, Tensor]:
    # One IoU row per selection step: O(N) memory, and no work for boxes never selected.
    def weight_row(i: Tensor) -> Tensor:
        return soft_nms_weights(box_iou(boxes[i][None], boxes)[0], sigma, iou_threshold, method)

    return soft_nms_loop(weight_row, scores, score_threshold)
