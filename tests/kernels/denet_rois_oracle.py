"""A plain-Python-loop oracle of DeNet's RoI generation (``build_samples``), written from the
reference text (docs/kernels.md, denet-original.md section 3.2): pixel by pixel, pair by pair, in
float32 where DeNet sums in float32. Used by tests/kernels/test_denet_rois.py and, as the
plain-loop peer, by bench/detect.py."""

import math

import numpy as np


def _f32(v: float) -> np.float32:
    return np.float32(v)


def oracle_corners(present, tau: float, r: int, corner_max: int):
    """One corner map (nested lists [H][W] of float32 values as Python floats): (x, y) of the
    candidates, pixel by pixel."""
    h, w = len(present), len(present[0])
    tau32 = float(_f32(tau))
    thr = float(_f32(math.log(tau32))) if tau32 > 0 else -math.inf
    found = []
    for y in range(h):
        for x in range(w):
            v = present[y][x]
            if not v > thr:
                continue
            if r > 0:
                # DeNet's window: upper bounds clipped to W-1 / H-1, then exclusive.
                m = -100000.0
                for yy in range(max(0, y - r), min(h - 1, y + r)):
                    for xx in range(max(0, x - r), min(w - 1, x + r)):
                        m = max(m, present[yy][xx])
                if v < m:
                    continue
            found.append((v, y, x))
    found.sort(key=lambda c: (-c[0], c[1], c[2]))  # most probable first, ties in raster order
    return [(x, y) for _, y, x in found[:corner_max]]


def oracle_boxes(corners, h: int, w: int):
    boxes = set()
    for x0, y0 in corners[0]:  # TL x BR
        for x1, y1 in corners[3]:
            if x1 > x0 and y1 > y0:
                boxes.add((x0, y0, x1, y1))
    for x1, y0 in corners[1]:  # TR x BL
        for x0, y1 in corners[2]:
            if x1 > x0 and y1 > y0:
                boxes.add((x0, y0, x1, y1))
    if len(corners) == 5:  # centre + each corner type, mirrored through the centre
        for cx, cy in corners[4]:
            for k in range(4):
                for px, py in corners[k]:
                    qx, qy = 2 * cx - px, 2 * cy - py
                    x0, x1 = (px, qx) if k in (0, 2) else (qx, px)
                    y0, y1 = (py, qy) if k in (0, 1) else (qy, py)
                    if x0 >= 0 and y0 >= 0 and x1 < w and y1 < h and x1 > x0 and y1 > y0:
                        boxes.add((x0, y0, x1, y1))
    return boxes


def oracle_gap(img, box) -> float:
    """``|pr_f - pr_t|`` summed in float32 in DeNet's order; ``img`` is [2][K][H][W] lists."""
    x0, y0, x1, y1 = box
    points = [(0, y0, x0), (1, y0, x1), (2, y1, x0), (3, y1, x1)]
    if len(img[0]) == 5:
        points.append((4, (y0 + y1) // 2, (x0 + x1) // 2))
    pr_f, pr_t = _f32(0.0), _f32(0.0)
    for k, y, x in points:
        pr_f = pr_f + _f32(img[0][k][y][x])
        pr_t = pr_t + _f32(img[1][k][y][x])
    return float(abs(pr_f - pr_t))


def oracle_score(gap: float) -> float:
    return 0.0 if gap > 700 else 1.0 / (1.0 + math.exp(gap))


def pixel_iou(a, b) -> float:
    iw = max(0, min(a[2], b[2]) + 1 - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) + 1 - max(a[1], b[1]))
    inter = iw * ih
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter)


def oracle_cluster(samples, threshold: float, count: int):
    """Indices of ``samples`` (boxes best first) kept by the v2 clustering, ascending. A literal
    cluster list: a box joins the clusters it links (IoU > threshold with any member); the last
    of them in the list takes it and absorbs the others; a new cluster goes to the end."""
    clusters: list[list[int]] = []
    for i, box in enumerate(samples):
        hits = [c for c in clusters if any(pixel_iou(box, samples[j]) > threshold for j in c)]
        if not hits:
            clusters.append([i])
            continue
        target = hits[-1]
        target.append(i)
        for c in hits[:-1]:
            target.extend(c)
            clusters.remove(c)
    if len(clusters) > count:
        clusters = sorted(clusters, key=len, reverse=True)[:count]  # stable: list order on ties
    n, nc = len(samples), len(clusters)
    ratio = (count - nc) / (n - nc) if n > nc else 0.0
    kept = []
    for c in clusters:
        kept += sorted(c)[: 1 + math.floor(len(c) * ratio)]
    return sorted(kept)


def oracle_rois(
    logp, sample_num, corner_threshold=0.01, local_max=0, cluster_threshold=1.0, corner_max=1024
):
    """Per image, the list of (box, gap) returned, best first."""
    tau, r = corner_threshold, local_max
    a = logp.float().tolist()
    count = sample_num * sample_num
    out = []
    for img in a:
        h, w = len(img[0][0]), len(img[0][0][0])
        corners = [oracle_corners(img[1][k], tau, r, corner_max) for k in range(len(img[0]))]
        scored = sorted((oracle_gap(img, box), box) for box in oracle_boxes(corners, h, w))
        ranked = [(box, gap) for gap, box in scored]  # ties by (x0, y0, x1, y1)
        if len(ranked) > count and cluster_threshold < 1.0:
            ranked = ranked[: 10 * count]
            keep = oracle_cluster([box for box, _ in ranked], cluster_threshold, count)
            ranked = [ranked[i] for i in keep]
        out.append(ranked[:count])
    return out
