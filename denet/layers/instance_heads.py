"""``MASK`` and ``KP``: the instance heads of Mask R-CNN and Keypoint R-CNN (torchvision's
``RoIHeads`` mask and keypoint branches), after a box head ``DET`` tapped ``@dets``.

Both read the features the string pools at the box head's output (``MRA[14,rois=dets](...)``
and the head's convolutions), and the detections themselves by ``dets=``:

* In training the box head's output is its foreground RoIs (with their matched ground-truth
  box); ``MASK`` adds ``loss_mask`` (binary cross-entropy of the logits of the matched class
  against the ground-truth mask cropped and resized to the RoI, torchvision's
  ``maskrcnn_loss``), ``KP`` adds ``loss_keypoint`` (cross-entropy of each keypoint's heat map
  against its ground-truth cell, ``keypointrcnn_loss``). Targets need ``masks`` ([G, H, W]) and
  ``keypoints`` ([G, K, 3]), see docs/datasets.md.
* In evaluation each adds to the detections: ``masks`` [N, 1, H, W], the sigmoid of the
  detected class's logits pasted into the input image; ``keypoints`` [N, K, 3] (x, y, 1) and
  ``keypoints_scores`` [N, K] decoded from the heat maps.

``MASK`` owns the last 1x1 convolution to ``classes + 1`` mask logits (torchvision's
``mask_fcn_logits``); ``KP`` has no weights (its heat maps come from the string, e.g.
``DC[17,4,2,pad=1] UP[2]``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError
from .instance_ops import heatmaps_to_keypoints, keypoint_loss, mask_loss, paste_masks
from .rcnn_transform import FRAME, boxes_to_frame, frame_sizes
from .registry import Arg, Call, LayerDef
from .shape import ShapeSpec


def _target(t: dict, key: str, head: str, what: str) -> torch.Tensor:
    if key not in t:
        raise DataError(
            f"{head} needs {what} in the targets, and this data set gives none "
            f"(docs/datasets.md: mscoco with the '{key}' flag)"
        )
    return torch.as_tensor(t[key])


def _in_frame(dets, sizes) -> list[torch.Tensor]:
    return [boxes_to_frame(d["boxes"], sizes) for d in dets]


class MaskHead(nn.Module):
    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.mask_fcn_logits = nn.Conv2d(channels, classes + 1, 1)
        nn.init.kaiming_normal_(self.mask_fcn_logits.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.mask_fcn_logits.bias)  # type: ignore[arg-type]

    def forward(self, x, dets, images, frame=None, targets=None):
        logits = self.mask_fcn_logits(x)
        sizes = frame_sizes(images, frame)
        if targets is None:
            return self.paste(logits, dets, sizes)
        rh, rw = int(sizes[0]), int(sizes[1])
        gt_masks, gt_labels = [], []
        for t in targets:
            m = _target(t, "masks", "MASK", "instance masks").to(x.device)
            if m.shape[-2:] != (rh, rw) and m.numel():  # RT resized the images: nearest
                m = F.interpolate(m[:, None].float(), size=(rh, rw))[:, 0].byte()
            gt_masks.append(m)
            gt_labels.append(torch.as_tensor(t["labels"], device=x.device).long() + 1)
        loss = mask_loss(
            logits,
            _in_frame(dets, sizes),
            gt_masks,
            gt_labels,
            [d["matched"] for d in dets],
        )
        return dets, {"loss_mask": loss}

    @torch.no_grad()
    def paste(self, logits, dets, sizes):
        labels = torch.cat([d["labels"] for d in dets]) + 1
        probs = logits.sigmoid()[torch.arange(len(labels), device=labels.device), labels]
        height, width = int(sizes[2]), int(sizes[3])
        out, start = [], 0
        for d in dets:
            n = len(d["boxes"])
            masks = paste_masks(probs[start : start + n, None], d["boxes"], height, width)
            out.append({**d, "masks": masks})
            start += n
        return out


class KeypointHead(nn.Module):
    def forward(self, x, dets, images, frame=None, targets=None):
        sizes = frame_sizes(images, frame)
        rh, rw, h, w = sizes
        if targets is None:
            return self.decode(x, dets, sizes)
        scale = torch.tensor([rw / w, rh / h, 1.0], dtype=torch.float32, device=x.device)
        gt = [
            _target(t, "keypoints", "KP", "keypoints").to(x.device, torch.float32) * scale
            for t in targets
        ]
        loss = keypoint_loss(x, _in_frame(dets, sizes), gt, [d["matched"] for d in dets])
        return dets, {"loss_keypoint": loss}

    @torch.no_grad()
    def decode(self, x, dets, sizes):
        rh, rw, h, w = sizes
        boxes = _in_frame(dets, sizes)
        out, start = [], 0
        for d, bx in zip(dets, boxes):
            n = len(bx)
            kps, scores = heatmaps_to_keypoints(x[start : start + n], bx)
            if (rh, rw) != (h, w):  # torchvision's resize_keypoints
                kps = kps.clone()
                kps[..., 0] *= torch.tensor(w, dtype=torch.float32) / torch.tensor(rw)
                kps[..., 1] *= torch.tensor(h, dtype=torch.float32) / torch.tensor(rh)
            out.append({**d, "keypoints": kps, "keypoints_scores": scores})
            start += n
        return out


class _InstanceHead(LayerDef):
    keywords = (Arg("dets", "tap", doc="tap holding the box head's output (DET ... @dets)"),)
    task = "detection"

    def reads_images(self, call: Call) -> bool:
        return True

    def optional_uses(self, call: Call) -> dict[str, str]:
        return {"frame": FRAME}

    def check(self, call: Call) -> None:
        dets = call.taps["dets"]
        if dets.kind != "detections":
            call.fail(f"dets= must name a box head's detections, not {dets.describe()}", "dets")
        if call.input.height is None:
            call.fail(f"{call.type} needs per-RoI maps [R, C, h, w], not {call.input.describe()}")


class MaskHeadDef(_InstanceHead):
    type = "MASK"
    doc = (
        "Mask R-CNN's mask predictor over per-detection maps: a 1x1 conv to classes+1 mask "
        "logits; training adds loss_mask, evaluation adds `masks` [N,1,H,W] (pasted "
        "probabilities) to the detections tapped by `dets=`."
    )
    has_params = True

    def losses(self, call: Call):
        return ("loss_mask",)

    def shape(self, call: Call) -> ShapeSpec:
        self.check(call)
        if call.classes is None:
            call.fail("MASK needs the number of classes: compile with classes=N")
        return ShapeSpec(call.classes, form="detections")

    def build(self, call: Call):
        assert call.classes is not None  # shape() refused a missing class count
        return MaskHead(call.input.channels, call.classes)


class KeypointHeadDef(_InstanceHead):
    type = "KP"
    doc = (
        "Keypoint R-CNN's decoding of per-detection heat maps (one channel per keypoint): "
        "training adds loss_keypoint, evaluation adds `keypoints` [N,K,3] and "
        "`keypoints_scores` to the detections tapped by `dets=`."
    )

    def losses(self, call: Call):
        return ("loss_keypoint",)

    def shape(self, call: Call) -> ShapeSpec:
        self.check(call)
        if call.input.h != call.input.w:
            call.fail(f"KP needs square heat maps, not {call.input.h}x{call.input.w}")
        return ShapeSpec(call.input.channels, form="detections")

    def build(self, call: Call):
        return KeypointHead()
