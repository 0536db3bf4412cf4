"""The dataset base class every format shares: per-item random generators, set_epoch, the
loader pipeline, skip_broken, and the target dictionaries."""

from __future__ import annotations

import abc
import multiprocessing as mp
import os
import warnings
from multiprocessing import context as mp_context

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .image import image_header
from .transforms import IMAGENET_MEAN, IMAGENET_STD, Distort, Pipeline, Sample

LOADER_FORMATS = ("imagenet", "mscoco", "voc")  # formats whose `scale` defaults to `crop`


class ImageDataset(Dataset, abc.ABC):
    """Base of every format. Items are ``(image, target)``: ``image`` float32 ``[C,H,W]``,
    ``target`` a dict (see docs/datasets.md).

    Randomness: item ``i`` draws everything from ``numpy.random.default_rng([seed, epoch, i])``,
    so an item is the same whichever worker loads it and whatever was loaded before. ``seed`` and
    the epoch live in shared memory, so ``set_epoch`` reaches DataLoader workers that are already
    running (persistent workers): call it before iterating the loader for that epoch.
    """

    task = "classification"

    def __init__(self, root, ext, train: bool = False):
        self.root = str(root)
        self.extension = ext
        self.format = ext.format
        self.train = bool(train)
        o = dict(ext.options)
        if o["scale"] is None:
            o["scale"] = o["crop"] if self.format in LOADER_FORMATS else 0
        o["crop"] = o["crop"] or 0
        if o["multicrop"]:
            if self.task != "classification":
                raise DataError(
                    f"--extension: multicrop is a classification test mode; "
                    f"{self.format} is a {self.task} set"
                )
            if not o["crop"]:
                raise DataError("--extension: multicrop needs crop=N")
        Distort(o["distort"])  # a bad --distort-mode fails at open time, not in a worker
        self.options = o
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.classes: list = []
        self.channels = o["channels"] or 3
        # seed, epoch in shared memory (reaches forked/spawned workers); the broken-item count
        # needs a lock because workers increment it
        self._shared = mp.RawArray("q", 2)
        self._broken = mp.Value("q", 0)
        self.broken_files: list = []  # files skipped in this process (workers keep their own)
        self._pipeline = None

    # ----------------------------------------------------------------- seed and epoch
    @property
    def seed(self) -> int:
        return int(self._shared[0])

    @seed.setter
    def seed(self, value):
        value = int(value)
        if value < 0:
            raise ValueError("seed must be >= 0")
        self._shared[0] = value

    @property
    def epoch(self) -> int:
        return int(self._shared[1])

    def set_epoch(self, epoch: int) -> None:
        """Make item randomness a function of (seed, epoch, index)."""
        if int(epoch) < 0:
            raise ValueError("epoch must be >= 0")
        self._shared[1] = int(epoch)

    @property
    def broken_count(self) -> int:
        """How many times an unreadable item was skipped (``skip_broken``), across workers."""
        return int(self._broken.value)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_pipeline"] = None
        if mp_context.get_spawning_popen() is None:
            # an ordinary pickle or deepcopy: shared memory cannot travel, take the values
            state["_shared"] = list(self._shared)
            state["_broken"] = self._broken.value
        return state

    def __setstate__(self, state):
        if isinstance(state["_shared"], list):
            values = state["_shared"]
            state["_shared"] = mp.RawArray("q", 2)
            state["_shared"][:] = values
            state["_broken"] = mp.Value("q", int(state["_broken"]))
        self.__dict__.update(state)

    # ----------------------------------------------------------------- shape and classes
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = Pipeline(self.options, self.train, self.mean, self.std)
        return self._pipeline

    def image_sizes(self):
        """(W, H) of every original image, from annotations or headers (no decoding)."""
        return [image_header(p)[1] for p in self.image_paths()]

    @abc.abstractmethod
    def image_paths(self):
        """Image file of every item, in item order."""

    def aspect_ratios(self):
        """Width / height of every original image, for ``AspectRatioBatchSampler``."""
        return [w / h for w, h in self.image_sizes()]

    @property
    def input_shape(self):
        """``(C, H, W)`` when every item has that shape, else None."""
        o = self.options
        if o["crop"]:
            return (self.channels, o["crop"], o["crop"])
        if o["random_scale"] and o["random_scale"] != 1:
            return None
        if o["scale"] and o["scale_mode"] == "warp":
            return (self.channels, o["scale"], o["scale"])
        sizes = set(self._known_sizes())
        if len(sizes) != 1:
            return None
        ((w, h),) = sizes
        if o["scale"]:
            from .transforms import scale_size

            w, h = scale_size((w, h), o["scale"], o["scale_mode"])
        return (self.channels, h, w)

    def _known_sizes(self):
        return self.image_sizes()

    # ----------------------------------------------------------------- items
    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of items."""

    @abc.abstractmethod
    def _load(self, index):
        """``(Sample, info)`` for item ``index``; info holds the label or per-box arrays."""

    def __getitem__(self, index):
        n = len(self)
        index = int(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"item {index} out of range for {n} items")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        for attempt in range(n):
            j = (index + attempt) % n
            try:
                return self._item(j, rng)
            except DataError as err:
                if not self.options["skip_broken"]:
                    raise
                with self._broken.get_lock():
                    self._broken.value += 1
                self.broken_files.append(str(err))
                warnings.warn(f"skipping unreadable item: {err}", stacklevel=2)
        raise DataError(f"{self.root}: no item of this dataset can be read")

    def _item(self, index, rng):
        sample, info = self._load(index)
        orig = sample.size
        pipe = self.pipeline
        out = pipe.geometry(sample, rng)
        if isinstance(out, list):  # multicrop: [10, C, H, W]
            return torch.stack([pipe.tensor(c.image, rng) for c in out]), self._target(
                index, out[0], info, orig
            )
        return pipe.tensor(out.image, rng), self._target(index, out, info, orig)

    def _target(self, index, s: Sample, info, orig):
        return {"label": int(info["label"])}

    def _geometry_target(self, image_id, s: Sample, orig):
        """image_id, orig_size and size (H, W), and the map from original to returned pixels:
        ``returned = original * scale + offset`` (x, y) per axis, or the full 2x3 ``affine``
        when a rotation was applied (then ``scale`` and ``offset`` are NaN)."""
        W, H = s.size
        A = s.matrix
        axis_aligned = abs(A[0, 1]) < 1e-12 and abs(A[1, 0]) < 1e-12
        nan = float("nan")
        return {
            "image_id": int(image_id),
            "orig_size": torch.tensor([orig[1], orig[0]], dtype=torch.int64),
            "size": torch.tensor([H, W], dtype=torch.int64),
            "scale": torch.tensor(
                [A[0, 0], A[1, 1]] if axis_aligned else [nan, nan], dtype=torch.float64
            ),
            "offset": torch.tensor(
                [A[0, 2], A[1, 2]] if axis_aligned else [nan, nan], dtype=torch.float64
            ),
            "affine": torch.from_numpy(A[:2].copy()),
        }

    def __repr__(self):
        return (
            f"{type(self).__name__}({self.root!r}, format={self.format}, "
            f"items={len(self)}, classes={self.num_classes}, train={self.train})"
        )


def check_dir(path, what="dataset directory"):
    if not os.path.isdir(path):
        raise DataError(f"{path}: {what} not found")
    return path


def check_file(path, what="file"):
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} not found")
    return path


class DetectionRecord:
    """One annotated image: boxes ``[N,4]`` xyxy in original pixels, ``labels [N]``, and
    per-box boolean ``flags`` (``iscrowd`` for COCO, ``difficult`` for VOC). COCO records also
    carry each box's annotation id (``ann_ids``) and which annotation file it came from
    (``source``), so masks and keypoints are read only when the item is loaded."""

    __slots__ = (
        "path",
        "image_id",
        "width",
        "height",
        "boxes",
        "labels",
        "flags",
        "ann_ids",
        "source",
    )

    def __init__(self, path, image_id, width, height, boxes, labels, flags, ann_ids=None, source=0):
        self.path, self.image_id, self.width, self.height = path, image_id, width, height
        self.boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.flags = {k: np.asarray(v, dtype=bool).reshape(-1) for k, v in flags.items()}
        self.ann_ids = None if ann_ids is None else np.asarray(ann_ids, np.int64).reshape(-1)
        self.source = int(source)

    def select(self, keep):
        return DetectionRecord(
            self.path,
            self.image_id,
            self.width,
            self.height,
            self.boxes[keep],
            self.labels[keep],
            {k: v[keep] for k, v in self.flags.items()},
            None if self.ann_ids is None else self.ann_ids[keep],
            self.source,
        )


class DetectionDataset(ImageDataset):
    """Base of mscoco and voc. Subclasses fill ``self.records``."""

    task = "detection"

    def __init__(self, root, ext, train=False):
        super().__init__(root, ext, train)
        self.records: list = []

    def _filter_records(self, drop_flag=None):
        """Apply ``skip_crowd``/``skip_difficult`` (drop those boxes) and ``bbox_only``."""
        out = []
        for rec in self.records:
            if drop_flag is not None and drop_flag in rec.flags:
                rec = rec.select(~rec.flags[drop_flag])
            if self.options["bbox_only"] and len(rec.boxes) == 0:
                continue
            out.append(rec)
        self.records = out

    def __len__(self):
        return len(self.records)

    def image_paths(self):
        return [r.path for r in self.records]

    def image_sizes(self):
        return [(r.width, r.height) for r in self.records]

    def _load(self, index):
        from .image import load_image

        rec = self.records[index]
        img = load_image(rec.path, self.channels)
        if img.size != (rec.width, rec.height):
            raise DataError(
                f"{rec.path}: image is {img.size[0]}x{img.size[1]} but its "
                f"annotation says {rec.width}x{rec.height}"
            )
        return Sample(img, boxes=rec.boxes), rec

    def _target(self, index, s, rec, orig):
        boxes, keep = self.pipeline.final_boxes(s)
        target = {
            "boxes": torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(rec.labels[keep].copy()),
        }
        for name, values in rec.flags.items():
            target[name] = torch.from_numpy(values[keep].copy())
        target.update(self._instance_targets(s, rec, keep))
        target.update(self._geometry_target(rec.image_id, s, orig))
        return target

    def _instance_targets(self, s, rec, keep) -> dict:
        """Per-box targets beyond boxes and flags (COCO's ``masks``, ``keypoints``), in the
        order of the kept boxes and the pixels of the returned image."""
        return {}
