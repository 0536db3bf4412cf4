"""denet.kernels.sparse_sample: DeNet's sparse sampling against hand-computed values and a literal
float32 transcription of DeNet's CUDA kernel; gradients, dtypes, both backends, opcheck."""

import math

import numpy as np
import pytest
import torch

from denet.kernels._dispatch import interpreting
from denet.kernels.sparse_sample import SparseSample, reference, sparse_sample

MODES = ["nearest", "bilinear"]


def _map(device, h=4, w=4, f=2, dtype=torch.float32):
    """Feature f at pixel (y, x) holds 100*f + y*w + x."""
    base = torch.arange(h * w, dtype=dtype).view(1, 1, h, w)
    return torch.cat([base + 100 * i for i in range(f)], dim=1).to(device)


# ------------------------------------------------------------------------------- golden values


def test_golden_nearest_rounds_half_away_from_zero(device):
    feats = _map(device)
    boxes = torch.tensor(
        [
            [
                [0.125, 0.375, 0.625, 0.875],  # y*H = 1.5, 3.5 -> clamp 3.0; x*W = 0.5, 2.5
                [0.0, 0.0, 1.0, 1.0],
            ]
        ],
        device=device,
    )  # edges: 0 and 4 -> clamp to 3
    out = sparse_sample(feats, boxes, 2)
    assert out.shape == (1, 2 * 2 * 2 + 2, 2)
    # Box 0: rows lround(1.5)=2, lround(3.0)=3; columns lround(0.5)=1, lround(2.5)=3 (round-half-
    # even would give 0 and 2). Pixels (2,1)=9, (2,3)=11, (3,1)=13, (3,3)=15; feature 1 adds 100.
    # Channel (gy*G + gx)*F + f, then height, width.
    box0 = [9, 109, 11, 111, 13, 113, 15, 115, 0.5, 0.5]
    box1 = [0, 100, 3, 103, 12, 112, 15, 115, 1.0, 1.0]
    expected = torch.tensor([box0, box1], device=device).T[None]
    assert torch.equal(out, expected)


def test_golden_nearest_grid3_and_centre(device):
    feats = _map(device, f=1)
    # G=3: k = 1/2, y = 0, 0.375, 0.75 -> y*H = 0, 1.5, 3 -> rows 0, 2, 3 (columns the same).
    out = sparse_sample(feats, torch.tensor([[[0.0, 0.0, 0.75, 0.75]]], device=device), 3)
    expected = [0, 2, 3, 8, 10, 11, 12, 14, 15, 0.75, 0.75]
    assert out[0, :, 0].tolist() == expected
    # G=1 samples the centre: y = 0.75 -> 3.0 -> row 3, x = 0.375 -> 1.5 -> column 2.
    out = sparse_sample(feats, torch.tensor([[[0.25, 0.5, 0.5, 1.0]]], device=device), 1)
    assert out[0, :, 0].tolist() == [14, 0.5, 0.25]


def test_golden_nearest_lroundf_edge(device):
    # On a 2x2 map y*H = 0.5 - 2**-25 must read row 0: lroundf rounds the exact value, whereas
    # floor(v + 0.5) reads row 1 because v + 0.5 rounds to 1.0 in float32. Exactly 0.5 reads row 1.
    feats = _map(device, h=2, w=2, f=1)
    y = 0.25 - 2.0**-26
    boxes = torch.tensor(
        [[[0.0, y, 0.0, y], [0.0, 0.25, 0.0, 0.25]]], dtype=torch.float32, device=device
    )
    out = sparse_sample(feats, boxes, 1)
    assert out[0, 0].tolist() == [0.0, 2.0]


def test_golden_bilinear(device):
    feats = _map(device, f=1)  # v(y, x) = 4y + x is linear, so interpolation reproduces it exactly
    boxes = torch.tensor([[[0.125, 0.375, 0.625, 0.875]]], device=device)
    out = sparse_sample(feats, boxes, 2, mode="bilinear")
    # py = 1.5, 3.0 (clamped from 3.5); px = 0.5, 2.5.
    assert out[0, :, 0].tolist() == [6.5, 8.5, 12.5, 14.5, 0.5, 0.5]
    # A single hot pixel at (1, 2) sampled at (1.5, 2.5): weight 0.5 * 0.5.
    hot = torch.zeros(1, 1, 4, 4, device=device)
    hot[0, 0, 1, 2] = 1.0
    out = sparse_sample(
        hot, torch.tensor([[[0.5, 0.25, 0.75, 0.5]]], device=device), 1, mode="bilinear"
    )
    assert out[0, 0, 0].item() == 0.25


