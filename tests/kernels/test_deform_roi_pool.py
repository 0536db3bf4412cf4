"""denet.kernels.deform_roi_pool: Deformable ConvNets' deformable (PS)RoI pooling against values
worked out by hand from the formulas; gradients (input and offset), both backends, opcheck, errors."""

import os

import pytest
import torch

from denet.kernels._dispatch import interpreting
from denet.kernels.deform_roi_pool import DeformRoIPool, deform_roi_pool


def _linear_map(device, channels=1, h=6, w=6):
    """Channel c holds 100*c + 6*y + x. Bilinear interpolation reproduces it exactly, so every
    valid sample at (h, w) is worth 100*c + 6*clamp(h) + clamp(w)."""
    y = torch.arange(h, dtype=torch.float64)[:, None]
    x = torch.arange(w, dtype=torch.float64)[None, :]
    planes = [100 * c + 6 * y + x for c in range(channels)]
    return torch.stack(planes).unsqueeze(0).to(device)


def _assert_grid(t, nested, atol):
    torch.testing.assert_close(
        t.detach().cpu(), torch.tensor(nested, dtype=torch.float64), atol=atol, rtol=0
    )


def _box(device, *xyxy, batch=0):
    return torch.tensor([[batch, *xyxy]], dtype=torch.float64, device=device)


# Box (1, 1, 3, 2) at scale 1: start = round(1) - 0.5 = 0.5 on both axes, end_w = (3+1) - 0.5 = 3.5,
# end_h = (2+1) - 0.5 = 2.5, so roi_w = 3, roi_h = 2. A 2x2 grid: bin_w = 1.5, bin_h = 1; with 2
# samples per part, sub_w = 0.75 and sub_h = 0.5, taken at the sub-bin starts:
#   bin (0, 0): w in {0.5, 1.25}, h in {0.5, 1.0}  -> 6*0.75 + 0.875 = 5.375
#   bin (0, 1): w in {2.0, 2.75}                     -> 6*0.75 + 2.375 = 6.875
#   bin (1, 0): h in {1.5, 2.0}                      -> 6*1.75 + 0.875 = 11.375
#   bin (1, 1):                                      -> 6*1.75 + 2.375 = 12.875
NO_TRANS_2x2 = [[5.375, 6.875], [11.375, 12.875]]


def test_golden_no_trans(device):
    out = deform_roi_pool(
        _linear_map(device), _box(device, 1, 1, 3, 2), None, 2, 1.0, 1, None, 2, 0.1
    )
    assert out.shape == (1, 1, 2, 2)
    _assert_grid(out[0, 0], NO_TRANS_2x2, 1e-12)


def test_golden_rounds_box_half_away_from_zero(device):
    # round(0.5) = 1, round(2.5) = 3, round(1.5) = 2 (C's round; torch.round would give 0, 2, 2).
    out = deform_roi_pool(
        _linear_map(device), _box(device, 0.5, 0.5, 2.5, 1.5), None, 2, 1.0, 1, None, 2, 0.1
    )
    _assert_grid(out[0, 0], NO_TRANS_2x2, 1e-12)
    # spatial_scale 0.5: start = round(2)*0.5 - 0.5 = 0.5 on both axes. One bin with one sample,
    # taken at the RoI start (0.5, 0.5): 6*0.5 + 0.5.
    out = deform_roi_pool(
        _linear_map(device), _box(device, 2, 2, 6, 4), None, 1, 0.5, 1, None, 1, 0.1
    )
    assert out.item() == pytest.approx(3.5, abs=1e-12)


