"""denet.kernels.roi_align against torchvision.ops.roi_align (outputs and input gradients in
float64), a hand-computed golden value, gradcheck, opcheck and torch.compile; both backends
(the torch reference, and Triton: interpreted on CPU, compiled on CUDA)."""

import pytest
import torch
import torchvision

from denet.kernels.roi_align import RoIAlign, roi_align

# Atomic adds on the GPU sum in no fixed order: repeated backward passes differ by rounding.
NONDET = 1e-12


def random_rois(n_img, k, height, width, scale, generator):
    """``Tensor[k, 5]`` in image coordinates (the map is the image times ``scale``): boxes inside,
    partly and wholly outside the map, zero-size, inverted and much larger than the map."""
    h, w = height / scale, width / scale
    extent = torch.tensor([w, h], dtype=torch.float64)
    centre = (
        torch.rand(k, 2, generator=generator, dtype=torch.float64) * extent * 1.4 - 0.2 * extent
    )
    size = torch.rand(k, 2, generator=generator, dtype=torch.float64) ** 2 * extent * 1.2
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    boxes[:7] = torch.tensor(
        [
            [2.0, 3.0, 2.0, 3.0],  # zero size
            [1.0, 1.0, 1.0, 0.7 * h],  # zero width
            [-3.0 * w, -3.0 * h, -2.0 * w, -2.0 * h],  # wholly outside
            [-1.5 * w, -1.0 * h, 2.5 * w, 2.0 * h],  # covers the map and much more
            [0.6 * w, 0.5 * h, 0.4 * w, 0.8 * h],  # x2 < x1
            [w - 1.0, h - 1.0, w + 3.0, h + 3.0],  # partly outside, bottom right
            [-2.0, 0.3 * h, 0.5 * w, 0.6 * h],  # partly outside, left
        ],
        dtype=torch.float64,
    )
    batch = torch.randint(0, n_img, (k, 1), generator=generator).to(torch.float64)
    return torch.cat([batch, boxes], dim=1)


def as_list(rois, n_img):
    return [rois[rois[:, 0] == i, 1:] for i in range(n_img)]


def close(actual, expected, rtol=1e-6):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=1e-9)


# ------------------------------------------------------------------------------- golden values


def test_golden_5x5(device):
    # detectron2's test: map v(y, x) = 5y + x is linear, so bilinear samples reproduce it.
    x = torch.arange(25, dtype=torch.float64, device=device).view(1, 1, 5, 5)
    box = [torch.tensor([[1.0, 1.0, 3.0, 3.0]], dtype=torch.float64, device=device)]
    # aligned=False: 2x2 RoI, 0.5-pixel bins, one sample at each bin centre 1.25, 1.75, ...
    legacy = [[7.5, 8, 8.5, 9], [10, 10.5, 11, 11.5], [12.5, 13, 13.5, 14], [15, 15.5, 16, 16.5]]
    # aligned=True shifts the box by half a pixel: an upsampled [[6, 7], [11, 12]].
    shifted = [
        [4.5, 5.0, 5.5, 6.0],
        [7.0, 7.5, 8.0, 8.5],
        [9.5, 10.0, 10.5, 11.0],
        [12.0, 12.5, 13.0, 13.5],
    ]
    for aligned, expected in ((False, legacy), (True, shifted)):
        out = roi_align(x, box, (4, 4), spatial_scale=1.0, sampling_ratio=0, aligned=aligned)
        assert out[0, 0].tolist() == expected


