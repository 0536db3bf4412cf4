"""RoIAlign in plain torch: the CPU path and the test oracle. Semantics are torchvision's.

For RoI ``k`` with image index ``b = int(rois[k, 0])`` and ``offset = 0.5 if aligned else 0``::

    y0 = rois[k, 2] * spatial_scale - offset           # likewise x0, and y1, x1 from rois[k, 4], [k, 3]
    roi_h = y1 - y0; if not aligned: roi_h = max(roi_h, 1)
    bin_h = roi_h / pooled_h
    grid_h = sampling_ratio if sampling_ratio > 0 else ceil(roi_h / pooled_h)   # may be <= 0
    y(ph, iy) = (y0 + ph * bin_h) + ((iy + 0.5) * bin_h) / grid_h            # this operation order

A sample outside ``[-1, H] x [-1, W]`` contributes 0; otherwise it is clamped to ``>= 0`` and
interpolated bilinearly from its four neighbours, the upper neighbour clamped to the last row or
column. Each output is the sum over the ``grid_h x grid_w`` samples divided by
``max(grid_h * grid_w, 1)``, so a RoI without samples gives 0. Coordinates and sums use float32,
or float64 for float64 inputs.

How it is computed. Bilinear sampling on a regular grid is separable: the mean over a bin's
samples is ``sum_{r, s} ay[ph, r] * ax[pw, s] * x[r, s]``, where ``ay[ph, r]`` sums the
interpolation weights of the bin's sample rows on map row ``r``, divided by ``grid_h``; it is
non-zero on a short window of rows. The whole operator is therefore one sparse matrix (one row
per bin, ``ay * ax`` on the pixels of the bin's window) times a channels-last copy of the map,
built from a constant number of vectorised tensor operations and applied with one CSR matmul;
the backward pass applies its transpose (entries re-sorted by pixel). Both are deterministic.
The sample taps (``[K, bins, 2 * grid]``) are built in chunks of RoIs so that a few enormous
RoIs with adaptive sampling cannot exhaust memory.
"""

import warnings

import torch
from torch import Tensor

# Elements of the largest temporary one chunk may allocate (crop values or sample taps).
CHUNK_ELEMENTS = 1 << 21


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Coordinates and sums: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def roi_geometry(
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    dtype: torch.dtype,
):
    """Per-RoI ``batch [K] int64, start [K, 2] (y0, x0), bin [K, 2] (h, w), grid [K, 2] int64``
    in torchvision's arithmetic (``ps_roi_align`` is this with ``aligned=True``)."""
    batch = rois[:, 0].to(torch.int64)  # C's int(): truncation
    coords = rois[:, 1:].to(dtype) * spatial_scale
    if aligned:
        coords = coords - 0.5
    start = coords[:, [1, 0]]
    size = coords[:, [3, 2]] - start
    if not aligned:
        size = size.clamp(min=1.0)
    pooled = torch.tensor([pooled_height, pooled_width], dtype=dtype, device=rois.device)
    bin_size = size / pooled
    if sampling_ratio > 0:
        grid = torch.full_like(batch, sampling_ratio)[:, None].expand(-1, 2).contiguous()
    else:
        grid = torch.ceil(size / pooled).to(torch.int64)
    return batch, start, bin_size, grid


def check_batch_index(batch: Tensor, n_img: int, op: str) -> None:
    """The sparse matrices index the map directly: an image index outside ``[0, N)`` must not
    reach them (torchvision reads out of bounds there)."""
    if batch.numel() and (int(batch.min()) < 0 or int(batch.max()) >= n_img):
        raise ValueError(
            f"{op}: the image indices of the boxes (column 0) must lie in [0, {n_img}) for "
            f"a batch of {n_img}, got {int(batch.min())}..{int(batch.max())}"
        )


def sample_positions(start: Tensor, bin_size: Tensor, grid: Tensor, p: Tensor, num: int) -> Tensor:
    """Positions ``(start + p * bin) + ((i + 0.5) * bin) / grid`` for ``i < num``: shape ``[..., num]``.
    ``start``, ``bin_size``, ``grid`` and ``p`` broadcast together."""
    dt = start.dtype
    i = torch.arange(num, dtype=dt, device=start.device) + 0.5
    g = grid.clamp(min=1).to(dt)
    return (start + p.to(dt) * bin_size)[..., None] + (i * bin_size[..., None]) / g[..., None]


