"""model-predict's detect modes and DeNet's ``--params`` (docs/model-predict.md).

``--predict-mode detect[,mscoco|,voc][,image]``:

- ``detect``: a JSON list of every image's boxes (``--output``, default ``results.json``);
- ``detect,mscoco``: a COCO results file (``--output``, default ``results.json``) with the
  dataset's image and category ids and ``[x, y, w, h]`` boxes in the original image's 0-based
  pixels, clipped to the image, scored by pycocotools' COCOeval against the dataset's
  annotations; the per-image list goes beside it as ``<stem>_detections.json``;
- ``detect,voc``: ``comp4_det_test_<class>.txt`` per class in the ``--output`` folder (default
  ``results``), 1-based pixel coordinates as VOC's devkit reads them, scored with the VOC07
  11-point AP of :class:`denet.eval.VocEvaluator`; the per-image list is
  ``<folder>/detections.json``;
- ``,image``: every image with its boxes (and the model's masks and keypoints) drawn, as PNG,
  under ``<stem>_images/`` (or ``<folder>/images/`` for voc).

A model whose outputs have ``masks`` and ``keypoints`` (Mask / Keypoint R-CNN) gets them in the
per-image list and the COCO results (``segmentation`` RLEs, ``keypoints``), and COCOeval's
``segm`` and ``keypoints`` tables where the annotations have those.

``--params k=v,...`` takes DeNet's keys; the thresholds reach the model through the
``set_test_params(score=, nms=, soft_nms=)`` method of its detection heads.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError, DenetError
from .predict import (
    check_not_inputs,
    detection_entry,
    open_inputs,
    predict_batches,
    to_original,
    write_atomic,
    write_json,
)

SUB_MODES = ("mscoco", "voc", "image")
DENET_SUB_MODES = {"imagenet": "DeNet's ImageNet top-5 localisation error (detect,imagenet)"}
VOC_FILE = "comp4_det_test_{}.txt"


# ----------------------------------------------------------------------------- the mode
@dataclass(frozen=True)
class DetectMode:
    dataset: str | None = None  # "mscoco", "voc", or None for plain detect
    image: bool = False


def parse_detect_mode(mode: str) -> DetectMode:
    """``detect[,mscoco|,voc][,image]`` (in any order, case-insensitive)."""
    _, *options = [t.strip().lower() for t in mode.split(",")]
    dataset, image = None, False
    for opt in options:
        if opt in DENET_SUB_MODES:
            raise DenetError(
                f"--predict-mode {mode}: {DENET_SUB_MODES[opt]} is not a mode of model-predict"
            )
        if opt not in SUB_MODES:
            what = f"unknown detect option {opt!r}" if opt else "an empty option (a stray comma)"
            raise DenetError(
                f"--predict-mode {mode}: {what}; expected detect[,mscoco|,voc][,image]"
            )
        if opt == "image":
            if image:
                raise DenetError(f"--predict-mode {mode}: image is given twice")
            image = True
        elif dataset is not None:
            raise DenetError(
                f"--predict-mode {mode}: {dataset} and {opt} exclude each other; "
                "give one dataset format"
            )
        else:
            dataset = opt
    return DetectMode(dataset, image)


def check_format(mode: DetectMode, predict_mode: str, extension: str) -> None:
    """``detect,mscoco`` needs a COCO set and ``detect,voc`` a VOC set."""
    from ..data.extension import parse_extension

    if mode.dataset is None:
        return
    fmt = parse_extension(extension).format
    if fmt == mode.dataset:
        return
    wanted = {
        "mscoco": "COCO results need a COCO set (--extension mscoco,SUBSET,...)",
        "voc": "VOC devkit files need a VOC set (--extension voc,SUBSET,...)",
    }[mode.dataset]
    given = (
        f"--extension {extension} reads a folder of images"
        if fmt == "dir"
        else f"--extension {extension} reads a {fmt} set"
    )
    raise DenetError(f"--predict-mode {predict_mode}: {wanted}, but {given}")


# ----------------------------------------------------------------------------- --params
@dataclass
class DetectParams:
    score: float | None = None  # prThreshold
    nms: float | None = None  # nmsThreshold
    soft_nms: bool | None = None  # useSoftNMS
    match_iou: float | None = None  # matchIOU
    given: dict[str, str] = field(default_factory=dict)  # DeNet key -> value as written
    ignored: list[str] = field(default_factory=list)  # cornerThreshold, cornerMax

    @property
    def thresholds(self) -> dict:
        """The keyword arguments of ``set_test_params`` that were given."""
        values = {"score": self.score, "nms": self.nms, "soft_nms": self.soft_nms}
        return {k: v for k, v in values.items() if v is not None}

    def threshold_text(self) -> str:
        """The given prThreshold, nmsThreshold and useSoftNMS pairs, in the order given."""
        keys = [k for k in self.given if PARAM_KEYS[k][0] in ("score", "nms", "soft_nms")]
        return ",".join(f"{k}={self.given[k]}" for k in keys)


# DeNet key -> (attribute of DetectParams or None when ignored, kind, what a valid value is)
PARAM_KEYS = {
    "prThreshold": ("score", "unit", "a number in [0, 1]"),
    "nmsThreshold": ("nms", "unit", "a number in [0, 1] (0 or 1: no NMS)"),
    "useSoftNMS": ("soft_nms", "flag", "0 or 1"),
    "matchIOU": ("match_iou", "iou", "a number in [0, 1)"),
    "cornerThreshold": (None, "unit", "a number in [0, 1]"),
    "cornerMax": (None, "count", "a whole number >= 1"),
}


def _value(key: str, text: str):
    kind, want = PARAM_KEYS[key][1:]
    try:
        if kind == "flag":
            if text not in ("0", "1"):
                raise ValueError
            return text == "1"
        if kind == "count":
            n = int(text)
            if n < 1:
                raise ValueError
            return n
        v = float(text)
    except ValueError:
        raise DenetError(f"--params {key}={text}: {key} must be {want}") from None
    if not math.isfinite(v) or not 0.0 <= v <= 1.0 or (kind == "iou" and v == 1.0):
        raise DenetError(f"--params {key}={text}: {key} must be {want}")
    return v


def parse_params(text: str) -> DetectParams:
    """DeNet's ``k=v,...`` string; every problem is a DenetError naming the pair."""
    params = DetectParams()
    if not text.strip():
        return params
    for item in text.split(","):
        item = item.strip()
        key, eq, value = (s.strip() for s in item.partition("="))
        if not item:
            raise DenetError(f"--params {text}: an empty item (a stray comma)")
        if not eq or not key or not value:
            raise DenetError(f"--params {text}: {item!r} is not a key=value pair")
        if key not in PARAM_KEYS:
            near = difflib.get_close_matches(key, PARAM_KEYS, n=1, cutoff=0.6)
            near = near or [k for k in PARAM_KEYS if k.lower() == key.lower()]
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise DenetError(
                f"--params: unknown key {key!r}{hint}; DeNet's keys are {', '.join(PARAM_KEYS)}"
            )
        if key in params.given:
            raise DenetError(f"--params {text}: {key} is given twice")
        params.given[key] = value
        attribute = PARAM_KEYS[key][0]
        parsed = _value(key, value)
        if attribute is None:
            params.ignored.append(key)
        else:
            setattr(params, attribute, parsed)
    return params


