"""Benchmark cases for the deformable operators.

deform_conv2d: 64 -> 64 channels, 3x3, padding 1, on 2x64x64x64 with a DCNv2 mask (one offset
group), against torchvision's ``deform_conv2d`` on the same tensors; forward, and forward +
backward to every input. deform_roi_pool: R-FCN-style deformable PSRoI pooling, 512 RoIs on a
1x490x64x64 map (group 7, 7x7 bins, so 10 output channels, each its own offset class), 4x4
samples per bin; torchvision has no such op, so there is no peer.
"""

import torch
import torchvision

from denet.kernels.deform_conv2d import deform_conv2d
from denet.kernels.deform_roi_pool import deform_roi_pool

B, C, H, W, K = 2, 64, 64, 64, 3
ROIS, GROUP, POOLED, SPP, SCALE = 512, 7, 7, 4, 1.0 / 16


def _conv_inputs(device, dtype, g):
    x = torch.randn(B, C, H, W, generator=g)
    off = torch.randn(B, 2 * K * K, H, W, generator=g) * 2
    w = torch.randn(C, C, K, K, generator=g) / (C * K * K) ** 0.5
    bias = torch.randn(C, generator=g)
    mask = torch.rand(B, K * K, H, W, generator=g)
    return [t.to(device, dtype) for t in (x, off, w, bias, mask)]


def _conv_cases(device, dtype, g):
    x, off, w, bias, mask = _conv_inputs(device, dtype, g)
    tag = str(dtype).replace("torch.", "")
    shape = f"B{B} {C}->{C} 3x3 pad1 {H}x{W} mask"
    elt = x.element_size()
    fwd_bytes = (x.numel() + off.numel() + mask.numel() + w.numel() + B * C * H * W) * elt
    ours = lambda x_, o_, w_, b_, m_: deform_conv2d(x_, o_, w_, b_, padding=1, mask=m_)  # noqa: E731
    peer = lambda x_, o_, w_, b_, m_: torchvision.ops.deform_conv2d(
        x_, o_, w_, b_, padding=1, mask=m_
    )  # noqa: E731
    leaves = [t.clone().requires_grad_() for t in (x, off, w, bias, mask)]
    grad = torch.randn(B, C, H, W, generator=g).to(device, dtype)

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(*leaves), leaves, grad)

    return [
        dict(
            name=f"deform_conv2d {tag} fwd {shape}",
            ours=lambda: ours(x, off, w, bias, mask),
            peer=lambda: peer(x, off, w, bias, mask),
            bytes=fwd_bytes,
        ),
        # forward, then read the output gradient and the inputs again, write every gradient
        dict(
            name=f"deform_conv2d {tag} fwd+bwd {shape}",
            ours=fwd_bwd(ours),
            peer=fwd_bwd(peer),
            bytes=3 * fwd_bytes,
        ),
    ]


def _rois(device, dtype, g):
    size = H / SCALE
    xy = torch.rand(ROIS, 2, generator=g) * size * 0.8
    wh = 32 + torch.rand(ROIS, 2, generator=g) * (size * 0.5)
    boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
    return torch.cat([torch.zeros(ROIS, 1), boxes], dim=1).to(device, dtype)


def _pool_cases(device, dtype, g):
    d = 10
    x = torch.randn(1, d * GROUP * GROUP, H, W, generator=g).to(device, dtype)
    rois = _rois(device, torch.float32 if dtype != torch.float64 else dtype, g)
    off = (torch.randn(ROIS, 2 * d, POOLED, POOLED, generator=g) * 0.5).to(device, dtype)
    tag = str(dtype).replace("torch.", "")
    args = (POOLED, SCALE, GROUP, POOLED, SPP, 0.1)
    elt = x.element_size()
    out_bytes = ROIS * d * POOLED * POOLED * elt
    fwd_bytes = out_bytes + off.numel() * elt + x.numel() * elt
    leaves = [x.clone().requires_grad_(), off.clone().requires_grad_()]
    grad = torch.randn(ROIS, d, POOLED, POOLED, generator=g).to(device, dtype)
    name = f"{ROIS} RoIs 1x{x.shape[1]}x{H}x{W} group {GROUP} {POOLED}x{POOLED} spp {SPP}"
    return [
        dict(
            name=f"deform_roi_pool {tag} fwd {name}",
            ours=lambda: deform_roi_pool(x, rois, off, *args),
            peer=None,
            bytes=fwd_bytes,
        ),
        # forward, then the input gradient's zero fill and read-modify-write, the offset gradient
        dict(
            name=f"deform_roi_pool {tag} fwd+bwd {name}",
            ours=lambda: torch.autograd.grad(
                deform_roi_pool(leaves[0], rois, leaves[1], *args), leaves, grad
            ),
            peer=None,
            bytes=fwd_bytes + out_bytes + 3 * x.numel() * 4 + off.numel() * elt,
        ),
    ]


def cases(device: str) -> list:
    g = torch.Generator().manual_seed(0)
    out = _conv_cases(device, torch.float32, g)
    if device == "cuda":
        out += _conv_cases(device, torch.float16, g)
    out += _pool_cases(device, torch.float32, g)
    return out
