"""Benchmark cases for DeNet's sparse sampling, pool-inverse and the NMS family.

Peers: a plain-PyTorch advanced-indexing gather (DeNet's own CPU fallback) for nearest sparse
sampling, ``F.grid_sample`` at the same points for the bilinear mode, ``F.interpolate`` for
pool-inverse, torchvision for box_iou / nms / batched_nms. DeNet's NMS rule and soft-NMS have no
peer (torchvision has neither).
"""

import torch
import torch.nn.functional as F

from denet.kernels.nms import batched_nms, box_iou, denet_nms, nms, soft_nms
from denet.kernels.pool_inv import pool_inv
from denet.kernels.sparse_sample import sparse_sample

# DeNet-34 skip at 512x512: a stride-8 64x64 map, sample_num 24 -> 576 RoIs, 7x7 grid.
B, FEAT, H, W, N, G = 8, 96, 64, 64, 576, 7


def _rois(device, generator):
    lo = torch.rand(B, N, 2, generator=generator) * 0.8
    hi = lo + 0.02 + torch.rand(B, N, 2, generator=generator) * (0.98 - lo)
    return torch.cat([lo, hi], dim=-1).to(device)


def _gather_peer(features, boxes):
    """DeNet's sampling written the obvious way: linspace grid, floor(v + 0.5), one gather."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    t = torch.linspace(0, 1, G, device=boxes.device)
    ys = (
        (torch.clamp((y0[..., None] + t * (y1 - y0)[..., None]) * H, 0, H - 1) + 0.5).floor().long()
    )
    xs = (
        (torch.clamp((x0[..., None] + t * (x1 - x0)[..., None]) * W, 0, W - 1) + 0.5).floor().long()
    )
    b = torch.arange(B, device=boxes.device)[:, None, None, None]
    v = features[b, :, ys[:, :, :, None], xs[:, :, None, :]]  # [B, N, G, G, F]
    v = v.permute(0, 2, 3, 4, 1).reshape(B, G * G * FEAT, N)
    return torch.cat([v, (y1 - y0)[:, None], (x1 - x0)[:, None]], dim=1)


def _grid_sample_peer(features, boxes):
    """Bilinear samples at the same clamped pixel coordinates via grid_sample(align_corners=True)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    t = torch.linspace(0, 1, G, device=boxes.device)
    py = torch.clamp((y0[..., None] + t * (y1 - y0)[..., None]) * H, 0, H - 1)
    px = torch.clamp((x0[..., None] + t * (x1 - x0)[..., None]) * W, 0, W - 1)
    gy = (2 * py / (H - 1) - 1)[:, :, :, None].expand(B, N, G, G)
    gx = (2 * px / (W - 1) - 1)[:, :, None, :].expand(B, N, G, G)
    grid = torch.stack([gx, gy], dim=-1).reshape(B, N * G, G, 2)
    v = F.grid_sample(features, grid, mode="bilinear", align_corners=True)  # [B, F, N*G, G]
    v = v.view(B, FEAT, N, G * G).permute(0, 3, 1, 2).reshape(B, G * G * FEAT, N)
    return torch.cat([v, (y1 - y0)[:, None], (x1 - x0)[:, None]], dim=1)


def _random_boxes(n, device, generator):
    xy = torch.rand(n, 2, generator=generator) * 1000
    wh = torch.rand(n, 2, generator=generator) * 100 + 10
    return torch.cat([xy, xy + wh], dim=1).to(device), torch.rand(n, generator=generator).to(device)


