"""CocoEvaluator: known answers (perfect boxes, boxes at a known IoU), and pycocotools itself run
on COCO json dicts written here in original pixels, while the evaluator sees the boxes, masks
and keypoints in the pixels of a scaled and shifted image."""

import copy
import json
import math
import pickle

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from denet.eval import CocoEvaluator, make_evaluator
from denet.eval.coco import BOX_KEYS

nan = math.nan


def coco_from(dataset):
    gt = COCO()
    gt.dataset = copy.deepcopy(dataset)
    gt.createIndex()
    return gt


def pycocotools_stats(gt_dict, results, kind="bbox"):
    """The oracle: pycocotools on hand-written json dicts; -1 (undefined) as nan."""
    gt = coco_from(gt_dict)
    ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), kind)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return [nan if s < 0 else float(s) for s in ev.stats]


def returned(xy, scale, offset):
    """Original pixels -> the pixels the model saw (interleaved x, y)."""
    xy = np.asarray(xy, dtype=np.float64)
    return xy * np.tile(scale, xy.shape[-1] // 2) + np.tile(offset, xy.shape[-1] // 2)


def target(
    image_id, boxes, labels, crowd=None, scale=(1.0, 1.0), offset=(0.0, 0.0), size=(480, 640)
):
    scale, offset = np.asarray(scale, float), np.asarray(offset, float)
    t = {
        "image_id": image_id,
        "boxes": torch.from_numpy(returned(np.reshape(boxes, (-1, 4)), scale, offset)),
        "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
        "scale": torch.from_numpy(scale),
        "offset": torch.from_numpy(offset),
        "orig_size": torch.tensor(size, dtype=torch.int64),
    }
    if crowd is not None:
        t["iscrowd"] = torch.as_tensor(crowd, dtype=torch.bool)
    return t


def output(boxes, scores, labels, scale=(1.0, 1.0), offset=(0.0, 0.0)):
    return {
        "boxes": torch.from_numpy(returned(np.reshape(boxes, (-1, 4)), scale, offset)),
        "scores": torch.as_tensor(scores, dtype=torch.float32).reshape(-1),
        "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
    }


# original-pixel boxes of three sizes: small (20x20), medium (50x40), large (200x100)
GT = [[10, 10, 30, 30], [100, 50, 150, 90], [200, 200, 400, 300]]


def test_perfect_predictions_give_ap_1(capsys):
    ev = make_evaluator("detection", classes=["a", "b"])
    for i in range(3):
        s, o = (0.5 + i, 1.5), (3.0 * i, -2.0)
        labels = [0, 1, i % 2]
        ev.update([output(GT, [1.0] * 3, labels, s, o)], [target(i, GT, labels, None, s, o)])
    m = ev.compute()
    assert capsys.readouterr().out == ""  # pycocotools' prints are swallowed
    assert set(m) == set(BOX_KEYS) and ev.primary == "AP"
    # pycocotools divides by tp + fp + eps: a perfect AP is 1 - 2e-16
    assert all(m[k] == pytest.approx(1.0, abs=1e-12) for k in BOX_KEYS if k != "AR1"), m
    # one detection per image and class finds 3 of class a's 5 boxes and 3 of b's 4
    assert m["AR1"] == pytest.approx((3 / 5 + 3 / 4) / 2, abs=1e-12)
    table = ev.summary().splitlines()
    assert table[0] == "COCO bbox (3 images):" and len(table) == 13
    assert table[1].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all")
    assert table[1].endswith("= 1.000")


@pytest.mark.parametrize("shift, ap", [(25.0, None), (20.0, 0.4)])
def test_known_iou(shift, ap):
    # a 100x100 box shifted right by d: IoU (100 - d) / (100 + d): 0.6 at d = 25 and 2/3 at 20,
    # which passes the thresholds 0.50, 0.55, 0.60, 0.65 of ten: AP 4/10
    ev = CocoEvaluator(num_classes=1)
    for i in range(2):
        gt = [[0, 0, 100, 100], [300, 100, 400, 200]]
        pred = np.array(gt, float) + [shift, 0, shift, 0]
        ev.update([output(pred, [0.9, 0.8], [0, 0])], [target(i, gt, [0, 0])])
    m = ev.compute()
    assert m["AP50"] == 1.0 and m["AP75"] == 0.0
    assert m["APl"] == m["AP"] and math.isnan(m["APs"]) and math.isnan(m["APm"])
    if ap is not None:
        assert m["AP"] == pytest.approx(ap, abs=1e-12)


def test_scale_and_offset_are_undone():
    # a 40x40 box is medium in original pixels (1600 > 32^2) but small (400) at scale 0.5;
    # a prediction 3 px off in original pixels
    box, pred = [[60, 60, 100, 100]], [[63, 60, 103, 100]]
    ev = CocoEvaluator(num_classes=1)
    ev.update(
        [output(pred, [0.9], [0], (0.5, 0.5), (7, 11))],
        [target(1, box, [0], None, (0.5, 0.5), (7, 11))],
    )
    m = ev.compute()
    iou = 37 * 40 / (2 * 1600 - 37 * 40)  # 0.86: passes thresholds 0.50 ... 0.85 (8 of 10)
    assert iou == pytest.approx(0.8605, abs=1e-4)
    assert m["APm"] == pytest.approx(0.8) and m["AP"] == pytest.approx(0.8)
    assert math.isnan(m["APs"]) and math.isnan(m["APl"])
    # against real ground truth in original pixels: only mapped-back predictions match it
    gt = {
        "images": [{"id": 1, "height": 480, "width": 640}],
        "categories": [{"id": 1}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [60, 60, 40, 40],
                "area": 1600,
                "iscrowd": 0,
            }
        ],
    }
    real = CocoEvaluator(coco_gt=coco_from(gt))
    real.update(
        [output(box, [0.9], [0], (0.5, 0.5), (7, 11))],
        [target(1, [], [], None, (0.5, 0.5), (7, 11))],
    )
    assert real.compute()["AP"] == pytest.approx(1.0, abs=1e-12)
    unmapped = CocoEvaluator(coco_gt=coco_from(gt))
    unmapped.update(
        [output(box, [0.9], [0], (0.5, 0.5), (7, 11))],
        [{"image_id": 1, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}],
    )
    assert unmapped.compute()["AP"] == 0.0


