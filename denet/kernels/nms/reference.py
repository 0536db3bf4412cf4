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
from collections.abc import Callable

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
