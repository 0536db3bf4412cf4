"""Objects drawn at known places go through every augmentation; the returned boxes and label
maps must still frame the drawn pixels, and 255 must stay 255."""

import numpy as np
import pytest
import torch
from data_builders import COLORS, make_coco, make_seglist

from denet.data import open_dataset
from denet.errors import DataError

SCENES = [
    (90, 70, [(20, 15, 50, 45, 0, False), (60, 30, 80, 60, 1, False)]),
    (60, 96, [(10, 50, 45, 85, 1, False), (30, 5, 55, 30, 2, False)]),
]

GEOMETRY = [  # (extension keys, train)
    ("crop=0", False),
    ("scale=50", False),
    ("scale=50,scale_mode=large", False),
    ("scale=50,scale_mode=warp", False),
    ("scale=64,crop=64,scale_mode=large", False),
    ("scale=64,crop=48", False),
    ("scale=64,crop=48,crop_mode=default", True),
    ("scale=64,crop=48,crop_mode=center", True),
    ("crop=48,crop_mode=lenet", True),
    ("crop=48,crop_mode=denet", True),
    ("scale=64,crop=64,scale_mode=large,crop_mode=denet", True),
    ("crop=0,random_rotate=30", True),
    ("crop=0,random_scale=1.6", True),
    ("crop=40,random_rotate=20,random_scale=1.5", True),
    ("crop=0,distort=o6", True),
    ("crop=0,distort=s25", True),
    ("crop=0,distort=r25", True),
    ("crop=0,distort=m100", True),
    ("crop=0,distort=o4:s10:r15:m50,mirror", True),
    ("crop=0,mirror", True),
]
# Reflection padding shows mirrored copies of objects that have no box, so it is checked on
# label maps only (where the padding is 255).
REFLECT = [("crop=0,pad_mode=reflect,random_rotate=25", True), ("crop=120,pad_mode=reflect", True)]
ROTATES = ("rotate", "r15", "r25")
EPOCHS = (0, 1)


def _color_mask(image, k, tol=60):
    rgb = image.numpy().transpose(1, 2, 0) * 255
    return np.abs(rgb - np.array(COLORS[k])).max(-1) < tol


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("augment")
    make_coco(str(root / "coco"), scenes=SCENES, ext="png")
    make_seglist(str(root / "seg"), "train", scenes=SCENES)
    return str(root / "coco"), str(root / "seg")


@pytest.mark.parametrize("keys,train", GEOMETRY)
def test_boxes_frame_the_drawn_object(sets, keys, train):
    coco_root, _ = sets
    ds = open_dataset(coco_root, f"mscoco,2017-val,{keys}", train=train, seed=3)
    rotated = any(r in keys for r in ROTATES)
    checked = 0
    for epoch in EPOCHS:
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            image, t = ds[i]
            H, W = image.shape[1:]
            assert t["size"].tolist() == [H, W]
            for box, label in zip(t["boxes"].double().numpy(), t["labels"].tolist()):
                assert 0 <= box[0] <= box[2] <= W and 0 <= box[1] <= box[3] <= H
                drawn = _color_mask(image, ds.cat_ids.index([7, 1, 3][label]))
                if drawn.sum() < 4:
                    continue
                got = _bbox(drawn)
                # every strongly coloured pixel lies inside the box (1 px for interpolation)
                assert got[0] >= box[0] - 1 and got[1] >= box[1] - 1, (keys, box, got)
                assert got[2] <= box[2] + 1 and got[3] <= box[3] + 1, (keys, box, got)
                if not rotated:  # and the box is tight around them
                    assert np.abs(got - box).max() <= 2.0, (keys, box, got)
                checked += 1
            if not torch.isnan(t["scale"]).any():
                # orig -> returned is the documented per-axis map
                A = t["affine"].numpy()
                assert np.allclose(A[:, :2], np.diag(t["scale"].numpy()))
                assert np.allclose(A[:, 2], t["offset"].numpy())
    assert checked >= 4


@pytest.mark.parametrize("keys,train", GEOMETRY + REFLECT)
def test_masks_stay_aligned_and_ignore_stays_ignore(sets, keys, train):
    _, seg_root = sets
    ds = open_dataset(seg_root, f"seglist,train,{keys}", train=train, seed=3)
    checked = 0
    for epoch in EPOCHS:
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            image, t = ds[i]
            mask = t["mask"].numpy()
            assert t["mask"].dtype == torch.int64 and mask.shape == image.shape[1:]
            assert set(np.unique(mask)) <= {0, 1, 2, 3, 255}
            valid = mask != 255
            for k in range(3):
                drawn = _color_mask(image, k) & valid
                labelled = mask == k + 1
                if labelled.sum() < 20:
                    continue
                iou = (drawn & labelled).sum() / (drawn | labelled).sum()
                assert iou > 0.8, (keys, k, iou)
                checked += 1
    assert checked >= 4


def test_ignore_frame_survives_exactly_without_geometry(sets):
    _, seg_root = sets
    ds = open_dataset(seg_root, "seglist,train,crop=0", train=False)
    for i, (w, h, _) in enumerate(SCENES):
        mask = ds[i][1]["mask"].numpy()
        assert (mask == 255).sum() == w * h - (w - 6) * (h - 6)


def test_photometric_steps_leave_geometry_alone(sets):
    coco_root, seg_root = sets
    base = open_dataset(coco_root, "mscoco,2017-val,crop=0")
    ds = open_dataset(
        coco_root, "mscoco,2017-val,crop=0,mirror=0,augment_photo,augment_color", train=True
    )
    changed = 0
    for i in range(len(ds)):
        (x, t), (x0, t0) = ds[i], base[i]
        assert torch.equal(t["boxes"], t0["boxes"])
        changed += not torch.allclose(x, x0)
    assert changed == len(ds)
    norm = open_dataset(seg_root, "seglist,train,crop=0,subtract_mean")
    plain = open_dataset(seg_root, "seglist,train,crop=0")
    mean = torch.tensor([0.29, 0.33, 0.29])[:, None, None]
    std = torch.tensor([0.18, 0.19, 0.18])[:, None, None]
    assert torch.allclose(norm[0][0], (plain[0][0] - mean) / std, atol=1e-6)


def test_rotation_reports_affine_not_scale(sets):
    coco_root, _ = sets
    ds = open_dataset(coco_root, "mscoco,2017-val,crop=0,distort=r30", train=True)
    rotated = [ds[i][1] for i in range(len(ds))]
    assert any(torch.isnan(t["scale"]).all() for t in rotated)
    for t in rotated:  # the affine maps the original box corners around the returned box
        assert t["affine"].shape == (2, 3)


def test_check_onscreen_and_check_center(sets):
    coco_root, _ = sets
    # a centre crop of 30 px on a 90x70 image keeps only boxes mostly inside it
    strict = open_dataset(coco_root, "mscoco,2017-val,crop=30,scale=0,check_onscreen=0.9")
    loose = open_dataset(coco_root, "mscoco,2017-val,crop=30,scale=0,check_onscreen=0.01")
    center = open_dataset(coco_root, "mscoco,2017-val,crop=30,scale=0,check_center")
    n = [len(d[0][1]["boxes"]) for d in (strict, loose, center)]
    # object 0 (20..50 x 15..45) covers the centre window 30..60 x 20..50 partly, object 1
    # (60..80) lies outside it
    assert n == [0, 1, 1]


def test_multicrop_is_for_classification_only(sets):
    coco_root, _ = sets
    with pytest.raises(DataError, match="multicrop"):
        open_dataset(coco_root, "mscoco,2017-val,multicrop")
