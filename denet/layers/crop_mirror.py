"""``CM``: random crop and mirror/flip on the GPU side of the pipeline (DeNet's crop-mirror).

Training: a random crop offset per image, a horizontal mirror with probability ``mirror_pr`` and
a vertical flip with probability ``flip_pr``. Evaluation: the centre crop, never mirrored.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import Arg, Call, LayerDef


class CropMirror(nn.Module):
    def __init__(self, crop: int, mirror_pr: float = 0.0, flip_pr: float = 0.0):
        super().__init__()
        self.crop = crop
        self.mirror_pr = mirror_pr
        self.flip_pr = flip_pr

    def forward(self, x):
        b, _, h, w = x.shape
        c = self.crop
        dy, dx = h - c, w - c
        ar = torch.arange(c, device=x.device)
        if not self.training:
            return x[:, :, dy // 2 : dy // 2 + c, dx // 2 : dx // 2 + c]
        oy = torch.randint(0, dy + 1, (b, 1), device=x.device)
        ox = torch.randint(0, dx + 1, (b, 1), device=x.device)
        iy = ar[None, :].expand(b, c)
        ix = ar[None, :].expand(b, c)
        if self.flip_pr > 0:
            flip = torch.rand(b, 1, device=x.device) < self.flip_pr
            iy = torch.where(flip, c - 1 - iy, iy)
        if self.mirror_pr > 0:
            mirror = torch.rand(b, 1, device=x.device) < self.mirror_pr
            ix = torch.where(mirror, c - 1 - ix, ix)
        iy = iy + oy
        ix = ix + ox
        bi = torch.arange(b, device=x.device)[:, None, None]
        out = x[bi, :, iy[:, :, None], ix[:, None, :]]  # (B, c, c, C)
        return out.permute(0, 3, 1, 2).contiguous()

    def extra_repr(self) -> str:
        return f"crop={self.crop}, mirror_pr={self.mirror_pr}, flip_pr={self.flip_pr}"


class CropMirrorDef(LayerDef):
    type = "CM"
    denet_name = "crop-mirror"
    doc = (
        "Random crop (centre crop in evaluation) with random horizontal mirror and "
        "vertical flip in training."
    )
    args = (
        Arg("crop", "int", min=1, doc="output size (square)"),
        Arg("mirror_pr", "float", 0.0, min=0.0, max=1.0, doc="probability of a mirror"),
        Arg("flip_pr", "float", 0.0, min=0.0, max=1.0, doc="probability of a flip"),
    )

    def shape(self, call: Call):
        i, c = call.input, call.args["crop"]
        if c > i.h or c > i.w:
            call.fail(f"crop {c} is larger than the {i} input", "crop")
        return i.with_(height=c, width=c)

    def build(self, call: Call):
        a = call.args
        return CropMirror(a["crop"], a["mirror_pr"], a["flip_pr"])
