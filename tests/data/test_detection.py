"""mscoco and voc sets written by the tests: every image and box comes back, letterboxing maps
boxes exactly, and mapping back recovers the originals; pycocotools is the COCO oracle."""

import contextlib
import io
import math
import os

import numpy as np
import pytest
import torch
from data_builders import COLORS, SCENES, make_coco, make_voc
from pycocotools.coco import COCO

from denet.data import open_dataset
from denet.errors import DataError


@pytest.fixture
def coco_root(tmp_path):
    make_coco(str(tmp_path))
    return str(tmp_path)


def _pycoco(root, name="instances_val2017.json"):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(os.path.join(root, "annotations", name))


def _letterbox(w, h, side):
    """Independent oracle of scale_mode=large + centre crop: the longer side becomes `side`,
    the other ceil(side * short / long), then the image is centred on a side x side canvas."""
    if w >= h:
        nw, nh = side, math.ceil(h * side / w)
    else:
        nw, nh = math.ceil(w * side / h), side
    return nw / w, nh / h, (side - nw) // 2, (side - nh) // 2


def _check_color(image, box, color, tol=40):
    """The centre of `box` in the returned image shows the object's colour."""
    cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
    rgb = image[:, cy, cx].numpy() * 255
    assert np.abs(rgb - np.array(color)).max() < tol, (box, rgb, color)


def test_coco_letterbox_keeps_every_image_and_box(coco_root):
    coco = _pycoco(coco_root)
    side = 80
    ds = open_dataset(coco_root, f"mscoco,2017-val,scale_mode=large,scale={side},crop={side}")
    assert len(ds) == len(coco.getImgIds())
    assert ds.classes == [c["name"] for c in coco.dataset["categories"]]
    assert [ds.cat_ids[i] for i in range(3)] == [7, 1, 3]
    seen = []
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.shape == (3, side, side)
        info = coco.imgs[t["image_id"]]
        seen.append(t["image_id"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[t["image_id"]]))
        assert len(t["boxes"]) == len(anns) == len(t["labels"]) == len(t["iscrowd"])
        sx, sy, ox, oy = _letterbox(info["width"], info["height"], side)
        assert torch.allclose(t["scale"], torch.tensor([sx, sy], dtype=torch.float64))
        assert torch.allclose(t["offset"], torch.tensor([ox, oy], dtype=torch.float64))
        assert t["orig_size"].tolist() == [info["height"], info["width"]]
        for box, label, crowd, a in zip(t["boxes"], t["labels"], t["iscrowd"], anns):
            x, y, w, h = a["bbox"]
            want = torch.tensor([x * sx + ox, y * sy + oy, (x + w) * sx + ox, (y + h) * sy + oy])
            assert torch.allclose(box, want, atol=1e-4)
            back = (box.double().view(2, 2) - t["offset"]) / t["scale"]
            assert torch.allclose(
                back.view(4), torch.tensor([x, y, x + w, y + h], dtype=torch.float64), atol=0.5
            )
            assert ds.cat_ids[int(label)] == a["category_id"]
            assert bool(crowd) == bool(a["iscrowd"])
            _check_color(image, box.tolist(), COLORS[ds.cat_ids.index(a["category_id"])])
        # the letterbox bands are black
        if ox > 0:
            assert image[:, :, : ox - 1].abs().max() < 0.05
        if oy > 0:
            assert image[:, : oy - 1].abs().max() < 0.05
    assert seen == sorted(coco.getImgIds())


def test_coco_options_crowd_and_empty_images(coco_root):
    full = open_dataset(coco_root, "mscoco,2017-val,crop=0")
    assert sum(int(full[i][1]["iscrowd"].sum()) for i in range(len(full))) == 1
    no_crowd = open_dataset(coco_root, "mscoco,2017-val,crop=0,skip_crowd")
    assert (
        sum(len(no_crowd[i][1]["boxes"]) for i in range(len(no_crowd)))
        == sum(len(full[i][1]["boxes"]) for i in range(len(full))) - 1
    )
    only_boxes = open_dataset(coco_root, "mscoco,2017-val,crop=0,bbox_only")
    assert len(only_boxes) == len(full) - 1
    # crop=0 and scale=0: the original image, boxes exactly as annotated
    image, t = full[0]
    w, h, objects = SCENES[0]
    assert image.shape == (3, h, w)
    assert t["boxes"].tolist() == [[float(v) for v in o[:4]] for o in objects]