def test_golden_position_sensitive(device):
    # G = 2, D = 2 -> 8 channels; bin (ph, pw) of output channel d reads channel (2d + ph)*2 + pw.
    x = _linear_map(device, channels=8)
    out = deform_roi_pool(x, _box(device, 1, 1, 3, 2), None, 2, 1.0, 2, None, 2, 0.1)
    assert out.shape == (1, 2, 2, 2)
    for d in range(2):
        for ph in range(2):
            for pw in range(2):
                want = 100 * ((2 * d + ph) * 2 + pw) + NO_TRANS_2x2[ph][pw]
                assert out[0, d, ph, pw].item() == pytest.approx(want, abs=1e-10)
    # A 3x3 grid with G = 2: gh = floor(ph*2/3) = 0, 0, 1 -> bin (2, 1) of d = 1 reads (2 + 1)*2 + 0 = 6.
    out = deform_roi_pool(x, _box(device, 1, 1, 3, 2), None, 3, 1.0, 2, None, 1, 0.1)
    # roi 3x2, bins 1 x 2/3: bin (2, 1) starts at w = 0.5 + 1 = 1.5, h = 0.5 + 4/3.
    assert out[0, 1, 2, 1].item() == pytest.approx(600 + 6 * (0.5 + 4 / 3) + 1.5, abs=1e-10)


def test_golden_trans_and_gradients(device):
    """One class, part_size 1: the shift is trans * trans_std * roi size."""
    x = _linear_map(device).requires_grad_()
    # dx = 2, dy = -1 with trans_std 0.1 on the 3x2 RoI: w shifts by +0.6, h by -0.2. One 3x2 bin
    # with 2 samples per part: w in {1.1, 2.6}, h in {0.3, 1.3} -> 6*0.8 + 1.85 = 6.65.
    off = torch.tensor(
        [[[[2.0]], [[-1.0]]]], dtype=torch.float64, device=device, requires_grad=True
    )
    out = deform_roi_pool(x, _box(device, 1, 1, 3, 2), off, 1, 1.0, 1, 1, 2, 0.1)
    assert out.item() == pytest.approx(6.65, abs=1e-12)
    g_x, g_off = torch.autograd.grad(out.sum(), [x, off])
    # d/d dx = trans_std * roi_w * df/dw = 0.3; d/d dy = trans_std * roi_h * df/dh = 0.1 * 2 * 6.
    assert g_off.flatten().tolist() == pytest.approx([0.3, 1.2], abs=1e-12)
    # The input gradient spreads 1/4 per sample over its corners and sums to 1.
    assert g_x.sum().item() == pytest.approx(1.0, abs=1e-12)
    # Sample (h=0.3, w=1.1): corner (0, 1) gets 0.25 * 0.7 * 0.9 and nothing else feeds it.
    assert g_x[0, 0, 0, 1].item() == pytest.approx(0.25 * 0.7 * 0.9, abs=1e-12)


def test_golden_skips_and_clamps_samples(device):
    x = _linear_map(device).requires_grad_()
    # Box (3, 1, 4, 2): roi_w = roi_h = 2, start (2.5, 0.5); one bin, 2 samples: sub = 1.
    # dx = 14 * 0.1 * 2 = +2.8 -> w in {5.3, 6.3}: 6.3 > W - 0.5 is skipped, 5.3 is clamped to 5.
    # h in {0.5, 1.5}: the mean of the two valid samples is 6*1 + 5 = 11.
    off = torch.tensor(
        [[[[14.0]], [[0.0]]]], dtype=torch.float64, device=device, requires_grad=True
    )
    out = deform_roi_pool(x, _box(device, 3, 1, 4, 2), off, 1, 1.0, 1, 1, 2, 0.1)
    assert out.item() == pytest.approx(11.0, abs=1e-12)
    g_x, g_off = torch.autograd.grad(out.sum(), [x, off])
    # The clamped x passes no gradient; y keeps 0.1 * 2 * 6. The two valid samples share 1.
    assert g_off.flatten().tolist() == pytest.approx([0.0, 1.2], abs=1e-12)
    assert g_x.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert g_x[0, 0, :, 5].sum().item() == pytest.approx(1.0, abs=1e-12)
    # Every sample outside: the bin is 0 and passes no gradient.
    off2 = torch.tensor(
        [[[[30.0]], [[0.0]]]], dtype=torch.float64, device=device, requires_grad=True
    )
    out = deform_roi_pool(x, _box(device, 3, 1, 4, 2), off2, 1, 1.0, 1, 1, 2, 0.1)
    assert out.item() == 0.0
    assert all(g.abs().sum().item() == 0.0 for g in torch.autograd.grad(out.sum(), [x, off2]))


