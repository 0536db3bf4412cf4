"""RoIPool (Fast R-CNN max pooling) in plain torch: the CPU path and the test oracle.

torchvision's semantics. For RoI ``k`` on image ``b = int(rois[k, 0])``::

    x1, y1, x2, y2 = round(rois[k, 1:] * spatial_scale)     # halves away from zero, as C's round()
    roi_h = max(y2 - y1 + 1, 1); bin_h = roi_h / pooled_h    # likewise the width
    hstart = clip(floor(ph * bin_h) + y1, 0, H); hend = clip(ceil((ph + 1) * bin_h) + y1, 0, H)

and the output is the maximum over rows ``[hstart, hend)`` and columns ``[wstart, wend)``, read
in row-major order with a strict ``>`` from ``-FLT_MAX``: ties go to the first position, and a
window whose values are all ``<= -FLT_MAX`` gives ``-FLT_MAX`` and no argmax. An empty window
gives 0. ``argmax`` (``int32``, ``h * W + w`` in the channel plane, -1 for none) carries the
gradient back; ``ps_roi_pool`` reuses :func:`pool_windows`. NaN inputs propagate here (``max``),
whereas torchvision's scan and the Triton kernel skip them.

Bins are gathered as crops of a channels-last copy of the map (one crop row is ``Sw * C``
contiguous values), grouped by crop size so one group pads little, and reduced with ``max``.
"""

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from ..roi_align.reference import CHUNK_ELEMENTS, acc_dtype, check_batch_index

FLT_MAX = 3.4028234663852886e38


def round_half_away(v: Tensor) -> Tensor:
    """C's ``round()``: halves away from zero. Exact: ``v - trunc(v)`` has no rounding error."""
    t = torch.trunc(v)
    return t + torch.where((v - t).abs() >= 0.5, torch.sign(v), 0.0)


def pool_windows(
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    plus_one: bool,
    clip_h: int,
    clip_w: int,
):
    """``batch [K]`` and integer bin windows ``hstart, hend [K, PH]``, ``wstart, wend [K, PW]``
    in torchvision's arithmetic (``dtype`` is the C ``T``)."""
    batch = rois[:, 0].to(torch.int64)
    corner = round_half_away(rois[:, 1:].to(dtype) * spatial_scale).to(torch.int64)
    extra = 1 if plus_one else 0
    out = [batch]
    for lo, hi, pooled, clip in (
        (corner[:, 1], corner[:, 3], pooled_height, clip_h),
        (corner[:, 0], corner[:, 2], pooled_width, clip_w),
    ):
        size = (hi - lo + extra).clamp(min=1)
        bin_size = size.to(dtype)[:, None] / pooled
        p = torch.arange(pooled, dtype=dtype, device=rois.device)
        start = (torch.floor(p * bin_size).to(torch.int64) + lo[:, None]).clamp(0, clip)
        end = (torch.ceil((p + 1) * bin_size).to(torch.int64) + lo[:, None]).clamp(0, clip)
        out += [start, end]
    return tuple(out)


