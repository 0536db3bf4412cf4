"""Deformable convolution (DCNv1/v2) in plain torch: the CPU path and the test oracle.

Output pixel ``(oy, ox)`` of image ``b`` and output channel ``o`` (conv group ``gc``) is::

    y[b, o, oy, ox] = bias[o] + sum_{c in gc, k=(i, j)} weight[o, c, i, j] * m[b, g(c), k, oy, ox]
                          * bilinear(input[b, c], py, px)
    py = oy * stride_h - pad_h + i * dil_h + offset[b, g(c)*2*kh*kw + 2*k,     oy, ox]   (dy)
    px = ox * stride_w - pad_w + j * dil_w + offset[b, g(c)*2*kh*kw + 2*k + 1, oy, ox]   (dx)

with ``g(c)`` the offset group of input channel ``c`` (contiguous chunks of ``C_in / offset_groups``
channels) and ``m = 1`` without a mask. ``bilinear`` follows one of two boundary rules:

* ``"v2"`` (torchvision, DCNv2 and the updated v1 ops of Deformable-ConvNets): zero unless
  ``-1 < py < H`` and ``-1 < px < W``; each of the four corners outside the map reads 0, i.e.
  bilinear sampling of the map zero-padded by one pixel.
* ``"v1"`` (the original MXNet ``deformable_im2col``): zero unless ``0 <= py < H`` and
  ``0 <= px < W``; a sample whose floor lies on the last row (column) is clamped onto it, so it
  replicates the edge instead of blending with zero and passes no gradient along that axis.

Implementation: the map is laid out channels-last with one extra zero row, so that every corner
outside the map (and every sample outside the valid region) reads row ``H*W`` and needs no mask.
The columns ``[B, L, K]`` are the four gathered corner rows weighted by ``mask * bilinear``,
multiplied by the weight with one matmul per conv group. Input channels are cut into segments
that lie in one conv group *and* one offset group, so each conv group's columns are contiguous.
The backward pass reuses the gathers: matmuls give the column and weight gradients, ``index_add_``
scatters the input gradient, and the offset/mask gradients follow from the four corner dot
products. Float16/bfloat16 are computed in float32.
"""

import math
from collections.abc import Sequence

import torch
from torch import Tensor

BOUNDARIES = ("v1", "v2")


