"""model-predict's DeNet detect modes: ``detect,mscoco`` (a COCO results file that pycocotools
reads and scores), ``detect,voc`` (VOC devkit files scored by denet.eval's VOC07 AP),
``,image`` (the images with their boxes drawn), ``--params`` (DeNet's keys, through the heads'
``set_test_params``), and a one-line error for every mode or parameter that does not fit.

Two oracles: a stand-in detector that finds the drawn rectangles of the data builders' scenes
exactly, so every written box and every score is known by hand (the annotation itself), and a
small compiled DeNet detector (DNC, DNS, DND) whose boxes are recomputed here from its own output
and the loader's scale and offset."""

import contextlib
import io
import json
import os
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import denet
from denet.cli import predict, predict_detect
from denet.cli.drawing import PALETTE
from denet.data import open_dataset
from denet.data.voc import CLASSES as VOC_CLASSES
from denet.errors import DenetError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
from data_builders import COLORS, SCENES, make_coco, make_voc  # noqa: E402

DENET = "C[8,3] P[2] DNC[4] DNS[3,4,0.01,0] C[16,1] BNA DND[0.5,1,1]"  # corners at stride 2
COCO_CATS = [7, 1, 3]  # make_coco's category ids of labels 0, 1, 2
COCO_EXT = "mscoco,2017-val,scale=48,crop=48,scale_mode=large"  # letterboxed: scale and offset
VOC_EXT = "voc,2007-test,scale=48,crop=48,scale_mode=large"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """(COCO root, VOCdevkit root, folder of plain images) of the builders' five scenes."""
    root = tmp_path_factory.mktemp("detect-sets")
    make_coco(str(root / "coco"))
    make_voc(str(root / "voc"))
    plain = root / "plain"
    plain.mkdir()
    for k, (w, h, _) in enumerate(SCENES[:3]):
        Image.new("RGB", (w, h), (90, 140, 200)).save(plain / f"img{k}.png")
    return str(root / "coco"), str(root / "voc"), str(plain)


def denet_detector(classes, path):
    """A DeNet detector that finds something without training: corner logits from random
    weights (so RoIs depend on the image), DND class biases favouring classes 0, 1, 2 and
    small random box deltas (some boxes leave the image, so clipping matters)."""
    torch.manual_seed(0)
    m = denet.compile(DENET, (3, 32, 32), classes, border_mode="half")
    with torch.no_grad():
        m.l2_DNC.conv.weight[:4].normal_(0, 0.5)
        m.l2_DNC.conv.bias[:4].fill_(0.5)
        m.l6_DND.conv.weight.normal_(0, 0.3)
        m.l6_DND.conv.weight[classes + 1 :].normal_(0, 0.05)
        m.l6_DND.conv.bias.zero_()
        m.l6_DND.conv.bias[:3] = torch.tensor([2.0, 1.5, 1.0])
    denet.save(m, path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Model files: DeNet detectors for 3 (COCO scenes) and 20 (VOC) classes, a detector
    without set_test_params (DET), a classifier and a segmenter."""
    d = tmp_path_factory.mktemp("detect-models")
    out = {"coco": denet_detector(3, d / "denet3.pt"), "voc": denet_detector(20, d / "denet20.pt")}
    for name, desc, shape in (
        ("det", "C[8,3] P[2] @f BOXES[4] @r $f RA[2,rois=r] C[16,2] BN A DET[rois=r]", (3, 32, 32)),
        ("classifier", "C[4,3] R", (3, 8, 8)),
        ("segmenter", "C.B[3,1] SEG", (3, 8, 8)),
    ):
        denet.save(denet.compile(desc, shape, 3, border_mode="half"), d / f"{name}.pt")
        out[name] = str(d / f"{name}.pt")
    return out


def run(*argv):
    """``model-predict`` in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = predict.main([*map(str, argv), "--thread-num", "0"])
    return status, out.getvalue(), err.getvalue()


def ok(*argv) -> str:
    status, out, err = run(*argv)
    assert status == 0, err
    return out


def fails(*argv_and_needles, needles=()):
    """The run ends with status 2 and one line on stderr that holds every needle."""
    status, out, err = run(*argv_and_needles)
    assert status == 2, (status, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def table(stdout):
    """The 12 summarize() lines pycocotools prints, as {line label: value}."""
    rows = re.findall(r"^ (Average (?:Precision|Recall) .*\]) = (-?\d\.\d{3})$", stdout, re.M)
    return {label: float(v) for label, v in rows}


AP_ALL = "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]"


# ----------------------------------------------------------------------------- hand oracles
class SceneBoxes(torch.nn.Module):
    """A stand-in detector: per class colour of the builders' scenes, the box around the
    pixels of that colour, score 0.9 (the rectangles are drawn exactly, so the boxes are the
    annotations)."""

    task, input_shape = "detection", (3, 32, 32)

    def __init__(self, class_names):
        super().__init__()
        self.class_names, self.classes = list(class_names), len(class_names)

    def forward(self, images):
        out = []
        for img in images:
            boxes, labels = [], []
            for label, colour in enumerate(COLORS):
                c = torch.tensor(colour, dtype=img.dtype)[:, None, None] / 255
                ys, xs = torch.nonzero(((img - c).abs() < 0.12).all(0), as_tuple=True)
                if len(xs):
                    boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                    labels.append(label)
            out.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.full((len(boxes),), 0.9),
                    "labels": torch.tensor(labels, dtype=torch.int64),
                }
            )
        return out


