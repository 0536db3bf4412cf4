"""Deformable (position-sensitive) RoI pooling in plain torch: the CPU path and the test oracle.

The maths of Deformable-ConvNets' ``DeformablePSROIPooling`` (rfcn/operator_cxx/
deformable_psroi_pooling.cu). For RoI ``k`` = (batch, x1, y1, x2, y2), output channel ``d`` and
bin ``(ph, pw)`` of an ``OH x OW`` grid::

    start_w = round(x1) * scale - 0.5            end_w = (round(x2) + 1) * scale - 0.5
    roi_w   = max(end_w - start_w, 0.1)          bin_w = roi_w / OW, sub_w = bin_w / spp
    part_w  = floor(pw * PW / OW)                gw = clamp(floor(pw * G / OW), 0, G - 1)
    cls     = d // (D / num_classes)
    tx      = offset[k, 2*cls,     part_h, part_w] * trans_std      (dx first, then dy)
    ty      = offset[k, 2*cls + 1, part_h, part_w] * trans_std
    wstart  = pw * bin_w + start_w + tx * roi_w   (and the same for h with ty * roi_h)
    samples w = wstart + iw * sub_w, h = hstart + ih * sub_h, for ih, iw in [0, spp)
    out[k, d, ph, pw] = mean over the samples with -0.5 <= w <= W - 0.5 and -0.5 <= h <= H - 0.5
                        of bilinear(input[batch, (d*G + gh)*G + gw], clamp(h, 0, H-1), clamp(w, 0, W-1))

(0 when no sample is valid). ``round`` halves away from zero, as C's ``round``. The bilinear
corners are ``floor`` and ``ceil`` of the clamped point, as in the original. The part cell is
computed with exact integer arithmetic; the original's float32 ``floor(ph / OH * PH)`` is one less
for a few (ph, OH = PH) pairs with OH >= 22 (e.g. OH = PH = 22, ph = 13), never for the sizes in
use (7). Without an offset (``no_trans``) every shift is 0 and ``num_classes`` is 1.

The backward pass is the original's: the input gradient spreads ``grad / count`` over the four
corners of every valid sample, and the offset gradient of a sample is the bilinear slope at the
clamped point times ``trans_std * roi_w`` (``roi_h``), summed over the class's channels and every
bin of the part cell. The slope uses the same floor/ceil corners, so it is 0 along an axis where
the sample sits exactly on a pixel (a clamped sample always does: it then passes no gradient). Positions are computed in ``promote_types(input.dtype, float32)``.
"""

from collections.abc import Sequence

import torch
from torch import Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def round_half_away(x: Tensor) -> Tensor:
    a = x.abs()
    r = torch.floor(a)
    r = r + (a - r >= 0.5).to(x.dtype)
    return torch.copysign(r, x)


def part_cells(out_size: int, part: int, device) -> Tensor:
    return torch.div(torch.arange(out_size, device=device) * part, out_size, rounding_mode="floor")


def group_cells(out_size: int, group: int, device) -> Tensor:
    g = torch.div(torch.arange(out_size, device=device) * group, out_size, rounding_mode="floor")
    return g.clamp(0, group - 1)


