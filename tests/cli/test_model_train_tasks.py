"""The toy detector and the toy segmentation network train through bin/model-train with named
losses, evaluate with pycocotools / mIoU, and predict through bin/model-predict, on data sets
written in their real formats (COCO json, DRN seglists) from drawn scenes."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
from data_builders import make_coco, make_seglist  # noqa: E402

DETECTOR = (
    "C[16,3] BN A P[2] C[32,3] BN A P[2] @f BOXES[12] @r $f RA[4,rois=r] C[64,4] BN A DET[rois=r]"
)
SEGMENTER = "C[16,3] BN A P[2] C[32,3] BN A C[4,1] PI[2] SEG"
# A DeNet detector (DNC corners at stride 4, 8x8 sparse RoIs, DND) in the shape of the paper's
DENET = (
    "C[16,3] BNA P[2] C[32,3] BNA P[2] C[32,3] BNA DNC[16] DNS[3,8,0.01,0.1] C.B[64,1] BNA "
    "DND[0.5,1,1]"
)
# Adam, batch 16, in the training process; every test trains this way
RECIPE = (
    "--border-mode",
    "half",
    "--solver",
    "adam",
    "--learn-momentum",
    "0.9",
    "0.999",
    "--batch-size",
    "16",
    "--thread-num",
    "0",
)
COCO_TRAIN, COCO_VAL = "mscoco,2017-train,crop=0", "mscoco,2017-val,crop=0"


def scenes(n, seed, size=32, sides=(8, 15)):
    """n grey images with one or two coloured rectangles (3 classes), 8 to 14 pixels a side."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        objects = []
        for _ in range(rng.integers(1, 3)):
            w, h = rng.integers(*sides, size=2)
            x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
            objects.append(
                (int(x0), int(y0), int(x0 + w), int(y0 + h), int(rng.integers(3)), False)
            )
        out.append((size, size, objects))
    return out


