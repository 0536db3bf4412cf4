"""model-predict's detect modes for models with instance heads (Mask / Keypoint R-CNN): the
per-image JSON and the COCO results carry ``segmentation`` (RLE) and ``keypoints``, COCOeval's
``segm`` and ``keypoints`` tables are printed when the annotations have those, and ``,image``
fills masks and draws keypoints with the category's skeleton.

Oracles: stand-in models whose outputs are known by hand: one finds the builders' painted
rectangles and returns their pixels as masks and the builders' keypoint layout inside each box
(so the results are the annotations and COCOeval says 1.000), one replays the dataset's own
targets through a letterbox (so mapping back must give pycocotools' masks and the file's
keypoints)."""

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

from denet.cli import predict, predict_detect
from denet.cli.drawing import PALETTE
from denet.data import open_dataset
from denet.errors import DenetError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
from data_builders import (  # noqa: E402
    COLORS,
    KEYPOINT_LAYOUT,
    SCENES,
    draw_scene,
    make_coco,
    object_keypoints,
    object_mask,
)

LETTERBOX = "scale=48,crop=48,scale_mode=large"


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """The builders' five scenes with polygon (and crowd RLE) segmentations and a
    person_keypoints file; PNG images so colours are exact."""
    root = str(tmp_path_factory.mktemp("instances") / "coco")
    make_coco(root, ext="png", segmentation="polygon", keypoints=True)
    return root


def tables(stdout):
    """{kind: {summarize() line label: value}} of every COCOeval table printed."""
    out, kind = {}, None
    for line in stdout.splitlines():
        m = re.match(r"^COCO (bbox|segm|keypoints), ", line)
        if m:
            kind = m.group(1)
            continue
        m = re.match(r"^ (Average (?:Precision|Recall) .*\]) = (-?\d\.\d{3})$", line)
        if m and kind:
            out.setdefault(kind, {})[m.group(1)] = float(m.group(2))
    return out


AP_ALL = "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]"
AP50 = "Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]"
KP_AP_ALL = "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets= 20 ]"


class SceneInstances(torch.nn.Module):
    """Per class colour of the scenes (or, with one class, every colour as that class), the
    box around that colour's pixels, the pixels as the mask [N,1,H,W] (1.0 inside) and
    KEYPOINT_LAYOUT inside the box as keypoints (score 1)."""

    task, input_shape = "detection", (3, 32, 32)

    def __init__(self, class_names):
        super().__init__()
        self.class_names, self.classes = list(class_names), len(class_names)

    def forward(self, images):
        out = []
        for img in images:
            boxes, labels, masks, kps = [], [], [], []
            for label, colour in enumerate(COLORS):
                c = torch.tensor(colour, dtype=img.dtype)[:, None, None] / 255
                pixels = ((img - c).abs() < 0.12).all(0)
                ys, xs = torch.nonzero(pixels, as_tuple=True)
                if len(xs):
                    x0, y0, x1, y1 = (
                        float(v) for v in (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                    )
                    boxes.append([x0, y0, x1, y1])
                    labels.append(label if self.classes > 1 else 0)
                    masks.append(pixels.float()[None])
                    kps.append(
                        [
                            [x0 + fx * (x1 - x0), y0 + fy * (y1 - y0), 1.0]
                            for fx, fy in KEYPOINT_LAYOUT
                        ]
                    )
            h, w = img.shape[-2:]
            out.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.full((len(boxes),), 0.9),
                    "labels": torch.tensor(labels, dtype=torch.int64),
                    "masks": torch.stack(masks) if masks else torch.zeros(0, 1, h, w),
                    "keypoints": torch.tensor(kps, dtype=torch.float32).reshape(
                        -1, len(KEYPOINT_LAYOUT), 3
                    ),
                }
            )
        return out


class Replay(torch.nn.Module):
    """Returns, image after image, the targets of a dataset opened with masks and keypoints:
    its boxes, labels, masks (as probabilities [N,1,H,W]) and keypoints, score 0.9."""

    task, input_shape = "detection", (3, 48, 48)

    def __init__(self, ds):
        super().__init__()
        self.class_names, self.classes = list(ds.classes), len(ds.classes)
        self.targets = [ds[i][1] for i in range(len(ds))]
        self.seen = 0

    def forward(self, images):
        out = []
        for _ in images:
            t = self.targets[self.seen]
            self.seen += 1
            kp = t["keypoints"].clone()
            kp[..., 2] = 1.0
            out.append(
                {
                    "boxes": t["boxes"],
                    "scores": torch.full((len(t["boxes"]),), 0.9),
                    "labels": t["labels"],
                    "masks": t["masks"][:, None].float(),
                    "keypoints": kp,
                }
            )
        return out


def stand_in_run(model, *argv):
    """run_detect in this process with a stand-in model; the printed text."""
    ns = predict.build_parser().parse_args(["--model", "stand-in", *map(str, argv)])
    ns.thread_num = 0
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        predict_detect.run_detect(ns, model, model.class_names, torch.device("cpu"))
    return buf.getvalue()


