"""denet.kernels.roi_pool against torchvision.ops.roi_pool (outputs, argmax choice and input
gradients in float64, ties included), a hand-computed golden value, gradcheck and opcheck; both
backends (the torch reference, and Triton: interpreted on CPU, compiled on CUDA)."""

import pytest
import torch
import torchvision

from denet.kernels.roi_pool import RoIPool, roi_pool

# Atomic adds on the GPU sum in no fixed order: repeated backward passes differ by rounding.
NONDET = 1e-12


def random_rois(n_img, k, height, width, scale, generator):
    """``Tensor[k, 5]``: boxes inside, partly and wholly outside the map, zero-size, inverted,
    much larger than the map, and corners on exact halves (C's round() goes away from zero)."""
    h, w = height / scale, width / scale
    extent = torch.tensor([w, h], dtype=torch.float64)
    centre = (
        torch.rand(k, 2, generator=generator, dtype=torch.float64) * extent * 1.4 - 0.2 * extent
    )
    size = torch.rand(k, 2, generator=generator, dtype=torch.float64) ** 2 * extent * 1.2
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    half = 0.5 / scale
    boxes[:7] = torch.tensor(
        [
            [2.0, 3.0, 2.0, 3.0],
            [-3.0 * w, -3.0 * h, -2.0 * w, -2.0 * h],
            [-1.5 * w, -1.0 * h, 2.5 * w, 2.0 * h],
            [0.6 * w, 0.5 * h, 0.4 * w, 0.8 * h],
            [w - 1.0, h - 1.0, w + 3.0, h + 3.0],
            [half, 3 * half, 5 * half, 7 * half],  # every corner lands on .5 in map coordinates
            [-half, -3 * half, 3 * half, 5 * half],
        ],
        dtype=torch.float64,
    )
    batch = torch.randint(0, n_img, (k, 1), generator=generator).to(torch.float64)
    return torch.cat([batch, boxes], dim=1)


def test_golden(device):
    # Map 5y + x; box (0.4, 1.6)-(2.5, 3.4) rounds to columns 0..3 (2.5 -> 3: away from zero,
    # where round-half-even would give 2) and rows 2..3. roi_w = 4, roi_h = 2; a 2x2 output
    # pools columns [0, 2) and [2, 4), rows [2, 3) and [3, 4), and takes each window's last value.
    x = torch.arange(25, dtype=torch.float64, device=device).view(1, 1, 5, 5).requires_grad_()
    rois = torch.tensor([[0.0, 0.4, 1.6, 2.5, 3.4]], dtype=torch.float64, device=device)
    out = roi_pool(x, rois, 2, 1.0)
    assert out[0, 0].tolist() == [[11.0, 13.0], [16.0, 18.0]]
    out.sum().backward()
    expected = torch.zeros(25, dtype=torch.float64)
    expected[[11, 13, 16, 18]] = 1.0
    assert torch.equal(x.grad.flatten().cpu(), expected)


@pytest.mark.parametrize("values", ["random", "ties"])
@pytest.mark.parametrize("form", ["tensor", "list"])
def test_matches_torchvision(device, values, form):
    g = torch.Generator().manual_seed(3 + (values == "ties") + 10 * (form == "list"))
    n_img, scale = 2, 0.625
    if values == "ties":  # few distinct values: the first maximum in row-major order must win
        x = torch.randint(0, 3, (n_img, 5, 7, 9), generator=g).to(torch.float64)
    else:
        x = torch.randn(n_img, 5, 7, 9, generator=g, dtype=torch.float64)
    rois = random_rois(n_img, 14, 7, 9, scale, g)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(n_img)] if form == "list" else rois
    xt = x.clone().requires_grad_()
    ref = torchvision.ops.roi_pool(xt, boxes, (2, 3), scale)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref.backward(grad)
    xd = x.to(device).requires_grad_()
    out = roi_pool(
        xd, [b.to(device) for b in boxes] if form == "list" else boxes.to(device), (2, 3), scale
    )
    out.backward(grad.to(device))
    assert torch.equal(out.cpu(), ref.detach())
    torch.testing.assert_close(xd.grad.cpu(), xt.grad, rtol=1e-12, atol=1e-12)


