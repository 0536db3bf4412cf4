"""model-predict: run a trained model file on images: classify, detect or segment.

    model-predict --model digits_final.pt --input digits/test --output predictions.json
    model-predict --model coco_final.pt --input COCO --extension mscoco,2017-val
    model-predict --model seg_final.pt --input SEG --extension seglist,val --output labels/

The mode follows the model's task (its head): ``classify`` for a classifier (R), ``detect`` for
a detector, ``segment`` for a segmentation network (SEG); ``--predict-mode`` may name it.

``--input`` is one image, a folder of images, or a Basic Dir tree ``DIR/<class>/*.EXT``; folders
are searched recursively for ``*.EXT`` (``--extension``, default png), in sorted order. Pixels
become RGB/255 (or grey/255 for 1-channel models) as in training. ``classify`` does not resize:
each image must have the model's input size (an image of another size is an error naming the
file; ``model-modify --image-size`` changes a model's input size). ``detect`` and ``segment``
run each image at its own size, or read a dataset (``--extension mscoco,...``, ``voc,...``,
``seglist,...``; docs/datasets.md) with its loader keys.

classify writes a JSON list, one entry per image::

    {"path": "digits/test/3/0042.png", "top5": [["3", 0.998], ["8", 0.001], ...],
     "label": "3"}

``top5`` holds the min(5, classes) most probable classes, best first. ``label`` is present when
the image lies in ``DIR/<class>/`` of a tree and ``<class>`` is one of the model's classes; the
tool then prints the top-1 and top-5 accuracy over those images.

detect writes a JSON list, one entry per image, boxes in the original image's pixels::

    {"path": "COCO/val2017/000000000139.jpg", "boxes": [[x1, y1, x2, y2], ...],
     "scores": [0.98, ...], "labels": [0, ...], "classes": ["person", ...]}

and, for an annotated mscoco or voc set, prints the evaluator's summary (COCO AP, VOC mAP).
DeNet's ``detect,mscoco`` (a COCO results file scored by pycocotools), ``detect,voc`` (VOC
devkit files, VOC07 mAP), ``,image`` (the images with their boxes drawn) and ``--params`` are
in :mod:`denet.cli.predict_detect`.
segment writes one PNG label map per image (class indices, 255 where the model did not see the
original pixel) under the ``--output`` folder, named after the image, the same map in VOC's
colours under ``<output>_color`` (DRN's layout), and prints the mIoU, pixel accuracy and
per-class IoU when the dataset has label maps. ``--scales 0.5 0.75 1 1.25 1.5 1.75`` is DRN's
multi-scale test: the image is resized to each scale, the model's ``out`` log-probabilities are
resized back and summed, and the argmax of the sum is the label.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError, DenetError
from ._common import ArgumentParser, bounded_int, tool_main

MODES = {
    "classify": "classification",
    "single": "classification",
    "detect": "detection",
    "segment": "segmentation",
}
TASK_MODES = {"classification": "classify", "detection": "detect", "segmentation": "segment"}
DENET_MODES = {
    "multicrop": "10-crop testing (use --extension imagenet,multicrop with "
    "model-train --skip-train)"
}
DATASET_FORMATS = ("mscoco", "voc", "seglist")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="model-predict",
        formatter_class=_Formatter,
        description="Run a model file on images: classify (top-5 classes per image, JSON), "
        "detect (boxes per image, JSON) or segment (a PNG label map per image), "
        "as the model's task says.",
        epilog="See docs/model-predict.md.",
    )
    a = p.add_argument
    a("--model", required=True, metavar="FILE", help="model file (P_final.pt, P_epochNNN.pt)")
    a(
        "--input",
        required=True,
        metavar="PATH",
        help="an image, a folder of images, a Basic Dir tree DIR/<class>/*.EXT, or (detect, "
        "segment) a dataset root read with --extension",
    )
    a(
        "--output",
        "--results",
        dest="output",
        default=None,
        metavar="OUT",
        help="where to write the predictions: a JSON file (classify, detect; default "
        "results.json; detect,mscoco: the COCO results file), or a folder (segment: PNG "
        "label maps; detect,voc: VOC devkit files; default results)",
    )
    a(
        "--extension",
        default="png",
        help="image file extension searched for in folders; detect and segment also take a "
        "dataset format with loader keys (mscoco,2017-val / voc,2007-test / seglist,val)",
    )
    a(
        "--predict-mode",
        default=None,
        help="classify (DeNet's 'single' is a synonym), detect[,mscoco|,voc][,image] or "
        "segment (default: the model's task)",
    )
    a("--batch-size", type=bounded_int(1, 1 << 20), default=100, help="images per forward pass")
    a(
        "--thread-num",
        type=bounded_int(0, 1024),
        default=1,
        help="background image-loading worker processes (0: load in this process)",
    )
    a(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: GPU=N, else cuda:0 if present, else cpu)",
    )
    a(
        "--scales",
        type=_scale,
        nargs="+",
        default=None,
        metavar="S",
        help="segment: multi-scale test (DRN's --ms: 0.5 0.75 1 1.25 1.5 1.75); the image is "
        "resized by each factor, the model's log-probabilities resized back and summed "
        "(default: the image as it is, one pass)",
    )
    a(
        "--params",
        default="",
        help="detect: DeNet's k=v,... keys prThreshold (lowest class probability kept), "
        "nmsThreshold, useSoftNMS (0/1), matchIOU (detect,voc); cornerThreshold and "
        "cornerMax are accepted and ignored, as in DeNet (default: the model's own values)",
    )
    return p


def _scale(text: str) -> float:
    """An argparse ``type``: a finite scale factor > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"a scale must be a finite number > 0, not {text}")
    if value > MAX_SCALE:
        raise argparse.ArgumentTypeError(f"a scale must be at most {MAX_SCALE:g}, not {text}")
    return value


