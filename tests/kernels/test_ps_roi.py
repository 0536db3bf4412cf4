"""denet.kernels.ps_roi_align and ps_roi_pool (R-FCN) against torchvision.ops (outputs and input
gradients in float64), hand-computed golden values, gradcheck and opcheck; both backends (the
torch reference, and Triton: interpreted on CPU, compiled on CUDA). Two documented differences
from torchvision are tested as such: a bin without samples is 0 (torchvision: NaN), and
ps_roi_pool's gradient is the true gradient at the map's last row and column."""

import pytest
import torch
import torchvision

from denet.kernels.ps_roi_align import PSRoIAlign, ps_roi_align
from denet.kernels.ps_roi_pool import PSRoIPool, ps_roi_pool

# Atomic adds on the GPU sum in no fixed order: repeated backward passes differ by rounding.
NONDET = 1e-12


def random_rois(n_img, k, height, width, scale, generator):
    """``Tensor[k, 5]``: boxes inside, partly and wholly outside the map, inverted, much larger
    than the map, and with corners on exact halves; zero-size boxes are tested on their own."""
    h, w = height / scale, width / scale
    extent = torch.tensor([w, h], dtype=torch.float64)
    centre = (
        torch.rand(k, 2, generator=generator, dtype=torch.float64) * extent * 1.4 - 0.2 * extent
    )
    size = (
        torch.rand(k, 2, generator=generator, dtype=torch.float64) ** 2 * extent * 1.2 + 0.5 / scale
    )
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    half = 0.5 / scale
    boxes[:5] = torch.tensor(
        [
            [-3.0 * w, -3.0 * h, -2.0 * w, -2.0 * h],
            [-1.5 * w, -1.0 * h, 2.5 * w, 2.0 * h],
            [0.6 * w, 0.5 * h, 0.4 * w, 0.8 * h],
            [w - 1.0, h - 1.0, w + 3.0, h + 3.0],
            [half, 3 * half, 5 * half, 7 * half],
        ],
        dtype=torch.float64,
    )
    batch = torch.randint(0, n_img, (k, 1), generator=generator).to(torch.float64)
    return torch.cat([batch, boxes], dim=1)


def score_maps(device, c_out=1, size=5):
    """Channel ``c`` holds ``100 * c + 5y + x`` (linear, so bilinear samples are exact)."""
    base = torch.arange(size * size, dtype=torch.float64).view(size, size)
    return torch.stack([base + 100 * c for c in range(4 * c_out)])[None].to(device)


# ------------------------------------------------------------------------------- golden values


def test_golden_ps_roi_align(device):
    # Box (1, 1)-(3, 3) shifted by -0.5: bins of 1 pixel from 0.5, two samples a side at
    # +0.25 and +0.75, so each bin averages to its centre: (y, x) = (1, 1), (1, 2), (2, 1), (2, 2).
    # Bin (ph, pw) reads channel 2 * ph + pw.
    out = ps_roi_align(
        score_maps(device),
        torch.tensor([[0.0, 1, 1, 3, 3]], dtype=torch.float64, device=device),
        2,
        1.0,
        2,
    )
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0].tolist() == [[6.0, 107.0], [211.0, 312.0]]


def test_golden_ps_roi_pool(device):
    x = score_maps(device)
    # Box (0, 0)-(4, 4): 2-pixel bins; bin (ph, pw) averages rows 2ph..2ph+1, columns 2pw..2pw+1.
    out = ps_roi_pool(x, torch.tensor([[0.0, 0, 0, 4, 4]], dtype=torch.float64, device=device), 2)
    assert out[0, 0].tolist() == [[3.0, 105.0], [213.0, 315.0]]
    # Box (0, 0)-(10, 10): 5-pixel bins. Windows are clipped to H - 1 = 4 as in torchvision: the
    # first covers rows and columns 0..3 (mean 5 * 1.5 + 1.5), the others are empty.
    out = ps_roi_pool(x, torch.tensor([[0.0, 0, 0, 10, 10]], dtype=torch.float64, device=device), 2)
    assert out[0, 0].tolist() == [[9.0, 0.0], [0.0, 0.0]]


