"""DeNet's RoI generation ("directed sparse sampling", ``denet_sparse.cc: build_samples``) in
plain torch. It is the only implementation: every op here is a torch op, so CUDA tensors run it
on the GPU (the "GPU-tensor path"); the candidate counts are data-dependent, so the host syncs a
few times per image (``nonzero``, ``unique``, the clustering loop's convergence checks).

All arithmetic is DeNet's float32 (the C++ reads the map as ``NPY_FLOAT``): float16, bfloat16 and
float64 maps are converted to float32 first. Per image:

1. Corners. Type k has a candidate at (x, y) when ``logp[1, k, y, x] > float32(log(tau))`` and,
   with ``local_max = r > 0``, ``logp >= max(-1e5, window)``. The window is DeNet's loop, upper
   bounds exclusive, clipped as DeNet clips it: columns ``max(0, x-r) .. min(W-1, x+r) - 1``, rows
   likewise. So the map's last row and column never enter any window (the clip is to ``W-1``,
   then excluded), and an empty window (``W == 1`` or ``H == 1``) compares against DeNet's
   initial ``-1e5``. Type k keeps its ``corner_max`` most probable candidates; equal
   probabilities go in raster order (row, then column), where DeNet's ``partial_sort`` leaves
   the order unspecified.
2. Boxes, in inclusive pixel coordinates ``(x0, y0, x1, y1)``: every TL ``(x0, y0)`` with every
   BR ``(x1, y1)`` and every TR ``(x1, y0)`` with every BL ``(x0, y1)``, with ``x1 > x0`` and
   ``y1 > y0``. With K = 5, every centre ``(cx, cy)`` with every corner of every type, the box
   mirrored through the centre (TL ``(x0, y0)`` gives ``x1 = 2cx - x0, y1 = 2cy - y0``, and so on),
   kept when it lies on the map (``x0, y0 >= 0``, ``x1 < W``, ``y1 < H``) with ``x1 > x0``,
   ``y1 > y0``. Equal integer boxes count once.
3. Score. A box's score depends on the box only (not on the pair that found it), so which
   duplicate DeNet's hash keeps does not matter: ``pr_t`` sums ``log P(present)`` of types
   0..3 at the box's four corners ``(x0,y0), (x1,y0), (x0,y1), (x1,y1)`` in that order, plus the
   centre type at ``((x0+x1)//2, (y0+y1)//2)`` when K = 5; ``pr_f`` the same of ``log P(absent)``;
   ``score = float32(1 / (1 + expf(|pr_f - pr_t|)))``.
4. Rank. Boxes are ranked by ``|pr_f - pr_t|`` ascending, i.e. by score descending, finer where
   two float32 scores are equal; exact ties go by ``(x0, y0, x1, y1)`` ascending (the order of
   DeNet's box hash). DeNet sorts with ``partial_sort``, whose tie order is unspecified.
5. Clustering (v2), only with more than ``S = sample_num**2`` boxes and ``cluster_threshold < 1``:
   see :func:`cluster_keep`.
6. The best ``S`` boxes, best first.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# DeNet's ``get_local_max`` starts from this value, so an empty window lets every value pass.
LOCAL_MAX_FLOOR = -100000.0
# Temporaries of the clustering IoU are built a band of rows at a time, about this many pairs.
_BAND_PAIRS = 1 << 22


def log_threshold(corner_threshold: float) -> float:
    """``float32(log(float32(tau)))``, DeNet's ``float threshold = std::log(corner_threshold)``
    (the log taken in double and rounded once)."""
    tau = float(torch.tensor(corner_threshold, dtype=torch.float32))
    if tau <= 0.0:
        return -math.inf
    return float(torch.tensor(math.log(tau), dtype=torch.float32))


def window_max(present: Tensor, r: int) -> Tensor:
    """``[N, H, W] -> [N, H, W]``: DeNet's ``get_local_max`` at every pixel (see the module
    docstring for the window). Rows ``H-1`` and columns ``W-1`` never take part, so they are cut
    off; the padding value is DeNet's starting maximum."""
    n, h, w = present.shape
    padded = present.new_full((n, 1, h - 1 + 2 * r, w - 1 + 2 * r), LOCAL_MAX_FLOOR)
    padded[:, 0, r : r + h - 1, r : r + w - 1] = present[:, : h - 1, : w - 1]
    # Output (y, x) covers padded rows y .. y+2r-1, i.e. map rows y-r .. y+r-1. Max is separable.
    out = F.max_pool2d(padded, (1, 2 * r), stride=1)
    out = F.max_pool2d(out, (2 * r, 1), stride=1)
    return out[:, 0]