MAX_SCALE = 16.0  # far beyond DRN's 1.75; bounds the memory of one resized image


def find_images(path: str, extension: str) -> list[str]:
    """``path`` itself if it is a file; else every ``*.extension`` below it, sorted."""
    if os.path.isfile(path):
        return [path]
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataError(f"{path}: not a regular file or a folder")
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such file or directory")
    suffix = "." + extension.lower().lstrip(".")
    found = []
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            os.path.join(folder, f)
            for f in files
            if f.lower().endswith(suffix)
            and not f.startswith(".")
            and os.path.isfile(os.path.join(folder, f))  # not a FIFO or device named *.png
        ]
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
    """Images as the model sees them: float32 ``[C,H,W]`` in [0, 1]. With ``check_size`` each
    must have the model's input size; targets carry the index and the (identity) geometry."""

    def __init__(self, paths, input_shape, check_size: bool = True):
        self.paths = list(paths)
        self.channels, self.height, self.width = input_shape
        self.check_size = check_size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from ..data.image import load_image

        path = self.paths[i]
        img = load_image(path, self.channels)
        if self.check_size and img.size != (self.width, self.height):
            raise DataError(
                f"{path}: image is {img.size[0]}x{img.size[1]} (WxH) but the model "
                f"takes {self.width}x{self.height}; resize the image or change the "
                "model's input with model-modify --image-size"
            )
        arr = np.asarray(img, dtype=np.float32) / 255.0
        x = torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())
        size = torch.tensor([img.size[1], img.size[0]], dtype=torch.int64)
        return x, {
            "index": i,
            "image_id": i,
            "size": size,
            "orig_size": size.clone(),
            "scale": torch.ones(2, dtype=torch.float64),
            "offset": torch.zeros(2, dtype=torch.float64),
        }


def _loader(dataset, batch_size, workers):
    from ..data import make_loader

    loader = make_loader(dataset, batch_size, shuffle=False, workers=workers, seed=0)
    loader.generator = torch.Generator().manual_seed(0)
    return loader