def stand_in_run(model, *argv):
    ns = predict.build_parser().parse_args(["--model", "scene-boxes", *map(str, argv)])
    ns.thread_num = 0
    predict_detect.run_detect(ns, model, model.class_names, torch.device("cpu"))


def test_coco_results_are_the_annotations_for_exact_boxes(sets, tmp_path, capsys):
    """Unscaled images, exact boxes: the results file holds each annotation's own image id,
    category id and [x, y, w, h] (no +1 shift), pycocotools reads it, and its table says AP
    1.000 (the crowd box is matched and ignored, as COCOeval does)."""
    from pycocotools.coco import COCO

    coco, _, _ = sets
    model = SceneBoxes(["cat", "dog", "bird"])
    out = tmp_path / "out" / "val2017_results.json"
    stand_in_run(
        model,
        "--input",
        coco,
        "--extension",
        "mscoco,2017-val,crop=0",
        "--output",
        out,
        "--predict-mode",
        "detect,mscoco",
        "--batch-size",
        2,
    )
    results = json.loads(out.read_text())
    want = [
        {
            "image_id": 1 + 10 * k,
            "category_id": COCO_CATS[cat],
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": 0.9,
        }
        for k, (_, _, objects) in enumerate(SCENES)
        for x0, y0, x1, y1, cat, _ in sorted(objects, key=lambda o: o[4])
    ]
    assert results == want
    printed = capsys.readouterr().out
    gt = COCO(os.path.join(coco, "annotations", "instances_val2017.json"))
    assert len(gt.loadRes(str(out)).getAnnIds()) == len(want) == 8
    assert "wrote 8 COCO result(s)" in printed
    assert "COCO bbox, 2017-val (5 images, 8 detections" in printed
    rows = table(printed)
    assert len(rows) == 12 and rows[AP_ALL] == 1.0, printed
    # the per-image list of plain detect goes beside the results file
    per_image = json.loads((tmp_path / "out" / "val2017_results_detections.json").read_text())
    assert [len(e["boxes"]) for e in per_image] == [len(o) for _, _, o in SCENES]


def test_voc_devkit_files_are_the_xml_corners_and_map_is_one(sets, tmp_path, capsys):
    """Unscaled images, exact boxes: every devkit line repeats its object's XML corners
    (1-based), one file per class (empty ones included), and the VOC07 mAP is 1 (the difficult
    object's detection is neither a hit nor a miss)."""
    _, voc, _ = sets
    model = SceneBoxes(VOC_CLASSES)
    out = tmp_path / "voc-out"
    stand_in_run(
        model,
        "--input",
        voc,
        "--extension",
        "voc,2007-test,crop=0",
        "--output",
        out,
        "--predict-mode",
        "detect,voc",
    )
    assert sorted(os.listdir(out)) == sorted(
        [f"comp4_det_test_{c}.txt" for c in VOC_CLASSES] + ["detections.json"]
    )
    for label, name in enumerate(VOC_CLASSES):
        want = [
            f"{k:06d} 0.900000 {x0 + 1:.3f} {y0 + 1:.3f} {x1:.3f} {y1:.3f}"
            for k, (_, _, objects) in enumerate(SCENES)
            for x0, y0, x1, y1, cat, _ in objects
            if cat == label
        ]
        assert (out / f"comp4_det_test_{name}.txt").read_text().splitlines() == want, name
    printed = capsys.readouterr().out
    assert "VOC07 11-point AP per class (IoU > 0.5, difficult objects ignored, 5 images)" in printed
    for name in VOC_CLASSES[:3]:
        assert re.search(rf"^  {name} +1\.0000$", printed, re.M), printed
    assert re.search(r"^  boat +n/a", printed, re.M)
    assert "mAP 1.0000 (VOC07 11-point)" in printed


