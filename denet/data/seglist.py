"""DRN's segmentation lists: ``ROOT/{train,val,test}_images.txt`` and ``{train,val}_labels.txt``
(one path per line, relative to ROOT), and ``ROOT/info.json`` with the RGB ``mean`` and ``std``
on the 0..1 scale. Labels are PNGs of class indices; 255 = ignore.

:class:`SegmentationDataset` is the base of every segmentation format (seglist here, VOC's
``SegmentationClass`` layout in :mod:`denet.data.voc`): an image and a label map per item, the
label map checked when the item is loaded (its size against the image's, its values against the
classes)."""

from __future__ import annotations

import json
import os

from ..errors import DataError
from .base import ImageDataset, check_dir
from .image import image_header, load_image, load_label_map
from .transforms import Sample

IGNORE = 255  # the label of pixels that count in no loss and no score


def _read_list(path):
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def load_mask(label_path, image_path, image_size, num_classes: int):
    """The label map at ``label_path`` as an ``L`` image, checked: its size must be the image's
    (``image_size`` = (W, H)), and with ``num_classes`` > 0 every value must be a class
    (``0 .. num_classes - 1``) or 255; otherwise a one-line ``DataError`` naming the file."""
    import numpy as np

    mask = load_label_map(label_path)
    if mask.size != tuple(image_size):
        raise DataError(
            f"{label_path}: label map is {mask.size[0]}x{mask.size[1]} but {image_path} is "
            f"{image_size[0]}x{image_size[1]}"
        )
    if num_classes:
        arr = np.asarray(mask)
        bad = (arr >= num_classes) & (arr != IGNORE)
        if bad.any():
            values = np.unique(arr[bad])
            more = f" (and {len(values) - 1} other value(s))" if len(values) > 1 else ""
            raise DataError(
                f"{label_path}: label value {int(values[0])}{more} is neither a class of the "
                f"set (0..{num_classes - 1}) nor {IGNORE} (ignore)"
            )
    return mask


class SegmentationDataset(ImageDataset):
    """Items ``(image, target)``: target ``mask`` (int64 ``[H,W]``, 255 = ignore; absent when the
    set has no label maps), ``image_id`` (item index) and the geometry keys. Subclasses fill
    ``self.images`` (paths), ``self.labels`` (paths or None) and ``self.classes``."""

    task = "segmentation"

    def __init__(self, root, ext, train=False):
        super().__init__(root, ext, train)
        self.images: list = []
        self.labels: list | None = None
        self._sizes = None

    def __len__(self):
        return len(self.images)

    def image_paths(self):
        return list(self.images)

    def image_sizes(self):
        if self._sizes is None:
            self._sizes = [image_header(p)[1] for p in self.images]
        return list(self._sizes)

    def label_paths(self):
        """The label map of every item, or None for a set without labels."""
        return None if self.labels is None else list(self.labels)

    def _load(self, index):
        img = load_image(self.images[index], self.channels)
        mask = None
        if self.labels is not None:
            mask = load_mask(self.labels[index], self.images[index], img.size, len(self.classes))
        return Sample(img, mask=mask), None

    def _target(self, index, s, info, orig):
        import numpy as np
        import torch

        target = {}
        if s.mask is not None:
            target["mask"] = torch.from_numpy(np.asarray(s.mask, dtype=np.int64).copy())
        target.update(self._geometry_target(index, s, orig))
        return target


class SegListDataset(SegmentationDataset):
    """Items ``(image, target)``: target ``mask`` (int64 ``[H,W]``, 255 = ignore; absent for a
    split without a labels list), ``image_id`` (item index) and the geometry keys.

    The subset is ``train``, ``val`` or ``test`` (default ``train`` when training, else
    ``val``); ``list_dir=DIR`` reads the lists from DIR instead of ROOT (DRN's --list-dir), image
    paths stay relative to ROOT. ``info.json`` gives ``mean``/``std`` for ``subtract_mean``
    (ImageNet statistics without it) and, optionally, ``classes`` (a list of names) or
    ``num_classes``; label values must be classes or 255 when it names them."""

    def __init__(self, root, ext, train=False):
        super().__init__(root, ext, train)
        check_dir(self.root, "seglist root")
        if len(ext.subsets) > 1:
            raise DataError("--extension seglist takes one subset (train, val or test)")
        self.subset = ext.subsets[0] if ext.subsets else ("train" if train else "val")
        list_dir = self.options["list_dir"] or self.root
        images_txt = os.path.join(list_dir, f"{self.subset}_images.txt")
        labels_txt = os.path.join(list_dir, f"{self.subset}_labels.txt")
        if not os.path.isfile(images_txt):
            raise DataError(f"{images_txt}: image list of subset {self.subset} not found")
        self.images = [os.path.join(self.root, p) for p in _read_list(images_txt)]
        self.labels = None
        if os.path.isfile(labels_txt):
            self.labels = [os.path.join(self.root, p) for p in _read_list(labels_txt)]
            if len(self.labels) != len(self.images):
                raise DataError(
                    f"{labels_txt}: {len(self.labels)} labels for "
                    f"{len(self.images)} images in {images_txt}"
                )
        elif self.subset != "test":
            raise DataError(f"{labels_txt}: label list of subset {self.subset} not found")
        if not self.images:
            raise DataError(f"{images_txt}: the list is empty")
        self._read_info(os.path.join(self.root, "info.json"))

    def _read_info(self, path):
        if not os.path.isfile(path):
            return
        try:
            with open(path, encoding="utf-8") as fh:
                info = json.load(fh)
            if "mean" in info:
                self.mean = tuple(float(v) for v in info["mean"])
            if "std" in info:
                self.std = tuple(float(v) for v in info["std"])
            if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
                raise ValueError("mean and std need three values, std > 0")
            if "classes" in info:
                self.classes = [str(c) for c in info["classes"]]
            elif "num_classes" in info:
                self.classes = [str(i) for i in range(int(info["num_classes"]))]
        except (OSError, ValueError, TypeError) as err:
            raise DataError(f"{path}: cannot read ({err})") from None