@torch.no_grad()
def classify(model, paths, batch_size: int, workers: int, device) -> torch.Tensor:
    """Probabilities ``[N, classes]`` for the images at ``paths`` (in order)."""
    ds = ImageFiles(paths, model.input_shape)
    model.eval()
    out = torch.empty(len(ds), model.classes, dtype=torch.float32)
    for images, targets in _loader(ds, batch_size, workers):
        probs = model(images.to(device))
        out[[t["index"] for t in targets]] = probs.float().cpu()
    return out


@torch.no_grad()
def predict_batches(model, dataset, batch_size: int, workers: int, device):
    """``(outputs, targets)`` of every batch of ``dataset`` in order, the model in evaluation
    mode."""
    model.eval()
    for images, targets in _loader(dataset, batch_size, workers):
        yield model(images.to(device)), targets


def to_original(boxes: torch.Tensor, target: dict) -> torch.Tensor:
    """xyxy boxes in the pixels of the image the model saw -> the original image's pixels,
    ``(v - offset) / scale`` with the target's geometry (unchanged without a finite one)."""
    from ..eval.base import finite_geometry

    boxes = boxes.detach().double().cpu().reshape(-1, 4)
    geom = finite_geometry(target)
    if geom is None:
        return boxes
    scale, offset = geom
    return (boxes - offset.repeat(2)) / scale.repeat(2)


def detection_entry(path, output: dict, target: dict, names) -> dict:
    boxes = to_original(output["boxes"], target)
    labels = [int(v) for v in output["labels"].reshape(-1).tolist()]
    return {
        "path": path,
        "boxes": [[round(float(v), 3) for v in b] for b in boxes.tolist()],
        "scores": [round(float(v), 6) for v in output["scores"].reshape(-1).tolist()],
        "labels": labels,
        "classes": [names[k] if 0 <= k < len(names) else str(k) for k in labels],
    }