def random_case(seed, images=8):
    """Hand-written COCO dicts in original pixels, and the same data as the evaluator sees it."""
    rng = np.random.default_rng(seed)
    cat_ids, names = [3, 7, 11], ["cat", "dog", "bird"]
    gt = {
        "images": [],
        "annotations": [],
        "categories": [{"id": c, "name": n} for c, n in zip(cat_ids, names)],
    }
    results, outputs, targets = [], [], []
    for i in range(images):
        image_id = 1000 + 37 * i
        h, w = (int(v) for v in rng.integers(150, 500, 2))
        gt["images"].append({"id": image_id, "height": h, "width": w})
        scale, offset = rng.uniform(0.4, 2.0, 2), rng.uniform(-30, 30, 2)
        m = int(rng.integers(0, 7))
        wh = np.exp(rng.uniform(np.log(6), np.log(180), (m, 2)))
        xy = rng.uniform(0, 1, (m, 2)) * ([w, h] - wh)
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, 3, m)
        crowd = rng.random(m) < 0.1
        for b, c, k in zip(boxes, labels, crowd):
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": cat_ids[c],
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "area": (b[2] - b[0]) * (b[3] - b[1]),
                    "iscrowd": int(k),
                }
            )
        n = int(rng.integers(0, 9))
        src = rng.integers(0, max(m, 1), n)
        near = (rng.random(n) < 0.75) & (m > 0)
        pred = np.where(
            near[:, None],
            boxes[src % max(m, 1)] if m else 0.0,
            rng.uniform(0, 150, (n, 4)) + [0, 0, 150, 150],
        )
        pred = pred + rng.normal(0, 4, (n, 4)) * (pred[:, 2:3] - pred[:, 0:1] + 10) / 60
        pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2] + 1)
        plabels = np.where(
            rng.random(n) < 0.85, labels[src % max(m, 1)] if m else 0, rng.integers(0, 3, n)
        )
        scores = rng.random(n).astype(np.float32)
        for b, c, s in zip(pred, plabels, scores):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": cat_ids[c],
                    "score": float(s),
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                }
            )
        outputs.append(output(pred, scores, plabels, scale, offset))
        targets.append(target(image_id, boxes, labels, crowd, scale, offset, (h, w)))
    return gt, results, outputs, targets, names, cat_ids