def read_log(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def train(tool, desc, root, extension, prefix, learn_rate, epochs, test_extension=None, *more):
    """``bin/model-train`` on ``root`` (tested on the ``test_extension`` subset when given);
    returns the result of the run."""
    test = ("--test", root, "--test-extension", test_extension) if test_extension else ()
    return tool(
        "model-train",
        "--model-desc",
        desc,
        *RECIPE,
        "--learn-rate",
        learn_rate,
        "--epochs",
        epochs,
        "--train",
        root,
        "--extension",
        extension,
        *test,
        "--output-prefix",
        prefix,
        *more,
    )


def predict(tool, prefix, root, extension, output):
    """``bin/model-predict`` of the run's final model on a data set; its stdout."""
    res = tool(
        "model-predict",
        "--model",
        f"{prefix}_final.pt",
        "--input",
        root,
        "--extension",
        extension,
        "--output",
        output,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.slow
def test_toy_detector_trains_evaluates_and_predicts(tool, tmp_path):
    root = tmp_path / "coco"
    make_coco(str(root), "train", 2017, scenes(160, 0), ext="png")
    make_coco(str(root), "val", 2017, scenes(40, 1), first_id=5000, ext="png")
    prefix = tmp_path / "out" / "det"
    res = train(tool, DETECTOR, root, COCO_TRAIN, prefix, "0.003", "6", COCO_VAL)
    assert res.returncode == 0, res.stderr
    log = read_log(f"{prefix}_log.jsonl")
    assert {"train_loss_cls", "train_loss_box", "test_AP", "test_AP50"} <= set(log[-1])
    assert log[-1]["train_loss_cls"] < log[0]["train_loss_cls"]
    assert log[-1]["train_loss_box"] < log[0]["train_loss_box"]
    assert log[-1]["test_AP50"] > 0.3, log[-1]
    assert "AP" in predict(tool, prefix, root, COCO_VAL, tmp_path / "pred.json")


@pytest.mark.slow
def test_toy_segmentation_trains_evaluates_and_predicts(tool, tmp_path):
    root = tmp_path / "seg"
    make_seglist(str(root), "train", scenes(120, 2), ignore_border=1)
    make_seglist(str(root), "val", scenes(30, 3), ignore_border=1)
    prefix = tmp_path / "out" / "seg"
    res = train(tool, SEGMENTER, root, "seglist,train", prefix, "0.01", "4", "seglist,val")
    assert res.returncode == 0, res.stderr
    log = read_log(f"{prefix}_log.jsonl")
    assert {"train_loss_seg", "test_mIoU", "test_pixel_acc"} <= set(log[-1])
    assert log[-1]["train_loss_seg"] < log[0]["train_loss_seg"]
    assert log[-1]["test_mIoU"] > 0.6, log[-1]
    assert "mIoU" in predict(tool, prefix, root, "seglist,val", tmp_path / "pred")


def ap50(stdout):
    line = next(x for x in stdout.splitlines() if "IoU=0.50 " in x and "area=   all" in x)
    return float(line.rsplit("=", 1)[1])


@pytest.mark.slow
def test_denet_detector_reaches_ap50_through_model_predict(tool, tmp_path):
    root = tmp_path / "coco"
    make_coco(str(root), "train", 2017, scenes(300, 0, 64, (14, 30)), ext="png")
    make_coco(str(root), "val", 2017, scenes(60, 1, 64, (14, 30)), first_id=5000, ext="png")
    prefix = tmp_path / "out" / "denet"
    res = train(tool, DENET, root, COCO_TRAIN, prefix, "0.003", "8", COCO_VAL)
    assert res.returncode == 0, res.stderr
    log = read_log(f"{prefix}_log.jsonl")
    assert {"train_loss_corner", "train_loss_cls", "train_loss_box"} <= set(log[-1])
    assert log[-1]["train_loss_corner"] < log[0]["train_loss_corner"]
    res = tool(
        "model-predict",
        "--model",
        f"{prefix}_final.pt",
        "--input",
        root,
        "--extension",
        COCO_VAL,
        "--predict-mode",
        "detect,mscoco",
        "--output",
        tmp_path / "det.json",
    )
    assert res.returncode == 0, res.stderr
    stdout = res.stdout
    # pycocotools' table of the results file: 6 AP and 6 AR lines
    table = [line for line in stdout.splitlines() if line.startswith(" Average ")]
    assert len(table) == 12 and sum("(AP)" in line for line in table) == 6, stdout
    assert json.loads((tmp_path / "det.json").read_text())[0].keys() == {
        "image_id",
        "category_id",
        "bbox",
        "score",
    }
    assert ap50(stdout) >= 0.5, stdout
    assert ap50(stdout) == pytest.approx(log[-1]["test_AP50"], abs=1e-3)


@pytest.mark.slow
def test_denet_detector_resumes_exactly(tool, tmp_path):
    root = tmp_path / "coco"
    make_coco(str(root), "train", 2017, scenes(64, 2, 64, (14, 30)), ext="png")
    whole, part = tmp_path / "whole" / "m", tmp_path / "part" / "m"
    assert train(tool, DENET, root, COCO_TRAIN, whole, "0.003", "3").returncode == 0
    assert train(tool, DENET, root, COCO_TRAIN, part, "0.003", "2").returncode == 0
    res = train(
        tool, DENET, root, COCO_TRAIN, part, "0.003", "3", None, "--resume", f"{part}_epoch001.pt"
    )
    assert res.returncode == 0, res.stderr
    drop = lambda log: [{k: v for k, v in r.items() if k != "seconds"} for r in log]  # noqa: E731
    assert drop(read_log(f"{part}_log.jsonl")) == drop(read_log(f"{whole}_log.jsonl"))


def test_denet_detector_trains_on_voc_and_logs_voc07_map(tmp_path, capsys):
    """A VOC2007 set: the log's test columns are VOC07 11-point mAP and one AP per class."""
    from data_builders import VOC_NAMES, make_voc

    from denet.cli.train import main

    make_voc(str(tmp_path / "voc"), 2007, "test", scenes(40, 4, 32, (10, 20)))
    prefix = tmp_path / "out" / "voc"
    args = ["--model-desc", DENET, *RECIPE, "--learn-rate", "0.003", "--epochs", "2"]
    args += ["--train", str(tmp_path / "voc"), "--extension", "voc,2007-test,crop=0"]
    args += ["--test", str(tmp_path / "voc"), "--output-prefix", str(prefix)]
    assert main(args) == 0, capsys.readouterr().err
    log = read_log(f"{prefix}_log.jsonl")
    assert {"train_loss_corner", "train_loss_cls", "train_loss_box", "test_mAP"} <= set(log[-1])
    assert 0.0 <= log[-1]["test_mAP"] <= 1.0
    assert {f"test_AP_{name}" for name in VOC_NAMES[:3]} <= set(log[-1])
    assert "test_AP" not in log[-1]  # COCO's columns belong to COCO sets
