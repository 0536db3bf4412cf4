"""VOC's segmentation layout (``voc,<year>-<split>,seg``) and the label-map checks every
segmentation set makes when an item is loaded (seglist and VOC)."""

import os

import numpy as np
import pytest
import torch
from data_builders import SCENES, draw_scene, make_seglist, make_voc_seg, voc_seg_label_image
from PIL import Image

from denet.data import open_dataset
from denet.data.voc import SEG_CLASSES
from denet.errors import DataError


@pytest.fixture
def voc_root(tmp_path):
    root = str(tmp_path / "VOCdevkit")
    items = make_voc_seg(root, 2012, "val", SCENES)
    return root, items


def test_items_are_images_and_palette_indices(voc_root):
    root, items = voc_root
    ds = open_dataset(root, "voc,2012-val,seg")
    assert ds.task == "segmentation" and len(ds) == len(SCENES)
    assert ds.classes[0] == "background" and ds.classes[1:4] == ["aeroplane", "bicycle", "bird"]
    assert len(ds.classes) == 21
    assert ds.names[0] == "2012/2012_000000"
    for i, (w, h, _) in enumerate(SCENES):
        image, t = ds[i]
        # as stored: no 224 crop (the detection loader's default), RGB/255 of the JPEG
        want = np.asarray(Image.open(items[i][0]).convert("RGB"), np.float32) / 255
        assert torch.equal(image, torch.from_numpy(want).permute(2, 0, 1))
        assert torch.equal(t["mask"], torch.from_numpy(items[i][1].astype(np.int64)))
        assert set(np.unique(items[i][1])) <= {0, 1, 2, 3, 255}
        assert t["orig_size"].tolist() == [h, w] and t["size"].tolist() == [h, w]
    assert ds.input_shape is None  # mixed sizes


def test_keys_apply_as_for_other_sets(voc_root):
    root, items = voc_root
    ds = open_dataset(root, "voc,2012-val,seg,crop=40", train=True, mirror=False)
    assert ds.input_shape == (3, 40, 40)
    image, t = ds[1]  # 48 x 100: a random 40 x 40 window, labels cut from the same place
    mask = t["mask"].numpy()
    assert image.shape == (3, 40, 40) and mask.shape == (40, 40)
    full = items[1][1]
    hits = [
        (y, x)
        for y in range(full.shape[0] - 39)
        for x in range(full.shape[1] - 39)
        if np.array_equal(full[y : y + 40, x : x + 40], mask)
    ]
    assert hits, "the crop's labels are a window of the label map"
    # scale=N as for seglist (DeNet's detection default crop=scale does not apply)
    ds = open_dataset(root, "voc,2012-val,seg,scale=50,scale_mode=warp")
    assert ds[0][0].shape == (3, 50, 50) and ds[0][1]["mask"].shape == (50, 50)


def test_missing_subset_and_detection_keys(voc_root):
    root, _ = voc_root
    with pytest.raises(DataError, match=r"Segmentation.*train\.txt.*2012-val"):
        open_dataset(root, "voc,2012-train,seg")
    with pytest.raises(DataError, match="needs a subset.*2012-val"):
        open_dataset(root, "voc,seg")
    with pytest.raises(DataError, match="skip_difficult is a VOC detection key"):
        open_dataset(root, "voc,2012-val,seg,skip_difficult")
    os.remove(os.path.join(root, "VOC2012", "SegmentationClass", "2012_000002.png"))
    with pytest.raises(DataError, match="2012_000002.png: VOC label map not found"):
        open_dataset(root, "voc,2012-val,seg")


def test_voc_label_map_of_another_size_names_the_file(voc_root):
    root, _ = voc_root
    path = os.path.join(root, "VOC2012", "SegmentationClass", "2012_000001.png")
    voc_seg_label_image(np.zeros((10, 10), np.uint8)).save(path)
    ds = open_dataset(root, "voc,2012-val,seg")
    ds[0]  # the others load
    with pytest.raises(DataError, match=r"2012_000001\.png: label map is 10x10 but .*48x100"):
        ds[1]


def test_label_values_must_be_classes_or_255(voc_root, tmp_path):
    root, items = voc_root
    lab = items[2][1].copy()
    lab[5, 5], lab[6, 6] = 21, 40  # VOC has classes 0..20
    path = os.path.join(root, "VOC2012", "SegmentationClass", "2012_000002.png")
    voc_seg_label_image(lab).save(path)
    ds = open_dataset(root, "voc,2012-val,seg")  # checked when the item is loaded
    ds[1]
    with pytest.raises(DataError) as err:
        ds[2]
    msg = str(err.value)
    assert msg.startswith(path) and "label value 21 (and 1 other value(s))" in msg
    assert "0..20" in msg and "\n" not in msg

    # seglist: the classes of info.json bound the values too
    seg = str(tmp_path / "seg")
    make_seglist(seg, "val", scenes=SCENES[:2])  # classes background, cat, dog, bird
    label = os.path.join(seg, "labels", "val1.png")
    arr = np.asarray(Image.open(label)).copy()
    arr[10, 10] = 4
    Image.fromarray(arr).save(label)
    ds = open_dataset(seg, "seglist,val")
    assert ds[0][1]["mask"].max() == 255
    with pytest.raises(DataError, match=r"val1\.png: label value 4 is neither a class .*0\.\.3"):
        ds[1]


def test_255_and_every_class_pass(tmp_path):
    seg = str(tmp_path / "seg")
    w, h, objects = SCENES[0]
    make_seglist(seg, "val", scenes=[(w, h, objects)], ignore_border=2)
    arr = np.asarray(Image.open(os.path.join(seg, "labels", "val0.png"))).copy()
    arr[5:9, 5:9] = np.arange(4).repeat(4).reshape(4, 4)  # 0..3 all present
    Image.fromarray(arr).save(os.path.join(seg, "labels", "val0.png"))
    image, t = open_dataset(seg, "seglist,val")[0]
    assert set(t["mask"].unique().tolist()) == {0, 1, 2, 3, 255}
    assert torch.equal(
        image, torch.from_numpy(draw_scene(w, h, objects)).permute(2, 0, 1).float() / 255
    )


def test_classes_are_voc_with_background():
    assert SEG_CLASSES[0] == "background" and SEG_CLASSES[20] == "tvmonitor"