def decode(rle):
    from pycocotools import mask as mask_util

    return mask_util.decode(dict(rle))


# ----------------------------------------------------------------------------- exact results
def test_coco_results_carry_masks_and_segm_is_scored(coco, tmp_path):
    """Unscaled images, the painted pixels as masks: every result's segmentation RLE decodes to
    its annotation's mask (annToMask), the per-image list has them too, and COCOeval prints a
    bbox and a segm table with AP 1.000; the instances file has no keypoints, so the model's
    keypoints get one line instead of a table."""
    from pycocotools.coco import COCO

    out = tmp_path / "res.json"
    printed = stand_in_run(
        SceneInstances(["cat", "dog", "bird"]),
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
    gt = COCO(os.path.join(coco, "annotations", "instances_val2017.json"))
    assert len(results) == 8
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score", "segmentation", "keypoints"}
        assert isinstance(r["segmentation"]["counts"], str)
        (ann,) = gt.loadAnns(gt.getAnnIds(imgIds=r["image_id"], catIds=r["category_id"]))
        # the annotation's mask, less what a later object paints over (scene 4 overlaps)
        w, h, objects = SCENES[(r["image_id"] - 1) // 10]
        cat = [7, 1, 3].index(r["category_id"])
        over = [
            object_mask(w, h, o)
            for o in objects[objects.index(next(o for o in objects if o[4] == cat)) + 1 :]
        ]
        want = gt.annToMask(ann) & ~np.any(over, 0) if over else gt.annToMask(ann)
        assert np.array_equal(decode(r["segmentation"]), want)
        assert len(r["keypoints"]) == 3 * len(KEYPOINT_LAYOUT)
    got = tables(printed)
    assert set(got) == {"bbox", "segm"}, printed
    assert got["bbox"][AP_ALL] == 1.0 and got["segm"][AP50] == 1.0
    # by hand: scene 4's dog (3, 3, 20, 77) loses the 10x10 under the bird to the painted
    # mask, IoU 1158/1258 = 0.92, a miss at IoU 0.95 only: the dog's AP there is 0.505 (one of
    # two found, 51 of COCO's 101 recall points), 0.9505 over the ten IoUs, 0.9835 over 3 classes
    assert got["segm"][AP_ALL] == round((2 + (9 + 51 / 101) / 10) / 3, 3) == 0.983
    assert "wrote 8 COCO result(s)" in printed and "segmentation RLEs; keypoints)" in printed
    assert "COCO keypoints, 2017-val: " in printed and "has no keypoints" in printed
    per_image = json.loads((tmp_path / "res_detections.json").read_text())
    for entry, (w, h, objects) in zip(per_image, SCENES):
        assert len(entry["segmentation"]) == len(entry["boxes"]) == len(entry["keypoints"])
        painted = draw_scene(w, h, objects)
        for rle, label in zip(entry["segmentation"], entry["labels"]):
            want = (painted == COLORS[label]).all(-1)
            assert np.array_equal(decode(rle), want.astype(np.uint8))


def test_keypoints_are_scored_against_person_keypoints(coco, tmp_path):
    """``mscoco,2017-val,keypoints`` (the person_keypoints file): the results' keypoints are
    the file's for every labelled point, flattened x, y, value; COCOeval prints bbox, segm and
    keypoints tables, each AP 1.000 (crowd regions and v = 0 points ignored, as COCOeval does)."""
    out = tmp_path / "kp.json"
    printed = stand_in_run(
        SceneInstances(["person"]),
        "--input",
        coco,
        "--extension",
        "mscoco,2017-val,crop=0,keypoints",
        "--output",
        out,
        "--predict-mode",
        "detect,mscoco",
    )
    results = json.loads(out.read_text())
    ann_id = 0
    for k, (_, _, objects) in enumerate(SCENES):
        for obj in sorted(objects, key=lambda o: o[4]):
            ann_id = 1 + sum(len(s[2]) for s in SCENES[:k]) + objects.index(obj)
            want = np.array(object_keypoints(obj, ann_id), float).reshape(-1, 3)
            (r,) = [
                r
                for r in results
                if r["image_id"] == 1 + 10 * k and r["bbox"][:2] == [obj[0], obj[1]]
            ]
            got = np.array(r["keypoints"]).reshape(-1, 3)
            labelled = want[:, 2] > 0
            np.testing.assert_allclose(got[labelled, :2], want[labelled, :2], atol=1e-3)
            assert (got[:, 2] == 1).all()
    assert ann_id == 8
    got = tables(printed)
    assert set(got) == {"bbox", "segm", "keypoints"}, printed
    assert got["bbox"][AP_ALL] == got["segm"][AP50] == 1.0  # segm: scene 4's overlap
    assert len(got["keypoints"]) == 10 and got["keypoints"][KP_AP_ALL] == 1.0


# ----------------------------------------------------------------------------- geometry
def test_letterboxed_outputs_map_back_to_the_annotations(coco, tmp_path):
    """The dataset's own targets through a 48x48 letterbox, replayed as outputs: the results'
    keypoints are the file's (where the letterbox kept them labelled) and each segmentation is
    close to its annotation's mask (nearest down, bilinear back up); the segm table is printed."""
    from pycocotools.coco import COCO

    ds = open_dataset(coco, f"mscoco,2017-val,{LETTERBOX},masks,keypoints")
    model = Replay(ds)
    out = tmp_path / "replay.json"
    printed = stand_in_run(
        model,
        "--input",
        coco,
        "--extension",
        f"mscoco,2017-val,{LETTERBOX},keypoints",
        "--output",
        out,
        "--predict-mode",
        "detect,mscoco",
        "--batch-size",
        2,
    )
    assert model.seen == len(ds)
    gt = COCO(os.path.join(coco, "annotations", "person_keypoints_val2017.json"))
    results = json.loads(out.read_text())
    assert len(results) == sum(len(t["boxes"]) for t in model.targets)
    checked = 0
    for r in results:
        anns = gt.loadAnns(gt.getAnnIds(imgIds=r["image_id"]))
        ious = []
        for a in anns:
            m, g = decode(r["segmentation"]) > 0, gt.annToMask(a) > 0
            ious.append((m & g).sum() / max((m | g).sum(), 1))
        best = anns[int(np.argmax(ious))]
        assert max(ious) > 0.6, ious
        want = np.array(best["keypoints"], float).reshape(-1, 3)
        got = np.array(r["keypoints"]).reshape(-1, 3)
        labelled = want[:, 2] > 0
        np.testing.assert_allclose(got[labelled, :2], want[labelled, :2], atol=1e-3)
        checked += labelled.sum()
    assert checked > 20
    got = tables(printed)
    # keypoints the letterbox lost come back as (0, 0) mapped back, so OKS is below 1
    assert set(got) == {"bbox", "segm", "keypoints"}, printed
    assert got["bbox"][AP_ALL] == 1.0 and 0.5 < got["keypoints"][KP_AP_ALL] < 1.0


# ----------------------------------------------------------------------------- drawing
def test_image_mode_fills_masks_and_draws_keypoints_with_the_skeleton(coco, tmp_path):
    """``detect,mscoco,image`` on the person set: inside a mask (away from the box outline) a pixel is
    0.55 scene colour + 0.45 class colour; each keypoint is a dot of the class colour; the
    middle of a skeleton line (nose to left foot, from the category) is the class colour."""
    out = tmp_path / "drawn.json"
    stand_in_run(
        SceneInstances(["person"]),
        "--input",
        coco,
        "--extension",
        "mscoco,2017-val,crop=0,keypoints",
        "--output",
        out,
        "--predict-mode",
        "detect,mscoco,image",
    )
    w, h, objects = SCENES[4]  # 37x81: three objects, the first tall
    img = np.asarray(Image.open(tmp_path / "drawn_images" / "val2017" / "000000000041.png"))
    zoom = 256 // max(w, h)
    assert img.shape == (h * zoom, w * zoom, 3)
    person = PALETTE[0]
    x0, y0, x1, y1, cat, _ = objects[0]  # (3, 3, 20, 77)

    def at(fx, fy):  # a point of the box in drawn pixels
        return (x0 + fx * (x1 - x0)) * zoom, (y0 + fy * (y1 - y0)) * zoom

    x, y = at(0.5, 0.65)  # between the hip-knee lines: mask only
    want = np.round(0.55 * np.array(COLORS[cat]) + 0.45 * person.astype(float))
    np.testing.assert_allclose(img[int(y), int(x)].astype(float), want, atol=1)
    points = np.array([at(fx, fy) for fx, fy in KEYPOINT_LAYOUT])
    apart = 0
    for k, (x, y) in enumerate(points):
        others = np.delete(points, k, 0)
        if np.hypot(*(others - (x, y)).T).min() > 6 and y > 20 * zoom:  # below the bird
            assert tuple(img[int(y), int(x)]) == tuple(person), k
            apart += 1
    assert apart >= 8
    # the skeleton's left ankle - left knee line [16, 14], halfway: the class colour
    (ax, ay), (kx, ky) = points[15], points[13]
    mx, my = int(round((ax + kx) / 2)), int(round((ay + ky) / 2))
    near = img[my - 1 : my + 2, mx - 1 : mx + 2].reshape(-1, 3)
    assert (near == person).all(1).any() and (near == 0).all(1).any()  # colour on a black rim
    # the per-image JSON that was drawn holds the masks and keypoints
    entries = json.loads((tmp_path / "drawn_detections.json").read_text())
    assert all("segmentation" in e and "keypoints" in e for e in entries)


def test_outputs_that_do_not_fit_their_boxes_are_refused(coco, tmp_path):
    class Bad(SceneInstances):
        def forward(self, images):
            out = super().forward(images)
            for o in out:
                o["keypoints"] = o["keypoints"][:, :, :2]
            return out

    with pytest.raises(DenetError, match=r"keypoints of shape .*\[N, K, 3\]"):
        stand_in_run(
            Bad(["cat", "dog", "bird"]),
            "--input",
            coco,
            "--extension",
            "mscoco,2017-val,crop=0",
            "--output",
            tmp_path / "bad.json",
        )
