"""RoIPool (Fast R-CNN max pooling) in plain torch: the CPU path and the test oracle.

torchvision's semantics. For RoI ``k`` on image ``b = int(rois[k, 0])``::

    x1, y1, x2, y2 = round(rois[k, 1:] * spatial_scale)     # halves away from zero, as C's round()
    roi_h = max(y2 - y1 + 1, 1); bin_h = roi_h / pooled_h    # likewise the width
    hstart = clip(floor(ph * bin_h) + y1, 0, H); hend = clip(ceil((ph + 1) * bin_h) + y1, 0, H)

and the output is the maximum over rows ``[hstart, hend)`` and columns ``[wstart, wend)``, read
in row-major order with a strict ``>`` from ``-FLT_MAX``: ties go to the first position, and a
window whose values are all ``<= -FLT_MAX`` gives ``-FLT_MAX`` and no argmax. An empty window
gives 0. ``argmax`` (``int32``, ``h * W + w`` in the channel plane, -1 for none) carries the
gradient back; ``ps_roi_pool`` reuses :func:`pool_windows`. NaN is never picked, as in
torchvision's scan and the Triton kernel.

How it is computed. Each map position becomes one int64 key: its value, made an orderable
integer, in the high half and ``2**32 - 1 - (h * W + w)`` in the low half, so that the largest
key of any set of positions is its maximum at its first position in row-major order. That turns
the scan into plain ``max`` reductions, which need no particular order and may overlap: a sparse
table holds the largest key of every ``2**i x 2**j`` window (each level one ``maximum`` of two
shifted copies of the previous), and a bin's window is covered by two (rarely more) such
windows per axis. RoIs are grouped by the level of their shortest windows; a group gathers its
corners' keys (whole channel rows of a channels-last layout) in chunks of RoIs, reduces them
with ``maximum``, and decodes values and argmax straight into the ``[K, C, PH, PW]`` outputs.
The backward pass adds each gradient at its argmax with ``scatter_add_``, in torchvision's
order.
"""

import math
import sys

import torch
from torch import Tensor

from ..roi_align.reference import acc_dtype, check_batch_index

FLT_MAX = 3.4028234663852886e38
# Keys one gather of level corners may hold (8 MB: large enough for two threads to pay off).
GATHER_ELEMENTS = 1 << 20
# Keys of one block of channels of the map: the sparse table takes three times as many.
WORK_ELEMENTS = 1 << 22


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


# The high half of a key: the float32 bits of ``-inf`` made monotonic, and the key that
# every value torchvision's scan never picks is raised to (``-FLT_MAX`` with pixel -1).
_INF_HIGH = -8388608 ^ 0x7FFFFFFF


def _keys(crop: Tensor, pixel: Tensor, dtype: torch.dtype, work: Tensor) -> Tensor | None:
    """Writes int64 keys, ordered as torchvision's scan prefers the positions of a window, into
    ``work[0]`` and returns, for float64, the table of values their high halves index.

    ``crop`` ``[N, h, w, C]`` (any strides) is read as ``dtype`` (float32 or float64),
    ``pixel`` ``[h, w, 1]`` holds the plane indices ``h * W + w``; ``work`` is ``[3, N * h * w
    * C]`` int64 (rows 1 and 2 are scratch here). The high half orders the values (the float32
    bits made monotonic, or for float64 the rank among the distinct values); the low half is
    ``2**32 - 1 - pixel``, so that of equal values the first position in row-major order has
    the largest key. A value the scan from ``-FLT_MAX`` with a strict ``>`` never picks
    (``<= -FLT_MAX``, NaN) gets the smallest key, ``-FLT_MAX`` with pixel -1: that is what a
    window of only such values gives.
    """
    n = crop.numel()
    values = work[1].view(dtype)[:n].view(crop.shape)
    values.copy_(crop)
    values.masked_fill_(~(values > -FLT_MAX), -math.inf)
    table = None
    if dtype == torch.float64:
        if n >= 1 << 31:
            raise ValueError("roi_pool: a float64 map of 2**31 values or more is not supported")
        # -inf and -FLT_MAX are ranks 0 and 1: the floor and what it is raised to.
        ends = torch.tensor([-math.inf, -FLT_MAX], dtype=dtype, device=crop.device)
        table, rank = torch.unique(torch.cat([ends, values.view(-1)]), return_inverse=True)
        high, floor = rank[2:].view(crop.shape), 0
    else:
        values += 0.0  # -0.0 to 0.0: torchvision's ">" does not tell them apart either
        bits = values.view(torch.int32)
        high = work[2].view(torch.int32)[:n].view(crop.shape)
        torch.bitwise_right_shift(bits, 31, out=high)
        high.bitwise_and_(0x7FFFFFFF).bitwise_xor_(bits)
        floor = _INF_HIGH
    low = ~pixel  # 2**32 - 1 - pixel, as int32
    key = work[0].view(crop.shape)
    if sys.byteorder == "little":  # write the halves in place
        halves = key.view(torch.int32)
        halves[..., 1::2] = high
        halves[..., 0::2] = low
    else:
        torch.bitwise_or(high.to(torch.int64) << 32, low & 0xFFFFFFFF, out=key)
    key.clamp_(min=(floor + 1) << 32)
    return table