@pytest.mark.parametrize("seed", range(3))
def test_random_case_against_pycocotools(seed, tmp_path):
    gt, results, outputs, targets, names, cat_ids = random_case(seed)
    want = pycocotools_stats(gt, results)
    assert 0 < want[0] < 1
    built = CocoEvaluator(classes=names, category_ids=cat_ids)  # ground truth from the targets
    for s in range(0, len(outputs), 3):
        built.update(outputs[s : s + 3], targets[s : s + 3])
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(gt))
    for ev in (built, CocoEvaluator(coco_gt=coco_from(gt)), CocoEvaluator(coco_gt=str(path))):
        if ev is not built:
            ev.update(outputs, targets)
        m = ev.compute()
        assert [m[k] for k in BOX_KEYS] == pytest.approx(want, abs=1e-9, nan_ok=True)
    # category ids default to label + 1 without ground truth: the same numbers
    plain = CocoEvaluator(num_classes=3)
    plain.update(outputs, targets)
    assert plain.compute() == pytest.approx(built.compute(), nan_ok=True)


def test_merge_pickle_and_repeated_images():
    gt, results, outputs, targets, names, cat_ids = random_case(5)
    want = pycocotools_stats(gt, results)
    a, b = (
        CocoEvaluator(classes=names, category_ids=cat_ids),
        CocoEvaluator(classes=names, category_ids=cat_ids),
    )
    a.update(outputs[:5], targets[:5])
    b.update(outputs[5:], targets[5:])
    b.update(outputs[:2], targets[:2])  # repeats padding a distributed test set count once
    a.merge(pickle.loads(pickle.dumps(b)))
    assert [a.compute()[k] for k in BOX_KEYS] == pytest.approx(want, abs=1e-9, nan_ok=True)
    with pytest.raises(ValueError):
        a.merge(CocoEvaluator(num_classes=3))
    # a COCO object is left out of the pickle; the rank's own evaluator keeps it
    own = CocoEvaluator(coco_gt=coco_from(gt))
    own.update(outputs[:5], targets[:5])
    other = CocoEvaluator(coco_gt=coco_from(gt))
    other.update(outputs[5:], targets[5:])
    other = pickle.loads(pickle.dumps(other))
    assert other._gt_obj is None
    with pytest.raises(RuntimeError):
        other.compute()
    own.merge(other)
    assert [own.compute()[k] for k in BOX_KEYS] == pytest.approx(want, abs=1e-9, nan_ok=True)


def test_empty_predictions_and_no_images():
    ev = CocoEvaluator(num_classes=2)
    assert all(math.isnan(v) for v in ev.compute().values())
    assert "no images" in ev.summary()
    empty = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    ev.update([empty, empty], [target(1, GT, [0, 1, 1]), target(2, [], [])])
    m = ev.compute()
    assert m["AP"] == 0.0 and m["AR100"] == 0.0 and m["APs"] == 0.0
    assert "Average Precision" in ev.summary()
    ev.update([output(GT[:1], [0.5], [0])], [target(3, [], [])])  # only a false positive
    assert ev.compute()["AP"] == 0.0
    with pytest.raises(ValueError, match="not in the COCO ground truth"):
        gt = CocoEvaluator(
            coco_gt=coco_from({"images": [{"id": 5}], "annotations": [], "categories": [{"id": 1}]})
        )
        gt.update([empty], [target(6, [], [])])
        gt.compute()


