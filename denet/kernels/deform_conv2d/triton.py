"""Triton kernels for deformable convolution (semantics in ``reference.py``).

Forward: a fused implicit GEMM. A program owns ``BLOCK_M`` output pixels (flattened over batch
and space) x ``BLOCK_N`` output channels of one conv group and walks K = taps x input channels in
``BLOCK_K`` channel chunks per tap: the bilinear samples are computed in registers from a
channels-last copy of the input (the ``BLOCK_K`` channels of a corner are contiguous, so the
gathers coalesce) and fed to ``tl.dot`` against the pre-packed weight ``[G, taps, Cin/G, Cout/G]``.
No column buffer is written, unlike torchvision's im2col + GEMM.

Backward: ``_bwd_data`` recomputes the column gradient tile ``grad_out @ weight^T`` per (pixel
tile, tap) and scatters it into a channels-last float32 input gradient with atomic adds; the
same program gathers the four corners again for the offset and mask gradients, reduced over the
chunk's channels before one atomic add per pixel. ``_bwd_weight`` is the transposed implicit GEMM
``columns^T @ grad_out``, split over pixels into partial sums that the host adds up (no atomics,
so the weight gradient is deterministic). Sums run in float32 (float64 for float64 inputs);
float32 tiles are multiplied with 3xTF32 (see ``_precision``), float16/bfloat16 on the tensor
cores directly. Atomic accumulation makes the input/offset/mask gradients non-deterministic in
the last bits. The atomics are relaxed: Triton's default (acq_rel) brackets every one with a
memory barrier and an L1 invalidation on sm_90, and only atomicity is needed here.
"""

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._dispatch import interpreting
from .reference import compute_dtype


@triton.jit
def _corners(py, px, H, W, V1: tl.constexpr):
    """Corner coordinates, fractions and per-corner validity for either boundary rule."""
    y0f = tl.floor(py)
    x0f = tl.floor(px)
    if V1:
        valid = (py >= 0) & (py < H) & (px >= 0) & (px < W)
        cy = y0f >= H - 1
        cx = x0f >= W - 1
        y0f = tl.where(cy, H - 1.0, y0f)
        x0f = tl.where(cx, W - 1.0, x0f)
        ly = tl.where(cy, 0.0, py - y0f)
        lx = tl.where(cx, 0.0, px - x0f)
        y0 = tl.where(valid, y0f, 0.0).to(tl.int32)
        x0 = tl.where(valid, x0f, 0.0).to(tl.int32)
        y1 = tl.where(cy, y0, y0 + 1)
        x1 = tl.where(cx, x0, x0 + 1)
        ok00 = valid
        ok01 = valid
        ok10 = valid
        ok11 = valid
    else:
        valid = (py > -1) & (py < H) & (px > -1) & (px < W)
        ly = py - y0f
        lx = px - x0f
        y0 = tl.where(valid, y0f, -2.0).to(tl.int32)
        x0 = tl.where(valid, x0f, -2.0).to(tl.int32)
        y1 = y0 + 1
        x1 = x0 + 1
        oky0 = valid & (y0 >= 0)
        oky1 = valid & (y1 < H)
        okx0 = x0 >= 0
        okx1 = x1 < W
        ok00 = oky0 & okx0
        ok01 = oky0 & okx1
        ok10 = oky1 & okx0
        ok11 = oky1 & okx1
    return y0, x0, y1, x1, ly, lx, ok00, ok01, ok10, ok11


@triton.jit
def _pixels(m, M, L, OW):
    """Output pixels ``m`` of the flattened ``[B * out_h * out_w]`` axis: in range, image, flat
    position in the image, row and column."""
    pix = m % L
    return m < M, m // L, pix, pix // OW, pix % OW


@triton.jit
def _positions(
    off_ptr,
    mask_ptr,
    b,
    pix,
    m_ok,
    g,
    kpos,
    base_y,
    base_x,
    L,
    OG: tl.constexpr,
    KK: tl.constexpr,
    HAS_MASK: tl.constexpr,
    ACC: tl.constexpr,
):
    """Sampling position and mask of tap ``kpos`` in offset group ``g`` (any broadcastable shape)."""
    off = off_ptr + (b * (2 * OG * KK) + (g * KK + kpos) * 2) * L + pix
    dy = tl.load(off, mask=m_ok, other=0.0).to(ACC)
    dx = tl.load(off + L, mask=m_ok, other=0.0).to(ACC)
    py = base_y + dy
    px = base_x + dx
    if HAS_MASK:
        mk = tl.load(mask_ptr + (b * (OG * KK) + g * KK + kpos) * L + pix, mask=m_ok, other=0.0).to(
            ACC
        )
    else:
        mk = tl.full(py.shape, 1.0, ACC)
    return py, px, mk


