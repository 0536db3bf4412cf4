"""COCO instance masks and keypoints (the ``masks`` and ``keypoints`` flags of ``mscoco``).

Oracles: pycocotools' own ``annToMask`` of every annotation (polygons, uncompressed crowd RLE,
compressed RLE), the pixels the data builders paint (a rectangle polygon rasterises to exactly
its pixels), the builders' keypoint layout, numpy slicing/flipping/repeating of the untransformed
masks for crop, scale and flip, and the image's own pixels after a random warp."""

import os
import pickle

import numpy as np
import pytest
import torch
from data_builders import (
    COLORS,
    KEYPOINT_NAMES,
    KEYPOINT_SKELETON,
    SCENES,
    make_coco,
    object_keypoints,
    object_mask,
)

from denet.data import make_loader, open_dataset
from denet.data.coco import flip_indices
from denet.errors import DataError

LEFT_EYE, RIGHT_EYE = KEYPOINT_NAMES.index("left_eye"), KEYPOINT_NAMES.index("right_eye")


@pytest.fixture(scope="module")
def coco_sets(tmp_path_factory):
    """{layout: root}: rectangles as polygons, ellipses as compressed RLE, ellipses mixed (and
    a person_keypoints file); crowd regions are uncompressed RLE in each."""
    base = tmp_path_factory.mktemp("coco-instances")
    roots = {}
    for name, kwargs in (
        ("polygon", {"segmentation": "polygon", "keypoints": True}),
        ("rle", {"segmentation": "rle", "ellipses": True}),
        ("mixed", {"segmentation": "mixed", "ellipses": True, "keypoints": True}),
    ):
        roots[name] = str(base / name)
        make_coco(roots[name], ext="png", **kwargs)
    return roots


def ann_masks(ds, i):
    """pycocotools' annToMask of item i's annotations, in box order ``[G, H, W]``."""
    coco, rec = ds.cocos[rec_source(ds, i)], ds.records[i]
    masks = [coco.annToMask(coco.anns[int(a)]) for a in rec.ann_ids]
    return np.stack(masks) if masks else np.zeros((0, rec.height, rec.width), np.uint8)


def rec_source(ds, i):
    return ds.records[i].source


def original_keypoints(scene_index):
    """The builders' keypoints of one scene, ``[G, K, 3]`` in original pixels."""
    objects = SCENES[scene_index][2]
    first = 1 + sum(len(s[2]) for s in SCENES[:scene_index])
    return np.array(
        [object_keypoints(o, first + g) for g, o in enumerate(objects)], np.float64
    ).reshape(len(objects), len(KEYPOINT_NAMES), 3)


# ----------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("layout", ["polygon", "rle", "mixed"])
def test_masks_are_pycocotools_ann_to_mask(coco_sets, layout):
    """No transform (crop=0): every item's masks are annToMask of its annotations, one per box
    in box order, uint8 [G, H, W]; the rectangles (polygons) and every RLE are exactly the
    painted pixels, the ellipse polygons nearly."""
    ds = open_dataset(coco_sets[layout], "mscoco,2017-val,crop=0,masks")
    kinds = set()
    for i, (w, h, objects) in enumerate(SCENES):
        _, t = ds[i]
        masks = t["masks"]
        assert masks.dtype == torch.uint8 and masks.shape == (len(objects), h, w)
        assert np.array_equal(masks.numpy(), ann_masks(ds, i))
        coco = ds.cocos[0]
        for obj, m, a in zip(objects, masks.numpy(), ds.records[i].ann_ids):
            painted = object_mask(w, h, obj, ellipses=layout != "polygon")
            segm = coco.anns[int(a)]["segmentation"]
            kind = "polygon" if isinstance(segm, list) else type(segm["counts"]).__name__
            kinds.add(kind)
            if kind == "polygon" and layout != "polygon":  # an ellipse's 24-gon
                iou = (painted & (m > 0)).sum() / (painted | (m > 0)).sum()
                assert iou > 0.95, iou
            else:
                assert np.array_equal(m, painted.astype(np.uint8)), (layout, kind)
    # uncompressed crowd RLE (counts list) in every layout, plus polygons and/or compressed RLE
    want = {"polygon": {"polygon", "list"}, "rle": {"str", "list"}}.get(
        layout, {"polygon", "str", "list"}
    )
    assert kinds == want


