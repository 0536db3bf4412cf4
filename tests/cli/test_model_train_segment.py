"""Segmentation end to end: a network written as a string trains through bin/model-train on a
generated seglist set whose classes are textures (colours are random, so colour alone does not
solve it), its log's mIoU equals a numpy confusion matrix of the label PNGs bin/model-predict
writes, and DRN's multi-scale test changes the prediction and still scores. A VOC-layout set
(voc,<year>-<split>,seg) trains and logs mIoU; bad label maps and bad --scales are one-line
errors."""

import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import denet

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
from data_builders import (  # noqa: E402
    TEXTURED_CLASSES,
    VOC_SEG_COLOURS,
    VOC_VOID_COLOUR,
    make_seglist,
    make_textured_seglist,
    make_voc_seg,
)

# full resolution (dilated 3x3 convs), a half-resolution context branch with dilations 1, 2, 4
# brought back by DeNet's pool-inverse and concatenated with the full-resolution features
SEGMENTER = (
    "C[16,3] BNA C[16,3,dilation=2] BNA @f P[2] C[32,3] BNA C[32,3,dilation=2] BNA "
    "C[32,3,dilation=4] BNA PI[2] CAT( | $f) C[3,1] SEG"
)
DRN_SCALES = ("0.5", "0.75", "1", "1.25", "1.5", "1.75")
BATCH = 16