def test_coco_several_subsets_and_errors(tmp_path):
    root = str(tmp_path)
    make_coco(root, "val")
    make_coco(root, "train", scenes=SCENES[:2], first_id=1000)
    ds = open_dataset(root, "mscoco,2017-train,2017-val")
    assert len(ds) == len(SCENES) + 2
    assert [ds[i][1]["image_id"] for i in (0, 2)] == [1000, 1]
    with pytest.raises(DataError, match="2017-train, 2017-val"):
        open_dataset(root, "mscoco,2014-val")
    with pytest.raises(DataError, match="needs a subset"):
        open_dataset(root, "mscoco")
    with open(os.path.join(root, "annotations", "instances_val2017.json"), "w") as fh:
        fh.write("{not json")
    with pytest.raises(DataError, match="instances_val2017.json"):
        open_dataset(root, "mscoco,2017-val")


def test_coco_image_that_disagrees_with_its_annotation(coco_root):
    from PIL import Image

    ds = open_dataset(coco_root, "mscoco,2017-val")
    path = ds.records[0].path
    Image.new("RGB", (10, 10)).save(path)
    with pytest.raises(DataError, match=os.path.basename(path)):
        ds[0]


@pytest.fixture
def voc_root(tmp_path):
    make_voc(str(tmp_path))
    return str(tmp_path)


def test_voc_one_based_corners_and_letterbox(voc_root):
    plain = open_dataset(voc_root, "voc,2007-test,crop=0")
    assert plain.classes[:3] == ["aeroplane", "bicycle", "bird"] and plain.num_classes == 20
    assert len(plain) == len(SCENES)
    for i, (_, _, objects) in enumerate(SCENES):
        image, t = plain[i]
        # XML (xmin, ymin, xmax, ymax) = (x0 + 1, y0 + 1, x1, y1) -> the painted pixels exactly
        assert t["boxes"].tolist() == [[float(v) for v in o[:4]] for o in objects]
        assert t["labels"].tolist() == [o[4] for o in objects]
        assert t["difficult"].tolist() == [o[5] for o in objects]
        for box, o in zip(t["boxes"], objects):
            x0, y0, x1, y1 = (int(v) for v in box)
            inside = image[:, y0:y1, x0:x1] * 255
            assert (inside - torch.tensor(COLORS[o[4]])[:, None, None]).abs().mean() < 12
    side = 72
    boxed = open_dataset(voc_root, f"voc,2007-test,scale_mode=large,scale={side},crop={side}")
    for i, (w, h, objects) in enumerate(SCENES):
        image, t = boxed[i]
        sx, sy, ox, oy = _letterbox(w, h, side)
        assert len(t["boxes"]) == len(objects)
        for box, o in zip(t["boxes"], objects):
            back = (box.double().view(2, 2) - t["offset"]) / t["scale"]
            assert torch.allclose(back.view(4), torch.tensor(o[:4], dtype=torch.float64), atol=0.5)
            _check_color(image, box.tolist(), COLORS[o[4]])
    easy = open_dataset(voc_root, "voc,2007-test,crop=0,skip_difficult,bbox_only")
    assert len(easy) == len(SCENES) - 1
    assert (
        sum(len(easy[i][1]["boxes"]) for i in range(len(easy)))
        == sum(len(s[2]) for s in SCENES) - 1
    )
    assert easy.names[0] == "2007/000000"


def test_voc_errors_name_the_file(voc_root):
    xml = os.path.join(voc_root, "VOC2007", "Annotations", "000002.xml")
    with open(xml, "w") as fh:
        fh.write("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(DataError, match="000002.xml.*unicorn"):
        open_dataset(voc_root, "voc,2007-test")
    with pytest.raises(DataError, match="2007-test"):
        open_dataset(voc_root, "voc,2012-trainval")