def _sparse_cases(device, g):
    features = torch.randn(B, FEAT, H, W, generator=g).to(device)
    boxes = _rois(device, g)
    out_bytes = B * (G * G * FEAT + 2) * N * 4
    in_bytes = features.numel() * 4 + boxes.numel() * 4
    grad = torch.randn(B, G * G * FEAT + 2, N, generator=g).to(device)
    leaf = features.clone().requires_grad_()

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(leaf, boxes), leaf, grad)

    ours_nearest = lambda f, b: sparse_sample(f, b, G)  # noqa: E731
    ours_bilinear = lambda f, b: sparse_sample(f, b, G, mode="bilinear")  # noqa: E731
    features_bf16 = features.bfloat16()
    return [
        dict(
            name=f"sparse_sample nearest fp32 B{B} F{FEAT} {H}x{W} N{N} G{G}",
            ours=lambda: ours_nearest(features, boxes),
            peer=lambda: _gather_peer(features, boxes),
            peer_name="torch gather",
            bytes=out_bytes + in_bytes,
        ),
        dict(
            name=f"sparse_sample nearest bf16 B{B} F{FEAT} {H}x{W} N{N} G{G}",
            ours=lambda: ours_nearest(features_bf16, boxes),
            peer=lambda: _gather_peer(features_bf16, boxes),
            peer_name="torch gather",
            bytes=(out_bytes + in_bytes) // 2,
        ),
        dict(
            name="sparse_sample nearest fp32 fwd+bwd",
            ours=fwd_bwd(ours_nearest),
            peer=fwd_bwd(_gather_peer),
            peer_name="torch gather",
            # forward, then read the gradient, zero-fill and read-modify-write the feature grad
            bytes=2 * (out_bytes + in_bytes) + 2 * features.numel() * 4,
        ),
        dict(
            name=f"sparse_sample bilinear fp32 B{B} F{FEAT} {H}x{W} N{N} G{G}",
            ours=lambda: ours_bilinear(features, boxes),
            peer=lambda: _grid_sample_peer(features, boxes),
            peer_name="F.grid_sample",
            bytes=out_bytes + in_bytes,
        ),
    ]


def _pool_inv_cases(device, g):
    x = torch.randn(8, 256, 64, 64, generator=g).to(device)
    grad = torch.randn(8, 256, 128, 128, generator=g).to(device)
    moved = x.numel() * 4 * 5  # read x, write 4x
    xb = x.bfloat16()
    return [
        dict(
            name="pool_inv x2 fp32 8x256x64x64",
            ours=lambda: pool_inv(x, 2),
            peer=lambda: F.interpolate(x, scale_factor=2, mode="nearest"),
            peer_name="F.interpolate",
            bytes=moved,
        ),
        dict(
            name="pool_inv x2 bf16 8x256x64x64",
            ours=lambda: pool_inv(xb, 2),
            peer=lambda: F.interpolate(xb, scale_factor=2, mode="nearest"),
            peer_name="F.interpolate",
            bytes=moved // 2,
        ),
        dict(
            name="pool_inv x2 backward (block sum) fp32",
            ours=lambda: torch.ops.denet.pool_inv_backward(grad, 2, 2),
            peer=lambda: grad.view(8, 256, 64, 2, 64, 2).sum(dim=(3, 5)),
            peer_name="torch view+sum",
            bytes=moved,
        ),
    ]


def _nms_cases(device, g):
    import torchvision.ops as tv

    cases = []
    for n in (2000, 10000):
        boxes, scores = _random_boxes(n, device, g)
        words = (n + 31) // 32
        moved = n * 20 + n * words * 4 * 2  # boxes and scores, the bitmask written and read
        cases.append(
            dict(
                name=f"nms {n} boxes iou 0.5",
                ours=lambda b=boxes, s=scores: nms(b, s, 0.5),
                peer=lambda b=boxes, s=scores: tv.nms(b, s, 0.5),
                bytes=moved,
            )
        )
    boxes, scores = _random_boxes(10000, device, g)
    idxs = torch.randint(0, 80, (10000,), generator=g).to(device)
    cases.append(
        dict(
            name="batched_nms 10000 boxes 80 classes",
            ours=lambda b=boxes, s=scores, i=idxs: batched_nms(b, s, i, 0.5),
            peer=lambda b=boxes, s=scores, i=idxs: tv.batched_nms(b, s, i, 0.5),
            bytes=10000 * 28,
        )
    )
    b1, _ = _random_boxes(2000, device, g)
    cases.append(
        dict(
            name="box_iou 2000x2000",
            ours=lambda b=b1: box_iou(b, b),
            peer=lambda b=b1: tv.box_iou(b, b),
            bytes=2000 * 2000 * 4,
        )
    )
    boxes, scores = _random_boxes(2000, device, g)
    cases.append(
        dict(
            name="denet_nms 2000 boxes iou 0.5",
            ours=lambda b=boxes, s=scores: denet_nms(b, s, 0.5),
            peer=None,
            bytes=2000 * 20 + 2000 * 63 * 4 * 2,
        )
    )
    boxes, scores = _random_boxes(1000, device, g)
    cases.append(
        dict(
            name="soft_nms gaussian 1000 boxes",
            ours=lambda b=boxes, s=scores: soft_nms(b, s),
            peer=None,
            bytes=1000 * 1000 * 4,
        )
    )
    return cases


def cases(device: str) -> list:
    g = torch.Generator().manual_seed(0)
    return _sparse_cases(device, g) + _pool_inv_cases(device, g) + _nms_cases(device, g)
