"""VocEvaluator against APs worked out on paper, and against a transcription of py-faster-rcnn's
``voc_eval.py`` (with its +1 pixel widths) on random data."""

import math
import pickle

import numpy as np
import pytest
import torch

from denet.eval import VocEvaluator, make_evaluator
from denet.eval.voc import voc_ap


def out(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def tgt(image_id, boxes, labels, difficult=None, **geometry):
    t = {
        "image_id": image_id,
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    if difficult is not None:
        t["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    t.update({k: torch.tensor(v, dtype=torch.float64) for k, v in geometry.items()})
    return t


CLASSES = ["cat", "dog", "bird"]
# "cat": 3 ground-truth boxes; detections by score: TP, FP (a second hit on a matched box), TP,
# FP (no overlap). recall 1/3 1/3 2/3 2/3, precision 1 1/2 2/3 1/2.
#   11-point: t = 0..0.3 -> 1 (4 points), t = 0.4..0.6 -> 2/3 (3 points), t >= 0.7 -> 0:  6/11
#   area: 1/3 * 1 + 1/3 * 2/3 + 1/3 * 0 = 5/9
# "dog": one ground-truth box, never detected: AP 0. "bird": no ground truth: nan, not averaged.
CASE = [
    (
        out(
            [[50, 50, 60, 60], [1, 0, 11, 10], [0, 0, 10, 10], [70, 70, 80, 80]],
            [0.6, 0.8, 0.9, 0.95],
            [0, 0, 0, 2],
        ),
        tgt(0, [[0, 0, 10, 10], [20, 20, 30, 30], [40, 0, 50, 10]], [0, 0, 1]),
    ),
    (out([[0, 0, 10, 10]], [0.7], [0]), tgt(1, [[0, 0, 10, 10]], [0])),
]


@pytest.mark.parametrize("metric, cat_ap", [("voc07", 6 / 11), ("voc12", 5 / 9)])
def test_hand_computed_case(metric, cat_ap):
    ev = make_evaluator("detection", metric=metric, classes=CLASSES)
    for o, t in CASE:
        ev.update([o], [t])
    m = ev.compute()
    assert m["AP_cat"] == pytest.approx(cat_ap, abs=1e-12)
    assert m["AP_dog"] == 0.0 and math.isnan(m["AP_bird"])
    assert m["mAP"] == pytest.approx(cat_ap / 2, abs=1e-12)
    assert set(m) == {"mAP", "AP_cat", "AP_dog", "AP_bird"} and ev.primary == "mAP"
    label = "VOC07 11-point" if metric == "voc07" else "VOC2010+ area"
    assert ev.summary() == f"mAP {cat_ap / 2:.3f} ({label}, 2 images)"


def test_voc_ap_curves():
    rec, prec = np.array([1, 1, 2, 2]) / 3, np.array([1, 1 / 2, 2 / 3, 1 / 2])
    assert voc_ap(rec, prec, True) == pytest.approx(6 / 11)
    assert voc_ap(rec, prec, False) == pytest.approx(5 / 9)
    # recall exactly 0.3 misses the devkit's t = 0.30000000000000004 point, as in the devkit
    assert voc_ap(np.array([0.3]), np.array([1.0]), True) == pytest.approx(3 / 11)


def difficult_case(flags):
    # A (normal) and B (difficult). Detections: on B (0.9), nowhere (0.8), on A (0.7).
    # Rule: B's hit ignored -> FP, TP with 1 positive: recall 0 1, precision 0 1/2 -> AP 1/2.
    # B as a normal box: TP FP TP of 2: recall 1/2 1/2 1, precision 1 1/2 2/3 ->
    # 11-point (6 * 1 + 5 * 2/3) / 11 = 28/33, area 1/2 * 1 + 1/2 * 2/3 = 5/6.
    o = out([[20, 20, 30, 30], [50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8, 0.7], [0, 0, 0])
    t = tgt(7, [[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], flags)
    return [o], [t]


@pytest.mark.parametrize("use_07", [True, False])
def test_difficult_boxes_are_neither_tp_nor_fp(use_07):
    ev = VocEvaluator(["cat"], use_07_metric=use_07)
    ev.update(*difficult_case([False, True]))
    assert ev.compute()["mAP"] == pytest.approx(0.5)
    plain = VocEvaluator(["cat"], use_07_metric=use_07)
    plain.update(*difficult_case([False, False]))
    assert plain.compute()["mAP"] == pytest.approx(28 / 33 if use_07 else 5 / 6)
    only_difficult = VocEvaluator(["cat"], use_07_metric=use_07)
    o, t = difficult_case([True, True])
    only_difficult.update(o, t)
    assert math.isnan(only_difficult.compute()["mAP"])  # no positives: class left out


def test_plus_one_widths_and_geometry_mapping():
    # IoU of [0,0,9,4.2] with [0,0,9,9]: 37.8/81 = 0.467 continuous, 52/100 = 0.52 with +1
    o, t = out([[0, 0, 9, 4.2]], [0.5], [0]), tgt(0, [[0, 0, 9, 9]], [0])
    for plus_one, ap in ((False, 0.0), (True, 1.0)):
        ev = VocEvaluator(num_classes=1, plus_one=plus_one)
        ev.update([o], [t])
        assert ev.compute()["mAP"] == ap
    # the same boxes seen at scale 2, offset (3, 5): +1 IoU there is 19*9.4/19^2 = 0.49, so the
    # 0.52 (a TP) comes only from mapping back to original pixels
    s, off = np.array([2.0, 2.0]), np.array([3.0, 5.0, 3.0, 5.0])
    o2 = out(np.array([[0, 0, 9, 4.2]]) * np.tile(s, 2) + off, [0.5], [0])
    t2 = tgt(0, np.array([[0, 0, 9, 9]]) * np.tile(s, 2) + off, [0], scale=s, offset=off[:2])
    ev = VocEvaluator(num_classes=1, plus_one=True)
    ev.update([o2], [t2])
    assert ev.compute()["mAP"] == 1.0
    t2["scale"] = torch.tensor([math.nan, math.nan], dtype=torch.float64)  # rotated: unmapped
    ev.reset()
    ev.update([o2], [t2])
    assert ev.compute()["mAP"] == 0.0


def devkit_voc_eval(dets, gts, classname, use_07_metric):
    """py-faster-rcnn ``voc_eval`` with the file reading replaced by in-memory lists:
    ``dets`` rows (image, class, score, x1, y1, x2, y2); ``gts[image]`` rows
    (class, difficult, x1, y1, x2, y2)."""
    class_recs, npos = {}, 0
    for image, rows in gts.items():
        R = [r for r in rows if r[0] == classname]
        bbox = np.array([r[2:] for r in R], dtype=float).reshape(-1, 4)
        difficult = np.array([r[1] for r in R]).astype(bool)
        npos = npos + sum(~difficult)
        class_recs[image] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(R)}
    lines = [d for d in dets if d[1] == classname]
    image_ids = [x[0] for x in lines]
    confidence = np.array([x[2] for x in lines])
    BB = np.array([x[3:] for x in lines], dtype=float).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence)
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0)
                - inters
            )
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > 0.5:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def random_voc(seed, images=12, classes=3):
    rng = np.random.default_rng(seed)
    outputs, targets, dets, gts = [], [], [], {}
    for image in range(images):
        m = int(rng.integers(0, 5))
        xy = rng.integers(0, 60, (m, 2))
        gt = np.concatenate([xy, xy + rng.integers(8, 40, (m, 2))], 1).astype(float)
        gl = rng.integers(0, classes, m)
        diff = rng.random(m) < 0.2
        gts[image] = [(c, d, *b) for c, d, b in zip(gl, diff, gt)]
        n = int(rng.integers(0, 7))
        pick = rng.integers(0, max(m, 1), n)
        det = np.where(
            (rng.random(n) < 0.7)[:, None] & (m > 0),
            gt[pick % max(m, 1)] if m else 0,
            rng.integers(0, 80, (n, 4)),
        )
        det = np.sort(det.reshape(n, 2, 2), axis=1).reshape(n, 4)  # x1 <= x2 after noise
        det = det + rng.normal(0, 2.5, (n, 4))
        det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 1)
        dl = np.where(
            rng.random(n) < 0.8, gl[pick % max(m, 1)] if m else 0, rng.integers(0, classes, n)
        )
        sc = rng.random(n)
        dets += [(image, c, s, *b) for c, s, b in zip(dl, sc, det)]
        outputs.append(out(det, sc, dl))
        outputs[-1]["boxes"] = torch.from_numpy(det)  # float64: no rounding before the oracle
        targets.append(tgt(image, gt, gl, diff))
    return outputs, targets, dets, gts


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("use_07", [True, False])
def test_random_against_devkit_transcription(seed, use_07):
    outputs, targets, dets, gts = random_voc(seed)
    ev = VocEvaluator(num_classes=3, use_07_metric=use_07, plus_one=True)
    ev.update(outputs[:5], targets[:5])
    rest = VocEvaluator(num_classes=3, use_07_metric=use_07, plus_one=True)
    rest.update(outputs[5:], targets[5:])
    rest.update(outputs[:2], targets[:2])  # repeats padding a distributed test set: once
    ev.merge(pickle.loads(pickle.dumps(rest)))
    m = ev.compute()
    want = [devkit_voc_eval(dets, gts, c, use_07) for c in range(3)]
    assert any(0 < w < 1 for w in want)
    for c in range(3):
        assert m[f"AP_{c}"] == pytest.approx(want[c], abs=1e-12)
    assert m["mAP"] == pytest.approx(np.mean(want), abs=1e-12)


def test_errors():
    with pytest.raises(ValueError):
        VocEvaluator()
    with pytest.raises(ValueError):
        VocEvaluator(["a"]).merge(VocEvaluator(["a"], use_07_metric=True))
    with pytest.raises(ValueError):
        VocEvaluator(["a"]).update([out([[0, 0, 1, 1]], [0.5], [0])] * 2, [tgt(0, [], [])])
    with pytest.raises(ValueError, match="label 3 outside"):
        VocEvaluator(["a", "b"]).update([out([[0, 0, 1, 1]], [0.5], [3])], [tgt(0, [], [])])
