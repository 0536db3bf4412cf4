"""``RPN``: a region proposal network over one or several feature levels (torchvision's
``RegionProposalNetwork`` and ``AnchorGenerator``; Faster R-CNN, FPN).

``RPN[32,64,128,256,512]($p2 | $p3 | $p4 | $p5 | $p6)``: the branches are the feature levels
(usually references to taps). One head, shared by every level (one set of weights): a 3x3 conv
with ReLU (``conv=`` channels, default the input's; Deformable ConvNets' is 512), then 1x1 convs to ``A`` objectness logits and ``4A`` box deltas, ``A`` anchors per
position. The sizes are anchor sides in pixels: one per level (as many sizes as levels), or any
number of them on a single level (R-FCN's 64, 128, 256, 512 on res4); ``ratios=3`` gives the aspect ratios (0.5, 1, 2)
(``ratios=n``: 2^k for n values of k centred on 0; 1: square anchors only). Anchors are
torchvision's: rounded base boxes, shifted to the map's positions at the level's stride, the
padded image size // the map size (torchvision's quirk: 61 for P6 of an 800-pixel image).

Proposals per image: the ``pre_nms`` best anchors of each level (``train_pre_nms`` in training
mode), decoded (weights 1), clipped to the image, boxes smaller than ``min_size`` dropped,
objectness probability below ``score`` dropped, NMS per level at ``nms``
(:func:`denet.kernels.batched_nms`), the ``post_nms`` best kept (``train_post_nms``). The output
is a set of boxes ``[R, 5]`` (batch index, x1, y1, x2, y2) in the frame of an ``RT`` before it.

``plus1=1`` is Detectron's pixel convention: widths ``x2 - x1 + 1`` in the box coder and the IoU,
boxes clipped to ``[0, W - 1]``, its ``generate_anchors`` at each level's nominal stride, and
proposals whose centre leaves the image dropped.

In training (with targets) it adds ``loss_objectness`` (binary cross-entropy) and
``loss_rpn_box_reg`` (smooth L1, beta 1/9, summed over positive anchors, divided by the number
sampled): anchors matched to ground truth at IoU >= ``fg_iou`` (and each ground-truth box's best
anchors), background below ``bg_iou``, ``batch`` sampled per image, half positive.

Tag ``S`` makes it Deformable ConvNets' softmax RPN: the objectness conv makes ``2A`` logits
(the first ``A`` channels background, the next ``A`` foreground, MXNet's reshape ``(0, 2, -1, 0)``),
an anchor's score is the softmax foreground probability and ``loss_objectness`` the 2-class
cross-entropy over the sampled anchors (their mean, MXNet's ``normalization='valid'``).
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import batched_nms
from .box_coding import box_iou, decode, encode
from .matching import BACKGROUND, IGNORED, balanced_sample, match
from .rcnn_transform import FRAME, boxes_to_frame, frame_sizes, padded_size
from .registry import Arg, Call, LayerDef
from .shape import ShapeSpec

CLAMP = math.log(1000.0 / 16)  # largest exp() of a size delta, as torchvision
MAX_SIZES = 8


def aspect_ratios(n: int) -> tuple[float, ...]:
    """``n`` aspect ratios (height / width), powers of two centred on 1: 3 -> (0.5, 1, 2)."""
    return tuple(2.0 ** (k - (n - 1) / 2) for k in range(n))


def base_anchors(sizes, ratios, dtype=torch.float32) -> torch.Tensor:
    """[len(ratios) * len(sizes), 4] anchors centred on 0, ratio-major, rounded (torchvision)."""
    scales = torch.as_tensor(sizes, dtype=dtype)
    r = torch.as_tensor(ratios, dtype=dtype)
    h_ratios = torch.sqrt(r)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def grid_anchors(base: torch.Tensor, height: int, width: int, stride: tuple[int, int]):
    """[H * W * A, 4]: the base anchors at every position, position-major; ``stride`` (y, x)."""
    device = base.device
    xs = torch.arange(0, width, dtype=torch.int32, device=device) * stride[1]
    ys = torch.arange(0, height, dtype=torch.int32, device=device) * stride[0]
    sy, sx = torch.meshgrid(ys, xs, indexing="ij")
    sx, sy = sx.reshape(-1), sy.reshape(-1)
    shifts = torch.stack((sx, sy, sx, sy), dim=1)
    return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)


def detectron_anchors(stride: int, sizes, ratios) -> torch.Tensor:
    """Detectron's ``generate_anchors``: the cell (0, 0, stride - 1, stride - 1) reshaped to each
    ratio (rounded sides, +1 widths), then scaled to each size; ratio-major."""
    s = float(stride)
    cx = cy = 0.5 * (s - 1)
    out = []
    for r in ratios:
        w = round(math.sqrt(s * s / r))
        h = round(w * r)
        for size in sizes:
            ws, hs = w * size / s, h * size / s
            out.append(
                [cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1), cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1)]
            )
    return torch.tensor(out, dtype=torch.float64).float()


def remove_small(
    boxes: torch.Tensor, min_size: float, plus1: bool = False, height=None, width=None
) -> torch.Tensor:
    """Indices of the boxes at least ``min_size`` wide and high; ``plus1``: Detectron's rule
    (+1 widths, and the box's centre inside the ``height`` x ``width`` image)."""
    one = 1.0 if plus1 else 0.0
    ws, hs = boxes[:, 2] - boxes[:, 0] + one, boxes[:, 3] - boxes[:, 1] + one
    keep = (ws >= min_size) & (hs >= min_size)
    if plus1 and height is not None:
        keep &= (boxes[:, 0] + ws / 2 < width) & (boxes[:, 1] + hs / 2 < height)
    return torch.where(keep)[0]


def clip_boxes(boxes: torch.Tensor, height: float, width: float, plus1: bool = False):
    """Boxes clipped to the image: [0, width] (``plus1``: Detectron's [0, width - 1])."""
    one = 1.0 if plus1 else 0.0
    x = boxes[..., 0::2].clamp(min=0, max=width - one)
    y = boxes[..., 1::2].clamp(min=0, max=height - one)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then objectness and box deltas, applied to every level."""

    def __init__(self, channels: int, anchors: int, softmax: bool = False, width: int = 0):
        super().__init__()
        width = width or channels
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.cls_logits = nn.Conv2d(width, 2 * anchors if softmax else anchors, 1)
        self.bbox_pred = nn.Conv2d(width, 4 * anchors, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)  # type: ignore[arg-type]

    def forward(self, x):
        t = F.relu(self.conv(x))
        return self.cls_logits(t), self.bbox_pred(t)


class RegionProposals(nn.Module):
    def __init__(self, channels, sizes, ratios, a: dict, softmax: bool = False, strides=()):
        super().__init__()
        self.a = dict(a)
        width = self.a.pop("conv", 0)
        self.head = RPNHead(channels, len(sizes[0]) * len(ratios), softmax, width)
        self.softmax = softmax
        self.plus1 = bool(self.a.pop("plus1", False))
        self.strides = tuple(strides)
        for k, s in enumerate(sizes):
            if self.plus1:  # Detectron's anchors of the level's nominal stride
                base = detectron_anchors(self.strides[k], s, ratios)
            else:
                base = base_anchors(s, ratios)
            self.register_buffer(f"base{k}", base, persistent=False)

    def anchors(self, levels, padded: tuple[int, int]) -> list[torch.Tensor]:
        """Each level's anchors; its stride is the padded image size // the map size in each
        direction, as torchvision's (61, not 64, for P6 of an 800-pixel image), or with
        ``plus1`` the level's nominal stride, as Detectron's."""
        out = []
        for k, x in enumerate(levels):
            h, w = x.shape[-2:]
            base = getattr(self, f"base{k}").to(x.dtype)
            if self.plus1:
                stride = (self.strides[k], self.strides[k])
            else:
                stride = (padded[0] // h, padded[1] // w)
            out.append(grid_anchors(base, h, w, stride))
        return out

    def forward(self, *levels, images, frame=None, targets=None):
        b = levels[0].shape[0]
        logits, deltas = [], []
        for x in levels:
            o, d = self.head(x)
            n_anchors = d.shape[1] // 4
            if self.softmax:  # [b, 2A, h, w]: A background, then A foreground logits
                o = o.view(b, 2, n_anchors, o.shape[-2], o.shape[-1]).permute(0, 3, 4, 2, 1)
                logits.append(o.reshape(b, -1, 2))
            else:
                logits.append(o.permute(0, 2, 3, 1).reshape(b, -1))
            d = d.view(b, n_anchors, 4, d.shape[-2], d.shape[-1]).permute(0, 3, 4, 1, 2)
            deltas.append(d.reshape(b, -1, 4))
        per_level = [o.shape[1] for o in logits]
        objectness, box_deltas = torch.cat(logits, 1), torch.cat(deltas, 1)
        anchors = torch.cat(self.anchors(levels, padded_size(images, frame)), 0)
        sizes = frame_sizes(images, frame)
        # the softmax's foreground probability is the sigmoid of the logits' difference
        scores = objectness[..., 1] - objectness[..., 0] if self.softmax else objectness
        boxes = self.proposals(scores.detach(), box_deltas.detach(), anchors, per_level, sizes)
        if targets is None:
            return boxes
        return boxes, self.loss(objectness, box_deltas, anchors, targets, sizes)

    @torch.no_grad()
    def proposals(self, objectness, deltas, anchors, per_level, sizes):
        a = self.a
        b = objectness.shape[0]
        decoded = decode(
            deltas.reshape(-1, 4), anchors.repeat(b, 1), clamp=CLAMP, plus1=self.plus1
        ).view(b, -1, 4)
        pre = a["train_pre_nms"] if self.training else a["pre_nms"]
        post = a["train_post_nms"] if self.training else a["post_nms"]
        picks, level_ids, offset = [], [], 0
        for k, n in enumerate(per_level):  # the best of each level
            top = objectness[:, offset : offset + n].topk(min(pre, n), dim=1).indices
            picks.append(top + offset)
            level_ids.append(torch.full((top.shape[1],), k, device=top.device))
            offset += n
        top = torch.cat(picks, 1)
        levels = torch.cat(level_ids)
        rows = torch.arange(b, device=top.device)[:, None]
        scores, decoded = torch.sigmoid(objectness[rows, top]), decoded[rows, top]
        height, width = sizes[0], sizes[1]
        out = []
        for i in range(b):
            bx, sc, lv = clip_boxes(decoded[i], height, width, self.plus1), scores[i], levels
            keep = remove_small(bx, a["min_size"], self.plus1, height, width)
            bx, sc, lv = bx[keep], sc[keep], lv[keep]
            keep = torch.where(sc >= a["score"])[0]
            bx, sc, lv = bx[keep], sc[keep], lv[keep]
            keep = batched_nms(bx, sc, lv, a["nms"])[:post]
            index = torch.full((len(keep), 1), i, dtype=bx.dtype, device=bx.device)
            out.append(torch.cat([index, bx[keep]], 1))
        return torch.cat(out, 0)

    def loss(self, objectness, deltas, anchors, targets, sizes):
        a = self.a
        labels, goals = [], []
        for t in targets:
            gt = torch.as_tensor(t["boxes"], dtype=anchors.dtype, device=anchors.device)
            gt = boxes_to_frame(gt.reshape(-1, 4), sizes)
            if len(gt) == 0:
                labels.append(torch.zeros(len(anchors), device=anchors.device))
                goals.append(torch.zeros_like(anchors))
                continue
            iou = box_iou(gt, anchors, self.plus1)
            matches = match(iou, a["fg_iou"], a["bg_iou"], low_quality=True)
            label = (matches >= 0).to(anchors.dtype)
            label[matches == BACKGROUND] = 0.0
            label[matches == IGNORED] = -1.0
            labels.append(label)
            goals.append(encode(gt[matches.clamp(min=0)], anchors, plus1=self.plus1))
        pos, neg = [], []
        for label in labels:
            p, n = balanced_sample(label, a["batch"], a["positive"])
            pos.append(p)
            neg.append(n)
        pos_idx = torch.where(torch.cat(pos))[0]
        sampled = torch.cat([pos_idx, torch.where(torch.cat(neg))[0]])
        box = F.smooth_l1_loss(
            deltas.reshape(-1, 4)[pos_idx],
            torch.cat(goals)[pos_idx],
            beta=1 / 9,
            reduction="sum",
        ) / max(1, sampled.numel())
        if self.softmax:
            obj = F.cross_entropy(
                objectness.reshape(-1, 2)[sampled], torch.cat(labels)[sampled].long()
            )
        else:
            obj = F.binary_cross_entropy_with_logits(
                objectness.flatten()[sampled], torch.cat(labels)[sampled]
            )
        return {"loss_objectness": obj, "loss_rpn_box_reg": box}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.a.items())


class RegionProposalNetwork(LayerDef):
    type = "RPN"
    doc = (
        "Region proposals over the feature levels given as branches (one shared head): anchors "
        "of the given sizes (one per level, or several on one level) and ratios, decoded, clipped, "
        "per-level top-k and NMS: boxes [R, 5]. Training adds loss_objectness, "
        "loss_rpn_box_reg. See R-CNN in docs/language.md."
    )
    tags = {"S": "softmax objectness: 2A logits, background first (Deformable ConvNets)"}
    is_group = True
    min_branches = 1
    max_branches = MAX_SIZES
    has_params = True
    args = (Arg("size1", "float", min=1.0, doc="anchor side in pixels (first level)"),) + tuple(
        Arg(f"size{k}", "float", None, min=1.0, doc="another anchor side")
        for k in range(2, MAX_SIZES + 1)
    )
    keywords = (
        Arg("ratios", "int", 3, min=1, max=9, doc="aspect ratios: 3 = (0.5, 1, 2)"),
        Arg("conv", "int", 0, min=0, max=65536, doc="channels of the 3x3 conv (0: the input's)"),
        Arg("pre_nms", "int", 1000, min=1, max=1_000_000, doc="best anchors per level (test)"),
        Arg("post_nms", "int", 1000, min=1, max=1_000_000, doc="proposals per image (test)"),
        Arg("train_pre_nms", "int", 2000, min=1, max=1_000_000, doc="pre_nms in training"),
        Arg("train_post_nms", "int", 2000, min=1, max=1_000_000, doc="post_nms in training"),
        Arg("nms", "float", 0.7, min=0.0, max=1.0, doc="IoU threshold of the per-level NMS"),
        Arg("score", "float", 0.0, min=0.0, max=1.0, doc="lowest objectness probability kept"),
        Arg("min_size", "float", 1e-3, min=0.0, doc="smallest proposal side in pixels"),
        Arg("fg_iou", "float", 0.7, min=0.0, max=1.0, doc="IoU that makes an anchor positive"),
        Arg("bg_iou", "float", 0.3, min=0.0, max=1.0, doc="IoU below which it is negative"),
        Arg("batch", "int", 256, min=1, max=1_000_000, doc="anchors sampled per image"),
        Arg("positive", "float", 0.5, min=0.0, max=1.0, doc="positive fraction of the batch"),
        Arg("plus1", "bool", False, doc="1: Detectron's boxes (+1 widths, its anchors, clip W-1)"),
    )

    def sizes(self, call: Call) -> list[tuple[float, ...]]:
        """Anchor sizes per level: one per level, or all of them on a single level."""
        given = [call.args[f"size{k}"] for k in range(1, MAX_SIZES + 1)]
        given = [s for s in given if s is not None]
        if len(given) == len(call.inputs):
            return [(s,) for s in given]
        if len(call.inputs) == 1:
            return [tuple(given)]
        call.fail(
            f"RPN has {len(call.inputs)} levels and {len(given)} anchor sizes: give one size "
            f"per level, or several sizes for one level"
        )

    def losses(self, call: Call):
        return ("loss_objectness", "loss_rpn_box_reg")

    def reads_images(self, call: Call) -> bool:
        return True

    def optional_uses(self, call: Call) -> dict[str, str]:
        return {"frame": FRAME}

    def shape(self, call: Call) -> ShapeSpec:
        first = call.inputs[0]
        for k, s in enumerate(call.inputs, start=1):
            if s.channels != first.channels:
                call.fail(
                    f"RPN's levels must have the same channels: level 1 has {first.channels}, "
                    f"level {k} has {s.channels}"
                )
        self.sizes(call)  # refuses sizes that fit no level
        if call.args["bg_iou"] > call.args["fg_iou"]:
            call.fail("bg_iou must be at most fg_iou", "bg_iou")
        return ShapeSpec(call.args["post_nms"], stride=Fraction(1), form="boxes")

    def build(self, call: Call):
        a: dict = dict(call.args)
        sizes = self.sizes(call)
        ratios = aspect_ratios(a.pop("ratios"))
        for name in [f"size{k}" for k in range(1, MAX_SIZES + 1)] + ["lr", "frozen", "init"]:
            a.pop(name, None)
        strides = [max(1, round(float(s.stride))) for s in call.inputs]
        return RegionProposals(call.inputs[0].channels, sizes, ratios, a, call.has("S"), strides)
