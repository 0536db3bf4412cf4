"""Datasets for classification, detection and segmentation, DeNet's ``--extension`` syntax.

API (stable; full reference in docs/datasets.md)::

    from denet.data import open_dataset, make_loader

    ds = open_dataset("digits/train", "png", train=True, distort="o2 r10", mirror=False)
    ds.classes, ds.num_classes, ds.input_shape      # names, count, (C, H, W) or None
    image, target = ds[0]                           # float32 [C,H,W] RGB/255; {"label": int}

    loader = make_loader(ds, batch_size=32, shuffle=True, workers=2, seed=23455)
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)                     # BEFORE iterating: reseeds augmentation
        for images, targets in loader:              # images [B,C,H,W]; targets: B dicts
            ...

``open_dataset(path, extension, train=False, **overrides)``
    ``extension`` is ``FORMAT,SUBSET,key=value,flag,...``: FORMAT is an image extension (Basic
    Dir ``path/<class>/*.<ext>``, classes sorted by name), ``npy`` (``path + "_data.npy"``
    float32 [B,C,H,W] and ``path + "_labels.npy"``), ``imagenet``, ``mscoco``, ``voc`` or
    ``seglist``. ``overrides`` are the same keys as keywords, applied after the extension;
    ``None`` leaves a key alone. Training-tool flags map to:
    ``--distort-mode o4 m50`` -> ``distort="o4 m50"`` (or the argparse list; ``[]``/None = off),
    ``--augment-mirror`` -> ``mirror=True if args.augment_mirror else None`` (None keeps the
    format's default: imagenet/mscoco/voc/seglist mirror in training as DeNet's loader did);
    ``seed=N`` sets ``ds.seed`` (``make_loader`` also sets it from its ``seed``).
    ``train=True`` enables the random steps.
    Mirroring flips each item with p = 0.5 on the fly (DeNet duplicated the set instead).
    Channels (Basic Dir): 1 when every image is greyscale, else RGB.

Determinism: item i of epoch e draws all randomness from ``default_rng([ds.seed, e, i])``;
``ds.set_epoch(e)`` / ``loader.set_epoch(e)`` and ``ds.seed`` live in shared memory, so a run
resumed at an epoch boundary replays exactly with any number of workers.

Errors: an unreadable dataset, image or annotation raises ``denet.errors.DataError`` naming the
file; with ``skip_broken`` an unreadable item is replaced by the next readable one and counted
in ``ds.broken_count``.

``collate``, ``AspectRatioBatchSampler``, ``EpochShuffleSampler`` and ``Loader`` are in
``denet.data.loader``, ``SubsetDataset`` and ``StridedSampler`` in ``denet.data.samplers``;
targets of detection and segmentation items are described in docs/datasets.md.
"""

from __future__ import annotations

import os

from ..errors import DataError
from .base import ImageDataset
from .extension import Extension, parse_extension
from .loader import AspectRatioBatchSampler, EpochShuffleSampler, Loader, collate, make_loader
from .samplers import StridedSampler, SubsetDataset
from .transforms import Distort

__all__ = [
    "open_dataset",
    "make_loader",
    "collate",
    "AspectRatioBatchSampler",
    "EpochShuffleSampler",
    "Loader",
    "StridedSampler",
    "SubsetDataset",
    "Distort",
    "ImageDataset",
    "Extension",
    "parse_extension",
    "DataError",
]


def _dataset_class(fmt, options=None):
    if fmt == "dir":
        from .classification import DirDataset

        return DirDataset
    if fmt == "npy":
        from .classification import ArrayDataset

        return ArrayDataset
    if fmt == "imagenet":
        from .classification import ImageNetDataset

        return ImageNetDataset
    if fmt == "mscoco":
        from .coco import CocoDataset

        return CocoDataset
    if fmt == "voc":
        from .voc import VocDataset, VocSegDataset

        return VocSegDataset if (options or {}).get("seg") else VocDataset
    from .seglist import SegListDataset

    return SegListDataset


def open_dataset(path, extension: str, train: bool = False, **overrides) -> ImageDataset:
    """Open the dataset at ``path`` described by ``extension`` (see the module docstring)."""
    seed = overrides.pop("seed", None)
    ext = parse_extension(extension, overrides)
    ds = _dataset_class(ext.format, ext.options)(os.fspath(path), ext, train)
    if seed is not None:
        ds.seed = seed
    return ds
