"""DRN's segmentation lists: list files, info.json, test split without labels, errors."""

import os
import shutil

import numpy as np
import pytest
import torch
from data_builders import SCENES, draw_scene, make_seglist
from PIL import Image

from denet.data import open_dataset
from denet.errors import DataError


@pytest.fixture
def seg_root(tmp_path):
    root = str(tmp_path / "seg")
    make_seglist(root, "train")
    make_seglist(root, "val", scenes=SCENES[:2])
    return root


def test_lists_images_and_masks(seg_root):
    ds = open_dataset(seg_root, "seglist,val")
    assert len(ds) == 2 and ds.task == "segmentation"
    assert ds.classes == ["background", "cat", "dog", "bird"]
    assert ds.mean == (0.29, 0.33, 0.29)
    for i, (w, h, objects) in enumerate(SCENES[:2]):
        image, t = ds[i]
        assert torch.equal(
            image, torch.from_numpy(draw_scene(w, h, objects)).permute(2, 0, 1).float() / 255
        )
        want = np.asarray(Image.open(os.path.join(seg_root, "labels", f"val{i}.png")))
        assert torch.equal(t["mask"], torch.from_numpy(want.astype(np.int64)))
        assert t["image_id"] == i and t["orig_size"].tolist() == [h, w]
    # the subset defaults to train when training, val otherwise
    assert len(open_dataset(seg_root, "seglist", train=True)) == len(SCENES)
    assert len(open_dataset(seg_root, "seglist")) == 2


def test_list_dir_and_test_split_without_labels(seg_root, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    shutil.copy(os.path.join(seg_root, "val_images.txt"), lists / "test_images.txt")
    ds = open_dataset(seg_root, f"seglist,test,list_dir={lists}")
    image, t = ds[1]
    assert "mask" not in t and image.shape[0] == 3


def test_drn_crop_pads_labels_with_255(seg_root):
    w, h, _ = SCENES[1]  # 48 x 100
    ds = open_dataset(seg_root, "seglist,train,crop=120", train=True, mirror=False)
    image, t = ds[1]
    mask = t["mask"].numpy()
    assert mask.shape == (120, 120)
    # exactly the original pixels keep labels other than 255 (frame of 3 px is 255 already)
    assert (mask != 255).sum() == (w - 6) * (h - 6)


def test_seglist_errors(seg_root):
    os.remove(os.path.join(seg_root, "val_labels.txt"))
    with pytest.raises(DataError, match="val_labels.txt"):
        open_dataset(seg_root, "seglist,val")
    Image.new("L", (5, 5)).save(os.path.join(seg_root, "labels", "train0.png"))
    ds = open_dataset(seg_root, "seglist,train")
    with pytest.raises(DataError, match="train0.png"):
        ds[0]
    Image.new("RGB", (5, 5)).save(os.path.join(seg_root, "labels", "train1.png"))
    with pytest.raises(DataError, match="train1.png.*mode RGB"):
        ds[1]
    with open(os.path.join(seg_root, "info.json"), "w") as fh:
        fh.write("{")
    with pytest.raises(DataError, match="info.json"):
        open_dataset(seg_root, "seglist,train")


def test_letterboxed_masks_match_the_nearest_resized_original(seg_root):
    import math

    side = 64
    ds = open_dataset(seg_root, f"seglist,train,scale={side},crop={side},scale_mode=large")
    for i, (w, h, _) in enumerate(SCENES):
        _, t = ds[i]
        nw, nh = (side, math.ceil(h * side / w)) if w >= h else (math.ceil(w * side / h), side)
        ox, oy = (side - nw) // 2, (side - nh) // 2
        label = Image.open(os.path.join(seg_root, "labels", f"train{i}.png"))
        want = np.full((side, side), 255, np.int64)
        want[oy : oy + nh, ox : ox + nw] = np.asarray(
            label.resize((nw, nh), Image.Resampling.NEAREST)
        )
        assert torch.equal(t["mask"], torch.from_numpy(want))
        assert t["scale"].tolist() == [nw / w, nh / h] and t["offset"].tolist() == [ox, oy]