def apply_test_params(model, params: DetectParams, model_path: str) -> list[str]:
    """Hand the given thresholds to every module with ``set_test_params``; their names."""
    values = params.thresholds
    if not values:
        return []
    heads = [
        (name or type(m).__name__, m)
        for name, m in model.named_modules()
        if callable(getattr(m, "set_test_params", None))
    ]
    given = params.threshold_text()
    if not heads:
        raise DenetError(
            f"--params {given}: {model_path} has no detection head that takes DeNet's test "
            "parameters (a layer with set_test_params, such as DND)"
        )
    for name, module in heads:
        try:
            module.set_test_params(**values)
        except (TypeError, ValueError) as err:
            raise DenetError(f"--params {given}: layer {name} refuses them ({err})") from None
    return [name for name, _ in heads]


def report_params(params: DetectParams, heads: list[str]) -> None:
    if heads:
        print(f"--params {params.threshold_text()}: set on {', '.join(heads)}")
    if params.ignored:
        given = ",".join(f"{k}={params.given[k]}" for k in params.ignored)
        print(
            f"--params {given}: ignored, as in DeNet (which only logged them); the DNS layer's "
            "own corner_threshold and corner limit are used (change the threshold with "
            "model-modify --modify-layer DNS corner_threshold=...)"
        )