def corners(pos: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear neighbours of in-range positions: ``low, high`` (int64) and weights ``1 - f, f``.
    Positions below 0 are clamped to 0; the upper neighbour stops at ``size - 1``."""
    pos = pos.clamp(min=0.0, max=float(size))  # the upper clamp only keeps the int cast in range
    low = pos.to(torch.int64)
    edge = low >= size - 1
    low = torch.where(edge, size - 1, low)
    high = torch.where(edge, size - 1, low + 1)
    frac = torch.where(edge, 0.0, pos - low.to(pos.dtype))
    return low, high, 1.0 - frac, frac


def axis_extent(
    start: Tensor, bin_size: Tensor, grid: Tensor, p: Tensor, size: int
) -> tuple[Tensor, Tensor]:
    """Lowest and highest row (or column) that any sample of bin ``p`` can touch.

    Within a bin the positions are monotonic in ``i``, so the first and last sample bound them;
    clamping those to the valid range ``[-1, size]`` keeps the bound for samples cut off there.
    """
    g = grid.clamp(min=1)
    first = sample_positions(start, bin_size, g, p, 1)[..., 0]
    i_last = (g - 1).to(start.dtype) + 0.5
    last = (start + p.to(start.dtype) * bin_size) + (i_last * bin_size) / g.to(start.dtype)
    lo = torch.minimum(first, last).nan_to_num(nan=0.0).clamp(-1.0, float(size))
    hi = torch.maximum(first, last).nan_to_num(nan=0.0).clamp(-1.0, float(size))
    return corners(lo, size)[0], corners(hi, size)[1]


def axis_weights(
    start: Tensor, bin_size: Tensor, grid: Tensor, p: Tensor, size: int, base: Tensor, span: int
) -> Tensor:
    """Summed interpolation weights over a window of ``span`` rows from ``base``: ``[..., span]``.

    Entry ``[..., r]`` is ``sum_i w_i(base + r) / grid`` over the samples of bin ``p``; samples that
    do not exist (``i >= grid``) or fall outside ``[-1, size]`` weigh nothing.
    """
    num = max(int(grid.max()), 0) if grid.numel() else 0
    shape = torch.broadcast_shapes(start.shape, bin_size.shape, grid.shape, p.shape, base.shape)
    out = torch.zeros(shape + (span,), dtype=start.dtype, device=start.device)
    if num == 0:
        return out
    pos = sample_positions(start, bin_size, grid, p, num)
    i = torch.arange(num, device=start.device)
    valid = (i < grid[..., None]) & (pos >= -1.0) & (pos <= float(size))
    low, high, w_low, w_high = corners(torch.where(valid, pos, 0.0), size)
    g = grid.clamp(min=1).to(start.dtype)[..., None]
    b = base[..., None]
    index = torch.cat([torch.where(valid, low - b, 0), torch.where(valid, high - b, 0)], dim=-1)
    weight = (
        torch.cat([torch.where(valid, w_low, 0.0), torch.where(valid, w_high, 0.0)], dim=-1) / g
    )
    return out.scatter_add_(-1, index, weight)


def bin_windows(start: Tensor, bin_size: Tensor, grid: Tensor, pooled: int, size: int):
    """Per RoI and bin along one axis: first row ``lo [K, P]``, row count ``length [K, P]`` and the
    summed weights of those rows ``table [K, P, max(length)]``."""
    p = torch.arange(pooled, device=start.device)
    start, bin_size, grid = start[:, None], bin_size[:, None], grid[:, None]
    lo, hi = axis_extent(start, bin_size, grid, p, size)
    length = hi - lo + 1
    span = int(length.max())
    # The sample taps are [K, P, 2 * grid]; a few enormous RoIs must not blow up memory.
    taps = max(int(grid.max()), 1) * 2 * pooled
    step = max(1, CHUNK_ELEMENTS // taps)
    table = torch.cat(
        [
            axis_weights(
                start[i : i + step],
                bin_size[i : i + step],
                grid[i : i + step],
                p,
                size,
                lo[i : i + step],
                span,
            )
            for i in range(0, start.shape[0], step)
        ]
    )
    return lo, length, table


def sampling_matrix(
    planes: Tensor,
    start: Tensor,
    bin_size: Tensor,
    grid: Tensor,
    pooled_height: int,
    pooled_width: int,
    height: int,
    width: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """CSR arrays of RoIAlign's sampling matrix (see :func:`window_matrix`)."""
    ylo, ylen, ay = bin_windows(start[:, 0], bin_size[:, 0], grid[:, 0], pooled_height, height)
    xlo, xlen, ax = bin_windows(start[:, 1], bin_size[:, 1], grid[:, 1], pooled_width, width)
    ylen = ylen * (grid > 0).all(1, keepdim=True)  # no samples: an empty row
    return window_matrix(planes, (ylo, ylen, ay), (xlo, xlen, ax), height, width)


def window_matrix(
    planes: Tensor,
    rows: tuple[Tensor, Tensor, Tensor],
    cols: tuple[Tensor, Tensor, Tensor],
    height: int,
    width: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """CSR arrays ``(crow, col, val)`` of the matrix that maps a channels-last map ``[pixels, C]``
    to the bins ``[K * PH * PW, C]``.

    ``rows = (lo, length, weight)`` describes each bin row's window: first map row ``lo [K, PH]``,
    ``length [K, PH]`` rows, and their weights ``weight [K, PH, >= max(length)]``; ``cols`` likewise
    with ``PW``. Row ``(k, ph, pw)`` of the matrix holds ``wy * wx`` for every pixel of its window,
    in row-major order. ``planes [K, PH * PW]`` is the index of the ``H x W`` plane each bin reads
    (the image for RoIAlign, image and bin for the position-sensitive operators).
    """
    ylo, ylen, ay = rows
    xlo, xlen, ax = cols
    device = ylo.device
    k, pooled_height = ylo.shape
    pooled_width = xlo.shape[1]
    full = (k, pooled_height, pooled_width)
    counts = (ylen[:, :, None] * xlen[:, None, :]).view(-1)
    crow = torch.zeros(counts.shape[0] + 1, dtype=torch.int64, device=device)
    torch.cumsum(counts, 0, out=crow[1:])
    row = torch.repeat_interleave(counts)  # the bin of every entry
    j = torch.arange(row.shape[0], device=device) - crow.index_select(
        0, row
    )  # entry within its bin
    ph = torch.arange(pooled_height, device=device)[:, None]
    pw = torch.arange(pooled_width, device=device)[None, :]
    kk = torch.arange(k, device=device)[:, None, None]
    first = (planes.view(full) * height + ylo[:, :, None]) * width + xlo[:, None, :]
    packed = (
        torch.stack(
            [
                xlen[:, None, :].expand(full),
                first,
                ((kk * pooled_height + ph) * ay.shape[2]).expand(full),
                ((kk * pooled_width + pw) * ax.shape[2]).expand(full),
            ],
            dim=-1,
        )
        .view(-1, 4)
        .index_select(0, row)
    )
    wlen, first, yoff, xoff = packed.unbind(1)
    s = torch.div(j, wlen, rounding_mode="floor")
    t = j - s * wlen
    col = first + s * width + t
    val = ay.reshape(-1).index_select(0, yoff + s) * ax.reshape(-1).index_select(0, xoff + t)
    return crow, col, val


def csr_matmul(
    crow: Tensor, col: Tensor, val: Tensor, rows: int, cols: int, dense: Tensor
) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        m = torch.sparse_csr_tensor(crow, col, val, (rows, cols), check_invariants=False)
    return torch.sparse.mm(m, dense)


def csr_transpose_matmul(
    crow: Tensor, col: Tensor, val: Tensor, rows: int, cols: int, dense: Tensor
) -> Tensor:
    """``M^T @ dense`` for CSR ``M [rows, cols]``: the entries re-sorted by column form ``M^T``'s CSR."""
    # int32 keys sort faster; the stable order keeps every row's entries in a fixed order.
    key = col.to(torch.int32) if cols < 2**31 else col
    order = torch.argsort(key, stable=True)
    row = torch.repeat_interleave(crow.diff())
    crow_t = torch.zeros(cols + 1, dtype=torch.int64, device=col.device)
    torch.cumsum(torch.bincount(col, minlength=cols), 0, out=crow_t[1:])
    return csr_matmul(
        crow_t, row.index_select(0, order), val.index_select(0, order), cols, rows, dense
    )


def roi_align_forward(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    n_img, channels, height, width = input.shape
    k = rois.shape[0]
    acc = acc_dtype(input.dtype)
    if k == 0 or channels == 0 or height == 0 or width == 0:
        return input.new_zeros((k, channels, pooled_height, pooled_width))
    batch, start, bin_size, grid = roi_geometry(
        rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, acc
    )
    check_batch_index(batch, n_img, "roi_align")
    planes = batch[:, None].expand(k, pooled_height * pooled_width)
    crow, col, val = sampling_matrix(
        planes, start, bin_size, grid, pooled_height, pooled_width, height, width
    )
    flat = input.permute(0, 2, 3, 1).to(acc).reshape(n_img * height * width, channels)
    out = csr_matmul(crow, col, val, k * pooled_height * pooled_width, flat.shape[0], flat)
    out = out.view(k, pooled_height, pooled_width, channels).permute(0, 3, 1, 2)
    return out.to(input.dtype, memory_format=torch.contiguous_format)


def roi_align_backward(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    k = rois.shape[0]
    acc = acc_dtype(grad.dtype)
    if k == 0 or channels == 0 or height == 0 or width == 0 or batch_size == 0:
        return grad.new_zeros((batch_size, channels, height, width))
    batch, start, bin_size, grid = roi_geometry(
        rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, acc
    )
    check_batch_index(batch, batch_size, "roi_align")
    planes = batch[:, None].expand(k, pooled_height * pooled_width)
    crow, col, val = sampling_matrix(
        planes, start, bin_size, grid, pooled_height, pooled_width, height, width
    )
    g = grad.permute(0, 2, 3, 1).to(acc).reshape(k * pooled_height * pooled_width, channels)
    out = csr_transpose_matmul(crow, col, val, g.shape[0], batch_size * height * width, g)
    out = out.view(batch_size, height, width, channels).permute(0, 3, 1, 2)
    return out.to(grad.dtype, memory_format=torch.contiguous_format)