def read_log(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def confusion(pairs, k):
    """The confusion matrix [gt, pred] of (label PNG, predicted PNG) path pairs, numpy's
    bincount over the pixels whose label is a class (255 and anything >= k left out)."""
    cm = np.zeros(k * k, np.int64)
    for gt_path, pred_path in pairs:
        gt = np.asarray(Image.open(gt_path)).astype(np.int64)
        pred = np.asarray(Image.open(pred_path)).astype(np.int64)
        assert gt.shape == pred.shape, pred_path
        keep = gt < k
        cm += np.bincount(gt[keep] * k + pred[keep], minlength=k * k)
    return cm.reshape(k, k)


def scores(cm):
    """mIoU (mean over classes with a union), pixel accuracy and per-class IoU."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return np.nanmean(iou), tp.sum() / cm.sum(), iou


def printed(stdout, key):
    """The percentage after ``key`` in model-predict's summary line, as a fraction."""
    line = next(x for x in stdout.splitlines() if x.startswith("mIoU "))
    return float(line.split(key + " ", 1)[1].split("%", 1)[0]) / 100


def predicted(out, root, image):
    return os.path.join(out, os.path.splitext(os.path.relpath(image, root))[0] + ".png")


@pytest.mark.slow
def test_textured_segmentation_trains_and_its_log_matches_the_predicted_maps(tool, tmp_path):
    root = str(tmp_path / "tex")
    make_textured_seglist(root, "train", 384, seed=0)
    val = make_textured_seglist(root, "val", 64, seed=1)
    prefix = tmp_path / "out" / "seg"
    res = tool(
        "model-train",
        "--model-desc",
        SEGMENTER,
        "--border-mode",
        "half",
        "--solver",
        "adam",
        "--learn-momentum",
        "0.9",
        "0.999",
        "--learn-rate",
        "0.01",
        "--learn-schedule",
        "poly",
        "--batch-size",
        BATCH,
        "--epochs",
        15,
        "--thread-num",
        0,
        "--train",
        root,
        "--extension",
        "seglist,train",
        "--test",
        root,
        "--test-extension",
        "seglist,val",
        "--output-prefix",
        prefix,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    log = read_log(f"{prefix}_log.jsonl")
    k = len(TEXTURED_CLASSES)
    for record in log:  # every epoch is tested: mIoU, pixel accuracy, per-class IoU
        assert {"test_mIoU", "test_pixel_acc", *(f"test_IoU_{c}" for c in range(k))} <= set(record)
    last = log[-1]
    assert last["test_mIoU"] >= 0.7, last
    assert last["train_loss_seg"] < log[0]["train_loss_seg"] / 4
    assert last["lr"] < log[0]["lr"]  # poly

    # model-predict on the test set: label PNGs at the original size, colour PNGs beside them
    out = str(tmp_path / "pred")
    res = tool(
        "model-predict",
        "--model",
        f"{prefix}_final.pt",
        "--input",
        root,
        "--extension",
        "seglist,val",
        "--output",
        out,
        "--batch-size",
        BATCH,
    )
    assert res.returncode == 0, res.stderr
    pairs = [(label, predicted(out, root, image)) for image, label in val]
    miou, acc, iou = scores(confusion(pairs, k))
    # the log's numbers come from one confusion matrix over the whole set: they equal numpy's
    # computation on the written maps (not a mean of per-image scores)
    assert last["test_mIoU"] == pytest.approx(miou, abs=1e-9)
    assert last["test_pixel_acc"] == pytest.approx(acc, abs=1e-9)
    for c in range(k):
        assert last[f"test_IoU_{c}"] == pytest.approx(iou[c], abs=1e-9)
    assert printed(res.stdout, "mIoU") == pytest.approx(miou, abs=5e-4)
    for c, name in enumerate(TEXTURED_CLASSES):
        assert f"IoU {name}" in res.stdout and f"{100 * iou[c]:.1f}%" in res.stdout
    per_image = np.mean([scores(confusion([p], k))[0] for p in pairs])
    assert abs(per_image - miou) > 1e-6  # the two averages differ here, so the check bites

    colours = {**VOC_SEG_COLOURS, 255: VOC_VOID_COLOUR}
    for image, _ in val[:8]:
        label = np.asarray(Image.open(predicted(out, root, image)))
        colour = np.asarray(Image.open(predicted(out + "_color", root, image)).convert("RGB"))
        want = np.array([colours[v] for v in label.ravel()], np.uint8).reshape(colour.shape)
        assert np.array_equal(colour, want), image

    # DRN's multi-scale test: another prediction, scored the same way
    multi = str(tmp_path / "multi")
    res = tool(
        "model-predict",
        "--model",
        f"{prefix}_final.pt",
        "--input",
        root,
        "--extension",
        "seglist,val",
        "--output",
        multi,
        "--batch-size",
        BATCH,
        "--scales",
        *DRN_SCALES,
    )
    assert res.returncode == 0, res.stderr
    assert "at scales 0.5 0.75 1 1.25 1.5 1.75" in res.stdout
    mpairs = [(label, predicted(multi, root, image)) for image, label in val]
    m_miou, _, _ = scores(confusion(mpairs, k))
    assert printed(res.stdout, "mIoU") == pytest.approx(m_miou, abs=5e-4)
    # it still scores (well above chance; the 0.5 scale blurs the 2-pixel checks away, so
    # it may score below the single scale on these textures)
    assert m_miou > 0.4, res.stdout
    changed = sum(
        int((np.asarray(Image.open(a)) != np.asarray(Image.open(b))).sum())
        for (_, a), (_, b) in zip(pairs, mpairs)
    )
    assert changed > 0

    # the multi-scale rule written out here: sum over scales of the log-probabilities of the
    # resized image, resized back, then argmax
    model = denet.load(f"{prefix}_final.pt").eval()
    for image, _ in val[:3]:
        x = torch.from_numpy(np.asarray(Image.open(image), np.float32) / 255).permute(2, 0, 1)[None]
        total = 0
        for s in map(float, DRN_SCALES):
            size = (round(32 * s), round(32 * s))
            xs = x if s == 1 else F.interpolate(x, size, mode="bilinear", antialias=s < 1)
            with torch.no_grad():
                lp = model(xs)["out"].log_softmax(1)
            total = total + F.interpolate(lp, (32, 32), mode="bilinear")
        want = total[0].argmax(0).numpy()
        got = np.asarray(Image.open(predicted(multi, root, image)))
        assert (want == got).mean() > 0.995, image


def voc_scenes(n, seed):
    """n scenes of even sizes 24..48 with one or two rectangles of VOC classes 1..3."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = (int(v) * 2 for v in rng.integers(12, 25, 2))
        objects = []
        for _ in range(rng.integers(1, 3)):
            ow, oh = rng.integers(6, 14, 2)
            x0, y0 = rng.integers(0, w - ow), rng.integers(0, h - oh)
            objects.append((int(x0), int(y0), int(x0 + ow), int(y0 + oh), int(rng.integers(3)), 0))
        out.append((w, h, objects))
    return out


def test_voc_segmentation_set_trains_an_epoch_and_logs_miou(tmp_path, capsys):
    from denet.cli.predict import main as predict
    from denet.cli.train import main as train

    root = str(tmp_path / "VOCdevkit")
    make_voc_seg(root, 2012, "train", voc_scenes(24, 0))
    val = make_voc_seg(root, 2012, "val", voc_scenes(8, 1))
    prefix = str(tmp_path / "out" / "voc")
    desc = "C[8,3] BNA C[8,3,dilation=2] BNA C[21,1] SEG"  # VOC: background + 20 classes
    args = ["--model-desc", desc, "--border-mode", "half", "--solver", "adam"]
    args += ["--learn-momentum", "0.9", "0.999", "--learn-rate", "0.01", "--epochs", "1"]
    args += ["--batch-size", "4", "--batch-size-factor", "2", "--thread-num", "0"]
    args += ["--train", root, "--extension", "voc,2012-train,seg,crop=24"]
    args += ["--test", root, "--test-extension", "voc,2012-val,seg", "--output-prefix", prefix]
    assert train(args) == 0, capsys.readouterr().err
    (record,) = read_log(f"{prefix}_log.jsonl")
    assert record["train_samples"] == 24 and "train_loss_seg" in record
    assert 0.0 <= record["test_mIoU"] <= 1.0 and 0.0 <= record["test_pixel_acc"] <= 1.0
    assert {f"test_IoU_{c}" for c in range(21)} <= set(record)
    assert "batch 4 x 2 accumulated per step (3 steps per epoch)" in capsys.readouterr().out

    # the test images have their own sizes; model-predict writes maps of those sizes and the
    # log's mIoU is their confusion matrix's
    out = str(tmp_path / "pred")
    base = ["--model", f"{prefix}_final.pt", "--input", root, "--output", out]
    assert predict([*base, "--extension", "voc,2012-val,seg", "--batch-size", "4"]) == 0
    pairs = []
    for image, _ in val:
        rel = os.path.relpath(image, root)
        label = os.path.join(root, "VOC2012", "SegmentationClass", os.path.basename(image))
        pairs.append((label[:-4] + ".png", os.path.join(out, rel[:-4] + ".png")))
    miou, acc, _ = scores(confusion(pairs, 21))
    assert record["test_mIoU"] == pytest.approx(miou, abs=1e-9)
    assert record["test_pixel_acc"] == pytest.approx(acc, abs=1e-9)

    # images of different sizes in one batch run one at a time at each scale; the maps keep
    # each image's size
    multi = str(tmp_path / "multi")
    scaled = [*base[:-1], multi, "--extension", "voc,2012-val,seg", "--batch-size", "4"]
    capsys.readouterr()
    assert predict([*scaled, "--scales", "0.75", "1.5"]) == 0
    assert "mIoU" in capsys.readouterr().out
    for (label, single), (image, _) in zip(pairs, val):
        got = np.asarray(Image.open(single.replace(out, multi)))
        assert got.shape == np.asarray(Image.open(label)).shape == Image.open(image).size[::-1]


# ----------------------------------------------------------------------------- bad input
def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_label_maps_are_one_line_errors(tmp_path, capsys):
    from denet.cli.train import main as train

    root = str(tmp_path / "seg")
    make_seglist(root, "train", ignore_border=1)  # 4 classes: background, cat, dog, bird
    args = ["--model-desc", "C[4,1] SEG", "--train", root, "--extension", "seglist,train,crop=32"]
    args += ["--epochs", "1", "--thread-num", "0", "--output-prefix", str(tmp_path / "o" / "m")]
    label = os.path.join(root, "labels", "train2.png")
    arr = np.asarray(Image.open(label)).copy()
    arr[5, 5] = 9
    Image.fromarray(arr).save(label)
    assert train(args) == 2
    one_line_error(capsys, label, "label value 9", "0..3")

    Image.fromarray(arr[:10, :10] * 0).save(label)  # another size than its image
    assert train(args) == 2
    one_line_error(capsys, label, "label map is 10x10 but", "train2.png is 120x40")


def test_bad_scales_are_one_line_errors(tmp_path, capsys):
    from denet.cli.predict import main as predict

    root = str(tmp_path / "seg")
    make_seglist(root, "val", ignore_border=1)
    model = tmp_path / "seg.pt"
    denet.save(denet.compile("C[4,1] SEG", (3, 32, 32), 4), model)
    base = ["--model", str(model), "--input", root, "--extension", "seglist,val"]
    for bad in ("0", "-1", "nan", "x"):
        with pytest.raises(SystemExit) as stop:
            predict([*base, "--output", str(tmp_path / "p"), "--scales", "1", bad])
        assert stop.value.code == 2
        one_line_error(capsys, "--scales")
    assert not os.path.exists(tmp_path / "p")

    classifier = tmp_path / "cls.pt"
    denet.save(denet.compile("C[4,1] P.A R", (3, 8, 8), 4), classifier)
    assert predict(["--model", str(classifier), "--input", root, "--scales", "1"]) == 2
    one_line_error(capsys, "--scales is segment's multi-scale test")