def padded_size(span: Tensor, limit: int) -> Tensor:
    """Round sizes up to 1, 2, 3, 4, 6, 8, 12, 16, ... (at most ``limit``) to group similar crops."""
    s = span.clamp(min=1)
    p = torch.pow(2.0, torch.floor(torch.log2((s - 1).clamp(min=1).to(torch.float32)))).to(
        torch.int64
    )
    rounded = torch.where(s * 2 <= p * 3, (p * 3) // 2, p * 2)
    # maximum(): never below the span, whatever log2 rounds to
    return torch.where(s <= 2, s, torch.maximum(rounded, s)).clamp(max=max(limit, 1))


def groups(size_h: Tensor, size_w: Tensor, per_pixel: int) -> Iterator[tuple[Tensor, int, int]]:
    """Indices of the items with equal ``(size_h, size_w)``, in chunks of at most
    ``CHUNK_ELEMENTS`` crop values (``size_h * size_w * per_pixel`` per item)."""
    if size_h.numel() == 0:
        return
    key = size_h * (int(size_w.max()) + 1) + size_w
    order = torch.argsort(key, stable=True)
    counts = torch.unique_consecutive(key[order], return_counts=True)[1]
    heads = order[torch.cumsum(counts, 0) - counts]
    offset = 0
    for n, sh, sw in zip(counts.tolist(), size_h[heads].tolist(), size_w[heads].tolist()):
        members = order[offset : offset + n]
        offset += n
        step = max(1, CHUNK_ELEMENTS // max(sh * sw * per_pixel, 1))
        for i in range(0, n, step):
            yield members[i : i + step], sh, sw


def crop_rows(flat: Tensor, width: int) -> Tensor:
    """A channels-last map ``[pixels, C]`` seen as overlapping rows of ``width`` pixels: row ``i``
    holds pixels ``i .. i + width - 1``, so one crop row is one gather."""
    pixels, channels = flat.shape
    return torch.as_strided(flat, (pixels - width + 1, width * channels), (channels, 1))


def roi_pool_forward(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> tuple[Tensor, Tensor]:
    n_img, channels, height, width = input.shape
    k = rois.shape[0]
    shape = (k, channels, pooled_height, pooled_width)
    if k == 0 or channels == 0 or height == 0 or width == 0:
        return input.new_zeros(shape), torch.full(shape, -1, dtype=torch.int32, device=input.device)
    acc = acc_dtype(input.dtype)
    batch, hs, he, ws, we = pool_windows(
        rois, spatial_scale, pooled_height, pooled_width, height, width, acc, True, height, width
    )
    check_batch_index(batch, n_img, "roi_pool")
    # One unit per bin (k, ph, pw); its crop is its window padded to a group size, inside the map.
    full = (k, pooled_height, pooled_width)
    hs, he = hs[:, :, None].expand(full).reshape(-1), he[:, :, None].expand(full).reshape(-1)
    ws, we = ws[:, None, :].expand(full).reshape(-1), we[:, None, :].expand(full).reshape(-1)
    sh_all = padded_size(he - hs, height)
    sw_all = padded_size(we - ws, width)
    y0 = torch.minimum(hs, height - sh_all)
    x0 = torch.minimum(ws, width - sw_all)
    first = (batch.repeat_interleave(pooled_height * pooled_width) * height + y0) * width + x0
    # the crop's first pixel (in the batch and in its plane), then the window relative to the crop
    packed = torch.stack([first, y0 * width + x0, hs - y0, he - y0, ws - x0, we - x0], dim=1)
    flat = input.permute(0, 2, 3, 1).contiguous().view(-1, channels)
    # Results are written in group order into slices, then put back in unit order at once.
    value = torch.empty((first.shape[0], channels), dtype=input.dtype, device=input.device)
    pixel = torch.empty((first.shape[0], channels), dtype=torch.int64, device=input.device)
    order = []
    done = 0
    for idx, sh, sw in groups(sh_all, sw_all, channels):
        n = idx.shape[0]
        f, f_plane, r0, r1, c0, c1 = packed.index_select(0, idx).unbind(1)
        s = torch.arange(sh, device=input.device)
        t = torch.arange(sw, device=input.device)
        crop = (
            crop_rows(flat, sw)
            .index_select(0, (f[:, None] + s * width).view(-1))
            .view(n, sh * sw, channels)
        )
        inside = ((s >= r0[:, None]) & (s < r1[:, None]))[:, :, None] & (
            (t >= c0[:, None]) & (t < c1[:, None])
        )[:, None, :]
        crop.masked_fill_(~inside.view(n, sh * sw, 1), -math.inf)
        torch.max(
            crop, dim=1, out=(value[done : done + n], pixel[done : done + n])
        )  # ties: the first, row-major
        offset = (s[:, None] * width + t).view(
            -1
        )  # crop position -> pixel offset from the crop's first
        pixel[done : done + n] = f_plane[:, None] + offset[pixel[done : done + n]]
        order.append(idx)
        done += n
    inverse = torch.empty_like(sh_all)
    inverse[torch.cat(order)] = torch.arange(sh_all.shape[0], device=input.device)
    value, pixel = value[inverse], pixel[inverse]
    # The scan starts from -FLT_MAX with a strict ">": nothing above it means no argmax.
    empty = (he <= hs) | (we <= ws)
    found = (value.to(acc) > -FLT_MAX) & ~empty[:, None]
    value = torch.where(found, value, torch.where(empty, 0.0, -FLT_MAX).to(input.dtype)[:, None])
    arg = torch.where(found, pixel, -1).to(torch.int32)
    out = value.view(k, pooled_height, pooled_width, channels).permute(0, 3, 1, 2).contiguous()
    arg = arg.view(k, pooled_height, pooled_width, channels).permute(0, 3, 1, 2).contiguous()
    return out, arg


def roi_pool_backward(
    grad: Tensor,
    rois: Tensor,
    argmax: Tensor,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    acc = acc_dtype(grad.dtype)
    plane = height * width
    total = batch_size * channels * plane
    k = rois.shape[0]
    if k == 0 or total == 0:
        return grad.new_zeros((batch_size, channels, height, width))
    batch = rois[:, 0].to(torch.int64)
    check_batch_index(batch, batch_size, "roi_pool")
    c = torch.arange(channels, device=grad.device)
    target = ((batch[:, None] * channels + c) * plane)[:, :, None, None] + argmax.to(torch.int64)
    # Bins without an argmax add into one spare slot past the end.
    target = torch.where(argmax >= 0, target, total)
    out = torch.zeros(total + 1, dtype=acc, device=grad.device)
    out.index_add_(0, target.reshape(-1), grad.to(acc).reshape(-1))
    return out[:total].view(batch_size, channels, height, width).to(grad.dtype)