def candidate_mask(present: Tensor, corner_threshold: float, local_max: int) -> Tensor:
    """``[B, K, H, W]`` log P(present) -> bool mask of corner candidates (step 1, before the cap)."""
    mask = present > log_threshold(corner_threshold)
    if local_max > 0:
        b, k, h, w = present.shape
        peak = window_max(present.reshape(b * k, h, w), local_max).reshape(b, k, h, w)
        mask &= present >= peak
    return mask


def top_corners(present: Tensor, mask: Tensor, corner_max: int) -> tuple[Tensor, Tensor]:
    """One corner type of one image: ``(x, y)`` of its candidates, at most ``corner_max``, the
    most probable first among equals in raster order."""
    w = present.shape[-1]
    flat = mask.flatten().nonzero()[:, 0]  # raster order
    if flat.numel() > corner_max:
        values = present.flatten()[flat]
        order = torch.sort(values, descending=True, stable=True)[1]
        flat = flat[order[:corner_max]]
    return flat % w, flat // w


def _pairs(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor], a_is_low: bool) -> Tensor:
    """Every corner of ``a`` with every corner of ``b`` (TL x BR with ``a_is_low``: a gives
    ``(x0, y0)``; TR x BL without: a gives ``(x1, y0)`` and b ``(x0, y1)``)."""
    ax, ay = a[0][:, None], a[1][:, None]
    bx, by = b[0][None, :], b[1][None, :]
    x0, x1 = (ax, bx) if a_is_low else (bx, ax)
    y0, y1 = ay, by
    x0, y0, x1, y1 = torch.broadcast_tensors(x0, y0, x1, y1)
    keep = (x1 > x0) & (y1 > y0)
    return torch.stack((x0[keep], y0[keep], x1[keep], y1[keep]), dim=1)


# Which sides of the box each corner type fixes: (x is the low edge, y is the low edge).
_CORNER_SIDES = ((True, True), (False, True), (True, False), (False, False))


def _centre_pairs(
    centre: tuple[Tensor, Tensor], corner: tuple[Tensor, Tensor], k: int, h: int, w: int
) -> Tensor:
    """Boxes mirrored through each centre from each corner of type ``k`` that lie on the map."""
    cx, cy = centre[0][:, None], centre[1][:, None]
    px, py = corner[0][None, :], corner[1][None, :]
    qx, qy = 2 * cx - px, 2 * cy - py
    x_low, y_low = _CORNER_SIDES[k]
    x0, x1 = (px, qx) if x_low else (qx, px)
    y0, y1 = (py, qy) if y_low else (qy, py)
    x0, y0, x1, y1 = torch.broadcast_tensors(x0, y0, x1, y1)
    keep = (x0 >= 0) & (y0 >= 0) & (x1 < w) & (y1 < h) & (x1 > x0) & (y1 > y0)
    return torch.stack((x0[keep], y0[keep], x1[keep], y1[keep]), dim=1)


def box_id(boxes: Tensor, h: int, w: int) -> Tensor:
    """A unique int64 per integer box, ordered as ``(x0, y0, x1, y1)`` lexicographically."""
    x0, y0, x1, y1 = boxes.unbind(1)
    return ((x0 * h + y0) * w + x1) * h + y1


