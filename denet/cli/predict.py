"""model-predict: classify images with a trained model file.

    model-predict --model digits_final.pt --input digits/test --output predictions.json

``--input`` is one image, a folder of images, or a Basic Dir tree ``DIR/<class>/*.EXT``; folders
are searched recursively for ``*.EXT`` (``--extension``, default png), in sorted order. Images
are not resized: each must have the model's input size (an image of another size is an error
naming the file; ``model-modify --image-size`` changes a model's input size). Pixels become
RGB/255 (or grey/255 for 1-channel models) as in training.

The output is a JSON list, one entry per image::

    {"path": "digits/test/3/0042.png", "top5": [["3", 0.998], ["8", 0.001], ...],
     "label": "3"}

``top5`` holds the min(5, classes) most probable classes, best first. ``label`` is present when
the image lies in ``DIR/<class>/`` of a tree and ``<class>`` is one of the model's classes; the
tool then prints the top-1 and top-5 accuracy over those images.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError, DenetError
from ._common import tool_main

PREDICT_MODES = ("classify", "single")
DENET_MODES = {"multicrop": "10-crop testing", "segment": "segmentation",
               "detect": "detection"}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="model-predict", formatter_class=_Formatter,
        description="Classify images with a model file; write each image's top-5 classes and "
                    "probabilities to a JSON file.",
        epilog="See docs/model-predict.md.")
    a = p.add_argument
    a("--model", required=True, metavar="FILE", help="model file (P_final.pt, P_epochNNN.pt)")
    a("--input", required=True, metavar="PATH",
      help="an image, a folder of images or a Basic Dir tree DIR/<class>/*.EXT")
    a("--output", "--results", dest="output", default="results.json", metavar="OUT.json",
      help="where to write the predictions")
    a("--extension", default="png", help="image file extension searched for in folders")
    a("--predict-mode", default="classify",
      help="classify (DeNet's 'single' is accepted as a synonym)")
    a("--batch-size", type=int, default=100, help="images per forward pass")
    a("--thread-num", type=int, default=1,
      help="background image-loading worker processes (0: load in this process)")
    a("--device", default=None,
      help="cpu, cuda or cuda:N (default: GPU=N, else cuda:0 if present, else cpu)")
    a("--params", default="", help="DeNet's detection parameters; not used by classify")
    return p


def find_images(path: str, extension: str) -> list[str]:
    """``path`` itself if it is a file; else every ``*.extension`` below it, sorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such file or directory")
    suffix = "." + extension.lower().lstrip(".")
    found = []
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(folder, f) for f in files
                  if f.lower().endswith(suffix) and not f.startswith(".")]
    if not found:
        raise DataError(f"{path}: no *{suffix} images found")
    return sorted(found, key=lambda p: os.path.relpath(p, path).split(os.sep))


def tree_label(image: str, root: str, class_names) -> str | None:
    """The class of ``root/<class>/image`` when ``<class>`` is one of ``class_names``."""
    if not os.path.isdir(root):
        return None
    parts = os.path.relpath(image, root).split(os.sep)
    if len(parts) == 2 and parts[0] in class_names:
        return parts[0]
    return None


class ImageFiles(Dataset):
    """Images as the model sees them: float32 ``[C,H,W]`` in [0, 1], size checked."""

    def __init__(self, paths, input_shape):
        self.paths = list(paths)
        self.channels, self.height, self.width = input_shape

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from ..data.image import load_image

        path = self.paths[i]
        img = load_image(path, self.channels)
        if img.size != (self.width, self.height):
            raise DataError(f"{path}: image is {img.size[0]}x{img.size[1]} (WxH) but the model "
                            f"takes {self.width}x{self.height}; resize the image or change the "
                            "model's input with model-modify --image-size")
        arr = np.asarray(img, dtype=np.float32) / 255.0
        x = torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())
        return x, {"index": i}


@torch.no_grad()
def classify(model, paths, batch_size: int, workers: int, device) -> torch.Tensor:
    """Probabilities ``[N, classes]`` for the images at ``paths`` (in order)."""
    from ..data import make_loader

    ds = ImageFiles(paths, model.input_shape)
    loader = make_loader(ds, batch_size, shuffle=False, workers=workers, seed=0)
    loader.generator = torch.Generator().manual_seed(0)
    model.eval()
    out = torch.empty(len(ds), model.classes, dtype=torch.float32)
    for images, targets in loader:
        probs = model(images.to(device))
        out[targets["index"]] = probs.float().cpu()
    return out


def _check_mode(mode: str) -> None:
    head = mode.split(",")[0].strip().lower()
    if head in PREDICT_MODES:
        return
    if head in DENET_MODES:
        raise DenetError(f"--predict-mode {mode}: DeNet's {DENET_MODES[head]} mode is not "
                         "supported by model-predict; use --predict-mode classify")
    raise DenetError(f"--predict-mode: unknown mode {mode!r}; expected classify")


@tool_main
def main(argv=None) -> int:
    ns = build_parser().parse_args(argv)
    _check_mode(ns.predict_mode)
    if ns.params.strip():
        raise DenetError("--params holds DeNet's detection thresholds; classify takes none")
    if ns.batch_size < 1:
        raise DenetError(f"--batch-size must be >= 1, not {ns.batch_size}")
    if ns.thread_num < 0:
        raise DenetError(f"--thread-num must be >= 0, not {ns.thread_num}")
    import denet
    from ..train.distributed import DistInfo, select_device
    from ..train.trainer import classifier_check

    model = denet.load(ns.model)
    try:
        classifier_check(model)
    except DenetError as err:
        raise DenetError(f"{ns.model}: {err}") from None
    device = select_device(ns.device, DistInfo())
    model.to(device)
    names = [str(c) for c in (model.class_names or range(model.classes))]
    if len(names) != model.classes:
        raise DenetError(f"{ns.model}: {len(names)} class names for {model.classes} classes")

    paths = find_images(ns.input, ns.extension)
    probs = classify(model, paths, ns.batch_size, ns.thread_num, device)
    k = min(5, model.classes)
    top_p, top_i = probs.topk(k, dim=1)
    results, hits1, hits5, labelled = [], 0, 0, 0
    for n, path in enumerate(paths):
        entry = {"path": path,
                 "top5": [[names[j], round(float(p), 6)] for p, j in
                          zip(top_p[n].tolist(), top_i[n].tolist())]}
        label = tree_label(path, ns.input, names)
        if label is not None:
            entry["label"] = label
            labelled += 1
            ranked = [names[j] for j in top_i[n].tolist()]
            hits1 += ranked[0] == label
            hits5 += label in ranked
        results.append(entry)
    out_dir = os.path.dirname(os.path.abspath(ns.output))
    try:
        os.makedirs(out_dir, exist_ok=True)
        tmp = f"{ns.output}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("[\n" + ",\n".join(json.dumps(r) for r in results) + "\n]\n")
        os.replace(tmp, ns.output)
    except OSError as err:
        raise DenetError(f"{ns.output}: cannot write ({err.strerror or err})") from None
    print(f"classified {len(paths)} image(s) with {ns.model}: wrote {ns.output}")
    if labelled:
        print(f"top-1 accuracy {100 * hits1 / labelled:.2f}%  top-5 accuracy "
              f"{100 * hits5 / labelled:.2f}%  ({labelled} labelled images)")
    return 0
