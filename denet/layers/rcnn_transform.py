"""``RT``: the input transform of R-CNN models (torchvision's ``GeneralizedRCNNTransform``).

``RT[min_size=800, max_size=1333, divisible=32]`` normalises the images (ImageNet's mean and
std by default: the models take [0, 1] RGB; ``norm=caffe``: Detectron's 0..255 minus its pixel
means; ``norm=none``), resizes them (bilinear, ``align_corners=False``)
so that the short side is ``min_size`` unless the long side would pass ``max_size``, with
torchvision's ``recompute_scale_factor=True`` sizes, and pads them with zeros on the bottom and
right to a multiple of ``divisible``. In training mode the short side is drawn from
``train_min, train_min + train_step, ..., min_size`` (Keypoint R-CNN's 640 ... 800), once per
batch (torchvision draws per image; denet's batches share one size, the first image's draw).

The heads after it (``RPN``, ``SAMPLE``, ``DET``, ``MASK``, ``KP``) work in the resized frame, as
torchvision's do: its side output ``RT.frame`` (resized height and width, input height and width, padded height and
width)
lets them scale the targets in and the detections back out to the input's pixels, and the
padded size gives the RPN torchvision's anchor strides (padded size // map size). Its output
map has stride 1 in that frame. In training mode it draws one number per image from torch's
global generator as torchvision's ``torch_choice`` does, so that a seeded denet model and a
seeded torchvision model sample the same RoIs.
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Arg, Call, LayerDef
from .shape import ShapeSpec

FRAME = "RT.frame"
# (mean, std) of each normalisation, for [0, 1] RGB inputs
NORMS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision
    # Detectron / MSRA Caffe: pixel values 0..255 minus the BGR means 102.98, 115.95, 122.77
    # (here in RGB order; a converted checkpoint's first conv takes RGB), no std
    "caffe": ((122.77 / 255, 115.95 / 255, 102.98 / 255), (1 / 255,) * 3),
    "none": ((0.0,) * 3, (1.0,) * 3),
}


def resized_size(height: int, width: int, min_size: float, max_size: float) -> tuple[int, int]:
    """The size torchvision's transform resizes an image to (floor of size x scale, as
    ``F.interpolate(recompute_scale_factor=True)``)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(height * scale), int(width * scale)


def frame_sizes(images: torch.Tensor, frame: torch.Tensor | None):
    """``(resized_h, resized_w, input_h, input_w)`` as Python floats: the frame a head works in
    and the input's size. Without an ``RT`` the two are the images' size."""
    if frame is None:
        h, w = images.shape[-2:]
        return float(h), float(w), float(h), float(w)
    rh, rw, h, w = frame.tolist()[:4]
    return rh, rw, h, w


def padded_size(images: torch.Tensor, frame: torch.Tensor | None) -> tuple[int, int]:
    """The size of the batch the backbone ran on (after ``RT``'s padding)."""
    if frame is None:
        return images.shape[-2], images.shape[-1]
    ph, pw = frame.tolist()[4:]
    return int(ph), int(pw)


def boxes_to_frame(boxes: torch.Tensor, sizes) -> torch.Tensor:
    """Input-pixel xyxy boxes in the resized frame (torchvision's ``resize_boxes``)."""
    rh, rw, h, w = sizes
    if (rh, rw) == (h, w):
        return boxes
    ratio = boxes.new_tensor([rw / w, rh / h, rw / w, rh / h])
    return boxes * ratio


def boxes_from_frame(boxes: torch.Tensor, sizes) -> torch.Tensor:
    """Resized-frame xyxy boxes in the input's pixels (torchvision's ``postprocess``)."""
    rh, rw, h, w = sizes
    if (rh, rw) == (h, w):
        return boxes
    ratio = boxes.new_tensor([w / rw, h / rh, w / rw, h / rh])
    return boxes * ratio


class RcnnTransform(nn.Module):
    def __init__(self, min_size: int, max_size: int, divisible: int, mean, std, train_sizes=()):
        super().__init__()
        self.min_size, self.max_size, self.divisible = min_size, max_size, divisible
        self.train_sizes = tuple(train_sizes) or (min_size,)
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1), persistent=False)

    def forward(self, x):
        size = self.min_size
        if self.training:  # torchvision's torch_choice of a training size, drawn per image
            n = len(self.train_sizes)
            picks = [int(torch.empty(1).uniform_(0.0, float(n)).item()) for _ in range(len(x))]
            size = self.train_sizes[picks[0]]  # one batch, one size: the first image's
        h, w = x.shape[-2:]
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        scale = min(size / min(h, w), self.max_size / max(h, w))
        if scale != 1.0:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", recompute_scale_factor=True)
        rh, rw = x.shape[-2:]
        d = self.divisible
        ph, pw = -(-rh // d) * d - rh, -(-rw // d) * d - rw
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        frame = torch.tensor([rh, rw, h, w, rh + ph, rw + pw], dtype=torch.float64)
        return x, {FRAME: frame}

    def extra_repr(self) -> str:
        return f"min_size={self.min_size}, max_size={self.max_size}, divisible={self.divisible}"


class RcnnTransformDef(LayerDef):
    type = "RT"
    doc = (
        "R-CNN input transform (torchvision's): normalise (ImageNet mean/std), resize so the "
        "short side is min_size (long side at most max_size), pad to a multiple of divisible; "
        "side output `RT.frame` for the detection heads after it."
    )
    keywords = (
        Arg("min_size", "int", 800, min=1, max=16384, doc="short side after resizing"),
        Arg("max_size", "int", 1333, min=1, max=16384, doc="long side at most"),
        Arg("divisible", "int", 32, min=1, max=1024, doc="padded size is a multiple of this"),
        Arg("norm", "str", "imagenet", choices=tuple(NORMS), doc="normalisation of [0,1] RGB"),
        Arg("train_min", "int", None, min=1, max=16384, doc="smallest training min_size"),
        Arg("train_step", "int", 32, min=1, max=16384, doc="step of the training sizes"),
    )

    def shape(self, call: Call) -> ShapeSpec:
        i, a = call.input, call.args
        if a["train_min"] is not None and a["train_min"] > a["min_size"]:
            call.fail("train_min must be at most min_size", "train_min")
        if i.channels != 3 and a["norm"] != "none":
            call.fail(f"RT normalises RGB images, not {i.channels} channels (norm=none)", "norm")
        h, w = resized_size(i.h, i.w, a["min_size"], a["max_size"])
        d = a["divisible"]
        return ShapeSpec(i.channels, -(-h // d) * d, -(-w // d) * d, Fraction(1))

    def side_outputs(self, call: Call) -> dict[str, ShapeSpec]:
        return {FRAME: ShapeSpec(6, form="vector")}

    def build(self, call: Call):
        a = call.args
        mean: tuple[float, ...]
        std: tuple[float, ...]
        mean, std = NORMS[a["norm"]]
        if call.input.channels != 3:
            mean, std = (0.0,) * call.input.channels, (1.0,) * call.input.channels
        low = a["train_min"] or a["min_size"]
        sizes = range(low, a["min_size"] + 1, a["train_step"])
        return RcnnTransform(a["min_size"], a["max_size"], a["divisible"], mean, std, sizes)