@triton.jit
def _gather4(x_ptr, b, c, ok, H, W, CIN, y0, x0, y1, x1, ok00, ok01, ok10, ok11, ACC: tl.constexpr):
    """The four corner values of channels ``c`` (channels-last input), zero outside."""
    row0 = (b * H + y0) * W
    row1 = (b * H + y1) * W
    p00 = (row0 + x0).to(tl.int64) * CIN + c
    p01 = (row0 + x1).to(tl.int64) * CIN + c
    p10 = (row1 + x0).to(tl.int64) * CIN + c
    p11 = (row1 + x1).to(tl.int64) * CIN + c
    v00 = tl.load(x_ptr + p00, mask=ok & ok00, other=0.0).to(ACC)
    v01 = tl.load(x_ptr + p01, mask=ok & ok01, other=0.0).to(ACC)
    v10 = tl.load(x_ptr + p10, mask=ok & ok10, other=0.0).to(ACC)
    v11 = tl.load(x_ptr + p11, mask=ok & ok11, other=0.0).to(ACC)
    return v00, v01, v10, v11, p00, p01, p10, p11


@triton.jit
def _column_tile(
    x_ptr,
    off_ptr,
    mask_ptr,
    b,
    pix,
    oy,
    ox,
    m_ok,
    gc,
    kpos,
    c0,
    H,
    W,
    CIN,
    CIN_G,
    CG,
    L,
    SH,
    SW,
    PH,
    PW,
    DH,
    DW,
    KW: tl.constexpr,
    OG: tl.constexpr,
    KK: tl.constexpr,
    HAS_MASK: tl.constexpr,
    V1: tl.constexpr,
    ONE_OG: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Columns ``[BLOCK_M, BLOCK_K]``: mask * bilinear sample of channels ``c0 + arange(BLOCK_K)``
    of conv group ``gc`` at tap ``kpos``."""
    ck = c0 + tl.arange(0, BLOCK_K)
    c = gc * CIN_G + ck
    k_ok = ck < CIN_G
    i = kpos // KW
    j = kpos % KW
    base_y = (oy * SH - PH + i * DH).to(ACC)
    base_x = (ox * SW - PW + j * DW).to(ACC)
    if ONE_OG:
        # The whole chunk lies in one offset group: positions per pixel, broadcast over channels.
        g = (gc * CIN_G + c0) // CG
        py, px, mk = _positions(
            off_ptr, mask_ptr, b, pix, m_ok, g, kpos, base_y, base_x, L, OG, KK, HAS_MASK, ACC
        )
        py = py[:, None]
        px = px[:, None]
        mk = mk[:, None]
    else:
        g = c // CG
        py, px, mk = _positions(
            off_ptr,
            mask_ptr,
            b[:, None],
            pix[:, None],
            m_ok[:, None] & k_ok[None, :],
            g[None, :],
            kpos,
            base_y[:, None],
            base_x[:, None],
            L,
            OG,
            KK,
            HAS_MASK,
            ACC,
        )
    y0, x0, y1, x1, ly, lx, ok00, ok01, ok10, ok11 = _corners(py, px, H, W, V1)
    ok = m_ok[:, None] & k_ok[None, :]
    v00, v01, v10, v11, p00, p01, p10, p11 = _gather4(
        x_ptr, b[:, None], c[None, :], ok, H, W, CIN, y0, x0, y1, x1, ok00, ok01, ok10, ok11, ACC
    )
    hy = 1.0 - ly
    hx = 1.0 - lx
    cols = ((hy * hx) * v00 + (hy * lx) * v01 + (ly * hx) * v10 + (ly * lx) * v11) * mk
    return cols


@triton.jit
def _fwd_kernel(
    x_ptr,
    off_ptr,
    mask_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    M,
    H,
    W,
    CIN,
    OW,
    L,
    COUT,
    CIN_G,
    COUT_G,
    CG,
    SH,
    SW,
    PH,
    PW,
    DH,
    DW,
    KW: tl.constexpr,
    OG: tl.constexpr,
    KK: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    V1: tl.constexpr,
    ONE_OG: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    gc = tl.program_id(2)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok, b, pix, oy, ox = _pixels(m, M, L, OW)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < COUT_G
    dot_ty = w_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for kpos in range(KK):
        for c0 in range(0, CIN_G, BLOCK_K):
            cols = _column_tile(
                x_ptr,
                off_ptr,
                mask_ptr,
                b,
                pix,
                oy,
                ox,
                m_ok,
                gc,
                kpos,
                c0,
                H,
                W,
                CIN,
                CIN_G,
                CG,
                L,
                SH,
                SW,
                PH,
                PW,
                DH,
                DW,
                KW,
                OG,
                KK,
                HAS_MASK,
                V1,
                ONE_OG,
                ACC,
                BLOCK_K,
            )
            ck = c0 + tl.arange(0, BLOCK_K)
            w_rows = (gc * KK + kpos) * CIN_G + ck
            wt = tl.load(
                w_ptr + w_rows[:, None] * COUT_G + n[None, :],
                mask=(ck < CIN_G)[:, None] & n_ok[None, :],
                other=0.0,
            )
            acc += tl.dot(cols.to(dot_ty), wt, input_precision=PREC, out_dtype=ACC)
    co = gc * COUT_G + n
    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=n_ok, other=0.0).to(ACC)[None, :]
    dst = out_ptr + (b.to(tl.int64) * COUT)[:, None] * L + (co[None, :] * L + pix[:, None])
    tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _scatter_corner(
    x_ptr, gx_ptr, pix, c, CIN, ok, contrib, gcols, ONE_OG: tl.constexpr, ACC: tl.constexpr
):
    """Adds ``contrib`` into the input gradient at one corner and returns ``gcols . value`` there
    (summed over the chunk's channels when they share an offset group)."""
    p = pix.to(tl.int64) * CIN + c
    tl.atomic_add(gx_ptr + p, contrib, mask=ok, sem="relaxed")
    v = tl.load(x_ptr + p, mask=ok, other=0.0).to(ACC)
    sv = gcols * v
    if ONE_OG:
        sv = tl.sum(sv, axis=1)[:, None]
    return sv


@triton.jit
def _bwd_data_kernel(
    x_ptr,
    off_ptr,
    mask_ptr,
    w_ptr,
    gout_ptr,
    gx_ptr,
    goff_ptr,
    gmask_ptr,
    M,
    H,
    W,
    CIN,
    OW,
    L,
    COUT,
    CIN_G,
    COUT_G,
    CG,
    SH,
    SW,
    PH,
    PW,
    DH,
    DW,
    KW: tl.constexpr,
    OG: tl.constexpr,
    KK: tl.constexpr,
    HAS_MASK: tl.constexpr,
    V1: tl.constexpr,
    ONE_OG: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    kpos = tl.program_id(1)
    gc = tl.program_id(2)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok, b, pix, oy, ox = _pixels(m, M, L, OW)
    i = kpos // KW
    j = kpos % KW
    base_y = (oy * SH - PH + i * DH).to(ACC)
    base_x = (ox * SW - PW + j * DW).to(ACC)
    dot_ty = w_ptr.dtype.element_ty
    gout_row = gout_ptr + (b.to(tl.int64) * COUT)[:, None] * L + pix[:, None]
    for c0 in range(0, CIN_G, BLOCK_K):
        ck = c0 + tl.arange(0, BLOCK_K)
        k_ok = ck < CIN_G
        c = gc * CIN_G + ck
        # Column gradient: grad_out [BLOCK_M, Cout/G] @ weight^T [Cout/G, BLOCK_K].
        gcols = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC)
        w_rows = (gc * KK + kpos) * CIN_G + ck
        for n0 in range(0, COUT_G, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            n_ok = n < COUT_G
            go = tl.load(
                gout_row + (gc * COUT_G + n)[None, :] * L,
                mask=m_ok[:, None] & n_ok[None, :],
                other=0.0,
            )
            wt = tl.load(
                w_ptr + w_rows[None, :] * COUT_G + n[:, None],
                mask=n_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            gcols += tl.dot(go.to(dot_ty), wt, input_precision=PREC, out_dtype=ACC)
        if ONE_OG:
            g = (gc * CIN_G + c0) // CG
            py, px, mk = _positions(
                off_ptr, mask_ptr, b, pix, m_ok, g, kpos, base_y, base_x, L, OG, KK, HAS_MASK, ACC
            )
            py = py[:, None]
            px = px[:, None]
            mk = mk[:, None]
            g_b = b[:, None]
            g_l = pix[:, None]
            g_ok = m_ok[:, None]
            g_g = g
        else:
            g = c // CG
            g_b = b[:, None]
            g_l = pix[:, None]
            g_ok = m_ok[:, None] & k_ok[None, :]
            g_g = g[None, :]
            py, px, mk = _positions(
                off_ptr,
                mask_ptr,
                g_b,
                g_l,
                g_ok,
                g_g,
                kpos,
                base_y[:, None],
                base_x[:, None],
                L,
                OG,
                KK,
                HAS_MASK,
                ACC,
            )
        y0, x0, y1, x1, ly, lx, ok00, ok01, ok10, ok11 = _corners(py, px, H, W, V1)
        ok = m_ok[:, None] & k_ok[None, :]
        hy = 1.0 - ly
        hx = 1.0 - lx
        gm = gcols * mk
        # One corner at a time keeps the [BLOCK_M, BLOCK_K] temporaries' live ranges short.
        row0 = (b[:, None] * H + y0) * W
        row1 = (b[:, None] * H + y1) * W
        s00 = _scatter_corner(
            x_ptr, gx_ptr, row0 + x0, c[None, :], CIN, ok & ok00, gm * (hy * hx), gcols, ONE_OG, ACC
        )
        s01 = _scatter_corner(
            x_ptr, gx_ptr, row0 + x1, c[None, :], CIN, ok & ok01, gm * (hy * lx), gcols, ONE_OG, ACC
        )
        s10 = _scatter_corner(
            x_ptr, gx_ptr, row1 + x0, c[None, :], CIN, ok & ok10, gm * (ly * hx), gcols, ONE_OG, ACC
        )
        s11 = _scatter_corner(
            x_ptr, gx_ptr, row1 + x1, c[None, :], CIN, ok & ok11, gm * (ly * lx), gcols, ONE_OG, ACC
        )
        gpy = (hx * (s10 - s00) + lx * (s11 - s01)) * mk
        gpx = (hy * (s01 - s00) + ly * (s11 - s10)) * mk
        goff = goff_ptr + (g_b * (2 * OG * KK) + (g_g * KK + kpos) * 2) * L + g_l
        tl.atomic_add(goff, gpy, mask=g_ok, sem="relaxed")
        tl.atomic_add(goff + L, gpx, mask=g_ok, sem="relaxed")
        if HAS_MASK:
            gmk = hy * hx * s00 + hy * lx * s01 + ly * hx * s10 + ly * lx * s11
            tl.atomic_add(
                gmask_ptr + (g_b * (OG * KK) + g_g * KK + kpos) * L + g_l,
                gmk,
                mask=g_ok,
                sem="relaxed",
            )


@triton.jit
def _bwd_weight_kernel(
    x_ptr,
    off_ptr,
    mask_ptr,
    gout_ptr,
    gw_ptr,
    M,
    H,
    W,
    CIN,
    OW,
    L,
    COUT,
    CIN_G,
    COUT_G,
    CG,
    SH,
    SW,
    PH,
    PW,
    DH,
    DW,
    SPLIT,
    KW: tl.constexpr,
    OG: tl.constexpr,
    KK: tl.constexpr,
    HAS_MASK: tl.constexpr,
    V1: tl.constexpr,
    ONE_OG: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_k = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_gs = tl.program_id(2)
    G = COUT // COUT_G
    gc = pid_gs % G
    split = pid_gs // G
    nck = tl.cdiv(CIN_G, BLOCK_K)
    kpos = pid_k // nck
    c0 = (pid_k % nck) * BLOCK_K
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < COUT_G
    dot_ty = x_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=ACC)
    blocks_per_split = tl.cdiv(tl.cdiv(M, BLOCK_M), SPLIT)
    for blk in range(0, blocks_per_split):
        m = (split * blocks_per_split + blk) * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok, b, pix, oy, ox = _pixels(m, M, L, OW)
        cols = _column_tile(
            x_ptr,
            off_ptr,
            mask_ptr,
            b,
            pix,
            oy,
            ox,
            m_ok,
            gc,
            kpos,
            c0,
            H,
            W,
            CIN,
            CIN_G,
            CG,
            L,
            SH,
            SW,
            PH,
            PW,
            DH,
            DW,
            KW,
            OG,
            KK,
            HAS_MASK,
            V1,
            ONE_OG,
            ACC,
            BLOCK_K,
        )
        go = tl.load(
            gout_ptr
            + (b.to(tl.int64) * COUT)[:, None] * L
            + ((gc * COUT_G + n)[None, :] * L + pix[:, None]),
            mask=m_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        acc += tl.dot(tl.trans(cols.to(dot_ty)), go.to(dot_ty), input_precision=PREC, out_dtype=ACC)
    ck = c0 + tl.arange(0, BLOCK_K)
    rows = ((split * G + gc) * KK + kpos) * CIN_G + ck
    tl.store(
        gw_ptr + rows[:, None] * COUT_G + n[None, :],
        acc,
        mask=(ck < CIN_G)[:, None] & n_ok[None, :],
    )


# ----------------------------------------------------------------------------------- launchers


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _precision(dtype: torch.dtype) -> str:
    """float32 products: with ``torch.backends.cuda.matmul.allow_tf32`` (off by default, as for the
    torchvision GEMM) plain TF32; otherwise 3xTF32, which splits each operand into a TF32 head and
    tail and keeps float32 accuracy (about 1e-6 relative) on the tensor cores."""
    if dtype != torch.float32 or interpreting():
        return "ieee"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"


def _pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


class _Shapes:
    def __init__(self, input: Tensor, offset: Tensor, weight: Tensor, stride, padding, dilation):
        self.b, self.cin, self.h, self.w = input.shape
        self.dtype = input.dtype
        self.cout, self.cin_g, kh, self.kw = weight.shape
        self.kk = kh * self.kw
        self.oh, self.ow = offset.shape[2], offset.shape[3]
        self.l = self.oh * self.ow
        self.m = self.b * self.l
        self.groups = self.cin // self.cin_g
        self.cout_g = self.cout // self.groups
        self.og = offset.shape[1] // (2 * self.kk)
        self.cg = self.cin // self.og
        self.geom = (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
        # BLOCK_K channels never straddle an offset group when groups of channels line up.
        self.block_k = _pow2(min(self.cin_g, 32), 16, 32)
        self.one_og = (
            self.cg % self.block_k == 0 and self.cin_g % self.block_k == 0
        ) or self.og == 1

    def sizes(self):
        return (
            self.m,
            self.h,
            self.w,
            self.cin,
            self.ow,
            self.l,
            self.cout,
            self.cin_g,
            self.cout_g,
            self.cg,
        )


def _packed_weight(weight: Tensor, s: _Shapes) -> Tensor:
    """[Cout, Cin/G, kh, kw] -> [G, taps, Cin/G, Cout/G] (K rows, N contiguous)."""
    w = weight.reshape(s.groups, s.cout_g, s.cin_g, s.kk)
    return w.permute(0, 3, 2, 1).contiguous()


def _channels_last(input: Tensor) -> Tensor:
    return input.permute(0, 2, 3, 1).contiguous()


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _tiles(s: _Shapes, device: torch.device, reduce_m: int | None = None):
    """(BLOCK_M, BLOCK_N). The interpreter's cost is per program and per loop step, not per lane,
    so it gets one big tile. On a GPU the gathers need many resident programs to hide their
    latency: the forward's BLOCK_M shrinks until the output tiles fill every SM twice; the
    backward kernels take ``reduce_m`` (their grids are large enough, and small tiles keep their
    registers and shared memory, hence their occupancy, in check)."""
    block_n = _pow2(s.cout_g, 16, 64)
    if interpreting():
        return _pow2(s.m, 16, 256), block_n
    if s.dtype == torch.float64:
        return 32, min(block_n, 32)  # float64 tiles need twice the shared memory
    if reduce_m is not None:
        return reduce_m, block_n
    programs = lambda bm: triton.cdiv(s.m, bm) * triton.cdiv(s.cout_g, block_n) * s.groups  # noqa: E731
    block_m = 64
    while block_m > 32 and programs(block_m) < 2 * _num_sms(device):
        block_m //= 2
    return block_m, block_n


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
    s = _Shapes(input, offset, weight, stride, padding, dilation)
    out = torch.empty((s.b, s.cout, s.oh, s.ow), dtype=input.dtype, device=input.device)
    if out.numel() == 0:
        return out
    x = _channels_last(input)
    offset = offset.contiguous()
    mask_t = mask.contiguous() if mask is not None else offset
    bias_t = bias.contiguous() if bias is not None else offset
    wp = _packed_weight(weight, s)
    block_m, block_n = _tiles(s, input.device)
    grid = (triton.cdiv(s.m, block_m), triton.cdiv(s.cout_g, block_n), s.groups)
    _fwd_kernel[grid](
        x,
        offset,
        mask_t,
        wp,
        bias_t,
        out,
        *s.sizes(),
        *s.geom,
        KW=s.kw,
        OG=s.og,
        KK=s.kk,
        HAS_MASK=mask is not None,
        HAS_BIAS=bias is not None,
        V1=boundary == "v1",
        ONE_OG=s.one_og,
        ACC=_tl_acc(input.dtype),
        PREC=_precision(input.dtype),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=s.block_k,
        num_warps=4,
    )
    return out


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
    s = _Shapes(input, offset, weight, stride, padding, dilation)
    acc_dtype = compute_dtype(input.dtype)
    dev = input.device
    g_bias = grad.sum((0, 2, 3), dtype=acc_dtype).to(weight.dtype)
    g_in = torch.zeros((s.b, s.h, s.w, s.cin), dtype=acc_dtype, device=dev)
    g_off = torch.zeros(offset.shape, dtype=acc_dtype, device=dev)
    g_mask = (
        torch.zeros(mask.shape, dtype=acc_dtype, device=dev)
        if mask is not None
        else input.new_empty((0,))
    )
    g_w = None
    if grad.numel() and input.numel() and (need_input or need_weight):
        x = _channels_last(input)
        offset_c = offset.contiguous()
        mask_t = mask.contiguous() if mask is not None else offset_c
        grad = grad.contiguous()
        consts = dict(
            KW=s.kw,
            OG=s.og,
            KK=s.kk,
            HAS_MASK=mask is not None,
            V1=boundary == "v1",
            ONE_OG=s.one_og,
            ACC=_tl_acc(input.dtype),
            PREC=_precision(input.dtype),
            BLOCK_K=s.block_k,
        )
        if need_input:
            wp = _packed_weight(weight, s)
            block_m, block_n = _tiles(s, dev, reduce_m=32)
            grid = (triton.cdiv(s.m, block_m), s.kk, s.groups)
            # One stage: pipelining the grad_out tiles would cost registers that this kernel,
            # the heaviest of the three, needs to stay free of spills (ptxas, sm_90).
            _bwd_data_kernel[grid](
                x,
                offset_c,
                mask_t,
                wp,
                grad,
                g_in,
                g_off,
                g_mask,
                *s.sizes(),
                *s.geom,
                **consts,
                BLOCK_M=block_m,
                BLOCK_N=block_n,
                num_warps=4,
                num_stages=1,
            )
        if need_weight:
            # Split the pixel reduction so that there are a few programs per SM; the partial sums
            # are added on the host (deterministic, no atomics).
            block_m, block_n = _tiles(s, dev, reduce_m=32)
            tiles = (
                s.kk * triton.cdiv(s.cin_g, s.block_k) * triton.cdiv(s.cout_g, block_n) * s.groups
            )
            split = max(1, min(triton.cdiv(s.m, block_m), triton.cdiv(4 * _num_sms(dev), tiles)))
            part = torch.empty(
                (split, s.groups, s.kk, s.cin_g, s.cout_g), dtype=acc_dtype, device=dev
            )
            grid = (
                s.kk * triton.cdiv(s.cin_g, s.block_k),
                triton.cdiv(s.cout_g, block_n),
                s.groups * split,
            )
            _bwd_weight_kernel[grid](
                x,
                offset_c,
                mask_t,
                grad,
                part,
                *s.sizes(),
                *s.geom,
                split,
                **consts,
                BLOCK_M=block_m,
                BLOCK_N=block_n,
                num_warps=4,
            )
            gw = part.sum(0) if split > 1 else part[0]  # [G, taps, Cin/G, Cout/G]
            g_w = gw.permute(0, 3, 2, 1).reshape(weight.shape).to(weight.dtype).contiguous()
    if g_w is None:
        g_w = torch.zeros_like(weight)
    g_in = g_in.permute(0, 3, 1, 2).contiguous().to(input.dtype)
    mask_dtype = mask.dtype if mask is not None else input.dtype
    return g_in, g_off.to(offset.dtype), g_w, g_mask.to(mask_dtype), g_bias