# ----------------------------------------------------------------------------- outputs
@dataclass
class Outputs:
    detections: str  # the per-image JSON list
    results: str | None = None  # the COCO results file
    voc_dir: str | None = None  # the folder of VOC devkit files
    images: str | None = None  # the folder of drawn images


def output_paths(mode: DetectMode, output: str | None) -> Outputs:
    """Where every file of the mode goes (see the module docstring)."""
    if mode.dataset == "voc":
        folder = output or "results"
        if os.path.isfile(folder):
            raise DenetError(
                f"--output {folder}: detect,voc writes a folder of "
                f"{VOC_FILE.format('<class>')} files; this is a file"
            )
        images = os.path.join(folder, "images") if mode.image else None
        return Outputs(os.path.join(folder, "detections.json"), None, folder, images)
    path = output or "results.json"
    if os.path.isdir(path):
        raise DenetError(f"--output {path}: detect writes a JSON file; this is a folder")
    stem = path[: -len(".json")] if path.lower().endswith(".json") else path
    images = stem + "_images" if mode.image else None
    if mode.dataset == "mscoco":
        return Outputs(stem + "_detections.json", path, None, images)
    return Outputs(path, None, None, images)


def image_targets(paths, root, folder) -> list[str]:
    """The PNG each image is drawn to: its path relative to ``root``, suffix ``.png``."""
    targets: list[str] = []
    seen: dict[str, str] = {}
    for path in paths:
        rel = os.path.relpath(path, root) if root else os.path.basename(path)
        if rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
            rel = os.path.basename(path)
        target = os.path.join(folder, os.path.splitext(rel)[0] + ".png")
        if target in seen:
            raise DenetError(
                f"{path}: its drawing {target} would overwrite that of {seen[target]}, "
                "an image of the same name"
            )
        seen[target] = path
        targets.append(target)
    return targets


@dataclass
class ImageDetections:
    """One image's detections in the original image's pixels (float64, not rounded), with the
    masks (RLEs of ``mask > 0.5`` at the original size) and keypoints (``[N, K, 3]``: x, y and
    the model's third value) of models that have those heads."""

    image_id: int
    boxes: np.ndarray  # [N, 4] xyxy, continuous 0-based pixels, not clipped
    scores: np.ndarray
    labels: np.ndarray
    size: tuple[int, int] | None  # (H, W) of the original image
    masks: list | None = None  # N RLE dicts, counts as ascii
    keypoints: np.ndarray | None = None  # [N, K, 3]

    def kept(self) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes clipped to the image, keep)``: boxes left without area (or not finite) are
        not kept."""
        boxes = self.boxes.copy()
        if self.size is not None:
            h, w = self.size
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        keep = (
            np.isfinite(boxes).all(1)
            & np.isfinite(self.scores)
            & (boxes[:, 2] > boxes[:, 0])
            & (boxes[:, 3] > boxes[:, 1])
        )
        return boxes[keep], keep

    def clipped(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes clipped to the image; boxes left without area (or not finite) dropped."""
        boxes, keep = self.kept()
        return boxes, self.scores[keep], self.labels[keep]