def _decode(key: Tensor, table: Tensor | None, value: Tensor, arg: Tensor, scratch: Tensor) -> None:
    """Writes the values and pixel indices (-1 for none) of keys ``[m, P, C]`` made by
    :func:`_keys` into ``value`` and ``arg`` ``[m, C, P]`` (transposed). Overwrites ``key``;
    ``scratch`` holds ``2 * key.numel()`` int32."""
    n = key.numel()
    low, high = scratch[:n].view(key.shape), scratch[n : 2 * n].view(key.shape)
    low.copy_(key)  # int32 wraps: the low half, which read as int32 is -1 - pixel
    torch.bitwise_not(low.transpose(1, 2), out=arg)
    torch.bitwise_right_shift(key, 32, out=key)
    if table is not None:
        value.copy_(table[key].transpose(1, 2))
        return
    high.copy_(key)
    torch.bitwise_right_shift(high, 31, out=low)
    low.bitwise_and_(0x7FFFFFFF).bitwise_xor_(high)
    value.copy_(low.view(torch.float32).transpose(1, 2))


def _log2_floor(v: Tensor) -> Tensor:
    """``floor(log2(v))`` for positive integers, exact."""
    e = torch.floor(torch.log2(v.to(torch.float64))).to(torch.int64)
    one = torch.ones_like(e)
    e = e - (torch.bitwise_left_shift(one, e) > v).to(torch.int64)
    return e + (torch.bitwise_left_shift(one, e + 1) <= v).to(torch.int64)


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
    value = torch.empty(shape, dtype=input.dtype, device=input.device)
    arg = torch.empty(shape, dtype=torch.int32, device=input.device)
    len_h, len_w = he - hs, we - ws  # >= 0
    # Every RoI with a non-empty bin is pooled whole; empty bins are set to 0 and -1 at the end.
    none = 1 << 62
    min_h = torch.where(len_h > 0, len_h, none).amin(1)
    min_w = torch.where(len_w > 0, len_w, none).amin(1)
    live = ((min_h < none) & (min_w < none)).nonzero().squeeze(1)
    if live.numel():
        _pool(input, batch, hs, he, ws, we, min_h, min_w, live, acc, value, arg)
    empty = ((len_h == 0)[:, :, None] | (len_w == 0)[:, None, :]).nonzero().unbind(1)
    if empty[0].numel():
        value.permute(0, 2, 3, 1).index_put_(empty, value.new_zeros(()))
        arg.permute(0, 2, 3, 1).index_put_(empty, arg.new_full((), -1))
    return value, arg