def label_maps(logits: torch.Tensor, targets: list[dict]) -> list[np.ndarray]:
    """Per image, the argmax class at the original image's size: the logits are resized
    (bilinearly) to the padded batch, cropped to the image the model saw (its ``size``) and
    sampled at the centre of every original pixel, ``x * scale + offset``. Original pixels that
    fall outside the image the model saw (cropped away) get 255."""
    from ..eval.base import finite_geometry

    logits = logits.detach().float()
    padded = (max(int(t["size"][0]) for t in targets), max(int(t["size"][1]) for t in targets))
    if tuple(logits.shape[-2:]) != padded:
        logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
    maps = []
    for i, t in enumerate(targets):
        h, w = int(t["size"][0]), int(t["size"][1])
        x = logits[i : i + 1, :, :h, :w]
        H, W = (int(v) for v in t.get("orig_size", t["size"]))
        geom = finite_geometry(t)
        (sx, sy), (ox, oy) = geom if geom is not None else ((1.0, 1.0), (0.0, 0.0))
        sx, sy, ox, oy = (float(v) for v in (sx, sy, ox, oy))
        if (sx, sy, ox, oy) == (1.0, 1.0, 0.0, 0.0) and (H, W) == (h, w):
            maps.append(x[0].argmax(0).cpu().numpy())
            continue
        xs = (torch.arange(W, dtype=torch.float64) + 0.5) * sx + ox
        ys = (torch.arange(H, dtype=torch.float64) + 0.5) * sy + oy
        grid = torch.stack(
            torch.meshgrid(xs * (2.0 / w) - 1, ys * (2.0 / h) - 1, indexing="xy"), dim=-1
        )
        sampled = F.grid_sample(
            x,
            grid[None].to(x.device, torch.float32),
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        label = sampled[0].argmax(0).cpu().numpy()
        inside = ((xs >= 0) & (xs <= w))[None, :] & ((ys >= 0) & (ys <= h))[:, None]
        label[~inside.numpy()] = 255
        maps.append(label)
    return maps


@torch.no_grad()
def multiscale_log_probs(model, images: torch.Tensor, targets: list[dict], scales) -> torch.Tensor:
    """DRN's multi-scale test: ``[B, K, H, W]`` at the padded batch's size, per image the sum
    over ``scales`` of ``log_softmax(out)`` of the image resized by the scale (bilinear,
    antialiased when shrinking; ``round(s * side)`` pixels, at least 1), resized back to the
    image's size (bilinear, ``align_corners=False``). Scale 1 runs the image as it is. A batch
    of one size runs as a batch; otherwise each image runs alone at its own size (padding is
    left 0)."""

    def summed(x):
        h, w = x.shape[-2:]
        total = None
        for s in scales:
            size = (max(1, round(h * s)), max(1, round(w * s)))
            xs = x
            if size != (h, w):
                xs = F.interpolate(
                    x, size=size, mode="bilinear", align_corners=False, antialias=s < 1
                )
            out = model(xs)
            logits = out["out"] if isinstance(out, dict) else out
            lp = F.log_softmax(logits.float(), dim=1)
            if tuple(lp.shape[-2:]) != (h, w):
                lp = F.interpolate(lp, size=(h, w), mode="bilinear", align_corners=False)
            total = lp if total is None else total + lp
        return total

    H, W = images.shape[-2:]
    sizes = [(int(t["size"][0]), int(t["size"][1])) for t in targets]
    if all(size == (H, W) for size in sizes):
        return summed(images)
    out = None
    for i, (h, w) in enumerate(sizes):
        lp = summed(images[i : i + 1, :, :h, :w])
        if out is None:
            out = lp.new_zeros((len(sizes), lp.shape[1], H, W))
        out[i, :, :h, :w] = lp[0]
    return out


def write_label_map(label: np.ndarray, path: str, classes: int) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    dtype = np.uint8 if classes <= 255 else np.uint16
    Image.fromarray(label.astype(dtype)).save(path)


def write_colour_map(label: np.ndarray, path: str, palette: np.ndarray) -> None:
    """The label map as an RGB PNG in ``palette``'s colours (VOC's; 255 = void's)."""
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(palette[label.astype(np.int64)]).save(path)


def colour_dir(out_dir: str) -> str:
    """Where segment writes the colour maps: ``<output>_color`` beside the label maps, as DRN
    did."""
    return os.path.normpath(out_dir) + "_color"


def _check_mode(mode, model, path) -> str:
    """The mode to run: ``--predict-mode`` or the model's task; it must fit the model."""
    task = model.task
    if mode is None:
        if task not in TASK_MODES:
            raise DenetError(
                f"{path}: the network has no task head (R, SEG, DET ...), so "
                "model-predict cannot read its output"
            )
        return TASK_MODES[task]
    head, _, rest = mode.partition(",")
    head = head.strip().lower()
    if head in DENET_MODES:
        raise DenetError(
            f"--predict-mode {mode}: DeNet's {DENET_MODES[head]} is not a mode of model-predict"
        )
    if head not in MODES:
        raise DenetError(
            f"--predict-mode: unknown mode {mode!r}; expected classify, detect or segment"
        )
    if MODES[head] != task:
        raise DenetError(
            f"--predict-mode {mode}: {path} is a {task or 'task-less'} network; it cannot {head}"
        )
    if head == "detect":
        from .predict_detect import parse_detect_mode

        parse_detect_mode(mode)
    elif rest.strip():
        raise DenetError(
            f"--predict-mode {mode}: {head} takes no options after the mode (the data "
            "format goes in --extension)"
        )
    return TASK_MODES[task]


def write_atomic(path: str, data: bytes) -> None:
    """``data`` to ``path`` whole or not at all (a temporary file, then a rename); its folder is
    created."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise DenetError(f"{path}: cannot write ({err.strerror or err})") from None


def strict(value):
    """``value`` with every non-finite float made None, so the JSON is strict (no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def write_json(results, output) -> None:
    """A JSON list, one item a line, written atomically; NaN and infinities become null."""
    text = "[\n" + ",\n".join(json.dumps(strict(r), allow_nan=False) for r in results) + "\n]\n"
    write_atomic(output, text.encode("utf-8"))


def check_not_inputs(outputs, inputs) -> None:
    """Refuse, before anything is written, an output path that is one of the inputs (the model
    file or an image), compared by resolved path."""
    given = {os.path.realpath(p): p for p in inputs}
    for out in outputs:
        hit = given.get(os.path.realpath(out))
        if hit is not None:
            raise DenetError(f"{out}: the output would overwrite the input {hit}; choose --output")


def _class_names(model, path) -> list[str]:
    names = [str(c) for c in (model.class_names or range(model.classes))]
    if len(names) != model.classes:
        raise DenetError(f"{path}: {len(names)} class names for {model.classes} classes")
    return names


# ----------------------------------------------------------------------------- classify
def run_classify(ns, model, names, device) -> None:
    paths = find_images(ns.input, ns.extension)
    check_not_inputs([ns.output or "results.json"], [ns.model, *paths])
    probs = classify(model, paths, ns.batch_size, ns.thread_num, device)
    k = min(5, model.classes)
    top_p, top_i = probs.topk(k, dim=1)
    results, hits1, hits5, labelled = [], 0, 0, 0
    for n, path in enumerate(paths):
        entry = {
            "path": path,
            "top5": [
                [names[j], round(float(p), 6)] for p, j in zip(top_p[n].tolist(), top_i[n].tolist())
            ],
        }
        label = tree_label(path, ns.input, names)
        if label is not None:
            entry["label"] = label
            labelled += 1
            ranked = [names[j] for j in top_i[n].tolist()]
            hits1 += ranked[0] == label
            hits5 += label in ranked
        results.append(entry)
    output = ns.output or "results.json"
    write_json(results, output)
    print(f"classified {len(paths)} image(s) with {ns.model}: wrote {output}")
    if labelled:
        print(
            f"top-1 accuracy {100 * hits1 / labelled:.2f}%  top-5 accuracy "
            f"{100 * hits5 / labelled:.2f}%  ({labelled} labelled images)"
        )


# ----------------------------------------------------------------------------- detect, segment
def open_inputs(ns, model, task):
    """(dataset, image path per item, folder the paths are relative to, is it a dataset)."""
    from ..data import open_dataset
    from ..data.extension import parse_extension

    ext = parse_extension(ns.extension)
    if ext.format == "dir":
        if "," in ns.extension:
            raise DenetError(
                f"--extension {ns.extension}: loader keys need a dataset format "
                f"({', '.join(DATASET_FORMATS)}); plain images run at their size"
            )
        paths = find_images(ns.input, ext.image_ext)
        root = ns.input if os.path.isdir(ns.input) else os.path.dirname(ns.input)
        return ImageFiles(paths, model.input_shape, check_size=False), paths, root, False
    if ext.format not in DATASET_FORMATS:
        raise DenetError(
            f"--extension {ns.extension}: {ext.format} holds classification "
            f"data; {task} reads images or {', '.join(DATASET_FORMATS)}"
        )
    ds = open_dataset(ns.input, ns.extension, train=False)
    if ds.task != task:
        raise DataError(f"{ns.input}: a {ds.task} set, but {ns.model} is a {task} network")
    if list(map(str, ds.classes)) and len(ds.classes) != model.classes:
        raise DataError(
            f"{ns.input}: {len(ds.classes)} classes, but {ns.model} has {model.classes}"
        )
    return ds, ds.image_paths(), ds.root, True


def segment_batches(model, ds, ns, device):
    """``(per-pixel scores [B, K, h, w], targets)`` of every batch: the model's ``out`` logits,
    or with ``--scales`` the summed log-probabilities of :func:`multiscale_log_probs`."""
    if not ns.scales:
        for outputs, targets in predict_batches(model, ds, ns.batch_size, ns.thread_num, device):
            yield (outputs["out"] if isinstance(outputs, dict) else outputs), targets
        return
    model.eval()
    for images, targets in _loader(ds, ns.batch_size, ns.thread_num):
        yield multiscale_log_probs(model, images.to(device), targets, ns.scales), targets


def class_iou_lines(metrics: dict, names) -> list[str]:
    """One line per class, ``IoU <name>: 87.5%`` (``n/a`` for a class neither in the labels
    nor predicted)."""
    width = max(len(n) for n in names)
    lines = []
    for k, name in enumerate(names):
        v = metrics.get(f"IoU_{k}", math.nan)
        lines.append(f"  IoU {name:<{width}}  " + ("n/a" if math.isnan(v) else f"{100 * v:.1f}%"))
    return lines


def run_segment(ns, model, names, device) -> None:
    from ..data.voc import voc_palette
    from ..eval import make_evaluator

    ds, paths, root, is_dataset = open_inputs(ns, model, "segmentation")
    out_dir = ns.output or "results"
    colours = colour_dir(out_dir)
    for folder in (out_dir, colours):
        if os.path.isfile(folder):
            raise DenetError(
                f"--output {out_dir}: segment writes the folders {out_dir} (label maps) and "
                f"{colours} (colour maps); {folder} is a file"
            )
    rel_png = [os.path.splitext(os.path.relpath(p, root))[0] + ".png" for p in paths]
    check_not_inputs(
        [os.path.join(d, r) for d in (out_dir, colours) for r in rel_png], [ns.model, *paths]
    )
    palette = voc_palette(max(256, model.classes))
    evaluator = None
    done = 0
    written = set()
    for scores, targets in segment_batches(model, ds, ns, device):
        for label in label_maps(scores, targets):
            rel = rel_png[done]
            target = os.path.join(out_dir, rel)
            if target in written:
                raise DenetError(
                    f"{paths[done]}: its label map {target} was already written "
                    "for another image of the same name"
                )
            written.add(target)
            path = target
            try:
                write_label_map(label, path, model.classes)
                path = os.path.join(colours, rel)
                write_colour_map(label, path, palette)
            except OSError as err:
                raise DenetError(f"{path}: cannot write ({err.strerror or err})") from None
            done += 1
        if is_dataset and all("mask" in t for t in targets):
            if evaluator is None:
                evaluator = make_evaluator("segmentation", classes=names)
            evaluator.update(scores, targets)
    scales = f" at scales {' '.join(f'{s:g}' for s in ns.scales)}" if ns.scales else ""
    print(
        f"segmented {done} image(s) with {ns.model}{scales}: wrote {done} label map(s) under "
        f"{out_dir} and their colour maps under {colours}"
    )
    if evaluator is not None:
        print(evaluator.summary())
        print("\n".join(class_iou_lines(evaluator.compute(), names)))


@tool_main
def main(argv=None) -> int:
    ns = build_parser().parse_args(argv)
    from .predict_detect import parse_params, run_detect

    parse_params(ns.params)  # a malformed --params fails before the model is read
    import denet

    from ..train.distributed import DistInfo, select_device

    model = denet.load(ns.model)
    mode = _check_mode(ns.predict_mode, model, ns.model)
    if ns.scales and mode != "segment":
        raise DenetError(
            f"--scales is segment's multi-scale test; {ns.model} is a {model.task} network"
        )
    if ns.params.strip() and mode != "detect":
        raise DenetError(
            f"--params {ns.params.strip()}: DeNet's detection parameters, but {ns.model} is a "
            f"{model.task} network"
        )
    device = select_device(ns.device, DistInfo())
    model.to(device)
    names = _class_names(model, ns.model)
    {"classify": run_classify, "detect": run_detect, "segment": run_segment}[mode](
        ns, model, names, device
    )
    return 0