def test_image_mode_draws_each_box_in_its_class_colour(sets, tmp_path):
    coco, voc, _ = sets
    out = tmp_path / "res.json"
    stand_in_run(
        SceneBoxes(["cat", "dog", "bird"]),
        "--input",
        coco,
        "--extension",
        "mscoco,2017-val,crop=0",
        "--output",
        out,
        "--predict-mode",
        "detect,mscoco,image",
    )
    drawn = tmp_path / "res_images" / "val2017"
    assert sorted(os.listdir(drawn)) == [f"{1 + 10 * k:012d}.png" for k in range(5)]
    w, h, objects = SCENES[0]
    img = np.asarray(Image.open(drawn / "000000000001.png"))
    zoom = 256 // max(w, h)  # small images are enlarged to >= 256 px
    assert img.shape == (h * zoom, w * zoom, 3)
    for x0, y0, _, _, cat, _ in objects:
        # the outline in the class colour, a black rim just outside it (readable on any colour)
        assert tuple(img[y0 * zoom + 6, x0 * zoom]) == tuple(PALETTE[cat])
        assert tuple(img[y0 * zoom + 6, x0 * zoom - 1]) == (0, 0, 0)

    voc_out = tmp_path / "voc"
    stand_in_run(
        SceneBoxes(VOC_CLASSES),
        "--input",
        voc,
        "--extension",
        "voc,2007-test,crop=0",
        "--output",
        voc_out,
        "--predict-mode",
        "detect,voc,image",
    )
    drawn = voc_out / "images" / "VOC2007" / "JPEGImages"
    assert sorted(os.listdir(drawn)) == [f"{k:06d}.png" for k in range(5)]


# ----------------------------------------------------------------------------- a DeNet detector
def denet_oracle(model_path, root, extension, **test_params):
    """Per image, what model-predict must write: the model's boxes on the loader's images
    mapped back with ``(v - offset) / scale``, clipped to the original image, boxes without
    area dropped; ``(image id, boxes, scores, labels)``."""
    ds = open_dataset(root, extension)
    items = [ds[i] for i in range(len(ds))]
    model = denet.load(model_path).eval()
    model.l6_DND.set_test_params(**test_params)
    with torch.no_grad():
        outputs = model(torch.stack([x for x, _ in items]))
    want = []
    for out, (_, t) in zip(outputs, items):
        scale, offset = t["scale"].double().repeat(2), t["offset"].double().repeat(2)
        boxes = (out["boxes"].double() - offset) / scale
        h, w = t["orig_size"].tolist()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        want.append(
            (int(t["image_id"]), boxes[keep], out["scores"][keep], out["labels"][keep].tolist())
        )
    return ds, want