def image_detections(output: dict, target: dict) -> ImageDetections:
    """The model's output for one image mapped to the original image: boxes and keypoints by
    ``(v - offset) / scale``, masks by :func:`denet.eval.coco.masks_to_rles`."""
    from ..eval.base import finite_geometry
    from ..eval.coco import _unmap_xy, masks_to_rles

    size = None
    if "orig_size" in target:
        h, w = (int(v) for v in np.asarray(target["orig_size"]).reshape(-1)[:2])
        size = (h, w)
    item = ImageDetections(
        int(target["image_id"]),
        to_original(output["boxes"], target).numpy(),
        output["scores"].detach().double().cpu().reshape(-1).numpy(),
        output["labels"].detach().cpu().reshape(-1).numpy().astype(np.int64),
        size,
    )
    n = len(item.labels)
    geom = finite_geometry(target)
    if output.get("masks") is not None:
        if len(output["masks"]) != n:
            raise DenetError(f"the model gave {len(output['masks'])} masks for {n} boxes")
        item.masks = masks_to_rles(output["masks"], geom, size) if n else []
    if output.get("keypoints") is not None:
        kp = output["keypoints"].detach().double().cpu().numpy()
        if kp.ndim != 3 or kp.shape[-1] != 3 or len(kp) != n:
            raise DenetError(
                f"the model gave keypoints of shape {list(kp.shape)}; [N, K, 3] with N = {n} "
                "boxes is expected"
            )
        kp[..., :2] = _unmap_xy(kp[..., :2], geom)
        item.keypoints = kp
    return item


def instance_fields(item: ImageDetections) -> dict:
    """The per-image JSON's ``segmentation`` and ``keypoints`` lists, where the model has them."""
    out = {}
    if item.masks is not None:
        out["segmentation"] = item.masks
    if item.keypoints is not None:
        out["keypoints"] = [
            [[round(float(v), 3) for v in point] for point in points]
            for points in item.keypoints.tolist()
        ]
    return out


# ----------------------------------------------------------------------------- mscoco
def coco_subsets(ds) -> list[tuple[str, str, object, list[int]]]:
    """``(subset, annotation file, COCO, image ids)`` per subset. An image id that two subsets
    share is an error: a results file could not tell the two images apart."""
    ids = [r.image_id for r in ds.records]
    counts = Counter(ids)
    if len(counts) != len(ids):
        twice = next(i for i, n in counts.items() if n > 1)
        where = [s for s, coco in zip(ds.extension.subsets, ds.cocos) if twice in coco.imgs]
        raise DataError(
            f"{ds.root}: image id {twice} is in subsets {' and '.join(where)}; a COCO results "
            "file cannot tell the images apart, predict the subsets one at a time"
        )
    return [
        (subset, ann, coco, [i for i in ids if i in coco.imgs])
        for subset, ann, coco in zip(ds.extension.subsets, ds.ann_files, ds.cocos)
    ]


def coco_results(ds, items: list[ImageDetections]) -> list[dict]:
    """COCO's results format: ``[x, y, w, h]`` in 0-based original pixels, clipped; with the
    model's masks a ``segmentation`` RLE and with its keypoints ``keypoints`` (x, y, value per
    keypoint, flattened) in the original image's pixels."""
    results = []
    for item in items:
        boxes, keep = item.kept()
        index = np.flatnonzero(keep)
        for (x0, y0, x1, y1), k in zip(boxes.tolist(), index.tolist()):
            label = int(item.labels[k])
            if not 0 <= label < len(ds.cat_ids):
                raise DenetError(f"the model gave label {label}; the set has {len(ds.cat_ids)}")
            result = {
                "image_id": item.image_id,
                "category_id": int(ds.cat_ids[label]),
                "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)],
                "score": round(float(item.scores[k]), 6),
            }
            if item.masks is not None:
                result["segmentation"] = item.masks[k]
            if item.keypoints is not None:
                result["keypoints"] = [round(float(v), 3) for v in item.keypoints[k].ravel()]
            results.append(result)
    return results


RESULT_FIELDS = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}


def _gt_lacks(kind: str, coco) -> bool:
    """Whether the annotations cannot score ``kind``: segm needs a segmentation on every
    annotation, keypoints keypoints on every one and some labelled."""
    anns = coco.dataset.get("annotations", [])
    if kind == "segm":
        return not all("segmentation" in a for a in anns)
    if kind == "keypoints":
        return not all("keypoints" in a for a in anns) or not any(
            a.get("num_keypoints", 0) > 0 for a in anns
        )
    return False