def rect_mask(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def test_masks_against_pycocotools_rles():
    # original 30x40 images; the model saw them upscaled 2x and shifted by (4, 6) px
    h, w, s, o = 30, 40, (2.0, 2.0), (4.0, 6.0)
    rng = np.random.default_rng(0)
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    results, outputs, targets = [], [], []
    for i, image_id in enumerate((1, 2)):
        gt["images"].append({"id": image_id, "height": h, "width": w})
        objs = [rect_mask(h, w, 2, 3, 17, 20), rect_mask(h, w, 20, 5, 38, 28)]
        for m in objs:
            rle = mask_util.encode(np.asfortranarray(m))
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                    "area": float(m.sum()),
                    "iscrowd": 0,
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                }
            )
        pred = [objs[0] * (rng.random((h, w)) < 0.9), objs[1] if i else objs[1][::-1]]
        probs = []
        for m in pred:  # each original pixel is a 2x2 block, shifted by the offset
            big = np.zeros((2 * h + 6, 2 * w + 4))
            big[6:, 4:] = np.kron(m, np.ones((2, 2))) * 0.8 + 0.1  # 0.9 inside, 0.1 outside
            probs.append(big)
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            results.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "score": 0.9 - len(results) * 0.1,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                }
            )
        boxes = [[2, 3, 17, 20], [20, 5, 38, 28]]
        out = output(boxes, [r["score"] for r in results[-2:]], [0, 0], s, o)
        out["masks"] = torch.tensor(np.array(probs), dtype=torch.float32)[:, None]
        outputs.append(out)
        targets.append(target(image_id, boxes, [0, 0], None, s, o, (h, w)))
    want = pycocotools_stats(gt, results, "segm")
    assert 0 < want[0] < 1
    ev = make_evaluator("detection", metric="coco", coco_gt=coco_from(gt))
    ev.update(outputs, targets)
    m = ev.compute()
    assert [m["segm_" + k] for k in BOX_KEYS] == pytest.approx(want, abs=1e-12, nan_ok=True)
    assert m["AP"] == pytest.approx(1.0, abs=1e-12)  # the boxes are exact
    assert "COCO segm (2 images):" in ev.summary()
    built = CocoEvaluator(num_classes=1)  # no mask ground truth: bbox only
    built.update(outputs, targets)
    assert not any(k.startswith("segm_") for k in built.compute())


def test_keypoints_with_real_ground_truth():
    rng = np.random.default_rng(1)
    kps = np.concatenate([rng.uniform(50, 150, (17, 2)), np.full((17, 1), 2.0)], 1)
    gt = {
        "images": [{"id": 9, "height": 200, "width": 200}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 9,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [40, 40, 120, 120],
                "area": 120 * 120.0,
                "keypoints": kps.reshape(-1).tolist(),
                "num_keypoints": 17,
            }
        ],
    }
    s, o = (1.5, 0.75), (10.0, -5.0)
    box = [[40, 40, 160, 160]]
    for noise, want_ap in ((0.0, 1.0), (25.0, None)):
        pred = kps.copy()
        pred[:, :2] += rng.normal(0, noise, (17, 2)) if noise else 0
        out = output(box, [0.9], [0], s, o)
        out["keypoints"] = torch.from_numpy(
            np.concatenate([returned(pred[:, :2], s, o), np.ones((17, 1))], 1)
        )[None]
        ev = CocoEvaluator(coco_gt=coco_from(gt))
        ev.update([out], [target(9, box, [0], None, s, o, (200, 200))])
        m = ev.compute()
        assert m["AP"] == pytest.approx(1.0, abs=1e-12)
        oracle = [
            {
                "image_id": 9,
                "category_id": 1,
                "score": 0.9,
                "keypoints": np.concatenate([pred[:, :2], np.ones((17, 1))], 1)
                .reshape(-1)
                .tolist(),
            }
        ]
        want = pycocotools_stats(gt, oracle, "keypoints")
        keys = [
            "kp_AP",
            "kp_AP50",
            "kp_AP75",
            "kp_APm",
            "kp_APl",
            "kp_AR",
            "kp_AR50",
            "kp_AR75",
            "kp_ARm",
            "kp_ARl",
        ]
        assert [m[k] for k in keys] == pytest.approx(want, abs=1e-12, nan_ok=True)
        if want_ap is not None:
            assert m["kp_AP"] == pytest.approx(want_ap, abs=1e-12)
        else:
            assert m["kp_AP"] < 1.0