def _pool(input, batch, hs, he, ws, we, min_h, min_w, live, acc, value, arg) -> None:
    """Pools the RoIs ``live`` into ``value`` and ``arg`` (``[K, C, PH, PW]``): image by image,
    over the rectangle that their windows touch, in blocks of channels on large maps."""
    channels, width = input.shape[1], input.shape[3]
    bins = hs.shape[1] * ws.shape[1]
    # A sparse table: level (i, j) holds the largest key of every 2**i x 2**j window (built by
    # doubling). A RoI is read at the level of its shortest non-empty windows,
    # i = floor(log2(min height)), j likewise, and a window of height h is covered by
    # ceil(h / 2**i) level windows (two, unless a window was cut at the map's border). Overlaps
    # are harmless: the largest key is the window's maximum at its first position in row-major
    # order, whichever level windows hold it.
    li, lj = _log2_floor(min_h[live]), _log2_floor(min_w[live])
    span_h, span_w = (he - hs).amax(1)[live], (we - ws).amax(1)[live]
    b = batch[live]
    out_value = value.view(value.shape[0], channels, bins)
    out_arg = arg.view(arg.shape[0], channels, bins)
    for image in torch.unique(b).tolist():
        on = (b == image).nonzero().squeeze(1)
        rois = live[on]
        y0, y1 = int(hs[rois].min()), int(he[rois].max())
        x0, x1 = int(ws[rois].min()), int(we[rois].max())
        area = (y1 - y0) * (x1 - x0)
        # Few RoIs on a large map: lower levels (fewer to build) and more windows per bin.
        best = None
        for top_level in range(int(torch.maximum(li[on], lj[on]).max()) + 1):
            at_h, at_w = li[on].clamp(max=top_level), lj[on].clamp(max=top_level)
            per_h = -torch.div(-span_h[on], 1 << at_h, rounding_mode="floor")
            per_w = -torch.div(-span_w[on], 1 << at_w, rounding_mode="floor")
            # per channel: the levels' keys built, and the keys gathered (dearer: gather, reduce)
            cost = area * (top_level + 1) ** 2 + 3 * bins * int((per_h * per_w).sum())
            if best is None or cost < best[0]:
                best = (cost, torch.stack([at_h, at_w, per_h, per_w], 1))
        assert best is not None
        kinds, which = torch.unique(best[1], dim=0, return_inverse=True)
        # ch row starts per (RoI, ph) and cw column starts per (RoI, pw), inside the windows
        tops: list[Tensor] = []
        lefts: list[Tensor] = []
        for i, j, ch, cw in kinds.tolist():
            members = rois[which == len(tops)]
            t = torch.arange(ch, device=b.device) << i
            top = torch.minimum(hs[members, :, None] + t, he[members, :, None] - (1 << i))
            tops.append((top - y0).clamp(0, y1 - y0 - (1 << i)))
            t = torch.arange(cw, device=b.device) << j
            left = torch.minimum(ws[members, :, None] + t, we[members, :, None] - (1 << j))
            lefts.append((left - x0).clamp(0, x1 - x0 - (1 << j)))
        block = max(1, min(channels, WORK_ELEMENTS // area))
        # The keys, then the levels of the sparse table, take the three rows of ``work`` in turn.
        work = torch.empty((3, area * block), dtype=torch.int64, device=input.device)
        yy = torch.arange(y0, y1, device=input.device)[:, None, None]
        xx = torch.arange(x0, x1, device=input.device)[None, :, None]
        for c0 in range(0, channels, block):
            c1 = min(channels, c0 + block)
            crop = input[image, c0:c1, y0:y1, x0:x1].permute(1, 2, 0)[None]
            cw_ = c1 - c0
            table = _keys(crop, yy * width + xx, acc, work[:, : area * cw_])
            _sweep(
                work[:, : area * cw_],
                crop.shape,
                table,
                kinds.tolist(),
                which,
                rois,
                tops,
                lefts,
                out_value[:, c0:c1],
                out_arg[:, c0:c1],
            )


def _sweep(work, shape, table, kinds, which, rois, tops, lefts, out_value, out_arg) -> None:
    """Builds the levels of ``kinds`` from the keys in ``work[0]`` (``shape`` ``[1, h, w, C]``)
    and writes each group's RoIs into ``out_value`` and ``out_arg`` (``[K, C, bins]``)."""
    channels, bins = shape[-1], out_value.shape[-1]
    per_roi = bins * channels
    most = max(ch * cw for _, _, ch, cw in kinds) * per_roi
    buf = torch.empty(max(GATHER_ELEMENTS, most), dtype=torch.int64, device=work.device)
    step = min(buf.numel() // most, rois.numel())
    v_buf = torch.empty(step * per_roi, dtype=out_value.dtype, device=work.device)
    a_buf = torch.empty(step * per_roi, dtype=torch.int32, device=work.device)
    scratch = torch.empty(2 * step * per_roi, dtype=torch.int32, device=work.device)
    # Rows of ``work`` hold rows (i, 0), the level (i, j) and the next one (the keys are (0, 0)).
    spare = list(work.unbind())
    keys = work[0].view(shape)
    rows, level, at = keys, keys, (0, 0)
    for kind, (i, j, ch, cw) in enumerate(kinds):
        if at[0] != i:  # the 2**i x 1 windows
            for r in range(at[0], i):
                rows = _double(rows, 1, 1 << r, _other(spare, rows, None))
            level, at = rows, (i, 0)
        for c in range(at[1], j):
            level = _double(level, 2, 1 << c, _other(spare, rows, level))
        at = (i, j)
        members = rois[which == kind]
        n, lw, q = members.numel(), level.shape[2], ch * cw
        corner = tops[kind][:, :, None, :, None] * lw + lefts[kind][:, None, :, None, :]
        corner = corner.view(n, bins, q).permute(2, 0, 1)  # [q, n, bins]
        flat = level.view(-1, channels)
        chunk = min(step, buf.numel() // (q * per_roi))
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            g = buf[: q * m * per_roi].view(q, m, bins, channels)
            torch.index_select(flat, 0, corner[:, s : s + m].reshape(-1), out=g.view(-1, channels))
            for p in range(1, q):
                torch.maximum(g[0], g[p], out=g[0])
            v = v_buf[: m * per_roi].view(m, channels, bins)
            a = a_buf[: m * per_roi].view(m, channels, bins)
            _decode(g[0], table, v, a, scratch)
            out_value.index_copy_(0, members[s : s + m], v)
            out_arg.index_copy_(0, members[s : s + m], a)


def _other(spare: list[Tensor], *busy: Tensor | None) -> Tensor:
    """A buffer of ``spare`` that holds none of ``busy``."""
    used = {t.data_ptr() for t in busy if t is not None}
    return next(t for t in spare if t.data_ptr() not in used)


def _double(level: Tensor, dim: int, half: int, out: Tensor) -> Tensor:
    """The next level along ``dim`` (windows twice as long), written into ``out``'s storage."""
    lo, hi = (
        level.narrow(dim, 0, level.shape[dim] - half),
        level.narrow(dim, half, level.shape[dim] - half),
    )
    return torch.maximum(lo, hi, out=out[: lo.numel()].view(lo.shape))


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
    k = rois.shape[0]
    plane = height * width
    if k == 0 or batch_size * channels * plane == 0:
        return grad.new_zeros((batch_size, channels, height, width))
    batch = rois[:, 0].to(torch.int64)
    check_batch_index(batch, batch_size, "roi_pool")
    # Each channel plane gets a spare slot in front, where bins without an argmax (-1) add.
    out = torch.zeros(batch_size * channels * (plane + 1), dtype=acc, device=grad.device)
    start = (batch[:, None] * channels + torch.arange(channels, device=grad.device)) * (plane + 1)
    start = (start + 1)[:, :, None]
    bins = argmax.shape[2] * argmax.shape[3]
    argmax = argmax.reshape(k, channels, bins)
    source = grad.reshape(k, channels, bins).to(acc)
    # In chunks of RoIs, in torchvision's order (k, c, ph, pw): the same float sums.
    step = max(1, GATHER_ELEMENTS // max(channels * bins, 1))
    target = torch.empty((min(step, k), channels, bins), dtype=torch.int64, device=grad.device)
    for s in range(0, k, step):
        m = min(step, k - s)
        t = target[:m]
        t.copy_(argmax[s : s + m]).add_(start[s : s + m])
        out.scatter_add_(0, t.view(-1), source[s : s + m].reshape(-1))
    result = torch.empty(
        (batch_size, channels, height, width), dtype=grad.dtype, device=grad.device
    )
    result.view(batch_size, channels, plane).copy_(
        out.view(batch_size, channels, plane + 1)[:, :, 1:]
    )
    return result