def test_coco_results_of_a_denet_detector(models, sets, tmp_path):
    """Letterboxed 48x48 inputs: the results are the model's boxes mapped back to the original
    images, clipped, with COCO's ids; pycocotools reads the file, and the printed table is the
    one pycocotools computes from it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco, _, _ = sets
    out = tmp_path / "coco.json"
    printed = ok(
        "--model",
        models["coco"],
        "--input",
        coco,
        "--extension",
        COCO_EXT,
        "--output",
        out,
        "--predict-mode",
        "detect,mscoco",
        "--batch-size",
        5,
    )
    results = json.loads(out.read_text())
    _, want = denet_oracle(models["coco"], coco, COCO_EXT)
    clipped = 0
    for image_id, boxes, scores, labels in want:
        mine = [r for r in results if r["image_id"] == image_id]
        assert [r["category_id"] for r in mine] == [COCO_CATS[k] for k in labels]
        np.testing.assert_allclose([r["score"] for r in mine], scores.numpy(), atol=1e-6)
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
        np.testing.assert_allclose([r["bbox"] for r in mine], xywh.numpy(), atol=2e-3)
        clipped += int((boxes[:, :2] == 0).any(1).sum())
    assert len(results) == sum(len(w[1]) for w in want) > 10
    assert clipped > 0  # some boxes left the image and were clipped

    gt = COCO(os.path.join(coco, "annotations", "instances_val2017.json"))
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(str(out)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert list(table(printed).values()) == [round(float(v), 3) for v in ev.stats]
    assert (tmp_path / "coco_detections.json").exists()


def test_voc_files_of_a_denet_detector_score_as_the_evaluator_says(models, sets, tmp_path):
    """The devkit lines are the model's boxes (mapped back, clipped) with 1-based corners; read
    back and scored by denet.eval's VOC07 evaluator against the XML annotations with
    matchIOU 0.3, they give the printed per-class APs and mAP."""
    from denet.eval import VocEvaluator

    _, voc, _ = sets
    out = tmp_path / "voc"
    printed = ok(
        "--model",
        models["voc"],
        "--input",
        voc,
        "--extension",
        VOC_EXT,
        "--output",
        out,
        "--predict-mode",
        "detect,voc",
        "--params",
        "matchIOU=0.3",
    )
    ds, want = denet_oracle(models["voc"], voc, VOC_EXT)
    line = re.compile(
        r"^(\d{6}) (\d\.\d{6}) (-?\d+\.\d{3}) (-?\d+\.\d{3}) (\d+\.\d{3}) (\d+\.\d{3})$"
    )
    read = {}  # (image index, label) -> [(score, x1, y1, x2, y2) in 0-based continuous pixels]
    for label, name in enumerate(VOC_CLASSES):
        for row in (out / f"comp4_det_test_{name}.txt").read_text().splitlines():
            m = line.match(row)
            assert m, row
            s, x1, y1, x2, y2 = map(float, m.groups()[1:])
            assert 1 <= x1 < x2 and 1 <= y1 < y2
            read.setdefault((int(m.group(1)), label), []).append((s, x1 - 1, y1 - 1, x2, y2))
    evaluator = VocEvaluator(VOC_CLASSES, use_07_metric=True, iou_threshold=0.3)
    for index, boxes, scores, labels in want:
        for label in set(labels):
            mine = [k for k, v in enumerate(labels) if v == label]
            got = np.array(read.pop((index, label)))
            np.testing.assert_allclose(got[:, 0], scores[mine].numpy(), atol=1e-6)
            np.testing.assert_allclose(got[:, 1:], boxes[mine].numpy(), atol=2e-3)
        rec = ds.records[index]
        evaluator.update(
            [{"boxes": boxes, "scores": scores, "labels": torch.tensor(labels)}],
            [
                {
                    "image_id": index,
                    "boxes": rec.boxes,
                    "labels": rec.labels,
                    "difficult": rec.flags["difficult"],
                }
            ],
        )
    assert not read  # nothing written that the model did not find
    m = evaluator.compute()
    assert "IoU > 0.3" in printed
    assert f"mAP {m['mAP']:.4f} (VOC07 11-point)" in printed
    for name in VOC_CLASSES[:3]:
        assert re.search(rf"^  {name} +{m['AP_' + name]:.4f}$", printed, re.M), printed


def count_boxes(path):
    return sum(len(e["boxes"]) for e in json.loads(path.read_text()))


def test_params_change_what_the_head_keeps(models, sets, tmp_path):
    """prThreshold 0.99 keeps fewer boxes, useSoftNMS=1 keeps more, each as the head's own
    set_test_params does in this process; cornerThreshold and cornerMax change nothing and
    say so."""
    coco, _, _ = sets
    base = ("--model", models["coco"], "--input", coco, "--extension", COCO_EXT)
    counts = {}
    for key, params, oracle in (
        ("default", "", {}),
        ("high", "prThreshold=0.99", {"score": 0.99}),
        ("half", "prThreshold=0.5", {"score": 0.5}),
        ("soft", "useSoftNMS=1,nmsThreshold=0.5", {"soft_nms": True, "nms": 0.5}),
        ("corners", "cornerThreshold=0.5,cornerMax=10", {}),
    ):
        out = tmp_path / f"{key}.json"
        printed = ok(*base, "--output", out, *(("--params", params) if params else ()))
        counts[key] = count_boxes(out)
        _, want = denet_oracle(models["coco"], coco, COCO_EXT, **oracle)
        assert counts[key] == sum(len(w[1]) for w in want), key
        if oracle:
            assert f"--params {params}: set on l6_DND" in printed
    assert counts["high"] < counts["half"] < counts["default"] < counts["soft"], counts
    assert counts["corners"] == counts["default"]
    assert "--params cornerThreshold=0.5,cornerMax=10: ignored, as in DeNet" in printed
    assert "model-modify --modify-layer DNS corner_threshold=" in printed


def test_empty_results_print_a_line_instead_of_a_table(models, sets, tmp_path):
    coco, _, _ = sets
    out = tmp_path / "none.json"
    printed = ok(
        "--model",
        models["coco"],
        "--input",
        coco,
        "--extension",
        COCO_EXT,
        "--output",
        out,
        "--predict-mode",
        "detect,mscoco",
        "--params",
        "prThreshold=1",
    )
    assert json.loads(out.read_text()) == []
    assert "no detections in 5 image(s), so pycocotools has nothing to evaluate" in printed
    assert not table(printed)


def test_plain_detect_and_image_mode_on_a_folder(models, sets, tmp_path):
    _, _, plain = sets
    out = tmp_path / "plain.json"
    printed = ok(
        "--model",
        models["coco"],
        "--input",
        plain,
        "--output",
        out,
        "--predict-mode",
        "detect,image",
    )
    entries = json.loads(out.read_text())
    assert [os.path.basename(e["path"]) for e in entries] == ["img0.png", "img1.png", "img2.png"]
    assert all(set(e) == {"path", "boxes", "scores", "labels", "classes"} for e in entries)
    drawn = sorted(os.listdir(tmp_path / "plain_images"))
    assert drawn == ["img0.png", "img1.png", "img2.png"]
    w, h, _ = SCENES[1]
    zoom = 256 // max(w, h)
    assert Image.open(tmp_path / "plain_images" / "img1.png").size == (w * zoom, h * zoom)
    assert "drew 3 image(s)" in printed


# ----------------------------------------------------------------------------- errors
def test_modes_that_do_not_fit(models, sets, tmp_path):
    coco, voc, plain = sets
    det = ("--model", models["coco"], "--output", tmp_path / "x.json")
    voc_det = ("--model", models["voc"], "--output", tmp_path / "x")
    fails(
        "--model",
        models["classifier"],
        "--input",
        plain,
        "--predict-mode",
        "detect",
        needles=("detect", "classification"),
    )
    fails(
        *voc_det,
        "--input",
        voc,
        "--extension",
        VOC_EXT,
        "--predict-mode",
        "detect,mscoco",
        needles=("detect,mscoco", "COCO", "voc"),
    )
    fails(
        *det,
        "--input",
        plain,
        "--predict-mode",
        "detect,mscoco",
        needles=("detect,mscoco", "folder of images"),
    )
    fails(
        *det,
        "--input",
        coco,
        "--extension",
        COCO_EXT,
        "--predict-mode",
        "detect,voc",
        needles=("detect,voc", "VOC", "mscoco"),
    )
    fails(*det, "--input", plain, "--predict-mode", "detect,pascal", needles=("'pascal'",))
    fails(
        *det, "--input", plain, "--predict-mode", "detect,mscoco,voc", needles=("mscoco and voc",)
    )
    fails(*det, "--input", plain, "--predict-mode", "detect,imagenet", needles=("imagenet",))
    fails(*det, "--input", plain, "--predict-mode", "detect,image,image", needles=("twice",))
    fails(
        "--model",
        models["segmenter"],
        "--input",
        plain,
        "--predict-mode",
        "segment,image",
        needles=("segment takes no options",),
    )
    fails(
        *det,
        "--input",
        coco,
        "--extension",
        COCO_EXT,
        "--predict-mode",
        "detect,mscoco",
        "--output",
        tmp_path,
        needles=(str(tmp_path), "this is a folder"),
    )
    (tmp_path / "a-file").write_text("")
    fails(
        *voc_det,
        "--input",
        voc,
        "--extension",
        VOC_EXT,
        "--predict-mode",
        "detect,voc",
        "--output",
        tmp_path / "a-file",
        needles=("a-file", "this is a file"),
    )
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "params, needles",
    [
        ("prThresh=0.5", ("unknown key 'prThresh'", "did you mean prThreshold")),
        ("prthreshold=0.5", ("did you mean prThreshold",)),
        ("prThreshold", ("'prThreshold' is not a key=value pair",)),
        ("prThreshold=", ("is not a key=value pair",)),
        ("prThreshold=0.5,,nmsThreshold=0.3", ("empty item",)),
        ("prThreshold=1.5", ("prThreshold=1.5", "[0, 1]")),
        ("prThreshold=abc", ("prThreshold=abc", "a number")),
        ("prThreshold=nan", ("prThreshold=nan",)),
        ("nmsThreshold=-0.1", ("nmsThreshold=-0.1",)),
        ("useSoftNMS=2", ("useSoftNMS=2", "0 or 1")),
        ("matchIOU=1", ("matchIOU=1", "[0, 1)")),
        ("cornerMax=0", ("cornerMax=0", ">= 1")),
        ("prThreshold=0.5,prThreshold=0.6", ("prThreshold is given twice",)),
        ("matchIOU=0.4", ("matchIOU=0.4", "detect,voc")),
    ],
)
def test_bad_params_are_one_line(models, sets, tmp_path, params, needles):
    _, _, plain = sets
    fails(
        "--model",
        models["coco"],
        "--input",
        plain,
        "--output",
        tmp_path / "o.json",
        "--params",
        params,
        needles=needles,
    )
    assert not (tmp_path / "o.json").exists()


def test_params_need_a_head_that_takes_them(models, sets, tmp_path):
    _, _, plain = sets
    out = ("--input", plain, "--output", tmp_path / "o.json")
    fails(
        "--model",
        models["det"],
        *out,
        "--params",
        "prThreshold=0.5",
        needles=("prThreshold=0.5", "no detection head", "set_test_params"),
    )
    # corner keys alone are only reported, so a head is not needed for them
    assert "ignored, as in DeNet" in ok("--model", models["det"], *out, "--params", "cornerMax=9")
    for kind in ("classifier", "segmenter"):
        fails(
            "--model",
            models[kind],
            "--input",
            plain,
            "--params",
            "prThreshold=0.5",
            needles=("--params", "detection parameters"),
        )


def test_the_tool_exits_2_with_one_line(tool, models, sets):
    """The same errors through bin/model-predict: status 2, one line, no traceback."""
    _, _, plain = sets
    res = tool(
        "model-predict",
        "--model",
        models["coco"],
        "--input",
        plain,
        "--params",
        "bogus=1",
        "--thread-num",
        0,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "model-predict: error: --params: unknown key 'bogus'; DeNet's keys are prThreshold, "
        "nmsThreshold, useSoftNMS, matchIOU, cornerThreshold, cornerMax"
    ]


def test_parse_params_reads_denet_keys():
    p = predict_detect.parse_params(" prThreshold=0.2, nmsThreshold=0.4,useSoftNMS=1,matchIOU=0.5 ")
    assert (p.score, p.nms, p.soft_nms, p.match_iou) == (0.2, 0.4, True, 0.5)
    assert p.thresholds == {"score": 0.2, "nms": 0.4, "soft_nms": True}
    assert predict_detect.parse_params("useSoftNMS=0").thresholds == {"soft_nms": False}
    assert predict_detect.parse_params("").thresholds == {}
    with pytest.raises(DenetError):
        predict_detect.parse_params("=3")
    assert predict_detect.parse_detect_mode("DETECT, mscoco ,Image") == predict_detect.DetectMode(
        "mscoco", True
    )
    assert predict_detect.parse_detect_mode("detect,image,voc") == predict_detect.DetectMode(
        "voc", True
    )


def test_output_paths():
    mode = predict_detect.parse_detect_mode
    paths = predict_detect.output_paths
    assert paths(mode("detect,mscoco,image"), "out/val.json") == predict_detect.Outputs(
        "out/val_detections.json", "out/val.json", None, "out/val_images"
    )
    assert paths(mode("detect"), None) == predict_detect.Outputs("results.json")
    assert paths(mode("detect,voc,image"), None) == predict_detect.Outputs(
        os.path.join("results", "detections.json"),
        None,
        "results",
        os.path.join("results", "images"),
    )


def test_image_ids_two_subsets_share_are_refused(models, tmp_path):
    """A results file (COCO) or devkit file (VOC) names images by id only, so two images with
    one id cannot both be written."""
    make_coco(str(tmp_path / "coco"), "train", 2017)
    make_coco(str(tmp_path / "coco"), "val", 2017)
    fails(
        "--model",
        models["coco"],
        "--input",
        tmp_path / "coco",
        "--extension",
        "mscoco,2017-train,2017-val",
        "--predict-mode",
        "detect,mscoco",
        "--output",
        tmp_path / "o.json",
        needles=("image id 1 is in subsets 2017-train and 2017-val",),
    )
    make_voc(str(tmp_path / "voc"), 2007, "test")
    make_voc(str(tmp_path / "voc"), 2012, "test")
    fails(
        "--model",
        models["voc"],
        "--input",
        tmp_path / "voc",
        "--extension",
        "voc,2007-test,2012-test",
        "--predict-mode",
        "detect,voc",
        "--output",
        tmp_path / "v",
        needles=("image id 000000 is in VOC2007 and VOC2012",),
    )
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "v").exists()
