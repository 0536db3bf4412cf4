"""model-train evaluates a COCO test set (one subset) against its own annotation file: the
detection evaluator gets the file as ``coco_gt`` and the set's ``cat_ids``, so the log has
COCO's box AP (``test_AP``...) and, for a model that outputs masks / keypoints, ``test_segm_*``
/ ``test_kp_*`` columns. The oracle is pycocotools' COCOeval run here on the final model's
outputs against the same file."""

import json
import os
import sys

import numpy as np
import pytest
import torch

import denet
from denet.cli.train import main
from denet.data import open_dataset
from denet.train.trainer import task_evaluator

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
from data_builders import make_coco  # noqa: E402

# tiny Mask / Keypoint R-CNN strings (no RT: the images are used as they are)
BODY = (
    "C[8,3] A P[2] C[16,3] A @f RPN[16]($f) SAMPLE[64,0.25] @rois MRA[4,rois=rois]($f) "
    "C.B[32,4,border=valid] A DET.S[rois=rois] @dets MRA[8,rois=dets]($f) C[8,3] A "
)
MASK_RCNN = BODY + "MASK[dets=dets]"
KEYPOINT_RCNN = BODY + "C[17,3] KP[dets=dets]"  # make_coco's person has COCO's 17 keypoints


def scenes(n, seed, size=32):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        objects = []
        for _ in range(rng.integers(1, 3)):
            w, h = rng.integers(8, 15, size=2)
            x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
            objects.append(
                (int(x0), int(y0), int(x0 + w), int(y0 + h), int(rng.integers(3)), False)
            )
        out.append((size, size, objects))
    return out


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco-eval"))
    common = dict(ext="png", segmentation="polygon", keypoints=True)
    make_coco(root, "train", 2017, scenes(24, 0), **common)
    make_coco(root, "val", 2017, scenes(8, 1), first_id=5000, **common)
    return root


def read_log(prefix):
    with open(f"{prefix}_log.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def train(desc, root, flag, prefix):
    """3 epochs, tested after epochs 0 and 2 (--test-epochs 2)."""
    return main(
        [
            "--model-desc",
            desc,
            "--border-mode",
            "half",
            "--train",
            root,
            "--extension",
            f"mscoco,2017-train,crop=0,{flag}=1",
            "--test",
            root,
            "--test-extension",
            f"mscoco,2017-val,crop=0{',keypoints=1' if flag == 'keypoints' else ''}",
            "--epochs",
            "3",
            "--test-epochs",
            "2",
            "--batch-size",
            "8",
            "--thread-num",
            "0",
            "--solver",
            "adam",
            "--learn-momentum",
            "0.9",
            "0.999",
            "--learn-rate",
            "0.003",
            "--output-prefix",
            str(prefix),
        ]
    )


@torch.no_grad()
def pycocotools_stats(model_path, root, extension, kind):
    """COCOeval's stats of ``kind`` for the model's outputs on the val set, computed here from
    the annotation file (crop=0: the outputs are in the original pixels)."""
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    model = denet.load(model_path).eval()
    ds = open_dataset(root, extension, train=False)
    results = []
    for i in range(len(ds)):
        image, target = ds[i]
        out = model(image[None])[0]
        for k in range(len(out["scores"])):
            x1, y1, x2, y2 = out["boxes"][k].tolist()
            res = {
                "image_id": int(target["image_id"]),
                "category_id": int(ds.cat_ids[int(out["labels"][k])]),
                "score": float(out["scores"][k]),
            }
            if kind == "bbox":
                res["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            elif kind == "segm":
                m = (out["masks"][k, 0] > 0.5).numpy().astype(np.uint8)
                rle = mask_util.encode(np.asfortranarray(m))
                res["segmentation"] = dict(rle, counts=rle["counts"].decode("ascii"))
            else:
                res["keypoints"] = out["keypoints"][k].reshape(-1).tolist()
            results.append(res)
    gt = COCO(ds.ann_files[0])
    ev = COCOeval(gt, gt.loadRes(results), kind)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def test_the_evaluator_gets_the_annotation_file_of_one_subset(coco):
    ds = open_dataset(coco, "mscoco,2017-val,crop=0", train=False)
    ev = task_evaluator("detection", ds)
    assert ev._gt_obj is ds.cocos[0] and ev.category_ids == ds.cat_ids == [7, 1, 3]
    # two subsets have two files: the ground truth is built from the targets then
    both = open_dataset(coco, "mscoco,2017-train,2017-val,crop=0", train=False)
    ev = task_evaluator("detection", both)
    assert not ev._external_gt and ev.category_ids is None


def test_mask_rcnn_run_logs_box_and_segm_ap_of_the_annotation_file(coco, tmp_path):
    prefix = tmp_path / "mask" / "m"
    assert train(MASK_RCNN, coco, "masks", prefix) == 0
    log = read_log(prefix)
    box = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    keys = [f"test_{k}" for k in box] + [f"test_segm_{k}" for k in box]
    for record in log:  # the same columns in every epoch, null in the untested one
        assert [k for k in record if k.startswith("test_")] == keys
    assert all(log[1][k] is None for k in keys)
    assert "train_loss_mask" in log[-1] and not any(k.startswith("test_kp") for k in log[-1])
    val = "mscoco,2017-val,crop=0"
    for kind, prefix_ in (("bbox", "test_"), ("segm", "test_segm_")):
        stats = pycocotools_stats(f"{prefix}_final.pt", coco, val, kind)
        for key, value in zip(box, stats):
            want = None if value < 0 else value
            assert log[-1][prefix_ + key] == pytest.approx(want, abs=1e-12), (kind, key)
    assert log[-1]["test_segm_AR100"] > 0  # some mask overlaps an object


def test_keypoint_rcnn_run_logs_kp_ap(coco, tmp_path):
    prefix = tmp_path / "kp" / "m"
    assert train(KEYPOINT_RCNN, coco, "keypoints", prefix) == 0
    log = read_log(prefix)
    kp = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
    assert [k for k in log[-1] if k.startswith("test_kp_")] == [f"test_kp_{k}" for k in kp]
    assert not any(k.startswith("test_segm") for k in log[-1])
    assert all(log[1][f"test_kp_{k}"] is None for k in kp)
    stats = pycocotools_stats(
        f"{prefix}_final.pt", coco, "mscoco,2017-val,crop=0,keypoints=1", "keypoints"
    )
    for key, value in zip(kp, stats):
        want = None if value < 0 else value
        assert log[-1][f"test_kp_{key}"] == pytest.approx(want, abs=1e-12), key