class _Samples:
    """Sample positions and bilinear terms, shaped [K, D, OH, OW, S] (S = spp^2) with all the
    flat indices needed by forward and backward."""

    def __init__(
        self,
        input: Tensor,
        rois: Tensor,
        offset: Tensor | None,
        output_size: Sequence[int],
        spatial_scale: float,
        group_size: int,
        part_size: Sequence[int],
        spp: int,
        trans_std: float,
    ):
        dt, dev = input.dtype, input.device
        n, c, h, w = input.shape
        oh, ow = output_size
        g = group_size
        self.d = d = c // (g * g)
        k = rois.shape[0]
        self.ncls = ncls = offset.shape[1] // 2 if offset is not None else 1
        ceach = d // ncls
        r = rois.to(dt)
        self.batch = r[:, 0].long()
        sw = round_half_away(r[:, 1]) * spatial_scale - 0.5
        sh = round_half_away(r[:, 2]) * spatial_scale - 0.5
        ew = (round_half_away(r[:, 3]) + 1.0) * spatial_scale - 0.5
        eh = (round_half_away(r[:, 4]) + 1.0) * spatial_scale - 0.5
        self.roi_w = torch.clamp(ew - sw, min=0.1)
        self.roi_h = torch.clamp(eh - sh, min=0.1)
        bin_w, bin_h = self.roi_w / ow, self.roi_h / oh
        sub_w, sub_h = bin_w / spp, bin_h / spp
        self.part_h = part_cells(oh, part_size[0], dev)
        self.part_w = part_cells(ow, part_size[1], dev)
        ph_ = torch.arange(oh, device=dev, dtype=dt)
        pw_ = torch.arange(ow, device=dev, dtype=dt)
        # Bin starts [K, ncls, OH, OW], in the original's order of operations.
        wstart = (pw_[None, :] * bin_w[:, None] + sw[:, None])[:, None, None, :]
        hstart = (ph_[None, :] * bin_h[:, None] + sh[:, None])[:, None, :, None]
        if offset is not None:
            tr = offset.to(dt)[:, :, self.part_h][:, :, :, self.part_w].view(k, ncls, 2, oh, ow)
            tx, ty = tr[:, :, 0] * trans_std, tr[:, :, 1] * trans_std
            wstart = wstart + tx * self.roi_w[:, None, None, None]
            hstart = hstart + ty * self.roi_h[:, None, None, None]
        else:
            wstart = wstart.expand(k, 1, oh, ow)
            hstart = hstart.expand(k, 1, oh, ow)
        it = torch.arange(spp, device=dev, dtype=dt)
        # Samples [K, ncls, OH, OW, spp(h), spp(w)] -> S = spp*spp, h-major like the original loops.
        ws = wstart[..., None, None] + (it[None, :] * sub_w[:, None])[:, None, None, None, None, :]
        hs = hstart[..., None, None] + (it[None, :] * sub_h[:, None])[:, None, None, None, :, None]
        ws, hs = torch.broadcast_tensors(ws, hs)
        ws = ws.reshape(k, ncls, oh, ow, spp * spp)
        hs = hs.reshape(k, ncls, oh, ow, spp * spp)
        valid = (ws >= -0.5) & (ws <= w - 0.5) & (hs >= -0.5) & (hs <= h - 0.5)
        self.count = valid.sum(-1)  # [K, ncls, OH, OW]
        wc = ws.clamp(0, w - 1)
        hc = hs.clamp(0, h - 1)
        x0, x1 = torch.floor(wc), torch.ceil(wc)
        y0, y1 = torch.floor(hc), torch.ceil(hc)
        self.dx, self.dy = wc - x0, hc - y0
        self.valid = valid
        # Flat indices into input: channel (d*G + gh)*G + gw of the RoI's image.
        cls_of = torch.arange(d, device=dev) // ceach
        chan = (
            torch.arange(d, device=dev)[:, None, None] * g + group_cells(oh, g, dev)[None, :, None]
        ) * g + group_cells(ow, g, dev)[None, None, :]  # [D, OH, OW]
        plane = (self.batch[:, None, None, None] * c + chan[None]) * (h * w)  # [K, D, OH, OW]
        self.cls_of = cls_of

        def per_chan(t: Tensor) -> Tensor:  # [K, ncls, OH, OW, S] -> [K, D, OH, OW, S]
            return t.index_select(1, cls_of) if ncls > 1 else t.expand(k, d, oh, ow, t.shape[-1])

        y0l, y1l, x0l, x1l = (per_chan(t.long()) for t in (y0, y1, x0, x1))
        base = plane[..., None]
        # Corner order: U00 = (y0, x0), U01 = (y1, x0), U10 = (y0, x1), U11 = (y1, x1).
        self.idx = [
            base + y0l * w + x0l,
            base + y1l * w + x0l,
            base + y0l * w + x1l,
            base + y1l * w + x1l,
        ]
        self.per_chan = per_chan
        self.shape = (k, d, oh, ow)


