"""Pascal VOC: ``ROOT/VOC<year>/{Annotations,JPEGImages,ImageSets/Main}`` (ROOT = VOCdevkit).

Subsets are ``<year>-<split>`` naming ``ImageSets/Main/<split>.txt``: ``2007-test``,
``2007-trainval,2012-trainval``.

With the flag ``seg`` (``voc,2012-val,seg``) the set is VOC's segmentation layout instead:
``ImageSets/Segmentation/<split>.txt``, images ``JPEGImages/<id>.jpg`` and label maps
``SegmentationClass/<id>.png``, palette PNGs whose palette indices are the classes
(background = 0, aeroplane = 1 .. tvmonitor = 20; 255 = void, ignored).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from ..errors import DataError
from .base import DetectionDataset, DetectionRecord, check_dir
from .image import image_header
from .seglist import SegmentationDataset

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

SEG_CLASSES = ("background", *CLASSES)  # SegmentationClass indices; 255 is void


def voc_palette(n: int = 256):
    """VOC's colour map (the devkit's ``labelcolormap``): uint8 ``[n, 3]``, colour k from the
    bits of k (background black, aeroplane (128, 0, 0), ..., 255 = void (224, 224, 192)). It is
    defined for any n, so every class of a larger set has its own colour (n <= 2**24)."""
    import numpy as np

    k = np.arange(n, dtype=np.int64)
    rgb = np.zeros((n, 3), np.int64)
    for shift in range(8):
        for c in range(3):
            rgb[:, c] |= ((k >> (3 * shift + c)) & 1) << (7 - shift)
    return rgb.astype(np.uint8)


def image_set_subsets(root, image_sets: str, per_class_lists: bool = False) -> list[str]:
    """The ``<year>-<split>`` subsets that ``VOC<year>/ImageSets/<image_sets>/<split>.txt``
    files under ``root`` offer; with ``per_class_lists``, names with ``_`` are not subsets."""
    out: list[str] = []
    if not os.path.isdir(root):
        return out
    for entry in sorted(os.listdir(root)):
        sets = os.path.join(root, entry, "ImageSets", image_sets)
        if entry.startswith("VOC") and os.path.isdir(sets):
            out += [
                f"{entry[3:]}-{n[:-4]}"
                for n in sorted(os.listdir(sets))
                if n.endswith(".txt") and not (per_class_lists and "_" in n)
            ]
    return out


def listed_ids(root, subsets, image_sets: str, found: str):
    """``(year, VOC<year> folder, listing file, file id)`` of every image that the
    ``ImageSets/<image_sets>/<split>.txt`` of each ``<year>-<split>`` subset lists."""
    for subset in subsets:
        year, split = subset.split("-", 1)
        base = os.path.join(root, f"VOC{year}")
        listing = os.path.join(base, "ImageSets", image_sets, f"{split}.txt")
        if not os.path.isfile(listing):
            what = "segmentation image set" if image_sets == "Segmentation" else "image set"
            raise DataError(
                f"{listing}: VOC {what} for subset {subset} not found (subsets here: {found})"
            )
        with open(listing, encoding="utf-8") as fh:
            ids = [line.split()[0] for line in fh if line.strip()]
        for file_id in ids:
            yield year, base, listing, file_id


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
        found = ", ".join(self.available_subsets(self.root)) or "none"
        if not ext.subsets:
            raise DataError(
                f"--extension voc needs a subset such as 2007-test; found {found} in {self.root}"
            )
        self.names = []
        for year, base, listing, file_id in listed_ids(self.root, ext.subsets, "Main", found):
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
        # Main also holds per-class lists (aeroplane_train.txt): not subsets
        return image_set_subsets(root, "Main", per_class_lists=True)


class VocSegDataset(SegmentationDataset):
    """VOC's segmentation layout (``voc,<year>-<split>,seg``): items as for seglist, ``mask``
    the ``SegmentationClass`` palette indices (21 classes, background = 0; 255 = void, ignored).
    ``names[i]`` is ``"<year>/<file id>"``. Without scale or crop keys the images are returned
    as stored (seglist's defaults, not the detection loader's 224 crop); pad_mode stays black
    (labels 255)."""

    DETECTION_KEYS = ("skip_difficult", "bbox_only", "check_center")

    def __init__(self, root, ext, train=False):
        super().__init__(root, ext, train)
        check_dir(self.root, "VOCdevkit root")
        for key in self.DETECTION_KEYS:
            if self.options[key]:
                raise DataError(
                    f"--extension: {key} is a VOC detection key; seg sets have no boxes"
                )
        self.classes = list(SEG_CLASSES)
        found = ", ".join(self.available_subsets(self.root)) or "none"
        if not ext.subsets:
            raise DataError(
                f"--extension voc,...,seg needs a subset such as 2012-val; found {found} in "
                f"{self.root}"
            )
        self.labels, self.names = [], []
        for year, base, listing, file_id in listed_ids(
            self.root, ext.subsets, "Segmentation", found
        ):
            label = os.path.join(base, "SegmentationClass", f"{file_id}.png")
            if not os.path.isfile(label):
                raise DataError(f"{label}: VOC label map not found (listed in {listing})")
            self.images.append(os.path.join(base, "JPEGImages", f"{file_id}.jpg"))
            self.labels.append(label)
            self.names.append(f"{year}/{file_id}")
        if not self.images:
            raise DataError(f"{self.root}: the VOC segmentation subsets {found} list no images")

    @staticmethod
    def available_subsets(root):
        return image_set_subsets(root, "Segmentation")