def test_golden_per_class_offsets_and_part_cells(device):
    # D = 2 channels, two classes with their own offsets; a 2x2 grid with part_size 1 (all four
    # bins share the one part cell, so the offset gradient sums over them). The shifts keep every
    # sample off integer positions, where the original's floor/ceil corners coincide.
    x = _linear_map(device, channels=2)
    off = torch.tensor(
        [[[[0.5]], [[0.25]], [[1.0]], [[0.5]]]],
        dtype=torch.float64,
        device=device,
        requires_grad=True,
    )
    out = deform_roi_pool(x, _box(device, 1, 1, 3, 2), off, 2, 1.0, 1, 1, 2, 0.1)
    # Class 0 shifts w by 0.05 * 3 = 0.15 and h by 0.025 * 2 = 0.05; class 1 by 0.3 and 0.1.
    want0 = [[v + 6 * 0.05 + 0.15 for v in row] for row in NO_TRANS_2x2]
    _assert_grid(out[0, 0], want0, 1e-12)
    want1 = [[100 + v + 6 * 0.1 + 0.3 for v in row] for row in NO_TRANS_2x2]
    _assert_grid(out[0, 1], want1, 1e-12)
    (g_off,) = torch.autograd.grad(out.sum(), [off])
    # Four bins per class, each d/d dx = 0.1 * 3 * 1 and d/d dy = 0.1 * 2 * 6.
    assert g_off.flatten().tolist() == pytest.approx([1.2, 4.8, 1.2, 4.8], abs=1e-12)


def test_boxes_as_list_and_batch_index(device):
    x = torch.cat([_linear_map(device), _linear_map(device) + 1000], dim=0)
    out = deform_roi_pool(
        x,
        [
            torch.zeros(0, 4, device=device, dtype=torch.float64),
            torch.tensor([[1.0, 1, 3, 2]], device=device, dtype=torch.float64),
        ],
        None,
        2,
        1.0,
        1,
        None,
        2,
        0.1,
    )
    _assert_grid(out[0, 0], [[v + 1000 for v in r] for r in NO_TRANS_2x2], 1e-10)


def test_empty_boxes(device):
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    off = torch.zeros(0, 2, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    out = deform_roi_pool(
        x, torch.zeros(0, 5, dtype=torch.float64, device=device), off, 2, 1.0, 2, None, 2, 0.1
    )
    assert out.shape == (0, 2, 2, 2)
    g_x, g_off = torch.autograd.grad(out.sum(), [x, off])
    assert g_x.abs().sum().item() == 0.0 and g_off.shape == off.shape


# ------------------------------------------------------------- random cases and gradcheck


def _random_case(
    seed,
    device,
    n=2,
    g=2,
    d=2,
    h=7,
    w=6,
    k=3,
    out=3,
    part=2,
    spp=2,
    ncls=2,
    scale=0.5,
    dtype=torch.float64,
):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d * g * g, h, w, generator=gen, dtype=torch.float64)
    xy = torch.rand(k, 2, generator=gen, dtype=torch.float64) * torch.tensor([w, h]) / scale * 0.8
    wh = torch.rand(k, 2, generator=gen, dtype=torch.float64) * torch.tensor([w, h]) / scale * 0.6
    rois = torch.cat([torch.randint(0, n, (k, 1), generator=gen).double(), xy, xy + wh], dim=1)
    off = torch.randn(k, 2 * ncls, part, part, generator=gen, dtype=torch.float64) if ncls else None
    args = (out, scale, g, part, spp, 0.3)
    cast = lambda t: t.to(device, dtype) if t is not None else None  # noqa: E731
    return cast(x), rois.to(device), cast(off), args