def coco_evaluate(subsets, results_path: str) -> list[str]:
    """pycocotools' COCOeval of the results file against each annotated subset, for each
    result type the file holds (``bbox``; ``segm`` with the model's masks, ``keypoints`` with
    its keypoints): a header line and the lines of ``summarize()`` per subset and type, or one
    line saying why not."""
    from pycocotools.cocoeval import COCOeval

    with open(results_path, encoding="utf-8") as fh:
        results = json.load(fh)
    kinds = [k for k, f in RESULT_FIELDS.items() if k == "bbox" or any(f in r for r in results)]
    lines = []
    for subset, ann, coco, img_ids in subsets:
        if not img_ids:
            continue
        if not coco.dataset.get("annotations"):
            lines.append(f"COCO {subset}: {ann} has no annotations, so nothing is evaluated")
            continue
        wanted = set(img_ids)
        for kind in kinds:
            if _gt_lacks(kind, coco):
                what = {"segm": "segmentations", "keypoints": "keypoints"}[kind]
                hint = (
                    " (--extension mscoco,SUBSET,keypoints reads person_keypoints_<split>"
                    "<year>.json)"
                    if kind == "keypoints"
                    else ""
                )
                lines.append(
                    f"COCO {kind}, {subset}: {ann} has no {what}, so the model's {what} are "
                    f"not evaluated{hint}"
                )
                continue
            field_name = RESULT_FIELDS[kind]
            mine = [
                {k: r[k] for k in ("image_id", "category_id", "score", field_name)}
                for r in results
                if r["image_id"] in wanted and field_name in r
            ]
            if not mine:
                lines.append(
                    f"COCO {kind}, {subset}: no detections in {len(img_ids)} image(s), so "
                    "pycocotools has nothing to evaluate (AP 0)"
                )
                continue
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                ev = COCOeval(coco, coco.loadRes(mine), kind)
                ev.params.imgIds = sorted(img_ids)
                ev.evaluate()
                ev.accumulate()
            table = io.StringIO()
            with contextlib.redirect_stdout(table):
                ev.summarize()
            lines.append(
                f"COCO {kind}, {subset} ({len(img_ids)} images, {len(mine)} detections, "
                f"pycocotools COCOeval of {results_path} against {ann}):"
            )
            lines.append(table.getvalue().rstrip("\n"))
    return lines


# ----------------------------------------------------------------------------- voc
def voc_file_ids(ds) -> list[str]:
    """The devkit image id (the file id, ``000001``) of every item; one id twice is an error."""
    ids: list[str] = []
    seen: dict[str, str] = {}
    for name in ds.names:
        file_id = name.split("/", 1)[-1]
        if file_id in seen:
            raise DataError(
                f"{ds.root}: image id {file_id} is in VOC{seen[file_id]} and "
                f"VOC{name.split('/')[0]}; VOC devkit files cannot tell them apart, predict "
                "the years one at a time"
            )
        seen[file_id] = name.split("/")[0]
        ids.append(file_id)
    return ids


def voc_lines(ds, items: list[ImageDetections], file_ids) -> dict[str, list[str]]:
    """Per class, devkit lines ``<id> <score> <x1> <y1> <x2> <y2>``: 1-based pixel corners, as
    the devkit reads its own annotations (the continuous box ``(x1, y1, x2, y2)`` covers the
    1-based pixels ``x1 + 1 .. x2``)."""
    lines: dict[str, list[str]] = {str(c): [] for c in ds.classes}
    names = [str(c) for c in ds.classes]
    for item in items:
        boxes, scores, labels = item.clipped()
        for (x0, y0, x1, y1), score, label in zip(boxes.tolist(), scores.tolist(), labels):
            lines[names[label]].append(
                f"{file_ids[item.image_id]} {score:.6f} {x0 + 1:.3f} {y0 + 1:.3f} {x1:.3f} {y1:.3f}"
            )
    return lines