def box_from_id(ids: Tensor, h: int, w: int) -> Tensor:
    y1 = ids % h
    rest = ids // h
    x1 = rest % w
    rest = rest // w
    return torch.stack((rest // h, rest % h, x1, y1), dim=1)


def candidate_boxes(corners: list[tuple[Tensor, Tensor]], h: int, w: int) -> Tensor:
    """Step 2: the distinct integer boxes ``[N, 4]``, sorted by ``(x0, y0, x1, y1)``."""
    parts = [_pairs(corners[0], corners[3], True), _pairs(corners[1], corners[2], False)]
    if len(corners) == 5:
        parts += [_centre_pairs(corners[4], corners[k], k, h, w) for k in range(4)]
    ids = torch.unique(box_id(torch.cat(parts), h, w), sorted=True)
    return box_from_id(ids, h, w)


def box_logit_gap(logp: Tensor, boxes: Tensor) -> Tensor:
    """``|pr_f - pr_t|`` in float32, summed in DeNet's order. ``logp`` is one image's
    ``[2, K, H, W]``; ``boxes`` ``[N, 4]`` inclusive pixel boxes."""
    x0, y0, x1, y1 = boxes.unbind(1)
    points = [(0, y0, x0), (1, y0, x1), (2, y1, x0), (3, y1, x1)]
    if logp.shape[1] == 5:
        points.append((4, (y0 + y1) // 2, (x0 + x1) // 2))
    absent = present = None
    for k, y, x in points:
        f, t = logp[0, k, y, x], logp[1, k, y, x]
        absent = f if absent is None else absent + f
        present = t if present is None else present + t
    assert absent is not None and present is not None
    return (absent - present).abs()


def score_from_gap(gap: Tensor) -> Tensor:
    """DeNet's ``1.0 / (1.0 + std::exp(fabs(pr_f - pr_t)))``: ``expf`` in float32, the rest in
    double, stored as float32."""
    return (1.0 / (1.0 + torch.exp(gap).double())).float()


def _iou_edges(boxes: Tensor, start: int, stop: int, threshold: float) -> tuple[Tensor, Tensor]:
    """Pairs ``(i, j)``, ``start <= i < stop``, ``i < j``, with IoU > threshold. IoU is exact:
    integer areas of the inclusive pixel boxes (IoU does not change under DeNet's division by W
    and H), one float64 division, compared with the threshold as a Python float."""
    a = boxes[start:stop, None, :]
    b = boxes[None, start:, :]
    iw = (torch.minimum(a[..., 2], b[..., 2]) + 1 - torch.maximum(a[..., 0], b[..., 0])).clamp(
        min=0
    )
    ih = (torch.minimum(a[..., 3], b[..., 3]) + 1 - torch.maximum(a[..., 1], b[..., 1])).clamp(
        min=0
    )
    inter = iw * ih
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    union = area[start:stop, None] + area[None, start:] - inter
    rows = torch.arange(start, stop, device=boxes.device)[:, None]
    cols = torch.arange(start, boxes.shape[0], device=boxes.device)[None, :]
    hit = (inter.double() / union.double() > threshold) & (cols > rows)
    i, j = hit.nonzero().unbind(1)
    return i + start, j + start


def _compress(parent: Tensor) -> Tensor:
    while True:
        nxt = parent[parent]
        if torch.equal(nxt, parent):
            return parent
        parent = nxt


def _union(parent: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """Join the components of every edge ``(i, j)``. ``parent`` is compressed (each entry a
    root) and ``parent[x] <= x``; every round hooks each root that an edge crosses to the
    smallest root across it, then compresses. So a component's root is its smallest index."""
    while True:
        ri, rj = parent[i], parent[j]
        cross = ri != rj
        if not bool(cross.any()):
            return parent
        ri, rj = ri[cross], rj[cross]
        lo, hi = torch.minimum(ri, rj), torch.maximum(ri, rj)
        parent = _compress(parent.scatter_reduce(0, hi, lo, reduce="amin"))


def cluster_keep(boxes: Tensor, threshold: float, sample_count: int) -> Tensor:
    """DeNet's v2 corner clustering (``apply_cluster``) on boxes already in rank order.

    Args:
        boxes (Tensor[N, 4] int64): inclusive pixel boxes, best first. The caller passes the
            best ``10 * sample_count`` (DeNet's ``cluster_snum``).
        threshold (float): two boxes are linked when their IoU is > threshold (>= 0).
        sample_count (int): S.

    Returns:
        Tensor[M] int64: the indices kept, ascending (so best first). M may exceed S; the caller
        keeps the first S.

    Single-linkage, greedy in rank order: a box joins a cluster when its IoU with any member
    exceeds the threshold, and merges every cluster it links. The clusters are therefore the
    connected components of the "IoU > threshold" graph, which is how they are computed here:
    the IoU in bands of rows, each band's edges merged by union-find with pointer jumping (a
    loop over rounds, each vectorised; not over boxes). What the greedy order still decides is
    the order of DeNet's cluster list, which breaks ties in size when only the S largest
    clusters are kept: a new cluster goes to the end of the list, and a box that links several
    clusters joins the *last* of them and the others are merged into it. A cluster's place is
    therefore that of the latest box that opened a cluster (had no linked box before it) among
    its members. DeNet's ``list::sort`` by size is stable, so equal sizes keep that order.
    Then ``ratio = (S - n_clusters) / (N - n_clusters)`` (double) and each kept cluster keeps its
    ``1 + floor(size * ratio)`` best boxes.

    DeNet visits the boxes in rank order only when it had more than 10 S of them to cut; below
    that it visits them in the order it found them. That can only change which of two equally
    large clusters is dropped; this function always uses rank order.
    """
    n = boxes.shape[0]
    device = boxes.device
    index = torch.arange(n, device=device)
    parent = index.clone()
    linked_before = torch.zeros(n, dtype=torch.bool, device=device)
    rows = max(1, _BAND_PAIRS // max(n, 1))
    for start in range(0, n, rows):  # bands of rows, to bound the IoU temporaries
        i, j = _iou_edges(boxes, start, min(n, start + rows), threshold)
        linked_before[j] = True
        parent = _union(parent, i, j)
    root = parent
    size = torch.bincount(root, minlength=n)
    # The list position of each cluster: the last box (in rank order) that opened a cluster.
    opener = torch.where(linked_before, -1, index)
    place = torch.full((n,), -1, dtype=torch.int64, device=device)
    place = place.scatter_reduce(0, root, opener, reduce="amax")
    roots = (root == index).nonzero()[:, 0]
    by_place = roots[torch.sort(place[roots], stable=True)[1]]
    clusters = by_place[torch.sort(size[by_place], descending=True, stable=True)[1]]
    clusters = clusters[:sample_count]
    n_clusters = clusters.numel()
    # n > n_clusters whenever DeNet clusters (n > S >= n_clusters); the guard is for direct calls.
    ratio = (sample_count - n_clusters) / (n - n_clusters) if n > n_clusters else 0.0
    quota = torch.zeros(n, dtype=torch.int64, device=device)
    quota[clusters] = 1 + torch.floor(size[clusters].double() * ratio).long()
    # Rank of each box within its cluster: group by root, rank order inside each group.
    grouped = torch.sort(root, stable=True)[1]
    first = torch.cumsum(size, 0) - size  # start of each root's group in ``grouped``
    within = torch.empty_like(index)
    within[grouped] = index - first[root[grouped]]
    return (within < quota[root]).nonzero()[:, 0]


def denet_rois(
    corner_logp: Tensor,
    sample_num: int,
    corner_threshold: float,
    local_max: int,
    cluster_threshold: float,
    corner_max: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``[B, 2, K, H, W]`` log-probabilities -> (boxes ``[B, S, 4]`` float32 normalised xyxy,
    scores ``[B, S]`` float32, best first, counts ``[B]`` int64); rows past ``counts[b]`` are 0."""
    logp = corner_logp.detach().to(torch.float32)
    batch, _, k, h, w = logp.shape
    count = sample_num * sample_num
    device = logp.device
    out_boxes = torch.zeros((batch, count, 4), dtype=torch.float32, device=device)
    out_scores = torch.zeros((batch, count), dtype=torch.float32, device=device)
    counts = torch.zeros((batch,), dtype=torch.int64, device=device)
    present = logp[:, 1]
    mask = candidate_mask(present, corner_threshold, local_max)
    scale = torch.tensor([w, h, w, h], dtype=torch.float64, device=device)
    for b in range(batch):  # one image at a time, as DeNet's threads
        corners = [top_corners(present[b, c], mask[b, c], corner_max) for c in range(k)]
        boxes = candidate_boxes(corners, h, w)
        gap = box_logit_gap(logp[b], boxes)
        # ``boxes`` is sorted by (x0, y0, x1, y1), so a stable sort by the gap breaks ties by it.
        ranked = torch.sort(gap, stable=True)[1]
        if boxes.shape[0] > count and cluster_threshold < 1.0:
            best = ranked[: 10 * count]
            ranked = best[cluster_keep(boxes[best], cluster_threshold, count)]
        chosen = ranked[:count]
        n = chosen.numel()
        picked = boxes[chosen]
        corners_xyxy = torch.cat((picked[:, :2], picked[:, 2:] + 1), dim=1)
        out_boxes[b, :n] = (corners_xyxy.double() / scale).float()
        out_scores[b, :n] = score_from_gap(gap[chosen])
        counts[b] = n
    return out_boxes, out_scores, counts
