"""Benchmark cases for the RoI operators against torchvision.ops on the same inputs.

Detection-typical sizes: 512 RoIs on one 64x64 map of stride 16 (a 1024x1024 image), box sides
log-uniform in [16, 768] pixels, 7x7 bins, adaptive sampling (``sampling_ratio=-1``).
RoIAlign and RoIPool read 256 channels; the position-sensitive ops read 10 * 49 = 490.
"""

import math

import torch
import torchvision.ops as tv

from denet.kernels.ps_roi_align import ps_roi_align
from denet.kernels.ps_roi_pool import ps_roi_pool
from denet.kernels.roi_align import roi_align
from denet.kernels.roi_pool import roi_pool

K, C, C_PS, H, W, OUT, STRIDE = 512, 256, 10 * 49, 64, 64, 7, 16


def _rois(generator):
    image = W * STRIDE
    side = torch.exp(
        torch.empty(K, 2).uniform_(math.log(16.0), math.log(768.0), generator=generator)
    )
    corner = torch.rand(K, 2, generator=generator) * (image - side)
    return torch.cat([torch.zeros(K, 1), corner, corner + side], dim=1)


def _pair(name, ours, peer, x, rois, grad, out_bytes, dtype_name):
    """Forward and forward+backward cases for one operator."""
    size = x.element_size()
    in_bytes = x.numel() * size + rois.numel() * rois.element_size()
    leaf = x.clone().requires_grad_()

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(leaf, rois), leaf, grad)

    return [
        dict(
            name=f"{name} fwd {dtype_name} K{K} {tuple(x.shape)} {OUT}x{OUT}",
            ours=lambda: ours(x, rois),
            peer=lambda: peer(x, rois),
            bytes=out_bytes + in_bytes,
        ),
        # forward again, read the output gradient, zero-fill and read-modify-write the input gradient
        dict(
            name=f"{name} fwd+bwd {dtype_name}",
            ours=fwd_bwd(ours),
            peer=fwd_bwd(peer),
            bytes=2 * out_bytes + in_bytes + 2 * x.numel() * size + x.numel() * size,
        ),
    ]


def cases(device: str) -> list:
    g = torch.Generator().manual_seed(0)
    rois = _rois(g)
    x = torch.randn(1, C, H, W, generator=g)
    x_ps = torch.randn(1, C_PS, H, W, generator=g)
    grad = torch.randn(K, C, OUT, OUT, generator=g)
    grad_ps = torch.randn(K, C_PS // (OUT * OUT), OUT, OUT, generator=g)
    dtypes = [torch.float32] + ([torch.float16] if device == "cuda" else [])
    scale = 1.0 / STRIDE
    out = []
    for dtype in dtypes:
        dn = str(dtype).replace("torch.", "")
        cast = dict(device=device, dtype=dtype)
        r, xd, xp, gd, gp = (
            rois.to(**cast),
            x.to(**cast),
            x_ps.to(**cast),
            grad.to(**cast),
            grad_ps.to(**cast),
        )
        size = xd.element_size()
        out += _pair(
            "roi_align",
            lambda a, b: roi_align(a, b, OUT, scale, -1, True),
            lambda a, b: tv.roi_align(a, b, OUT, scale, -1, True),
            xd,
            r,
            gd,
            gd.numel() * size,
            dn,
        )
        out += _pair(
            "ps_roi_align",
            lambda a, b: ps_roi_align(a, b, OUT, scale, -1),
            lambda a, b: tv.ps_roi_align(a, b, OUT, scale, -1),
            xp,
            r,
            gp,
            gp.numel() * size,
            dn,
        )
        out += _pair(
            "roi_pool",
            lambda a, b: roi_pool(a, b, OUT, scale),
            lambda a, b: tv.roi_pool(a, b, OUT, scale),
            xd,
            r,
            gd,
            gd.numel() * size,
            dn,
        )
        out += _pair(
            "ps_roi_pool",
            lambda a, b: ps_roi_pool(a, b, OUT, scale),
            lambda a, b: tv.ps_roi_pool(a, b, OUT, scale),
            xp,
            r,
            gp,
            gp.numel() * size,
            dn,
        )
    return out