def voc_evaluate(ds, items: list[ImageDetections], match_iou: float) -> list[str]:
    """VOC07 11-point AP per class and their mean, difficult objects ignored, against the
    dataset's annotations in original pixels."""
    from ..eval import make_evaluator

    ev = make_evaluator(
        "detection", metric="voc07", classes=[str(c) for c in ds.classes], iou_threshold=match_iou
    )
    for item in items:
        boxes, scores, labels = item.clipped()
        rec = ds.records[item.image_id]
        difficult = rec.flags.get("difficult", np.zeros(len(rec.labels), bool))
        ev.update(
            [{"boxes": boxes, "scores": scores, "labels": labels}],
            [
                {
                    "image_id": item.image_id,
                    "boxes": rec.boxes,
                    "labels": rec.labels,
                    "difficult": difficult,
                }
            ],
        )
    m = ev.compute()
    width = max(len(str(c)) for c in ds.classes)
    lines = [
        f"VOC07 11-point AP per class (IoU > {match_iou:g}, difficult objects ignored, "
        f"{len(items)} images):"
    ]
    for c in ds.classes:
        ap = m[f"AP_{c}"]
        lines.append(
            f"  {str(c):<{width}}  " + ("n/a (no objects)" if math.isnan(ap) else f"{ap:.4f}")
        )
    lines.append(f"mAP {m['mAP']:.4f} (VOC07 11-point)")
    return lines


# ----------------------------------------------------------------------------- images
def draw_detections(entries, targets, skeletons=None) -> None:
    """Each image of the per-image entries with its boxes (best drawn last, on top) and
    ``<class> <score>`` captions, as PNG at ``targets``; small images are enlarged. Entries
    with ``segmentation`` get their masks filled in first, entries with ``keypoints`` their
    keypoints (and ``skeletons[label]``'s lines) drawn over the boxes."""
    from pycocotools import mask as mask_util

    from ..data.image import load_image
    from .drawing import default_zoom, draw_boxes, draw_keypoints, enlarge, fill_masks

    for entry, target in zip(entries, targets):
        rgb = np.asarray(load_image(entry["path"], 3))
        zoom = default_zoom(rgb.shape[0], rgb.shape[1])
        img = enlarge(rgb, zoom)
        order = sorted(range(len(entry["scores"])), key=lambda k: entry["scores"][k])
        labels = [entry["labels"][k] for k in order]
        if entry.get("segmentation") is not None:
            masks = [mask_util.decode(dict(entry["segmentation"][k])) for k in order]
            fill_masks(img, masks, labels, zoom)
        draw_boxes(
            img,
            [entry["boxes"][k] for k in order],
            labels,
            [f"{entry['classes'][k]} {entry['scores'][k]:.2f}" for k in order],
            zoom,
        )
        if entry.get("keypoints") is not None:
            draw_keypoints(
                img, [entry["keypoints"][k] for k in order], labels, skeletons or {}, zoom
            )
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
        write_atomic(target, buffer.getvalue())


def keypoint_skeletons(ds, names, entries) -> dict:
    """label -> skeleton (1-based pairs): a COCO set's category ``skeleton``; else COCO
    person's for a class named ``person`` whose detections have 17 keypoints."""
    from .drawing import COCO_PERSON_SKELETON

    out = {}
    for coco in getattr(ds, "cocos", ()):
        for label, cat_id in enumerate(ds.cat_ids):
            skeleton = coco.cats.get(cat_id, {}).get("skeleton")
            if skeleton and label not in out:
                out[label] = [[int(a), int(b)] for a, b in skeleton]
    counts = {len(p) for e in entries for p in e.get("keypoints") or ()}
    for label, name in enumerate(names):
        if label not in out and str(name) == "person" and counts == {17}:
            out[label] = COCO_PERSON_SKELETON
    return out


