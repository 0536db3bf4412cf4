"""Classification formats: Basic Dir (``png``, ``jpg``, ...), npy arrays, ImageNet folders."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .base import ImageDataset, check_dir, check_file
from .image import image_header, is_gray, load_image
from .transforms import Sample

JPEG_EXTENSIONS = (".jpeg", ".jpg")


def _class_dirs(root):
    check_dir(root)
    try:
        return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except OSError as err:
        raise DataError(f"{root}: cannot list directory ({err})") from None


def _files(folder, suffixes):
    try:
        names = sorted(
            e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(suffixes)
        )
    except OSError as err:
        raise DataError(f"{folder}: cannot list directory ({err})") from None
    return [os.path.join(folder, n) for n in names]


class DirDataset(ImageDataset):
    """Basic Dir: ``ROOT/<class>/*.<ext>``, classes sorted by folder name (every sub-folder is a
    class, so a test tree numbers classes as its training tree does).

    Channels: with ``channels`` unset, the set is 1-channel when every image is greyscale
    (PIL modes 1, L, LA, I, I;16, F) and RGB otherwise, so a mixed tree becomes RGB. Headers are
    read once at open time (no decoding) for this rule, ``input_shape`` and aspect ratios."""

    def __init__(self, root, ext, train=False):
        super().__init__(root, ext, train)
        self.classes = _class_dirs(self.root)
        suffix = "." + ext.image_ext.lower()
        self.items = []
        for label, name in enumerate(self.classes):
            self.items += [(p, label) for p in _files(os.path.join(self.root, name), (suffix,))]
        if not self.items:
            raise DataError(
                f"{self.root}: no *{suffix} files in class folders "
                f"({len(self.classes)} folders found)"
            )
        self._scan_headers()

    def _scan_headers(self):
        kept, sizes, modes = [], [], []
        for path, label in self.items:
            try:
                mode, size = image_header(path)
            except DataError as err:
                if not self.options["skip_broken"]:
                    raise
                with self._broken.get_lock():
                    self._broken.value += 1
                self.broken_files.append(str(err))
                continue
            kept.append((path, label))
            sizes.append(size)
            modes.append(mode)
        if not kept:
            raise DataError(f"{self.root}: no readable image")
        self.items, self._sizes = kept, sizes
        if self.options["channels"] is None:
            self.channels = 1 if all(is_gray(m) for m in modes) else 3

    def __len__(self):
        return len(self.items)

    def image_paths(self):
        return [p for p, _ in self.items]

    def image_sizes(self):
        return list(self._sizes)

    def _load(self, index):
        path, label = self.items[index]
        return Sample(load_image(path, self.channels)), {"label": label}


class ImageNetDataset(DirDataset):
    """ImageNet: ``ROOT/<class>/*.JPEG`` (any case of .jpeg/.jpg), always RGB. When
    ``ROOT/class_labels.txt`` exists, its lines give the class order (first word = folder name,
    the rest is ignored); otherwise folders are sorted by name. Headers are read lazily."""

    def __init__(self, root, ext, train=False):
        ImageDataset.__init__(self, root, ext, train)
        check_dir(self.root)
        order = os.path.join(self.root, "class_labels.txt")
        if os.path.isfile(order):
            with open(order, encoding="utf-8") as fh:
                self.classes = [line.split()[0] for line in fh if line.strip()]
            missing = [c for c in self.classes if not os.path.isdir(os.path.join(self.root, c))]
            if missing:
                raise DataError(f"{order}: class folder {missing[0]!r} not found in {self.root}")
        else:
            self.classes = _class_dirs(self.root)
        self.items = []
        for label, name in enumerate(self.classes):
            self.items += [
                (p, label) for p in _files(os.path.join(self.root, name), JPEG_EXTENSIONS)
            ]
        if not self.items:
            raise DataError(f"{self.root}: no .JPEG files in class folders")
        self.channels = self.options["channels"] or 3
        self._sizes = None

    def image_sizes(self):
        if self._sizes is None:
            self._sizes = [image_header(p)[1] for p, _ in self.items]
        return list(self._sizes)


class ArrayDataset(ImageDataset):
    """npy: ``PREFIX_data.npy`` (float32 ``[B,C,H,W]``, values used as stored) and
    ``PREFIX_labels.npy`` (integers ``[B]``). Memory-mapped, so large arrays are not read
    whole. Classes are named ``"0" .. str(max label)``."""

    def __init__(self, prefix, ext, train=False):
        super().__init__(prefix, ext, train)
        data_path = check_file(self.root + "_data.npy", "npy data file")
        label_path = check_file(self.root + "_labels.npy", "npy labels file")
        try:
            self.data = np.load(data_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{data_path}: cannot read ({err})") from None
        try:
            self.labels = np.asarray(np.load(label_path, allow_pickle=False))
        except (OSError, ValueError) as err:
            raise DataError(f"{label_path}: cannot read ({err})") from None
        if self.data.ndim != 4:
            raise DataError(f"{data_path}: expected [B,C,H,W], got shape {self.data.shape}")
        if not np.issubdtype(self.data.dtype, np.floating):
            raise DataError(f"{data_path}: expected float data, got {self.data.dtype}")
        if self.labels.ndim != 1 or not np.issubdtype(self.labels.dtype, np.integer):
            raise DataError(
                f"{label_path}: expected integer labels of shape [B], got "
                f"{self.labels.dtype} {self.labels.shape}"
            )
        if len(self.labels) != len(self.data):
            raise DataError(f"{label_path}: {len(self.labels)} labels for {len(self.data)} images")
        if len(self.labels) and self.labels.min() < 0:
            raise DataError(f"{label_path}: negative label {self.labels.min()}")
        top = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.classes = [str(i) for i in range(top)]
        self.channels = int(self.data.shape[1])
        if self.options["augment_color"] and self.channels != 3:
            raise DataError("augment_color needs 3 channels")
        o = self.options
        self._plain = not (
            o["crop"]
            or o["scale"]
            or o["random_scale"]
            or o["random_rotate"]
            or (train and (o["distort"] or o["mirror"]))
        )

    def __len__(self):
        return len(self.data)

    def image_paths(self):
        return [self.root + "_data.npy"] * len(self)

    def image_sizes(self):
        _, _, h, w = self.data.shape
        return [(w, h)] * len(self)

    def _load(self, index):
        arr = np.asarray(self.data[index], dtype=np.float32)
        planes = [Image.fromarray(np.ascontiguousarray(c), "F") for c in arr]
        return Sample(planes), {"label": int(self.labels[index])}

    def _item(self, index, rng):
        if self._plain:  # nothing geometric: skip the PIL round trip
            x = torch.from_numpy(np.array(self.data[index], dtype=np.float32))
            return self.pipeline.photometric(x, rng), {"label": int(self.labels[index])}
        return super()._item(index, rng)