def test_golden_nearest_gradient_scatter_adds(device):
    feats = _map(device).requires_grad_()
    boxes = torch.tensor(
        [[[0.125, 0.375, 0.625, 0.875], [0.0, 0.0, 1.0, 1.0]]], device=device, requires_grad=True
    )
    sparse_sample(feats, boxes, 2).sum().backward()
    # Box 0 reads pixels 9, 11, 13, 15; box 1 reads 0, 3, 12, 15: pixel 15 twice.
    counts = torch.zeros(16, device=device)
    counts[[0, 3, 9, 11, 12, 13]] = 1.0
    counts[15] = 2.0
    assert torch.equal(feats.grad, counts.view(1, 1, 4, 4).expand(1, 2, 4, 4))
    assert boxes.grad is None  # no gradient to the boxes, as in DeNet


def test_golden_bilinear_gradient(device):
    feats = torch.zeros(1, 1, 4, 4, device=device, requires_grad=True)
    boxes = torch.tensor([[[0.5, 0.25, 0.75, 0.5]]], device=device)  # centre (py, px) = (1.5, 2.5)
    sparse_sample(feats, boxes, 1, mode="bilinear")[:, 0].sum().backward()
    expected = torch.zeros(4, 4, device=device)
    expected[1:3, 2:4] = 0.25
    assert torch.equal(feats.grad[0, 0], expected)


# --------------------------------------------------------------- DeNet's kernel, transcribed


def _denet_kernel(fmap, bbox, gs):
    """DeNet's ``k_sparse_sample`` line by line in numpy float32 scalars (one loop per thread)."""
    fmap = fmap.numpy()
    bbox = bbox.numpy().astype(np.float32)
    bs, fn, h, w = fmap.shape
    n = bbox.shape[1]
    out = np.zeros((bs, fn * gs * gs + 2, n), dtype=fmap.dtype)
    f32 = np.float32

    def lroundf(v):
        fl = math.floor(v)
        return int(fl + (1 if v - fl >= 0.5 else 0))

    k = f32(1.0) / f32(gs - 1)
    for b in range(bs):
        for i in range(n):
            x0, y0, x1, y1 = bbox[b, i]
            bh = f32(y1 - y0)
            bw = f32(x1 - x0)
            ff = 0
            for yi in range(gs):
                y = f32(y0 + f32(f32(f32(yi) * bh) * k))
                ys = lroundf(max(f32(0), min(f32(h - 1), f32(y * f32(h)))))
                for xi in range(gs):
                    x = f32(x0 + f32(f32(f32(xi) * bw) * k))
                    xs = lroundf(max(f32(0), min(f32(w - 1), f32(x * f32(w)))))
                    for f in range(fn):
                        out[b, ff, i] = fmap[b, f, ys, xs]
                        ff += 1
            out[b, ff, i] = bh
            out[b, ff + 1, i] = bw
    return torch.from_numpy(out)


def _random_boxes(bsz, n, generator, quantum=None):
    lo = torch.rand(bsz, n, 2, generator=generator) * 0.9
    hi = lo + torch.rand(bsz, n, 2, generator=generator) * (1.05 - lo)  # some reach past 1
    boxes = torch.cat([lo, hi], dim=-1)[..., [0, 1, 2, 3]]
    if quantum is not None:  # land many points exactly on .5 pixel boundaries
        boxes = torch.round(boxes * quantum) / quantum
    return boxes