def output_size(
    h: int,
    w: int,
    kh: int,
    kw: int,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> tuple[int, int]:
    oh = (h + 2 * padding[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (w + 2 * padding[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    return oh, ow


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _Plan:
    """Shapes and the channel segmentation shared by forward and backward."""

    def __init__(self, input: Tensor, offset: Tensor, weight: Tensor):
        self.b, self.cin, self.h, self.w = input.shape
        self.cout, self.cin_g, self.kh, self.kw = weight.shape
        self.kk = self.kh * self.kw
        self.oh, self.ow = offset.shape[2], offset.shape[3]
        self.l = self.oh * self.ow
        self.groups = self.cin // self.cin_g
        self.og = offset.shape[1] // (2 * self.kk)
        self.cg = self.cin // self.og  # channels per offset group
        self.cs = math.gcd(self.cin_g, self.cg)  # segment: inside one conv and one offset group
        self.ns = self.cin // self.cs
        self.hw1 = self.h * self.w + 1  # one extra all-zero row


def _corners(py: Tensor, px: Tensor, h: int, w: int, boundary: str):
    """Stacked over the four corners (dim 0, in the order (y0, x0), (y0, x1), (y1, x0), (y1, x1)):
    flat pixel indices (``h*w``, the zero row, for a corner off the map or a sample that does not
    count) and bilinear weights; plus the fractions ``ly, lx``. Stacking keeps the number of small
    ops (each a parallel region on the CPU) low."""
    y0, x0 = torch.floor(py), torch.floor(px)
    ly, lx = py - y0, px - x0
    if boundary == "v1":
        valid = (py >= 0) & (py < h) & (px >= 0) & (px < w)
        # A floor on the last row (column) is clamped onto it: both corners there, fraction 0.
        last_y, last_x = y0 >= h - 1, x0 >= w - 1
        ly, lx = ly.masked_fill(last_y, 0), lx.masked_fill(last_x, 0)
        y1, x1 = y0 + (~last_y).to(y0.dtype), x0 + (~last_x).to(x0.dtype)
    else:
        valid = (py > -1) & (py < h) & (px > -1) & (px < w)
        y1, x1 = y0 + 1, x0 + 1
    ys = torch.stack([y0, y0, y1, y1])
    xs = torch.stack([x0, x1, x0, x1])
    ok = valid & (ys >= 0) & (ys <= h - 1) & (xs >= 0) & (xs <= w - 1)
    # Indices in int64 (float32 is exact only up to 2**24 pixels); off-map values are masked first.
    idx = torch.where(ok, ys.masked_fill(~ok, 0).long() * w + xs.masked_fill(~ok, 0).long(), h * w)
    hy, hx = 1 - ly, 1 - lx
    bil = torch.stack([hy, hy, ly, ly]) * torch.stack([hx, lx, hx, lx])
    return idx, bil, ly, lx


def _sampling(p: _Plan, offset: Tensor, mask: Tensor | None, stride, padding, dilation, boundary):
    """Per (image, output pixel, segment, kernel tap): the 4 corner rows of the padded channels-last
    table and their weights (mask times bilinear), shaped [4, B, L, ns, KK]; the mask (or None)
    and the fractions ``ly, lx``, shaped [B, L, ns, KK]."""
    dt, dev = offset.dtype, offset.device
    off = offset.view(p.b, p.og, p.kk, 2, p.l)
    ki = torch.arange(p.kh, device=dev, dtype=dt).repeat_interleave(p.kw) * dilation[0]
    kj = torch.arange(p.kw, device=dev, dtype=dt).repeat(p.kh) * dilation[1]
    oy = (torch.arange(p.oh, device=dev, dtype=dt) * stride[0] - padding[0]).repeat_interleave(p.ow)
    ox = (torch.arange(p.ow, device=dev, dtype=dt) * stride[1] - padding[1]).repeat(p.oh)
    py = (oy[None, :] + ki[:, None]) + off[:, :, :, 0]  # [B, og, KK, L]
    px = (ox[None, :] + kj[:, None]) + off[:, :, :, 1]
    idx, bil, ly, lx = _corners(py, px, p.h, p.w, boundary)
    # Expand offset groups to segments and move the pixel axis before them: [..., B, L, ns, KK].
    seg_og = (torch.arange(p.ns, device=dev) * p.cs) // p.cg
    base = (
        torch.arange(p.b, device=dev)[:, None] * p.ns + torch.arange(p.ns, device=dev)[None, :]
    ) * p.hw1

    def seg(t: Tensor) -> Tensor:
        if p.ns != p.og:
            t = t.index_select(-3, seg_og)
        return t.movedim(-1, -3)

    rows = seg(idx) + base[:, None, :, None]
    wts = seg(bil)
    m = seg(mask.view(p.b, p.og, p.kk, p.l)) if mask is not None else None
    if m is not None:
        wts = wts * m
    return rows, wts, m, seg(ly), seg(lx)


def _table(p: _Plan, input: Tensor) -> Tensor:
    """Channels-last segment table ``[B*ns*(H*W+1), cs]`` with a zero row per (image, segment)."""
    t = input.reshape(p.b, p.ns, p.cs, p.h * p.w).transpose(2, 3)
    t = torch.cat([t, t.new_zeros(p.b, p.ns, 1, p.cs)], dim=2)
    return t.reshape(-1, p.cs)


def _weight_matrix(p: _Plan, weight: Tensor) -> Tensor:
    """``[G, Cout/G, K_g]`` with K_g ordered (segment, tap, channel-in-segment) like the columns."""
    cout_g = p.cout // p.groups
    w = weight.reshape(p.groups, cout_g, p.cin_g // p.cs, p.cs, p.kk).transpose(3, 4)
    return w.reshape(p.groups, cout_g, -1)


def _columns(table: Tensor, rows: Tensor, wts: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted sum of the four gathered corners; returns the columns [N, cs] and the gathered
    corners [4, N, cs]."""
    vals = table.index_select(0, rows.reshape(-1)).view(4, -1, table.shape[1])
    wts = wts.reshape(4, -1, 1)
    cols = vals[0] * wts[0]
    for j in range(1, 4):
        cols.addcmul_(vals[j], wts[j])
    return cols, vals


def _cast(*ts: Tensor | None):
    return [t.to(compute_dtype(t.dtype)) if t is not None else None for t in ts]


def deform_conv2d_forward(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    boundary: str,
) -> Tensor:
    out_dtype = input.dtype
    input, offset, weight, bias, mask = _cast(input, offset, weight, bias, mask)
    p = _Plan(input, offset, weight)
    out = input.new_empty((p.b, p.cout, p.oh, p.ow))
    if out.numel() == 0:
        return out.to(out_dtype)
    rows, wts, _, _, _ = _sampling(p, offset, mask, stride, padding, dilation, boundary)
    cols, _ = _columns(_table(p, input.contiguous()), rows, wts)
    wm = _weight_matrix(p, weight)
    cols = cols.view(p.b * p.l, p.groups, -1)
    if p.groups == 1:
        res = cols[:, 0].mm(wm[0].t()) if bias is None else torch.addmm(bias, cols[:, 0], wm[0].t())
    else:
        res = (
            torch.bmm(cols.transpose(0, 1), wm.transpose(1, 2))
            .transpose(0, 1)
            .reshape(p.b * p.l, p.cout)
        )
        if bias is not None:
            res = res + bias
    out = res.view(p.b, p.oh, p.ow, p.cout).permute(0, 3, 1, 2).contiguous()
    return out.to(out_dtype)


def deform_conv2d_backward(
    grad: Tensor,
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    mask: Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    boundary: str,
    need_input: bool = True,
    need_weight: bool = True,
):
    """Gradients ``(input, offset, weight, mask, bias)``; the mask gradient is an empty tensor
    without a mask. ``need_input=False`` skips input/offset/mask (returned as zeros),
    ``need_weight=False`` skips the weight (zeros)."""
    dtypes = [t.dtype for t in (input, offset, weight)]
    mdtype = mask.dtype if mask is not None else input.dtype
    grad, input, offset, weight, mask = _cast(grad, input, offset, weight, mask)
    p = _Plan(input, offset, weight)
    g_in = torch.zeros_like(input)
    g_off = torch.zeros_like(offset)
    g_w = torch.zeros_like(weight)
    g_mask = torch.zeros_like(mask) if mask is not None else input.new_empty((0,))
    g_bias = grad.sum((0, 2, 3))
    if grad.numel() == 0 or not (need_input or need_weight):
        return _out(g_in, g_off, g_w, g_mask, g_bias, dtypes, mdtype)
    rows, wts, m, ly, lx = _sampling(p, offset, mask, stride, padding, dilation, boundary)
    table = _table(p, input.contiguous())
    cols, vals = _columns(table, rows, wts)
    wm = _weight_matrix(p, weight)
    cout_g = p.cout // p.groups
    go = grad.permute(0, 2, 3, 1).reshape(p.b * p.l, p.groups, cout_g)
    cols = cols.view(p.b * p.l, p.groups, -1)
    if need_weight:
        gwm = torch.bmm(go.permute(1, 2, 0), cols.transpose(0, 1))  # [G, Cout/G, K_g]
        gw = gwm.view(p.groups, cout_g, p.cin_g // p.cs, p.kk, p.cs).transpose(3, 4)
        g_w = gw.reshape(p.cout, p.cin_g, p.kh, p.kw)
    if need_input:
        gcols = torch.bmm(go.transpose(0, 1), wm).transpose(0, 1).reshape(-1, p.cs)  # [N, cs]
        g_tab = torch.zeros_like(table)
        g_tab.index_add_(0, rows.reshape(-1), (gcols * wts.reshape(4, -1, 1)).view(-1, p.cs))
        g_in = (
            g_tab.view(p.b, p.ns, p.hw1, p.cs)[:, :, :-1]
            .transpose(2, 3)
            .reshape(p.b, p.cin, p.h, p.w)
        )
        # s[j] = <column gradient, corner j>: the slope of the sample along each axis follows.
        s0, s1, s2, s3 = torch.linalg.vecdot(vals, gcols).view(4, *ly.shape).unbind(0)
        hy, hx = 1 - ly, 1 - lx
        gpy = hx * (s2 - s0) + lx * (s3 - s1)
        gpx = hy * (s1 - s0) + ly * (s3 - s2)
        if m is not None:
            gm = hy * hx * s0 + hy * lx * s1 + ly * hx * s2 + ly * lx * s3
            gpy, gpx = gpy * m, gpx * m
            g_mask = _to_groups(p, gm).reshape(p.b, p.og * p.kk, p.oh, p.ow)
        g_off = torch.stack([_to_groups(p, gpy), _to_groups(p, gpx)], dim=3)
        g_off = g_off.reshape(p.b, 2 * p.og * p.kk, p.oh, p.ow)
    return _out(g_in, g_off, g_w, g_mask, g_bias, dtypes, mdtype)


def _to_groups(p: _Plan, t: Tensor) -> Tensor:
    """[B, L, ns, KK] per segment -> [B, og, KK, L] summed over the segments of an offset group."""
    t = t.reshape(p.b, p.l, p.og, p.ns // p.og, p.kk).sum(3)
    return t.permute(0, 2, 3, 1)


def _out(g_in, g_off, g_w, g_mask, g_bias, dtypes, mdtype):
    # Contiguous, like the fake kernel's empty_like results.
    return (
        g_in.contiguous().to(dtypes[0]),
        g_off.contiguous().to(dtypes[1]),
        g_w.contiguous().to(dtypes[2]),
        g_mask.contiguous().to(mdtype),
        g_bias.to(dtypes[2]),
    )