def test_argmax_matches_torchvision(device):
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 2, (1, 3, 6, 6), generator=g).to(torch.float64)
    x[0, 1] = -float("inf")  # nothing beats -FLT_MAX: torchvision gives -FLT_MAX and no argmax
    rois = random_rois(1, 10, 6, 6, 1.0, g)
    ref, ref_arg = torch.ops.torchvision.roi_pool(x, rois, 1.0, 3, 2)
    out, arg = torch.ops.denet.roi_pool(x.to(device), rois.to(device), 1.0, 3, 2)
    assert torch.equal(out.cpu(), ref) and torch.equal(arg.cpu(), ref_arg)
    assert (ref[:, 1] == -3.4028234663852886e38).any()


def test_empty(device):
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    out = roi_pool(x, torch.zeros(0, 5, dtype=torch.float64, device=device), (2, 3))
    assert out.shape == (0, 3, 2, 3)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes(device, dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 6, 7, generator=g).to(dtype)
    rois = random_rois(1, 8, 6, 7, 0.5, g)
    ref = torchvision.ops.roi_pool(x.double(), rois, 3, 0.5)
    out = roi_pool(x.to(device), rois.to(device, torch.float32), 3, 0.5)
    assert out.dtype == dtype
    assert torch.equal(out.cpu().double(), ref)  # a maximum is exact in any dtype


def test_gradcheck(device):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64).to(device).requires_grad_()
    rois = torch.tensor(
        [[0, 0.3, 0.6, 3.1, 2.7], [0, -1.0, 1.5, 2.0, 5.5]], dtype=torch.float64, device=device
    )
    fn = lambda t: roi_pool(t, rois, (2, 2), 1.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True, nondet_tol=NONDET)
    if device == "cpu":
        assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


def test_errors():
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"\(2, 4, 4\)"):
        roi_pool(torch.zeros(2, 4, 4), torch.zeros(3, 5), 2)
    with pytest.raises(ValueError, match=r"\(3, 6\)"):
        roi_pool(x, torch.zeros(3, 6), 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_pool(x, torch.zeros(3, 5), 0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        roi_pool(x, torch.tensor([[-1.0, 0.0, 0.0, 2.0, 2.0]]), 2)


def test_module():
    m = RoIPool(7, 0.0625)
    assert repr(m) == repr(torchvision.ops.RoIPool(7, 0.0625))
    x, rois = torch.randn(1, 2, 8, 8), torch.tensor([[0.0, 8.0, 8.0, 100.0, 90.0]])
    assert torch.equal(m(x, rois), roi_pool(x, rois, 7, 0.0625))


@pytest.mark.parametrize("dev", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_opcheck(dev, monkeypatch):
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.delenv("DENET_KERNEL_BACKEND", raising=False)
    x = torch.randn(2, 3, 5, 6, device=dev, requires_grad=True)
    rois = torch.tensor([[0, 0.5, 0.5, 4.0, 3.5], [1, 1.0, 0.0, 5.5, 4.5]], device=dev)
    torch.library.opcheck(torch.ops.denet.roi_pool, (x, rois, 0.9, 2, 3))
    _, argmax = torch.ops.denet.roi_pool(x, rois, 0.9, 2, 3)
    torch.library.opcheck(
        torch.ops.denet.roi_pool_backward,
        (torch.randn(2, 3, 2, 3, device=dev), rois, argmax, 2, 3, 5, 6),
    )


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_against_torchvision(dtype, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.delenv("DENET_KERNEL_BACKEND", raising=False)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 64, 40, 36, generator=g).to(dtype)
    rois = random_rois(2, 200, 40, 36, 0.25, g).float()
    xd = x.cuda().requires_grad_()
    out = roi_pool(xd, rois.cuda(), 7, 0.25)
    grad = torch.randn(out.shape, generator=g).to(dtype)
    out.backward(grad.cuda())
    xr = x.float().cuda().requires_grad_()
    ref = torchvision.ops.roi_pool(xr, rois.cuda(), 7, 0.25)
    ref.backward(grad.float().cuda())
    assert torch.equal(out.float(), ref)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(xd.grad.float(), xr.grad, rtol=tol, atol=tol * 10)
