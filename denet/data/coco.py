"""MSCOCO in its official layout, read with pycocotools.

``ROOT/annotations/instances_<split><year>.json`` (``image_info_<split><year>.json`` for the
test splits, ``person_keypoints_<split><year>.json`` with the ``keypoints`` flag) with images in
``ROOT/<split><year>/`` (test-dev images live in ``test<year>``). Subsets are written
``<year>-<split>``: ``2017-val``, ``2014-train,2014-val``. The flags ``masks`` and ``keypoints``
add instance masks and keypoints to the targets, decoded when an item is loaded.
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import torch

from ..errors import DataError
from .base import DetectionDataset, DetectionRecord, check_dir
from .transforms import is_mirrored, pack_masks

TEST_SPLITS = ("test", "test-dev", "test-challenge")
ANNOTATION_PREFIXES = ("instances_", "image_info_", "person_keypoints_")


def _annotation_file(root, year, split, keypoints=False):
    if split in TEST_SPLITS:
        kind = "image_info"
    else:
        kind = "person_keypoints" if keypoints else "instances"
    return os.path.join(root, "annotations", f"{kind}_{split}{year}.json")


def flip_indices(names) -> np.ndarray:
    """The keypoint order after a horizontal flip: ``left_<part>`` and ``right_<part>`` trade
    places (COCO person's eyes, ears, shoulders, ...), every other keypoint stays."""
    names = [str(n) for n in names]
    where = {n: i for i, n in enumerate(names)}
    out = np.arange(len(names), dtype=np.int64)
    for i, n in enumerate(names):
        for a, b in (("left_", "right_"), ("right_", "left_")):
            if n.startswith(a) and b + n[len(a) :] in where:
                out[i] = where[b + n[len(a) :]]
    return out


def annotation_mask(coco, ann) -> np.ndarray:
    """uint8 ``[H, W]`` mask of one annotation, pycocotools' ``annToMask`` (polygons,
    uncompressed RLE, compressed RLE); an empty polygon list is an empty mask."""
    segm = ann["segmentation"]
    if isinstance(segm, list) and not any(len(p) >= 6 for p in segm):
        info = coco.imgs[ann["image_id"]]
        return np.zeros((int(info["height"]), int(info["width"])), np.uint8)
    if isinstance(segm, list):  # pycocotools rejects polygons of fewer than 3 points
        ann = dict(ann, segmentation=[p for p in segm if len(p) >= 6])
    return coco.annToMask(ann)


def _image_dir(root, year, split):
    folder = "test" if split in TEST_SPLITS else split
    return os.path.join(root, f"{folder}{year}")


def load_coco(path):
    """pycocotools' COCO for ``path``, quietly; a broken file is a DataError naming it."""
    from pycocotools.coco import COCO

    if not os.path.isfile(path):
        raise DataError(f"{path}: COCO annotation file not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            return COCO(path)
    except Exception as err:  # pycocotools raises bare KeyError/TypeError on malformed JSON
        raise DataError(
            f"{path}: cannot read COCO annotations ({type(err).__name__}: {err})"
        ) from None


class CocoDataset(DetectionDataset):
    """Items are ``(image, target)`` with target ``boxes`` (float32 ``[N,4]`` xyxy pixels of the
    returned image), ``labels`` (0..79 in the JSON's category order), ``iscrowd`` (bool ``[N]``),
    ``image_id`` (COCO's id) and the geometry keys. Crowd regions are kept as boxes, as DeNet
    did, with ``iscrowd`` set; ``skip_crowd`` drops them. ``bbox_only`` drops images without
    boxes. ``cat_ids[label]`` is the COCO category id of a label and ``cocos`` the pycocotools
    objects, for evaluation.

    ``masks`` adds ``masks`` (uint8 ``[N,H,W]``, one binary mask per box in the returned
    image's pixels, pycocotools' ``annToMask`` carried by the item's geometry with nearest
    sampling); ``keypoints`` reads ``person_keypoints_*.json`` and adds ``keypoints`` (float32
    ``[N,K,3]``: x, y in returned pixels, COCO's v). Both are decoded per item."""

    def __init__(self, root, ext, train=False):
        super().__init__(root, ext, train)
        check_dir(self.root, "COCO root")
        subsets = ext.subsets
        if not subsets:
            raise DataError(
                f"--extension mscoco needs a subset such as 2017-val; found "
                f"{', '.join(self.available_subsets(self.root)) or 'none'} in "
                f"{self.root}/annotations"
            )
        o = self.options
        self.want_masks, self.want_keypoints = bool(o["masks"]), bool(o["keypoints"])
        self.keypoint_names: list = []  # names of the K keypoints (keypoints flag)
        self.skeletons: dict = {}  # label -> COCO's 1-based skeleton pairs, where given
        self._flips = None  # [classes, K] keypoint order after a flip, per label
        self.cocos, self.ann_files, self.cat_ids = [], [], None
        for subset in subsets:
            year, split = subset.split("-", 1)
            ann = _annotation_file(self.root, year, split, self.want_keypoints)
            if not os.path.isfile(ann):
                raise DataError(
                    f"{ann}: COCO annotation file for subset {subset} not found "
                    f"(subsets here: "
                    f"{', '.join(self.available_subsets(self.root)) or 'none'})"
                )
            coco = load_coco(ann)
            cat_ids = coco.getCatIds()  # the JSON's category order, as DeNet numbered them
            if self.cat_ids is None:
                self.cat_ids = list(cat_ids)
                self.classes = [coco.cats[c]["name"] for c in cat_ids]
            elif list(cat_ids) != self.cat_ids:
                raise DataError(f"{ann}: categories differ from {self.ann_files[0]}")
            if self.want_masks:
                self._check_segmentations(coco, ann)
            if self.want_keypoints:
                self._read_keypoint_categories(coco, ann)
            self._add_images(coco, ann, _image_dir(self.root, year, split), len(self.cocos))
            self.cocos.append(coco)
            self.ann_files.append(ann)
        self._filter_records("iscrowd" if self.options["skip_crowd"] else None)

    @staticmethod
    def available_subsets(root):
        folder = os.path.join(root, "annotations")
        if not os.path.isdir(folder):
            return []
        out = []
        for name in sorted(os.listdir(folder)):
            for prefix in ANNOTATION_PREFIXES:
                stem = name[len(prefix) : -len(".json")]
                if name.startswith(prefix) and name.endswith(".json") and stem[-4:].isdigit():
                    subset = f"{stem[-4:]}-{stem[:-4]}"
                    if subset not in out:
                        out.append(subset)
        return out

    # ----------------------------------------------------------------- masks and keypoints
    @staticmethod
    def _check_segmentations(coco, ann_file):
        """``masks`` needs a segmentation for every box: one DataError naming the file."""
        anns = [a for a in coco.dataset.get("annotations", []) if "bbox" in a]
        lacking = [a for a in anns if not a.get("segmentation") and a.get("segmentation") != []]
        if anns and len(lacking) < len(anns):
            if lacking:
                raise DataError(
                    f"{ann_file}: annotation {lacking[0].get('id')} has no segmentation, so "
                    "the masks flag cannot give it a mask"
                )
            return
        raise DataError(
            f"{ann_file}: no annotation has a segmentation (polygons or RLE), so the masks "
            "flag has nothing to read; remove masks or use an instances file with "
            "segmentations"
        )

    def _read_keypoint_categories(self, coco, ann_file):
        """The keypoint names, flips and skeletons of the file's categories; K must agree."""
        names = None
        for label, cat_id in enumerate(self.cat_ids):
            cat = coco.cats[cat_id]
            if cat.get("keypoints"):
                if names is not None and list(cat["keypoints"]) != names:
                    raise DataError(
                        f"{ann_file}: categories name different keypoints; one keypoint set "
                        "per file is supported"
                    )
                names = list(cat["keypoints"])
            if cat.get("skeleton"):
                self.skeletons[label] = [[int(a), int(b)] for a, b in cat["skeleton"]]
        anns = coco.dataset.get("annotations", [])
        lengths = {len(a["keypoints"]) for a in anns if a.get("keypoints") is not None}
        if names is None:
            if not lengths:
                raise DataError(
                    f"{ann_file}: no category names keypoints and no annotation has any, so "
                    "the keypoints flag has nothing to read (it reads "
                    "person_keypoints_<split><year>.json)"
                )
            names = [str(i) for i in range(max(lengths) // 3)]
        if self.keypoint_names and names != self.keypoint_names:
            raise DataError(f"{ann_file}: keypoints differ from {self.ann_files[0]}")
        k = len(names)
        for a in anns:
            kp = a.get("keypoints")
            if kp is not None and len(kp) != 3 * k:
                raise DataError(
                    f"{ann_file}: annotation {a.get('id')} has {len(kp)} keypoint values, "
                    f"not 3 x {k} (x, y, v per keypoint)"
                )
        self.keypoint_names = names
        flips = np.tile(np.arange(k, dtype=np.int64), (len(self.cat_ids), 1))
        for label, cat_id in enumerate(self.cat_ids):
            if coco.cats[cat_id].get("keypoints"):
                flips[label] = flip_indices(names)
        self._flips = flips

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    def _annotations(self, rec, keep=None):
        ids = rec.ann_ids if keep is None else rec.ann_ids[keep]
        coco = self.cocos[rec.source]
        return coco, [coco.anns[int(i)] for i in ids]

    def _raw_keypoints(self, anns) -> np.ndarray:
        kp = np.zeros((len(anns), self.num_keypoints, 3), np.float64)
        for g, a in enumerate(anns):
            if a.get("keypoints") is not None:
                kp[g] = np.asarray(a["keypoints"], np.float64).reshape(-1, 3)
        return kp

    def _load(self, index):
        sample, rec = super()._load(index)
        if self.want_masks or self.want_keypoints:
            coco, anns = self._annotations(rec)
            if self.want_masks:
                masks = [annotation_mask(coco, a) for a in anns]
                stack = np.stack(masks) if masks else np.zeros((0, rec.height, rec.width))
                sample.instances, sample.instance_count = pack_masks(stack), len(masks)
            if self.want_keypoints:
                kp = self._raw_keypoints(anns)
                sample.points = kp[..., :2].reshape(-1, 2)
                sample.points_inside = sample._within(sample.points)
        return sample, rec

    def _instance_targets(self, s, rec, keep) -> dict:
        out = {}
        if self.want_masks:
            out["masks"] = torch.from_numpy(s.masks[keep])
        if self.want_keypoints:
            _, anns = self._annotations(rec, keep)
            out["keypoints"] = torch.from_numpy(self._keypoints(s, anns, rec.labels[keep], keep))
        return out

    def _keypoints(self, s, anns, labels, keep) -> np.ndarray:
        """float32 ``[G, K, 3]``: x, y in returned pixels and COCO's v; a flip swaps left and
        right, a keypoint that left the image at any step gets v = 0, and v = 0 is (0, 0, 0)."""
        k = self.num_keypoints
        kp = self._raw_keypoints(anns)
        kp[..., :2] = s.points.reshape(-1, k, 2)[keep]
        inside = s.points_inside.reshape(-1, k)[keep]
        kp[..., 2] = np.where(inside & (kp[..., 2] > 0), kp[..., 2], 0)
        if is_mirrored(s.matrix) and len(kp):
            kp = np.take_along_axis(kp, self._flips[labels][:, :, None], axis=1)
        kp[kp[..., 2] == 0] = 0
        return kp.astype(np.float32)

    def _add_images(self, coco, ann_file, image_dir, source=0):
        label_of = {c: i for i, c in enumerate(self.cat_ids)}
        for image_id in sorted(coco.getImgIds()):
            info = coco.imgs[image_id]
            boxes, labels, crowd, ann_ids = [], [], [], []
            for a in coco.imgToAnns.get(image_id, []):
                if "bbox" not in a:
                    continue
                if a["category_id"] not in label_of:
                    raise DataError(
                        f"{ann_file}: annotation {a.get('id')} has unknown "
                        f"category {a['category_id']}"
                    )
                x, y, w, h = a["bbox"]
                boxes.append((x, y, x + w, y + h))
                labels.append(label_of[a["category_id"]])
                crowd.append(bool(a.get("iscrowd", 0)))
                ann_ids.append(a["id"])
            try:
                record = DetectionRecord(
                    os.path.join(image_dir, info["file_name"]),
                    image_id,
                    int(info["width"]),
                    int(info["height"]),
                    boxes,
                    labels,
                    {"iscrowd": crowd},
                    ann_ids,
                    source,
                )
            except KeyError as err:
                raise DataError(f"{ann_file}: image {image_id} lacks {err}") from None
            self.records.append(record)