def test_keypoints_come_from_the_person_keypoints_file(coco_sets):
    """``keypoints`` reads person_keypoints_val2017.json: one category (person), float32
    [G, K, 3] targets equal to the file's keypoints untransformed (v = 0 points are zero)."""
    ds = open_dataset(coco_sets["polygon"], "mscoco,2017-val,crop=0,keypoints")
    assert ds.ann_files[0].endswith(os.path.join("annotations", "person_keypoints_val2017.json"))
    assert ds.classes == ["person"] and ds.keypoint_names == KEYPOINT_NAMES
    assert ds.skeletons == {0: KEYPOINT_SKELETON}
    for i in range(len(SCENES)):
        _, t = ds[i]
        kp = t["keypoints"]
        assert kp.dtype == torch.float32 and kp.shape == (len(SCENES[i][2]), 17, 3)
        np.testing.assert_allclose(kp.numpy(), original_keypoints(i), atol=1e-5)
        assert "masks" not in t
    # the builders' layout has unlabelled and labelled-not-visible points too
    v = np.concatenate([original_keypoints(i)[..., 2].ravel() for i in range(len(SCENES))])
    assert {0, 1, 2} <= set(v.tolist())


def test_flip_indices_swap_left_and_right():
    names = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_knee", "tail"]
    assert flip_indices(names).tolist() == [0, 2, 1, 4, 3, 5, 6]


# ----------------------------------------------------------------------------- geometry
def test_masks_and_keypoints_follow_scale_and_crop(coco_sets):
    """scale=128 doubles scene 0 (96x64 -> 192x128): masks are the originals repeated 2x2
    (nearest), keypoints double. crop=48 (test: centre crop at (24, 8)): masks are the
    originals sliced, keypoints shift, and those outside the 48x48 window get v = 0."""
    root = coco_sets["mixed"]
    ds = open_dataset(root, "mscoco,2017-val,crop=0,masks,keypoints")
    orig = ann_masks(ds, 0)
    kp0 = original_keypoints(0)

    _, t = open_dataset(root, "mscoco,2017-val,scale=128,crop=0,masks,keypoints")[0]
    assert t["masks"].shape == (2, 128, 192)
    assert np.array_equal(t["masks"].numpy(), orig.repeat(2, 1).repeat(2, 2))
    want = kp0.copy()
    want[..., :2] *= 2
    np.testing.assert_allclose(t["keypoints"].numpy(), want, atol=1e-5)

    _, t = open_dataset(root, "mscoco,2017-val,scale=0,crop=48,masks,keypoints")[0]
    assert t["offset"].tolist() == [-24.0, -8.0]
    # the first box keeps 53% of its area in the window, the second 49.5%: dropped
    assert t["labels"].tolist() == [0]
    keep = [0]
    assert np.array_equal(t["masks"].numpy(), orig[keep][:, 8:56, 24:72])
    want = kp0[keep].copy()
    want[..., 0] -= 24
    want[..., 1] -= 8
    inside = (want[..., 0] >= 0) & (want[..., 0] <= 48) & (want[..., 1] >= 0)
    inside &= want[..., 1] <= 48
    want[~(inside & (want[..., 2] > 0))] = 0
    assert (want[..., 2] == 0).sum() > (kp0[..., 2] == 0).sum()  # some left the window
    np.testing.assert_allclose(t["keypoints"].numpy(), want, atol=1e-5)