@pytest.mark.parametrize("grid_size", [2, 3, 7])
def test_matches_denet_kernel(device, grid_size):
    g = torch.Generator().manual_seed(grid_size)
    feats = torch.randn(2, 3, 6, 5, generator=g)
    boxes = torch.cat([_random_boxes(2, 6, g), _random_boxes(2, 6, g, quantum=20)], dim=1)
    expected = _denet_kernel(feats, boxes, grid_size)
    out = sparse_sample(feats.to(device), boxes.to(device), grid_size)
    assert torch.equal(out.cpu(), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(device, dtype):
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 3, 5, 6, generator=g)
    boxes = _random_boxes(2, 5, g, quantum=16)  # exact in every dtype: results must agree
    ref = reference.sparse_sample_forward(feats, boxes, 3, "nearest")
    out = sparse_sample(feats.to(device, dtype), boxes.to(device), 3)
    assert out.dtype == dtype
    assert torch.equal(out.cpu(), ref.to(dtype))
    out = sparse_sample(feats.to(device, dtype), boxes.to(device), 3, mode="bilinear")
    ref = reference.sparse_sample_forward(feats.double(), boxes.double(), 3, "bilinear").to(dtype)
    tol = {torch.float64: 1e-12, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(out.cpu(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("mode", MODES)
def test_triton_matches_reference(monkeypatch, mode):
    # The two backends on the same random inputs, including the backward pass.
    if not interpreting() and not torch.cuda.is_available():
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(7)
    feats = torch.randn(2, 37, 5, 7, generator=g).to(dev)  # F spans two feature blocks
    boxes = torch.cat([_random_boxes(2, 70, g), _random_boxes(2, 10, g, quantum=8)], dim=1).to(dev)
    grad = torch.randn(2, 37 * 9 + 2, 80, generator=g).to(dev)
    results = []
    for backend in ("reference", "triton"):
        monkeypatch.setenv("DENET_KERNEL_BACKEND", backend)
        x = feats.clone().requires_grad_()
        out = sparse_sample(x, boxes, 3, mode)
        out.backward(grad)
        results.append((out, x.grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(device, mode):
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64).to(device).requires_grad_()
    boxes = _random_boxes(2, 3, g).double().to(device)
    assert torch.autograd.gradcheck(
        lambda f: sparse_sample(f, boxes, 2, mode), (feats,), fast_mode=True
    )


def test_empty(device):
    feats = torch.randn(2, 3, 4, 4, device=device, requires_grad=True)
    out = sparse_sample(feats, torch.zeros(2, 0, 4, device=device), 3)
    assert out.shape == (2, 3 * 9 + 2, 0) and out.dtype == feats.dtype
    out.sum().backward()
    assert torch.equal(feats.grad, torch.zeros_like(feats))
    out = sparse_sample(
        torch.zeros(0, 3, 4, 4, device=device), torch.zeros(0, 5, 4, device=device), 2
    )
    assert out.shape == (0, 14, 5)
    # No features: only the height and width channels remain.
    boxes = torch.tensor([[[0.0, 0.25, 0.5, 1.0]]], device=device)
    out = sparse_sample(torch.zeros(1, 0, 4, 4, device=device), boxes, 2)
    assert out[0, :, 0].tolist() == [0.75, 0.5]


def test_errors():
    f = torch.zeros(1, 2, 4, 4)
    b = torch.zeros(1, 3, 4)
    with pytest.raises(ValueError, match=r"\(2, 4, 4\)"):
        sparse_sample(torch.zeros(2, 4, 4), b, 2)
    with pytest.raises(ValueError, match=r"\(1, 3, 5\)"):
        sparse_sample(f, torch.zeros(1, 3, 5), 2)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        sparse_sample(f, torch.zeros(2, 3, 4), 2)
    with pytest.raises(ValueError, match="grid_size"):
        sparse_sample(f, b, 0)
    with pytest.raises(ValueError, match="mode"):
        sparse_sample(f, b, 2, mode="area")
    with pytest.raises(ValueError, match="empty"):
        sparse_sample(torch.zeros(1, 2, 0, 4), b, 2)
    with pytest.raises(ValueError, match="floating"):
        sparse_sample(f.long(), b, 2)


def test_module():
    m = SparseSample(3, mode="bilinear")
    assert repr(m) == "SparseSample(grid_size=3, mode='bilinear')"
    f, b = torch.randn(1, 2, 4, 4), torch.rand(1, 5, 4)
    assert torch.equal(m(f, b), sparse_sample(f, b, 3, "bilinear"))
    with pytest.raises(ValueError):
        SparseSample(2, mode="linear")


@pytest.mark.parametrize("dev", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("mode", MODES)
def test_opcheck(dev, mode, monkeypatch):
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.delenv("DENET_KERNEL_BACKEND", raising=False)
    feats = torch.randn(2, 3, 4, 5, device=dev, requires_grad=True)
    boxes = torch.rand(2, 6, 4, device=dev)
    torch.library.opcheck(torch.ops.denet.sparse_sample, (feats, boxes, 2, mode))
    grad = torch.randn(2, 3 * 4 + 2, 6, device=dev)
    torch.library.opcheck(torch.ops.denet.sparse_sample_backward, (grad, boxes, 3, 4, 5, 2, mode))