def test_golden_gradient(device):
    # One sample at (1.5, 1.5): a quarter of the gradient to each of the four neighbours.
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64, device=device, requires_grad=True)
    rois = torch.tensor([[0.0, 1.0, 1.0, 2.0, 2.0]], dtype=torch.float64, device=device)
    roi_align(x, rois, 1, 1.0, 1).sum().backward()
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[1:3, 1:3] = 0.25
    assert torch.equal(x.grad[0, 0].cpu(), expected)
    # Outside [-1, H] a sample weighs nothing; in [-1, 0] it is clamped onto row/column 0.
    x.grad = None
    rois = torch.tensor(
        [[0.0, -0.9, -0.9, -0.9, -0.9], [0.0, -1.1, 1.0, -1.1, 1.0]],
        dtype=torch.float64,
        device=device,
    )
    out = roi_align(
        x + 1.0, rois, 1, 1.0, 1, aligned=True
    )  # samples (y, x) = (-1.4, -1.4) and (0.5, -1.6)
    assert out.flatten().tolist() == [0.0, 0.0]
    out = roi_align(
        x + 1.0, rois[:1], 1, 1.0, 1, aligned=False
    )  # roi grows to 1x1: sample (-0.4, -0.4)
    assert out.flatten().tolist() == [1.0]


# ------------------------------------------------------------------- torchvision as the oracle


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("form", ["tensor", "list"])
def test_matches_torchvision(device, aligned, sampling_ratio, form):
    g = torch.Generator().manual_seed(10 * sampling_ratio + aligned + (form == "list") * 100)
    n_img, scale = 2, 0.625
    x = torch.randn(n_img, 5, 7, 9, generator=g, dtype=torch.float64)
    rois = random_rois(n_img, 14, 7, 9, scale, g)
    boxes = as_list(rois, n_img) if form == "list" else rois
    xt = x.clone().requires_grad_()
    ref = torchvision.ops.roi_align(xt, boxes, (2, 3), scale, sampling_ratio, aligned)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref.backward(grad)

    xd = x.to(device).requires_grad_()
    boxes_d = [b.to(device) for b in boxes] if form == "list" else boxes.to(device)
    out = roi_align(xd, boxes_d, (2, 3), scale, sampling_ratio, aligned)
    out.backward(grad.to(device))
    close(out.cpu(), ref.detach())
    close(xd.grad.cpu(), xt.grad)


def test_sampling_ratio_and_scale_variants(device):
    # Square output, a fractional scale and one fixed ratio, all boxes through one call.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 3, 6, 5, generator=g, dtype=torch.float64)
    rois = random_rois(1, 9, 6, 5, 0.3, g)
    for ratio in (1, 3):
        ref = torchvision.ops.roi_align(x, rois, 3, 0.3, ratio, True)
        close(roi_align(x.to(device), rois.to(device), 3, 0.3, ratio, True).cpu(), ref)


def test_empty(device):
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    for boxes in (
        torch.zeros(0, 5, dtype=torch.float64, device=device),
        [torch.zeros(0, 4, dtype=torch.float64, device=device)] * 2,
    ):
        out = roi_align(x, boxes, (2, 3), 1.0, 2)
        assert out.shape == (0, 3, 2, 3) and out.dtype == x.dtype
        out.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes(device, dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 7, generator=g).to(dtype)
    rois = random_rois(2, 10, 6, 7, 0.5, g)
    # The oracle sees the same (rounded) values in float64; coordinates are float32 here.
    ref = torchvision.ops.roi_align(x.double(), rois, 3, 0.5, -1, True)
    xd = x.to(device).requires_grad_()
    out = roi_align(xd, rois.to(device, torch.float32), 3, 0.5, -1, True)
    assert out.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out.cpu().double(), ref, rtol=tol, atol=tol)
    out.float().sum().backward()
    assert xd.grad.dtype == dtype