def test_dropped_boxes_drop_their_masks_and_keypoints(coco_sets):
    """A box that leaves the crop, and crowd boxes with skip_crowd, take their mask and
    keypoints with them: every kept box keeps its own."""
    root = coco_sets["polygon"]
    ds = open_dataset(root, "mscoco,2017-val,crop=0,masks,keypoints,skip_crowd")
    _, t = ds[1]  # scene 1: one object and a crowd region
    assert len(t["boxes"]) == len(t["masks"]) == len(t["keypoints"]) == 1
    w, h, objects = SCENES[1]
    assert np.array_equal(t["masks"][0].numpy(), object_mask(w, h, objects[0]).astype(np.uint8))
    np.testing.assert_allclose(t["keypoints"][0].numpy(), original_keypoints(1)[0], atol=1e-5)
    # scene 4 (37x81), centre crop 30x30 at (3, 25): only the middle object keeps its box
    _, t = open_dataset(root, "mscoco,2017-val,scale=0,crop=30,masks,keypoints")[4]
    assert t["boxes"].tolist() == [[19, 15, 30, 30]] and t["masks"].shape == (1, 30, 30)
    painted = object_mask(37, 81, SCENES[4][2][1])[25:55, 3:33]
    assert np.array_equal(t["masks"][0].numpy(), painted.astype(np.uint8))
    want = original_keypoints(4)[1]
    want[:, 0] -= 3
    want[:, 1] -= 25
    outside = (want[:, :2] < 0).any(1) | (want[:, :2] > 30).any(1)
    assert (outside & (want[:, 2] > 0)).sum() >= 1  # labelled ankles below the window
    want[outside | (want[:, 2] == 0)] = 0
    np.testing.assert_allclose(t["keypoints"][0].numpy(), want, atol=1e-5)


def test_a_flip_flips_masks_and_swaps_left_and_right(coco_sets):
    """Training with mirroring: in a flipped item the masks are the originals mirrored and
    keypoint k sits where the original flip partner was, x -> W - x (left_eye <-> right_eye);
    in an unflipped one nothing moves."""
    root = coco_sets["mixed"]
    orig_ds = open_dataset(root, "mscoco,2017-val,crop=0,masks,keypoints")
    ds = open_dataset(root, "mscoco,2017-val,crop=0,masks,keypoints,mirror", train=True)
    seen = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        for i in (0, 4):
            _, t = ds[i]
            flipped = t["affine"][0, 0].item() < 0
            seen.add(flipped)
            orig, kp = ann_masks(orig_ds, i), original_keypoints(i)
            if not flipped:
                assert np.array_equal(t["masks"].numpy(), orig)
                np.testing.assert_allclose(t["keypoints"].numpy(), kp, atol=1e-5)
                continue
            W = SCENES[i][0]
            assert np.array_equal(t["masks"].numpy(), orig[:, :, ::-1])
            got = t["keypoints"].numpy()
            for g in range(len(kp)):
                for k, partner in ((LEFT_EYE, RIGHT_EYE), (RIGHT_EYE, LEFT_EYE), (0, 0)):
                    x, y, v = kp[g, partner]
                    want = [W - x, y, v] if v > 0 else [0, 0, 0]
                    np.testing.assert_allclose(got[g, k], want, atol=1e-5)
            # a mirrored mask still covers its object's pixels in the mirrored image
            box = t["boxes"][0].round().int().tolist()
            ys, xs = np.nonzero(t["masks"][0].numpy())
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box
    assert seen == {True, False}