# ----------------------------------------------------------------------------- run
def detection_evaluator(ds):
    """The evaluator of an annotated mscoco/voc set (COCO's own annotations for one mscoco
    subset), or None for a set without boxes; plain ``detect`` prints its summary."""
    from ..eval import make_evaluator
    from ..train.trainer import detection_metric

    if not any(len(r.boxes) for r in ds.records):
        return None
    metric = detection_metric(ds)
    kwargs = {"classes": [str(c) for c in ds.classes]}
    if metric == "coco" and len(getattr(ds, "cocos", ())) == 1:
        kwargs.update(coco_gt=ds.cocos[0], category_ids=ds.cat_ids)
    return make_evaluator("detection", metric=metric, **kwargs)


def run_detect(ns, model, names, device) -> None:
    mode = parse_detect_mode(ns.predict_mode or "detect")
    params = parse_params(ns.params)
    if params.match_iou is not None and mode.dataset != "voc":
        raise DenetError(
            f"--params matchIOU={params.given['matchIOU']}: the VOC matching IoU is used only "
            "by --predict-mode detect,voc"
        )
    check_format(mode, ns.predict_mode or "detect", ns.extension)
    out = output_paths(mode, ns.output)
    heads = apply_test_params(model, params, ns.model)
    ds, paths, root, is_dataset = open_inputs(ns, model, "detection")
    subsets = coco_subsets(ds) if mode.dataset == "mscoco" else None
    file_ids = voc_file_ids(ds) if mode.dataset == "voc" else None
    drawings = image_targets(paths, root, out.images) if out.images else None
    written = [p for p in (out.detections, out.results) if p] + (drawings or [])
    if out.voc_dir is not None:
        written += [os.path.join(out.voc_dir, VOC_FILE.format(c)) for c in ds.classes]
    check_not_inputs(written, [ns.model, *paths])
    evaluator = detection_evaluator(ds) if is_dataset and mode.dataset is None else None
    report_params(params, heads)

    entries: list[dict] = []
    items: list[ImageDetections] = []
    for outputs, targets in predict_batches(model, ds, ns.batch_size, ns.thread_num, device):
        for output, target in zip(outputs, targets):
            item = image_detections(output, target)
            entry = detection_entry(paths[len(entries)], output, target, names)
            entry.update(instance_fields(item))
            entries.append(entry)
            items.append(item)
        if evaluator is not None:
            evaluator.update(outputs, targets)

    write_json(entries, out.detections)
    n = sum(len(e["boxes"]) for e in entries)
    print(
        f"detected {n} object(s) in {len(entries)} image(s) with {ns.model}: wrote {out.detections}"
    )
    if evaluator is not None:
        print(evaluator.summary())
    if out.results is not None:
        results = coco_results(ds, items)
        write_json(results, out.results)
        extra = [
            what
            for what, present in (
                ("segmentation RLEs", any(i.masks is not None for i in items)),
                ("keypoints", any(i.keypoints is not None for i in items)),
            )
            if present
        ]
        print(
            f"wrote {len(results)} COCO result(s) to {out.results} (boxes [x, y, w, h] in the "
            "original images' 0-based pixels, clipped to the image"
            + "".join(f"; {what}" for what in extra)
            + ")"
        )
        for line in coco_evaluate(subsets, out.results):
            print(line)
    if out.voc_dir is not None:
        lines = voc_lines(ds, items, file_ids)
        for cls, rows in lines.items():
            text = "".join(row + "\n" for row in rows)
            write_atomic(os.path.join(out.voc_dir, VOC_FILE.format(cls)), text.encode())
        print(
            f"wrote {len(lines)} VOC devkit file(s) "
            f"{os.path.join(out.voc_dir, VOC_FILE.format('<class>'))} "
            f"({sum(map(len, lines.values()))} detections, 1-based pixel corners)"
        )
        if any(len(r.boxes) for r in ds.records):
            match = 0.5 if params.match_iou is None else params.match_iou
            for line in voc_evaluate(ds, items, match):
                print(line)
        else:
            print(f"VOC: {ds.root} annotates no objects in these images, so nothing is evaluated")
    if drawings is not None:
        draw_detections(entries, drawings, keypoint_skeletons(ds, names, entries))
        print(f"drew {len(drawings)} image(s) with their boxes under {out.images}")
