"""MSCOCO in its official layout, read with pycocotools.

``ROOT/annotations/instances_<split><year>.json`` (``image_info_<split><year>.json`` for the
test splits) with images in ``ROOT/<split><year>/`` (test-dev images live in ``test<year>``).
Subsets are written ``<year>-<split>``: ``2017-val``, ``2014-train,2014-val``.
"""

from __future__ import annotations

import contextlib
import io
import os

from ..errors import DataError
from .base import DetectionDataset, DetectionRecord, check_dir

TEST_SPLITS = ("test", "test-dev", "test-challenge")


def _annotation_file(root, year, split):
    kind = "image_info" if split in TEST_SPLITS else "instances"
    return os.path.join(root, "annotations", f"{kind}_{split}{year}.json")


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
    objects, for evaluation."""

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
        self.cocos, self.ann_files, self.cat_ids = [], [], None
        for subset in subsets:
            year, split = subset.split("-", 1)
            ann = _annotation_file(self.root, year, split)
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
            self._add_images(coco, ann, _image_dir(self.root, year, split))
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
            for prefix in ("instances_", "image_info_"):
                stem = name[len(prefix) : -len(".json")]
                if name.startswith(prefix) and name.endswith(".json") and stem[-4:].isdigit():
                    out.append(f"{stem[-4:]}-{stem[:-4]}")
        return out

    def _add_images(self, coco, ann_file, image_dir):
        label_of = {c: i for i, c in enumerate(self.cat_ids)}
        for image_id in sorted(coco.getImgIds()):
            info = coco.imgs[image_id]
            boxes, labels, crowd = [], [], []
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
            try:
                record = DetectionRecord(
                    os.path.join(image_dir, info["file_name"]),
                    image_id,
                    int(info["width"]),
                    int(info["height"]),
                    boxes,
                    labels,
                    {"iscrowd": crowd},
                )
            except KeyError as err:
                raise DataError(f"{ann_file}: image {image_id} lacks {err}") from None
            self.records.append(record)