def test_masks_and_keypoints_follow_a_random_warp(coco_sets):
    """DeNet's crop, rotation, scale and offset (distort) and mirroring in training: each mask
    lands on the pixels of its object's colour in the returned image, and each visible keypoint
    on a pixel of its object's colour (the builders' keypoints lie inside the ellipses)."""
    root = coco_sets["mixed"]
    ds = open_dataset(
        root,
        "mscoco,2017-val,scale=64,crop=64,crop_mode=denet,distort=r20:s10:o3,masks,keypoints",
        train=True,
        seed=3,
    )
    rotated = checked = 0
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            x, t = ds[i]
            rotated += bool(torch.isnan(t["scale"]).any())
            rgb = (x.permute(1, 2, 0).numpy() * 255).astype(np.float64)
            assert t["masks"].shape[1:] == x.shape[1:]
            close = [np.abs(rgb - c).sum(-1) < 90 for c in COLORS]
            painted = np.any(close, 0)
            for m, kp, crowd in zip(t["masks"].numpy(), t["keypoints"].numpy(), t["iscrowd"]):
                if m.sum() >= 20:  # mostly one object colour (scene 4's ellipses overlap)
                    assert max(c[m > 0].mean() for c in close) > 0.7, (epoch, i)
                    checked += 1
                for xk, yk, v in kp:
                    if v > 0 and not crowd:
                        r, c = int(yk), int(xk)
                        assert painted[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].any()
                        checked += 1
    assert rotated > 0 and checked > 40


# ----------------------------------------------------------------------------- loading
def test_loader_batches_masks_and_keypoints(coco_sets):
    """Through DataLoader workers (pickled dataset): per-image targets keep their masks at the
    image's own size; the same as loading in this process."""
    ds = open_dataset(coco_sets["mixed"], "mscoco,2017-val,scale=48,crop=0,masks,keypoints")
    clone = pickle.loads(pickle.dumps(ds))
    loader = make_loader(clone, batch_size=2, shuffle=False, workers=1, seed=0)
    seen = 0
    for _, targets in loader:
        for t in targets:
            _, want = ds[seen]
            h, w = t["size"].tolist()
            assert t["masks"].shape == (len(t["boxes"]), h, w)
            assert torch.equal(t["masks"], want["masks"])
            assert torch.equal(t["keypoints"], want["keypoints"])
            seen += 1
    assert seen == len(ds)


# ----------------------------------------------------------------------------- errors
def one_line_data_error(root, extension, *needles):
    with pytest.raises(DataError) as err:
        open_dataset(root, extension)
    msg = str(err.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_missing_segmentations_and_keypoints_are_one_line_errors(tmp_path):
    import json

    plain = str(tmp_path / "plain")
    make_coco(plain)  # boxes only, no person_keypoints file
    instances = os.path.join(plain, "annotations", "instances_val2017.json")
    one_line_data_error(
        plain, "mscoco,2017-val,masks", instances, "no annotation has a segmentation"
    )
    person = os.path.join(plain, "annotations", "person_keypoints_val2017.json")
    one_line_data_error(plain, "mscoco,2017-val,keypoints", person, "not found")

    # a person_keypoints file without keypoints
    with open(instances) as fh:
        data = json.load(fh)
    with open(person, "w") as fh:
        json.dump(data, fh)
    one_line_data_error(plain, "mscoco,2017-val,keypoints", person, "keypoints")

    # one annotation without a segmentation, one with the wrong number of keypoint values
    seg = str(tmp_path / "seg")
    make_coco(seg, segmentation="polygon", keypoints=True)
    for name, field, bad in (
        ("instances_val2017.json", "segmentation", None),
        ("person_keypoints_val2017.json", "keypoints", [1, 2, 2]),
    ):
        path = os.path.join(seg, "annotations", name)
        with open(path) as fh:
            data = json.load(fh)
        if bad is None:
            del data["annotations"][3][field]
        else:
            data["annotations"][3][field] = bad
        with open(path, "w") as fh:
            json.dump(data, fh)
    one_line_data_error(seg, "mscoco,2017-val,masks", "instances_val2017.json", "annotation 4")
    one_line_data_error(
        seg, "mscoco,2017-val,keypoints", "person_keypoints_val2017.json", "annotation 4"
    )
    # the flags are mscoco's
    with pytest.raises(DataError, match="masks applies only to mscoco"):
        open_dataset(seg, "voc,2007-test,masks")