@pytest.mark.parametrize("ncls", [0, 1, 2])
def test_triton_matches_reference(monkeypatch, ncls):
    if not interpreting() and not torch.cuda.is_available():
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x, rois, off, args = _random_case(ncls, dev, ncls=ncls)
    results = []
    for backend in ("reference", "triton"):
        monkeypatch.setenv("DENET_KERNEL_BACKEND", backend)
        leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, off)]
        y = deform_roi_pool(leaves[0], rois, leaves[1], *args)
        go = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=dev).view_as(y)
        grads = torch.autograd.grad(y, [t for t in leaves if t is not None], go)
        results.append((y, grads))
    (y_ref, g_ref), (y_tri, g_tri) = results
    torch.testing.assert_close(y_tri, y_ref, rtol=1e-9, atol=1e-9)
    for a, b in zip(g_tri, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_gradcheck(device):
    x, rois, off, args = _random_case(5, device, k=2, h=5, w=5, out=2, part=2, spp=2)
    x.requires_grad_()
    off.requires_grad_()
    fast = device == "cpu" and os.environ["DENET_KERNEL_BACKEND"] == "triton"
    assert torch.autograd.gradcheck(
        lambda a, b: deform_roi_pool(a, rois, b, *args), (x, off), fast_mode=fast
    )


def test_opcheck(monkeypatch):
    monkeypatch.setenv("DENET_KERNEL_BACKEND", "reference")
    x, rois, off, (out, scale, g, part, spp, std) = _random_case(6, "cpu", dtype=torch.float32)
    rois = rois.float()
    for o in (off, None):
        args = (
            x.requires_grad_(),
            rois,
            o.requires_grad_() if o is not None else None,
            [out, out],
            scale,
            g,
            [part, part] if o is not None else [out, out],
            spp,
            std,
        )
        torch.library.opcheck(torch.ops.denet.deform_roi_pool.default, args)
    grad = torch.randn(rois.shape[0], 2, out, out)
    torch.library.opcheck(
        torch.ops.denet.deform_roi_pool_backward.default,
        (grad, x.detach(), rois, off.detach(), [out, out], scale, g, [part, part], spp, std),
    )


def test_module(monkeypatch):
    monkeypatch.setenv("DENET_KERNEL_BACKEND", "reference")
    x, rois, off, args = _random_case(7, "cpu")
    m = DeformRoIPool(*args)
    assert torch.equal(m(x, rois, off), deform_roi_pool(x, rois, off, *args))
    assert "group_size=2" in repr(m) and "sample_per_part=2" in repr(m)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(boxes=torch.zeros(2, 4)), r"Tensor\[K, 5\].*\(2, 4\)"),
        (dict(input=torch.zeros(1, 7, 6, 6)), r"channels 7 .* group_size\^2 = 4"),
        (
            dict(offset=torch.zeros(2, 2, 3, 3)),
            r"offset \(2, 2, 3, 3\) must be \[2, 2\*num_classes, 2, 2\]",
        ),
        (dict(offset=torch.zeros(2, 6, 2, 2)), r"2 output channels .* 3 classes"),
        (dict(offset=torch.zeros(1, 2, 2, 2)), r"offset \(1, 2, 2, 2\) must be \[2,"),
        (dict(sample_per_part=0), r"sample_per_part"),
    ],
)
def test_errors_name_the_shapes(kwargs, match):
    args = dict(
        input=torch.zeros(1, 8, 6, 6),
        boxes=torch.zeros(2, 5),
        offset=None,
        output_size=2,
        spatial_scale=1.0,
        group_size=2,
        part_size=None,
        sample_per_part=1,
        trans_std=0.1,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        deform_roi_pool(**args)


# ------------------------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes(device, dtype):
    if (
        device == "cpu"
        and os.environ["DENET_KERNEL_BACKEND"] == "triton"
        and dtype != torch.float32
    ):
        pytest.skip("the interpreter covers float32; half types run on CUDA")
    x, rois, off, args = _random_case(8, device)
    want = deform_roi_pool(x, rois, off, *args)
    xl, offl = x.to(dtype).requires_grad_(), off.to(dtype).requires_grad_()
    got = deform_roi_pool(xl, rois, offl, *args)
    assert got.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * want.abs().max().item())
    g_x, g_off = torch.autograd.grad(got.sum(), [xl, offl])
    assert g_x.dtype == dtype and g_off.dtype == dtype
