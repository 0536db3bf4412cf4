"""Detection: the COCO metrics, computed by pycocotools' ``COCOeval``.

Metrics (for ``bbox``; the same twelve with a ``segm_`` prefix when masks are evaluated):
``AP`` (mean AP over IoU 0.50:0.05:0.95, all areas, 100 detections per image), ``AP50``,
``AP75``, ``APs``/``APm``/``APl`` (small < 32^2 <= medium < 96^2 <= large, by ground-truth area
in original pixels), ``AR1``, ``AR10``, ``AR100`` (mean recall with at most 1/10/100 detections
per image), ``ARs``/``ARm``/``ARl``. Keypoints (``kp_`` prefix) are COCOeval's ten:
``kp_AP``, ``kp_AP50``, ``kp_AP75``, ``kp_APm``, ``kp_APl``, ``kp_AR``, ``kp_AR50``,
``kp_AR75``, ``kp_ARm``, ``kp_ARl`` (20 detections per image). pycocotools writes -1 where an
average is undefined (no ground truth in that area range); here that is nan.

Outputs: one dict per image with ``boxes`` (float ``[N,4]`` xyxy in the pixels of the image the
model saw), ``scores`` ``[N]``, ``labels`` (int ``[N]``, 0-based index into the classes) and
optionally ``masks`` (``[N,1,H,W]`` or ``[N,H,W]`` probabilities in the model's pixels;
``> 0.5`` is the object, as torchvision's reference) and ``keypoints`` (``[N,K,3]``: x, y,
score). Targets: ``image_id``, ``boxes``, ``labels``, optionally ``iscrowd`` and the geometry
keys ``scale``, ``offset`` (x, y; ``returned = original * scale + offset``) and ``orig_size``
(H, W). Boxes, keypoints and masks are mapped back to original pixels with
``(v - offset) / scale`` when scale and offset are present and finite (a rotated image has NaN
there and is evaluated unmapped). Boxes are not clipped to the image.

Ground truth: with ``coco_gt`` (a pycocotools ``COCO`` or an annotation-file path) the real
annotations are used, restricted to the images seen; ``segm``/``keypoints`` are evaluated only
when the outputs have masks/keypoints and the file has segmentations/keypoints. Without it a
ground truth is built from the targets (mapped back to original pixels): area = box area,
``iscrowd`` from the targets; then only ``bbox`` is evaluated. Its numbers can differ from the
official ones (COCO's area is the mask area, crowd regions are polygons) - pass ``coco_gt`` for
those. Category ids are ``category_ids[label]`` when given, else the ground-truth file's
``getCatIds()`` order (as ``denet.data.coco`` numbers labels), else ``label + 1``.

An image seen more than once (repeats that pad a distributed test set) counts once: the first
occurrence is kept. A ``COCO`` object passed as ``coco_gt`` is not pickled (it can be large):
gather evaluators and merge them into the rank's own evaluator, which still holds it
(``merge_across_ranks``); an annotation path is pickled and reloaded.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from .base import Evaluator, finite_geometry, nan_if_negative, per_image

BOX_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
KP_KEYS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
PREFIX = {"bbox": "", "segm": "segm_", "keypoints": "kp_"}


def _np(x, dtype):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _unmap_xy(xy: np.ndarray, geom) -> np.ndarray:
    """``[..., 2k]`` interleaved x, y in returned pixels -> original pixels."""
    if geom is None:
        return xy
    (sx, sy), (ox, oy) = geom[0].tolist(), geom[1].tolist()
    out = xy.astype(np.float64, copy=True)
    out[..., 0::2] = (out[..., 0::2] - ox) / sx
    out[..., 1::2] = (out[..., 1::2] - oy) / sy
    return out


def _xywh(xyxy: np.ndarray) -> np.ndarray:
    out = xyxy.copy()
    out[:, 2:] -= out[:, :2]
    return out


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def masks_to_rles(masks, geom, size):
    """Probability masks ``[N,1,h,w]`` in the model's pixels -> RLEs of ``mask > 0.5`` in the
    original image ``size`` (H, W): each original pixel centre is sampled (bilinearly) at its
    position in the model's image, ``x * scale + offset``; without geometry the masks are
    resized to ``size``."""
    from pycocotools import mask as mask_util

    m = masks.detach()
    n, h, w = m.shape[0], m.shape[-2], m.shape[-1]
    m = m.reshape(n, 1, h, w).float()
    H, W = size if size is not None else (h, w)
    rles = []
    for start in range(0, n, 16):  # bounded memory for many large masks
        chunk = m[start : start + 16]
        if geom is not None:
            (sx, sy), (ox, oy) = geom[0].tolist(), geom[1].tolist()
            xs = ((torch.arange(W, dtype=torch.float64) + 0.5) * sx + ox) * (2.0 / w) - 1
            ys = ((torch.arange(H, dtype=torch.float64) + 0.5) * sy + oy) * (2.0 / h) - 1
            grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [H, W, 2]
            grid = grid.to(chunk.device, torch.float32).expand(len(chunk), H, W, 2)
            chunk = F.grid_sample(
                chunk, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        elif (h, w) != (H, W):
            chunk = F.interpolate(chunk, size=(H, W), mode="bilinear", align_corners=False)
        binary = (chunk[:, 0] > 0.5).cpu().numpy().astype(np.uint8)
        for b in binary:
            rle = mask_util.encode(np.asfortranarray(b[:, :, None]))[0]
            rle["counts"] = rle["counts"].decode("ascii")
            rles.append(rle)
    return rles


class CocoEvaluator(Evaluator):
    primary = "AP"

    def __init__(self, classes=None, num_classes=None, coco_gt=None, category_ids=None):
        self._gt_obj = None
        self._gt_path = None
        if isinstance(coco_gt, (str, os.PathLike)):
            self._gt_path = os.fspath(coco_gt)
        elif coco_gt is not None:
            self._gt_obj = coco_gt
        self._external_gt = coco_gt is not None
        if classes is None and num_classes is None and not self._external_gt:
            raise ValueError("CocoEvaluator needs classes, num_classes or coco_gt")
        if classes is None and num_classes is not None:
            classes = [str(i) for i in range(int(num_classes))]
        if classes is not None and num_classes is not None and len(classes) != int(num_classes):
            raise ValueError(f"{len(classes)} classes but num_classes={num_classes}")
        self.classes = None if classes is None else [str(c) for c in classes]
        self.category_ids = None if category_ids is None else [int(c) for c in category_ids]
        if (
            self.classes is not None
            and self.category_ids is not None
            and len(self.category_ids) != len(self.classes)
        ):
            raise ValueError(
                f"{len(self.category_ids)} category_ids for {len(self.classes)} classes"
            )
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        self.records: list[dict] = []
        self._cache = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_gt_obj"] = None  # see the module docstring
        state["_cache"] = None
        return state

    def update(self, outputs, targets) -> None:
        for out, tgt in per_image(outputs, targets):
            self.records.append(self._record(out, tgt))
        self._cache = None

    def _record(self, out, tgt) -> dict:
        if "image_id" not in tgt:
            raise ValueError("COCO evaluation needs targets[i]['image_id']")
        geom = finite_geometry(tgt)
        size = None
        if "orig_size" in tgt:
            size = tuple(int(v) for v in _np(tgt["orig_size"], np.int64).reshape(-1)[:2])
        boxes = _unmap_xy(_np(out["boxes"], np.float64).reshape(-1, 4), geom)
        gt_boxes = _unmap_xy(_np(tgt["boxes"], np.float64).reshape(-1, 4), geom)
        gt_labels = _np(tgt["labels"], np.int64).reshape(-1)
        crowd = (
            _np(tgt["iscrowd"], bool).reshape(-1)
            if "iscrowd" in tgt
            else np.zeros(len(gt_labels), bool)
        )
        rec = {
            "image_id": int(tgt["image_id"]),
            "size": size,
            "boxes": _xywh(boxes),
            "scores": _np(out["scores"], np.float64).reshape(-1),
            "labels": _np(out["labels"], np.int64).reshape(-1),
            "gt_boxes": _xywh(gt_boxes),
            "gt_labels": gt_labels,
            "gt_crowd": crowd,
            "masks": None,
            "keypoints": None,
        }
        if not len(rec["boxes"]) == len(rec["scores"]) == len(rec["labels"]):
            raise ValueError("outputs' boxes, scores and labels differ in length")
        if out.get("masks") is not None:
            rec["masks"] = masks_to_rles(out["masks"], geom, size)
            if len(rec["masks"]) != len(rec["labels"]):
                raise ValueError(f"{len(rec['masks'])} masks for {len(rec['labels'])} boxes")
        if out.get("keypoints") is not None:
            kp = _np(out["keypoints"], np.float64)
            if kp.ndim != 3 or kp.shape[-1] != 3:
                raise ValueError(f"keypoints must be [N, K, 3], got shape {kp.shape}")
            if len(kp) != len(rec["labels"]):
                raise ValueError(f"{len(kp)} keypoint sets for {len(rec['labels'])} boxes")
            kp[..., :2] = _unmap_xy(kp[..., :2], geom)
            rec["keypoints"] = kp
        return rec

    def merge(self, other: Evaluator) -> None:
        self._check_mergeable(other, "classes", "category_ids", "_external_gt", "_gt_path")
        assert isinstance(other, CocoEvaluator)
        self.records.extend(other.records)
        self._cache = None

    # ------------------------------------------------------------------ ground truth
    def _external(self):
        if self._gt_obj is None and self._gt_path is not None:
            from ..data.coco import load_coco

            self._gt_obj = load_coco(self._gt_path)
        if self._gt_obj is None:
            raise RuntimeError(
                "this CocoEvaluator was unpickled without its coco_gt object; "
                "merge it into the evaluator that holds the ground truth"
            )
        return self._gt_obj

    def _cat_ids(self, gt=None) -> list[int]:
        if self.category_ids is not None:
            return self.category_ids
        if gt is not None:
            return list(gt.getCatIds())
        return [i + 1 for i in range(len(self.classes))]

    def _built_gt(self, records):
        from pycocotools.coco import COCO

        cat_ids = self._cat_ids()
        images, anns = [], []
        for r in records:
            h, w = r["size"] if r["size"] is not None else (0, 0)
            images.append({"id": r["image_id"], "height": h, "width": w})
            for box, label, crowd in zip(r["gt_boxes"], r["gt_labels"], r["gt_crowd"]):
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": r["image_id"],
                        "category_id": self._category(cat_ids, label),
                        "bbox": [float(v) for v in box],
                        "area": float(box[2] * box[3]),
                        "iscrowd": int(crowd),
                    }
                )
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": c, "name": n} for c, n in zip(cat_ids, self.classes)],
        }
        with _quiet():
            gt.createIndex()
        return gt

    @staticmethod
    def _category(cat_ids, label) -> int:
        if not 0 <= label < len(cat_ids):
            raise ValueError(f"label {int(label)} outside the {len(cat_ids)} classes")
        return int(cat_ids[label])

    # ------------------------------------------------------------------ evaluation
    def _unique(self) -> list[dict]:
        seen, out = set(), []
        for r in self.records:
            if r["image_id"] not in seen:
                seen.add(r["image_id"])
                out.append(r)
        return out

    def _results(self, records, cat_ids, kind) -> list[dict]:
        res = []
        for r in records:
            cats = [self._category(cat_ids, label) for label in r["labels"].tolist()]
            if kind == "bbox":
                values = r["boxes"].tolist()
            elif kind == "segm":
                values = [dict(rle) for rle in r["masks"]]
            else:
                kp = r["keypoints"]
                values = kp.reshape(len(kp), -1).tolist() if len(kp) else []
            field = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}[kind]
            res += [
                {"image_id": r["image_id"], "category_id": c, "score": s, field: v}
                for c, s, v in zip(cats, r["scores"].tolist(), values)
            ]
        return res

    @staticmethod
    def _evaluate(gt, results, kind, img_ids):
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        if results:
            with _quiet():
                dt = gt.loadRes(results)
        else:  # loadRes indexes results[0]: build an empty result set instead
            dt = COCO()
            dt.dataset = {
                "images": list(gt.dataset["images"]),
                "annotations": [],
                "categories": copy.deepcopy(gt.dataset.get("categories", [])),
            }
            with _quiet():
                dt.createIndex()
        ev = COCOeval(gt, dt, kind)
        ev.params.imgIds = sorted(img_ids)
        with _quiet():
            ev.evaluate()
            ev.accumulate()
        table = io.StringIO()
        with contextlib.redirect_stdout(table):
            ev.summarize()
        return ev.stats, table.getvalue().rstrip("\n")

    def compute(self) -> dict[str, float]:
        if self._cache is None:
            self._cache = self._compute()
        return dict(self._cache[0])

    def _compute(self):
        records = self._unique()
        gt = self._external() if self._external_gt else None
        kinds = ["bbox"]
        if gt is not None:
            anns = gt.dataset.get("annotations", [])
            if any(r["masks"] is not None for r in records) and any(
                "segmentation" in a for a in anns
            ):
                kinds.append("segm")
            if any(r["keypoints"] is not None for r in records) and any(
                a.get("num_keypoints", 0) > 0 for a in anns
            ):
                kinds.append("keypoints")
        metrics, tables = {}, []
        if not records:
            for kind in kinds:
                keys = KP_KEYS if kind == "keypoints" else BOX_KEYS
                metrics.update({PREFIX[kind] + k: math.nan for k in keys})
            return metrics, "COCO: no images evaluated"
        if gt is None:
            gt = self._built_gt(records)
        else:
            missing = {r["image_id"] for r in records} - set(gt.getImgIds())
            if missing:
                raise ValueError(
                    f"image ids {sorted(missing)[:5]} are not in the COCO ground truth"
                )
        cat_ids = self._cat_ids(gt if self._external_gt else None)
        img_ids = [r["image_id"] for r in records]
        for kind in kinds:
            use = (
                records
                if kind == "bbox"
                else [
                    r for r in records if r["masks" if kind == "segm" else "keypoints"] is not None
                ]
            )
            stats, table = self._evaluate(gt, self._results(use, cat_ids, kind), kind, img_ids)
            keys = KP_KEYS if kind == "keypoints" else BOX_KEYS
            metrics.update({PREFIX[kind] + k: nan_if_negative(v) for k, v in zip(keys, stats)})
            tables.append(f"COCO {kind} ({len(records)} images):\n{table}")
        return metrics, "\n".join(tables)

    def summary(self) -> str:
        self.compute()
        return self._cache[1]