def deform_roi_pool_forward(
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    output_size: Sequence[int],
    spatial_scale: float,
    group_size: int,
    part_size: Sequence[int],
    sample_per_part: int,
    trans_std: float,
) -> Tensor:
    out_dtype = input.dtype
    input = input.to(compute_dtype(input.dtype))
    k = rois.shape[0]
    d = input.shape[1] // (group_size * group_size)
    if k == 0 or d == 0:
        return input.new_zeros((k, d, *output_size)).to(out_dtype)
    s = _Samples(
        input,
        rois,
        offset,
        output_size,
        spatial_scale,
        group_size,
        part_size,
        sample_per_part,
        trans_std,
    )
    flat = input.reshape(-1)
    dx, dy = s.per_chan(s.dx), s.per_chan(s.dy)
    vals = [flat[i] for i in s.idx]
    v = (
        (1 - dx) * (1 - dy) * vals[0]
        + (1 - dx) * dy * vals[1]
        + dx * (1 - dy) * vals[2]
        + dx * dy * vals[3]
    )
    v = torch.where(s.per_chan(s.valid), v, torch.zeros((), dtype=v.dtype, device=v.device))
    count = s.per_chan(s.count[..., None])[..., 0].to(v.dtype)
    out = torch.where(
        count > 0, v.sum(-1) / count.clamp(min=1), torch.zeros((), dtype=v.dtype, device=v.device)
    )
    return out.to(out_dtype)


def deform_roi_pool_backward(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    output_size: Sequence[int],
    spatial_scale: float,
    group_size: int,
    part_size: Sequence[int],
    sample_per_part: int,
    trans_std: float,
) -> tuple[Tensor, Tensor]:
    """Gradients ``(input, offset)``; the offset gradient is empty without an offset."""
    in_dtype = input.dtype
    dt = compute_dtype(input.dtype)
    input, grad = input.to(dt), grad.to(dt)
    g_in = torch.zeros_like(input)
    g_off = (
        torch.zeros(offset.shape, dtype=dt, device=input.device)
        if offset is not None
        else input.new_empty((0,))
    )
    k = rois.shape[0]
    if k == 0 or g_in.numel() == 0 or grad.numel() == 0:
        return g_in.to(in_dtype), g_off.to(offset.dtype if offset is not None else in_dtype)
    s = _Samples(
        input,
        rois,
        offset,
        output_size,
        spatial_scale,
        group_size,
        part_size,
        sample_per_part,
        trans_std,
    )
    count = s.per_chan(s.count[..., None])[..., 0].to(dt)
    diff = torch.where(
        count > 0, grad / count.clamp(min=1), torch.zeros((), dtype=dt, device=grad.device)
    )
    diff = torch.where(
        s.per_chan(s.valid), diff[..., None], torch.zeros((), dtype=dt, device=grad.device)
    )
    dx, dy = s.per_chan(s.dx), s.per_chan(s.dy)
    q = [(1 - dx) * (1 - dy), (1 - dx) * dy, dx * (1 - dy), dx * dy]
    flat = g_in.view(-1)
    for i, q_ in zip(s.idx, q):
        flat.index_add_(0, i.reshape(-1), (q_ * diff).reshape(-1))
    if offset is not None:
        src = input.reshape(-1)
        u00, u01, u10, u11 = (src[i] for i in s.idx)
        gx = ((u11 - u01) * dy + (u10 - u00) * (1 - dy)) * diff
        gy = ((u11 - u10) * dx + (u01 - u00) * (1 - dx)) * diff
        kk, d, oh, ow = s.shape
        # Sum over the samples and the channels of each class, then over the bins of a part cell.
        gx = gx.sum(-1).view(kk, s.ncls, d // s.ncls, oh, ow).sum(2) * (
            trans_std * s.roi_w[:, None, None, None]
        )
        gy = gy.sum(-1).view(kk, s.ncls, d // s.ncls, oh, ow).sum(2) * (
            trans_std * s.roi_h[:, None, None, None]
        )
        pw_n = offset.shape[3]
        cell = (s.part_h[:, None] * pw_n + s.part_w[None, :]).reshape(-1)
        g2 = torch.stack([gx, gy], dim=2).reshape(kk, s.ncls * 2, oh * ow)
        g_off = g_off.view(kk, s.ncls * 2, -1).index_add_(2, cell, g2).view(offset.shape)
        return g_in.to(in_dtype), g_off.to(offset.dtype)
    return g_in.to(in_dtype), g_off.to(in_dtype)
