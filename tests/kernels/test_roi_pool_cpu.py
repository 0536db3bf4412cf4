"""The CPU reference of denet.kernels.roi_pool (a sparse table of packed value/position keys)
against torchvision.ops.roi_pool in float32, argmax and gradients included, and on the values
its key encoding treats specially: NaN, -0.0, -inf, -FLT_MAX, +inf."""

import pytest
import torch
import torchvision
from test_roi_pool import random_rois

from denet.kernels.roi_pool import roi_pool

FLT_MAX = 3.4028234663852886e38


@pytest.fixture(autouse=True)
def reference(monkeypatch):
    monkeypatch.setenv("DENET_KERNEL_BACKEND", "reference")


@pytest.mark.parametrize("values", ["random", "ties"])
def test_float32_matches_torchvision(values):
    # A larger map than test_roi_pool's: windows up to 2**4 long, cut at the border, 3 images.
    g = torch.Generator().manual_seed(11 + (values == "ties"))
    n_img, scale = 3, 0.5
    if values == "ties":
        x = torch.randint(-1, 2, (n_img, 6, 37, 45), generator=g).to(torch.float32)
    else:
        x = torch.randn(n_img, 6, 37, 45, generator=g)
    rois = random_rois(n_img, 40, 37, 45, scale, g).float()
    for size in [(2, 3), (7, 7), (1, 1)]:
        ref, ref_arg = torch.ops.torchvision.roi_pool(x, rois, scale, *size)
        out, arg = torch.ops.denet.roi_pool(x, rois, scale, *size)
        assert torch.equal(out, ref) and torch.equal(arg, ref_arg)
        xt, xd = x.clone().requires_grad_(), x.clone().requires_grad_()
        grad = torch.randn(ref.shape, generator=g)
        torchvision.ops.roi_pool(xt, rois, size, scale).backward(grad)
        roi_pool(xd, rois, size, scale).backward(grad)
        # the same float32 sums in the same order (RoI, channel, bin)
        assert torch.equal(xd.grad, xt.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_special_values(dtype):
    g = torch.Generator().manual_seed(5)
    special = torch.tensor(
        [float("nan"), -0.0, 0.0, -float("inf"), float("inf"), -FLT_MAX, FLT_MAX, 1.0, -1.0]
    ).to(dtype)
    pick = torch.randint(0, special.numel(), (2, 4, 9, 8), generator=g)
    x = special[pick]
    x[0, 3] = float("nan")  # whole planes: NaN, -inf and -FLT_MAX are never picked
    x[1, 3] = -float("inf")
    x[1, 2, :5] = -FLT_MAX
    rois = random_rois(2, 30, 9, 8, 1.0, g).to(dtype)
    ref, ref_arg = torch.ops.torchvision.roi_pool(x, rois, 1.0, 3, 2)
    out, arg = torch.ops.denet.roi_pool(x, rois, 1.0, 3, 2)
    assert torch.equal(arg, ref_arg)
    assert torch.equal(out, ref)  # -0.0 == 0.0
    assert (ref_arg == -1).any() and (ref == -FLT_MAX).any()


def test_half_dtypes_argmax():
    # float16 and bfloat16 are pooled as float32 keys; their maxima are exact.
    g = torch.Generator().manual_seed(6)
    rois = random_rois(1, 20, 10, 12, 0.5, g).float()
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randint(-3, 3, (1, 5, 10, 12), generator=g).to(dtype)
        ref, ref_arg = torch.ops.torchvision.roi_pool(x.float(), rois, 0.5, 4, 3)
        out, arg = torch.ops.denet.roi_pool(x, rois, 0.5, 4, 3)
        assert out.dtype == dtype
        assert torch.equal(out.float(), ref) and torch.equal(arg, ref_arg)


def test_blocks_and_chunks(monkeypatch):
    # Small budgets: the map is pooled in blocks of channels and RoIs in chunks of one or two.
    from denet.kernels.roi_pool import reference

    monkeypatch.setattr(reference, "WORK_ELEMENTS", 2000)
    monkeypatch.setattr(reference, "GATHER_ELEMENTS", 200)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 7, 20, 24, generator=g)
    rois = random_rois(2, 25, 20, 24, 1.0, g).float()
    ref, ref_arg = torch.ops.torchvision.roi_pool(x, rois, 1.0, 3, 4)
    out, arg = torch.ops.denet.roi_pool(x, rois, 1.0, 3, 4)
    assert torch.equal(out, ref) and torch.equal(arg, ref_arg)
    xt, xd = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(ref.shape, generator=g)
    torchvision.ops.roi_pool(xt, rois, (3, 4), 1.0).backward(grad)
    roi_pool(xd, rois, (3, 4), 1.0).backward(grad)
    assert torch.equal(xd.grad, xt.grad)