def test_errors():
    x = torch.zeros(1, 2, 4, 4)
    rois = torch.zeros(3, 5)
    with pytest.raises(ValueError, match=r"\(2, 4, 4\)"):
        roi_align(torch.zeros(2, 4, 4), rois, 2)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        roi_align(x, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match=r"boxes\[1\].*\(2, 5\)"):
        roi_align(x, [torch.zeros(1, 4), torch.zeros(2, 5)], 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_align(x, rois, (2, 0))
    with pytest.raises(ValueError, match="floating"):
        roi_align(x.long(), rois, 2)
    with pytest.raises(ValueError, match="empty"):
        roi_align(torch.zeros(1, 2, 0, 4), rois, 2)
    # The CPU path checks image indices (torchvision, and the CUDA path, read out of bounds).
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        roi_align(x, torch.tensor([[1.0, 0.0, 0.0, 2.0, 2.0]]), 2)


def test_module():
    m = RoIAlign((7, 7), 0.0625, 2, aligned=True)
    assert repr(m) == repr(torchvision.ops.RoIAlign((7, 7), 0.0625, 2, aligned=True))
    x, rois = torch.randn(1, 2, 8, 8), torch.tensor([[0.0, 8.0, 8.0, 100.0, 90.0]])
    assert torch.equal(m(x, rois), roi_align(x, rois, 7, 0.0625, 2, True))


# --------------------------------------------------------------------- autograd and torch.library


@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck(device, aligned):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64).to(device).requires_grad_()
    rois = torch.tensor(
        [[0, 0.3, 0.6, 3.1, 2.7], [0, -1.0, 1.5, 2.0, 5.5], [0, 1.0, 1.0, 1.0, 1.0]],
        dtype=torch.float64,
        device=device,
    )
    fn = lambda t: roi_align(t, rois, (2, 2), 1.0, -1, aligned)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True, nondet_tol=NONDET)
    if device == "cpu" and not aligned:
        assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


@pytest.mark.parametrize("dev", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_opcheck(dev, monkeypatch):
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.delenv("DENET_KERNEL_BACKEND", raising=False)
    x = torch.randn(2, 3, 5, 6, device=dev, requires_grad=True)
    rois = torch.tensor(
        [[0, 0.5, 0.5, 4.0, 3.5], [1, 1.0, 0.0, 5.5, 4.5], [0, 2, 2, 2, 2]], device=dev
    )
    torch.library.opcheck(torch.ops.denet.roi_align, (x, rois, 0.9, 2, 3, -1, True))
    grad = torch.randn(3, 3, 2, 3, device=dev)
    torch.library.opcheck(
        torch.ops.denet.roi_align_backward, (grad, rois, 0.9, 2, 3, 2, 3, 5, 6, 2, False)
    )


class _Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.pool = RoIAlign(3, 0.5, -1, aligned=True)

    def forward(self, x, boxes):
        return self.pool(self.conv(x), boxes).relu().mean((2, 3))


def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    head = _Head()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    boxes = [
        torch.tensor([[0.0, 0.0, 9.0, 9.0]]),
        torch.tensor([[2.0, 1.0, 13.0, 15.0], [4.0, 4.0, 4.0, 4.0]]),
    ]
    compiled = torch.compile(head, backend="aot_eager", fullgraph=True)
    eager_out = head(x, boxes)
    out = compiled(x, boxes)
    torch.testing.assert_close(out, eager_out)
    (g_eager,) = torch.autograd.grad(eager_out.sum(), x)
    (g_out,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(g_out, g_eager)


# ------------------------------------------------------------------------------------ CUDA only


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_against_torchvision(dtype, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.delenv("DENET_KERNEL_BACKEND", raising=False)  # CUDA tensors take Triton
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 64, 40, 36, generator=g).to(dtype)
    rois = random_rois(2, 200, 40, 36, 0.25, g).float()
    xd = x.cuda().requires_grad_()
    out = roi_align(xd, rois.cuda(), 7, 0.25, -1, True)
    grad = torch.randn(out.shape, generator=g).to(dtype)
    out.backward(grad.cuda())
    # torchvision has no bfloat16 kernel: the oracle runs in float32 on the rounded inputs.
    xr = x.float().cuda().requires_grad_()
    ref = torchvision.ops.roi_align(xr, rois.cuda(), 7, 0.25, -1, True)
    ref.backward(grad.float().cuda())
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    assert out.dtype == dtype and xd.grad.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(xd.grad.float(), xr.grad, rtol=tol, atol=tol * 10)
