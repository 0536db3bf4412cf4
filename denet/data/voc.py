"""Pascal VOC: ``ROOT/VOC<year>/{Annotations,JPEGImages,ImageSets/Main}`` (ROOT = VOCdevkit).

Subsets are ``<year>-<split>`` naming ``ImageSets/Main/<split>.txt``: ``2007-test``,
``2007-trainval,2012-trainval``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from ..errors import DataError
from .base import DetectionDataset, DetectionRecord, check_dir
from .image import image_header

CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def parse_voc_xml(path, image_path=None):
    """``(width, height, boxes, labels, difficult)`` of one VOC XML file.

    VOC corners are 1-based and inclusive: pixels ``xmin..xmax`` (1-based) are the object, so in
    0-based continuous pixels the box is ``(xmin - 1, ymin - 1, xmax, ymax)``. (DeNet subtracted
    1 from all four, which makes a box one pixel narrower and shorter.)"""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise DataError(f"{path}: cannot read VOC annotation ({err})") from None
    size = root.find("size")
    try:
        width, height = int(size.findtext("width")), int(size.findtext("height"))
        if width <= 0 or height <= 0:
            raise ValueError
    except (AttributeError, TypeError, ValueError):
        if image_path is None:
            raise DataError(f"{path}: no <size> in the annotation") from None
        width, height = image_header(image_path)[1]
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        if name not in CLASSES:
            raise DataError(f"{path}: unknown VOC class {name!r}")
        bb = obj.find("bndbox")
        try:
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise DataError(f"{path}: object {name!r} has no valid <bndbox>") from None
        boxes.append((x0 - 1.0, y0 - 1.0, x1, y1))
        labels.append(CLASSES.index(name))
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return width, height, boxes, labels, difficult


class VocDataset(DetectionDataset):
    """Items as for mscoco, with ``difficult`` (bool ``[N]``) instead of ``iscrowd``; difficult
    objects are kept, as DeNet did, and ``skip_difficult`` drops them. ``image_id`` is the item
    index; ``names[image_id]`` is ``"<year>/<file id>"``."""

    def __init__(self, root, ext, train=False):
        super().__init__(root, ext, train)
        check_dir(self.root, "VOCdevkit root")
        self.classes = list(CLASSES)
        if not ext.subsets:
            raise DataError(
                f"--extension voc needs a subset such as 2007-test; found "
                f"{', '.join(self.available_subsets(self.root)) or 'none'} in "
                f"{self.root}"
            )
        self.names = []
        for subset in ext.subsets:
            year, split = subset.split("-", 1)
            base = os.path.join(self.root, f"VOC{year}")
            listing = os.path.join(base, "ImageSets", "Main", f"{split}.txt")
            if not os.path.isfile(listing):
                raise DataError(
                    f"{listing}: VOC image set for subset {subset} not found "
                    f"(subsets here: "
                    f"{', '.join(self.available_subsets(self.root)) or 'none'})"
                )
            with open(listing, encoding="utf-8") as fh:
                ids = [line.split()[0] for line in fh if line.strip()]
            for file_id in ids:
                image = os.path.join(base, "JPEGImages", f"{file_id}.jpg")
                xml = os.path.join(base, "Annotations", f"{file_id}.xml")
                if not os.path.isfile(xml):
                    raise DataError(f"{xml}: VOC annotation not found (listed in {listing})")
                w, h, boxes, labels, difficult = parse_voc_xml(xml, image)
                self.records.append(
                    DetectionRecord(
                        image, len(self.records), w, h, boxes, labels, {"difficult": difficult}
                    )
                )
                self.names.append(f"{year}/{file_id}")
        self._filter_records("difficult" if self.options["skip_difficult"] else None)
        self.names = [self.names[r.image_id] for r in self.records]
        for i, r in enumerate(self.records):
            r.image_id = i

    @staticmethod
    def available_subsets(root):
        out = []
        if not os.path.isdir(root):
            return out
        for entry in sorted(os.listdir(root)):
            main = os.path.join(root, entry, "ImageSets", "Main")
            if entry.startswith("VOC") and os.path.isdir(main):
                out += [
                    f"{entry[3:]}-{n[:-4]}"
                    for n in sorted(os.listdir(main))
                    if n.endswith(".txt") and "_" not in n
                ]
        return out