# ------------------------------------------------------------------- torchvision as the oracle


@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("form", ["tensor", "list"])
def test_ps_roi_align_matches_torchvision(device, sampling_ratio, form):
    g = torch.Generator().manual_seed(20 + sampling_ratio + 10 * (form == "list"))
    n_img, scale = 2, 0.625
    x = torch.randn(n_img, 2 * 6, 7, 9, generator=g, dtype=torch.float64)
    rois = random_rois(n_img, 12, 7, 9, scale, g)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(n_img)] if form == "list" else rois
    xt = x.clone().requires_grad_()
    ref = torchvision.ops.ps_roi_align(xt, boxes, (2, 3), scale, sampling_ratio)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref.backward(grad)
    xd = x.to(device).requires_grad_()
    out = ps_roi_align(
        xd,
        [b.to(device) for b in boxes] if form == "list" else boxes.to(device),
        (2, 3),
        scale,
        sampling_ratio,
    )
    out.backward(grad.to(device))
    assert out.shape == (len(rois), 2, 2, 3)
    # Bins without samples (the inverted box, adaptive sampling) are NaN in torchvision, 0 here.
    torch.testing.assert_close(out.cpu(), ref.detach().nan_to_num(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(xd.grad.cpu(), xt.grad, rtol=1e-6, atol=1e-9)


def test_ps_roi_align_empty_bins_are_zero(device):
    # A zero-size box with adaptive sampling has ceil(0) = 0 samples per bin: torchvision divides
    # by that count and returns NaN; we return 0, as roi_align does. With samples they agree.
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    box = torch.tensor([[0.0, 2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    assert torchvision.ops.ps_roi_align(x, box, 2, 1.0, -1).isnan().all()
    assert torch.equal(
        ps_roi_align(x.to(device), box.to(device), 2, 1.0, -1).cpu(),
        torch.zeros(1, 1, 2, 2, dtype=torch.float64),
    )
    ref = torchvision.ops.ps_roi_align(x, box, 2, 1.0, 2)
    torch.testing.assert_close(ps_roi_align(x.to(device), box.to(device), 2, 1.0, 2).cpu(), ref)


def _reaches_last_row_or_column(rois, scale, height, width):
    """Whether any ps_roi_pool window of a RoI reaches row H - 1 or column W - 1, the only place
    where torchvision's backward is not the gradient of its forward."""

    def axis(lo, hi, size):
        lo, hi = _round(lo * scale), _round(hi * scale)
        return lo + (hi - lo).clamp(min=1) > size - 1

    return axis(rois[:, 2], rois[:, 4], height) | axis(rois[:, 1], rois[:, 3], width)


def _round(v):
    return torch.trunc(v) + torch.where((v - torch.trunc(v)).abs() >= 0.5, torch.sign(v), 0.0)


@pytest.mark.parametrize("form", ["tensor", "list"])
def test_ps_roi_pool_matches_torchvision(device, form):
    g = torch.Generator().manual_seed(31 + (form == "list"))
    n_img, scale = 2, 0.625
    x = torch.randn(n_img, 2 * 6, 7, 9, generator=g, dtype=torch.float64)
    rois = random_rois(n_img, 24, 7, 9, scale, g)
    inner = rois[~_reaches_last_row_or_column(rois, scale, 7, 9)]
    assert 3 <= len(inner) < len(rois)
    boxes = [inner[inner[:, 0] == i, 1:] for i in range(n_img)] if form == "list" else inner
    xt = x.clone().requires_grad_()
    ref = torchvision.ops.ps_roi_pool(xt, boxes, (2, 3), scale)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref.backward(grad)
    xd = x.to(device).requires_grad_()
    out = ps_roi_pool(
        xd, [b.to(device) for b in boxes] if form == "list" else boxes.to(device), (2, 3), scale
    )
    out.backward(grad.to(device))
    torch.testing.assert_close(out.cpu(), ref.detach(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(xd.grad.cpu(), xt.grad, rtol=1e-6, atol=1e-9)
    # Every box, border ones included: the outputs still match torchvision's.
    full = torchvision.ops.ps_roi_pool(x, rois, (2, 3), scale)
    torch.testing.assert_close(
        ps_roi_pool(x.to(device), rois.to(device), (2, 3), scale).cpu(), full, rtol=1e-6, atol=1e-9
    )


def test_ps_roi_pool_border_gradient(device):
    # A box over the whole 3x3 map: torchvision's forward averages rows and columns 0..1 only
    # (clip to H - 1) but its backward spreads over 0..2. Ours is the forward's true gradient.
    x = torch.randn(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    box = torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]], dtype=torch.float64)
    torchvision.ops.ps_roi_pool(x, box, 1, 1.0).sum().backward()
    assert x.grad[0, 0, 2].abs().sum() > 0  # torchvision: gradient on a row its output never read
    xd = x.detach().to(device).requires_grad_()
    ps_roi_pool(xd, box.to(device), 1, 1.0).sum().backward()
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[:2, :2] = 0.25
    assert torch.equal(xd.grad[0, 0].cpu(), expected)
    fn = lambda t: ps_roi_pool(t, box.to(device), 1, 1.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (xd,), fast_mode=True, nondet_tol=NONDET)


# ------------------------------------------------------------------------- shapes, dtypes, errors


def test_empty(device):
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    for fn in (lambda b: ps_roi_align(x, b, 2, 1.0, 2), lambda b: ps_roi_pool(x, b, 2)):
        out = fn([torch.zeros(0, 4, dtype=torch.float64, device=device)] * 2)
        assert out.shape == (0, 2, 2, 2)
        out.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes(device, dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 8, 6, 7, generator=g).to(dtype)
    rois = random_rois(1, 8, 6, 7, 0.5, g)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    for ours, theirs in (
        (
            lambda a, b: ps_roi_align(a, b, 2, 0.5, -1),
            lambda a, b: torchvision.ops.ps_roi_align(a, b, 2, 0.5, -1),
        ),
        (
            lambda a, b: ps_roi_pool(a, b, 2, 0.5),
            lambda a, b: torchvision.ops.ps_roi_pool(a, b, 2, 0.5),
        ),
    ):
        out = ours(x.to(device), rois.to(device, torch.float32))
        assert out.dtype == dtype and out.shape == (8, 2, 2, 2)
        torch.testing.assert_close(
            out.cpu().double(), theirs(x.double(), rois).nan_to_num(), rtol=tol, atol=tol
        )


def test_errors():
    x = torch.zeros(1, 10, 4, 4)
    with pytest.raises(ValueError, match=r"10 channels.*\(1, 10, 4, 4\).*2 \* 3 = 6"):
        ps_roi_align(x, torch.zeros(2, 5), (2, 3))
    with pytest.raises(ValueError, match=r"10 channels.*\(1, 10, 4, 4\)"):
        ps_roi_pool(x, torch.zeros(2, 5), 2)
    with pytest.raises(ValueError, match=r"\(10, 4, 4\)"):
        ps_roi_pool(torch.zeros(10, 4, 4), torch.zeros(2, 5), 1)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        ps_roi_align(x, torch.zeros(2, 4), 1)


def test_modules():
    assert repr(PSRoIAlign(7, 0.0625, 2)) == repr(torchvision.ops.PSRoIAlign(7, 0.0625, 2))
    assert repr(PSRoIPool((3, 3), 0.5)) == repr(torchvision.ops.PSRoIPool((3, 3), 0.5))
    x, rois = torch.randn(1, 18, 8, 8), torch.tensor([[0.0, 2.0, 2.0, 10.0, 12.0]])
    assert torch.equal(PSRoIAlign(3, 0.5, 2)(x, rois), ps_roi_align(x, rois, 3, 0.5, 2))
    assert torch.equal(PSRoIPool(3, 0.5)(x, rois), ps_roi_pool(x, rois, 3, 0.5))


# --------------------------------------------------------------------- autograd and torch.library


def test_gradcheck(device):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 4, 4, 5, generator=g, dtype=torch.float64).to(device).requires_grad_()
    rois = torch.tensor(
        [[0, 0.3, 0.6, 3.1, 2.7], [0, -1.0, 1.5, 2.0, 5.5]], dtype=torch.float64, device=device
    )
    for fn in (lambda t: ps_roi_align(t, rois, 2, 1.0, -1), lambda t: ps_roi_pool(t, rois, 2, 1.0)):
        assert torch.autograd.gradcheck(fn, (x,), fast_mode=True, nondet_tol=NONDET)
        if device == "cpu":
            assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


@pytest.mark.parametrize("dev", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_opcheck(dev, monkeypatch):
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.delenv("DENET_KERNEL_BACKEND", raising=False)
    x = torch.randn(2, 12, 5, 6, device=dev, requires_grad=True)
    rois = torch.tensor([[0, 0.5, 0.5, 4.0, 3.5], [1, 1.0, 0.0, 5.5, 4.5]], device=dev)
    grad = torch.randn(2, 2, 2, 3, device=dev)
    torch.library.opcheck(torch.ops.denet.ps_roi_align, (x, rois, 0.9, 2, 3, -1))
    torch.library.opcheck(
        torch.ops.denet.ps_roi_align_backward, (grad, rois, 0.9, 2, 3, 2, 2, 12, 5, 6)
    )
    torch.library.opcheck(torch.ops.denet.ps_roi_pool, (x, rois, 0.9, 2, 3))
    torch.library.opcheck(
        torch.ops.denet.ps_roi_pool_backward, (grad, rois, 0.9, 2, 3, 2, 12, 5, 6)
    )


# ------------------------------------------------------------------------------------ CUDA only


@pytest.mark.cuda
@pytest.mark.parametrize("op", ["ps_roi_align", "ps_roi_pool"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_against_torchvision(op, dtype, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.delenv("DENET_KERNEL_BACKEND", raising=False)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3 * 49, 40, 36, generator=g).to(dtype)
    rois = random_rois(2, 200, 40, 36, 0.25, g)
    if op == "ps_roi_pool":  # where torchvision's backward is its forward's gradient
        rois = rois[~_reaches_last_row_or_column(rois, 0.25, 40, 36)]
    rois = rois.float().cuda()
    ours = {
        "ps_roi_align": lambda a: ps_roi_align(a, rois, 7, 0.25, -1),
        "ps_roi_pool": lambda a: ps_roi_pool(a, rois, 7, 0.25),
    }[op]
    theirs = {
        "ps_roi_align": lambda a: torchvision.ops.ps_roi_align(a, rois, 7, 0.25, -1),
        "ps_roi_pool": lambda a: torchvision.ops.ps_roi_pool(a, rois, 7, 0.25),
    }[op]
    xd = x.cuda().requires_grad_()
    out = ours(xd)
    grad = torch.randn(out.shape, generator=g).to(dtype)
    out.backward(grad.cuda())
    # torchvision has no bfloat16 kernel: the oracle runs in float32 on the rounded inputs.
    xr = x.float().cuda().requires_grad_()
    ref = theirs(xr)
    ref.backward(grad.float().cuda())
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    assert out.dtype == dtype and xd.grad.dtype == dtype
    torch.testing.assert_close(out.float(), ref.nan_to_num(), rtol=tol, atol=tol)
    torch.testing.assert_close(xd.grad.float(), xr.grad.nan_to_num(), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("name", ["roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool"])
def test_image_index_outside_the_batch_is_named(name, monkeypatch):
    # torchvision reads out of bounds here; the reference says which operator and which indices.
    import denet.kernels as K

    monkeypatch.setenv("DENET_KERNEL_BACKEND", "reference")
    x = torch.randn(2, 8, 5, 5)
    for bad in (2.0, -1.0):
        rois = torch.tensor([[0.0, 0, 0, 3, 3], [bad, 1, 1, 4, 4]])
        with pytest.raises(ValueError, match=rf"^{name}: the image indices .* \[0, 2\)"):
            getattr(K, name)(x, rois, 2)
