"""denet.kernels.deform_conv2d: torchvision's outputs and gradients (both backends), the v1 boundary
rule against hand-computed values, gradcheck, opcheck, torch.compile, errors, dtypes, CUDA."""

import os

import pytest
import torch
import torchvision
from torch import nn

from denet.kernels.deform_conv2d import DeformConv2d, deform_conv2d


def _out_hw(h, w, k, stride, pad, dil):
    return tuple(
        (s + 2 * p - (d * (kk - 1) + 1)) // st + 1
        for s, kk, st, p, d in zip((h, w), k, stride, pad, dil)
    )


def _inputs(
    seed,
    b,
    cin,
    cout,
    hw,
    k,
    stride,
    pad,
    dil,
    groups,
    og,
    use_mask,
    scale,
    device,
    dtype=torch.float64,
):
    g = torch.Generator().manual_seed(seed)
    oh, ow = _out_hw(*hw, k, stride, pad, dil)
    x = torch.randn(b, cin, *hw, generator=g, dtype=torch.float64)
    # Offsets of a few pixels: many samples land outside the map (and on every border case).
    off = torch.randn(b, 2 * og * k[0] * k[1], oh, ow, generator=g, dtype=torch.float64) * scale
    w = torch.randn(cout, cin // groups, *k, generator=g, dtype=torch.float64)
    bias = torch.randn(cout, generator=g, dtype=torch.float64)
    mask = (
        torch.rand(b, og * k[0] * k[1], oh, ow, generator=g, dtype=torch.float64)
        if use_mask
        else None
    )
    return [t.to(device, dtype) if t is not None else None for t in (x, off, w, bias, mask)]


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() if b.numel() else 0.0


def _run(fn, tensors, grad_out=None):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    out = fn(*leaves)
    if grad_out is None:
        grad_out = torch.randn(
            out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64
        )
        grad_out = grad_out.to(out.device, out.dtype)
    used = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(out, used, grad_out)
    return out, grads, grad_out


# (seed, batch, C_in, C_out, (H, W), kernel, stride, padding, dilation, groups, offset_groups, mask, scale)
TV_CASES = [
    (0, 2, 4, 6, (5, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, 2.0),
    (1, 2, 4, 4, (6, 5), (3, 2), (2, 1), (1, 2), (2, 1), 2, 2, True, 3.0),
    (2, 1, 6, 4, (7, 5), (3, 3), (1, 2), (0, 1), (1, 2), 2, 3, False, 1.5),
    (3, 1, 6, 3, (4, 5), (2, 3), (1, 1), (2, 1), (1, 1), 3, 2, True, 4.0),
    (4, 2, 4, 4, (4, 4), (1, 1), (1, 1), (0, 0), (1, 1), 4, 2, False, 1.0),
    (5, 1, 32, 16, (4, 3), (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, True, 1.5),
]


@pytest.mark.parametrize("case", TV_CASES, ids=[f"case{c[0]}" for c in TV_CASES])
def test_matches_torchvision(device, case):
    seed, b, cin, cout, hw, k, stride, pad, dil, groups, og, use_mask, scale = case
    tensors = _inputs(
        seed, b, cin, cout, hw, k, stride, pad, dil, groups, og, use_mask, scale, "cpu"
    )
    tv = lambda x, o, w, bb, m: torchvision.ops.deform_conv2d(x, o, w, bb, stride, pad, dil, m)  # noqa: E731
    ours = lambda x, o, w, bb, m: deform_conv2d(x, o, w, bb, stride, pad, dil, m)  # noqa: E731
    want, want_grads, go = _run(tv, tensors)
    got, got_grads, _ = _run(
        ours, [t.to(device) if t is not None else None for t in tensors], go.to(device)
    )
    assert got.shape == want.shape
    assert _rel(got.cpu(), want) <= 1e-6
    for name, a, e in zip(["input", "offset", "weight", "bias", "mask"], got_grads, want_grads):
        assert _rel(a.cpu(), e) <= 1e-6, name


# ---------------------------------------------------------------------- v1 boundary, golden values

# Map f(y, x) = 4y + x on H=3, W=4; a 1x1 kernel with weight 1 reads the sample at
# (oy + dy, ox + dx) of output pixel (oy, ox). Per probed pixel: (oy, ox, dy, dx, v1, v2).
# Bilinear interpolation reproduces a linear map exactly, so in-map values are 4*py + px; the
# rules differ only near the border:
GOLDEN = [
    (0, 0, 0.5, 0.25, 2.25, 2.25),  # inside: both 4*0.5 + 0.25
    (2, 0, 0.5, 0.25, 8.25, 4.125),  # py = 2.5 on the last row: v1 clamps to row 2 (8.25);
    # v2 blends 8.25 with the zero row below: 0.5 * 8.25
    (0, 3, 0.0, 0.5, 3.0, 1.5),  # px = 3.5 past the last column: v1 -> 3, v2 -> 0.5 * 3
    (1, 0, 0.0, -0.5, 0.0, 2.0),  # px = -0.5: v1 outside (0), v2 -> 0.5 * f(1, 0) = 2
    (1, 1, 5.0, 0.0, 0.0, 0.0),  # py = 6: outside under both rules
    (2, 3, 0.3, 0.6, 11.0, 3.08),  # (2.3, 3.6): v1 -> f(2, 3) = 11, v2 -> 0.7 * 0.4 * 11
    (2, 1, 0.0, 0.0, 9.0, 9.0),  # exactly on the last row: f(2, 1) both
    (1, 2, -1.5, 0.0, 0.0, 1.0),  # py = -0.5: v1 outside, v2 -> 0.5 * f(0, 2) + 0.5 * zero row
]


def _golden_offsets(device, dtype=torch.float64):
    off = torch.zeros(1, 2, 3, 4, dtype=dtype)
    for oy, ox, dy, dx, *_ in GOLDEN:
        off[0, 0, oy, ox], off[0, 1, oy, ox] = dy, dx
    return off.to(device)


def test_golden_boundary_rules(device):
    x = (
        torch.arange(3, dtype=torch.float64)[:, None] * 4 + torch.arange(4, dtype=torch.float64)
    ).view(1, 1, 3, 4)
    w = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    x, w, off = x.to(device), w.to(device), _golden_offsets(device)
    v1 = deform_conv2d(x, off, w, boundary="v1")[0, 0].cpu()
    v2 = deform_conv2d(x, off, w, boundary="v2")[0, 0].cpu()
    for oy, ox, _dy, _dx, e1, e2 in GOLDEN:
        assert v1[oy, ox].item() == pytest.approx(e1, abs=1e-12), (oy, ox)
        assert v2[oy, ox].item() == pytest.approx(e2, abs=1e-12), (oy, ox)
    # torchvision agrees with the v2 rule.
    tv = torchvision.ops.deform_conv2d(x.cpu(), off.cpu(), w.cpu())[0, 0]
    assert torch.allclose(v2, tv, atol=1e-12)


def test_golden_v1_gradients(device):
    """v1: a clamped axis passes no offset gradient; the other axis has the edge row's slope."""
    x = (
        torch.arange(3, dtype=torch.float64)[:, None] * 4 + torch.arange(4, dtype=torch.float64)
    ).view(1, 1, 3, 4)
    x = x.to(device)
    w = torch.ones(1, 1, 1, 1, dtype=torch.float64, device=device)
    off = _golden_offsets(device).requires_grad_()
    mask = torch.full((1, 1, 3, 4), 0.5, dtype=torch.float64, device=device).requires_grad_()
    out = deform_conv2d(x, off, w, mask=mask, boundary="v1")
    g_off, g_mask = torch.autograd.grad(out.sum(), [off, mask])
    g_off, g_mask = g_off.cpu(), g_mask.cpu()
    # (0, 0) inside: d/dy = 4, d/dx = 1, times the mask 0.5; d/dmask = the sample 2.25.
    assert g_off[0, :, 0, 0].tolist() == pytest.approx([2.0, 0.5])
    assert g_mask[0, 0, 0, 0].item() == pytest.approx(2.25)
    # (2, 0) clamped in y: no y gradient, x slope 1 (times 0.5).
    assert g_off[0, :, 2, 0].tolist() == pytest.approx([0.0, 0.5])
    # (0, 3) clamped in x at py = 0: y slope f(1, 3) - f(0, 3) = 4 (times 0.5), no x gradient.
    assert g_off[0, :, 0, 3].tolist() == pytest.approx([2.0, 0.0])
    # (2, 3) clamped on both axes; (1, 0) and (1, 1) outside: nothing.
    for oy, ox in [(2, 3), (1, 0), (1, 1)]:
        assert g_off[0, :, oy, ox].tolist() == [0.0, 0.0]
    assert g_mask[0, 0, 2, 3].item() == pytest.approx(11.0)
    assert g_mask[0, 0, 1, 0].item() == 0.0


# ------------------------------------------------------------------------------ gradcheck


@pytest.mark.parametrize("boundary", ["v1", "v2"])
def test_gradcheck(device, boundary):
    x, off, w, bias, mask = _inputs(
        11, 1, 2, 2, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 1, 1, True, 1.3, device
    )
    leaves = [t.requires_grad_() for t in (x, off, w, bias, mask)]
    fn = lambda x, o, w, b, m: deform_conv2d(x, o, w, b, 1, 1, 1, m, boundary=boundary)  # noqa: E731
    # The Triton interpreter is slow: a random projection of the Jacobian is enough there.
    fast = device == "cpu" and os.environ["DENET_KERNEL_BACKEND"] == "triton"
    assert torch.autograd.gradcheck(fn, leaves, fast_mode=fast)


def test_gradcheck_grouped_no_mask(monkeypatch):
    monkeypatch.setenv("DENET_KERNEL_BACKEND", "reference")
    x, off, w, bias, _ = _inputs(
        12, 1, 4, 2, (3, 4), (2, 2), (1, 2), (1, 0), (1, 1), 2, 2, False, 1.3, "cpu"
    )
    leaves = [t.requires_grad_() for t in (x, off, w, bias)]
    assert torch.autograd.gradcheck(
        lambda x, o, w, b: deform_conv2d(x, o, w, b, (1, 2), (1, 0)), leaves
    )


# -------------------------------------------------------------- registration and integration


def test_opcheck(monkeypatch):
    monkeypatch.setenv("DENET_KERNEL_BACKEND", "reference")
    x, off, w, bias, mask = _inputs(
        13, 2, 4, 4, (4, 4), (3, 3), (1, 1), (1, 1), (1, 1), 2, 2, True, 1.0, "cpu", torch.float32
    )
    for m in (mask, None):
        args = [t.requires_grad_() if t is not None else None for t in (x, off, w, bias, m)]
        torch.library.opcheck(
            torch.ops.denet.deform_conv2d.default, (*args, [1, 1], [1, 1], [1, 1], "v2")
        )
    grad = torch.randn(2, 4, 4, 4)
    torch.library.opcheck(
        torch.ops.denet.deform_conv2d_backward.default,
        (
            grad,
            x.detach(),
            off.detach(),
            w.detach(),
            mask.detach(),
            [1, 1],
            [1, 1],
            [1, 1],
            "v1",
            True,
            True,
        ),
    )


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.offset = nn.Conv2d(3, 3 * 3 * 3, 3, padding=1)
        self.dcn = DeformConv2d(3, 4, 3, padding=1)

    def forward(self, x):
        o = self.offset(x)
        return self.dcn(x, o[:, :18], torch.sigmoid(o[:, 18:])).relu()


def test_torch_compile_fullgraph(monkeypatch):
    monkeypatch.setenv("DENET_KERNEL_BACKEND", "reference")
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(2, 3, 6, 5)
    eager = net(x)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    assert torch.allclose(out, eager, atol=1e-6)
    out.sum().backward()
    g = net.dcn.weight.grad.clone()
    net.zero_grad()
    eager.sum().backward()
    assert torch.allclose(g, net.dcn.weight.grad, atol=1e-5)


def test_module_matches_functional_and_repr(monkeypatch):
    monkeypatch.setenv("DENET_KERNEL_BACKEND", "reference")
    torch.manual_seed(1)
    m = DeformConv2d(
        4, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2, boundary="v1"
    )
    tv = torchvision.ops.DeformConv2d(
        4, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2
    )
    assert m.weight.shape == tv.weight.shape and m.bias.shape == tv.bias.shape
    x = torch.randn(1, 4, 5, 6)
    oh, ow = _out_hw(5, 6, (3, 2), (2, 1), (1, 1), (1, 2))
    off = torch.randn(1, 2 * 6, oh, ow)
    assert torch.equal(
        m(x, off), deform_conv2d(x, off, m.weight, m.bias, (2, 1), 1, (1, 2), boundary="v1")
    )
    assert "boundary='v1'" in repr(m) and "groups=2" in repr(m)


def test_empty_batch(device):
    x = torch.randn(0, 4, 5, 5, device=device, requires_grad=True)
    off = torch.randn(0, 18, 5, 5, device=device, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, device=device, requires_grad=True)
    out = deform_conv2d(x, off, w, padding=1)
    assert out.shape == (0, 3, 5, 5)
    gx, go, gw = torch.autograd.grad(out.sum(), [x, off, w])
    assert gx.shape == x.shape and go.shape == off.shape and torch.equal(gw, torch.zeros_like(w))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(offset=torch.zeros(1, 17, 4, 4)), r"offset \(1, 17, 4, 4\).*2 \* 3 \* 3 = 18"),
        (dict(offset=torch.zeros(1, 18, 3, 4)), r"offset \(1, 18, 3, 4\) must be \[1, 18, 4, 4\]"),
        (dict(offset=torch.zeros(1, 54, 4, 4)), r"divisible by the 3 offset groups"),
        (dict(mask=torch.zeros(1, 18, 4, 4)), r"mask \(1, 18, 4, 4\) must be \[1, 9, 4, 4\]"),
        (dict(weight=torch.zeros(4, 3, 3, 3)), r"weight.shape\[1\] = 3"),
        (dict(weight=torch.zeros(3, 2, 3, 3)), r"output channels 3 .* 2 weight groups"),
        (dict(bias=torch.zeros(5)), r"bias \(5,\) must be \[4\]"),
        (dict(boundary="v3"), r"boundary"),
    ],
)
def test_errors_name_the_shapes(kwargs, match):
    args = dict(
        input=torch.zeros(1, 4, 4, 4),
        offset=torch.zeros(1, 18, 4, 4),
        weight=torch.zeros(4, 4, 3, 3),
        bias=None,
        padding=1,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        deform_conv2d(**args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpu_dtypes(monkeypatch, dtype):
    monkeypatch.setenv("DENET_KERNEL_BACKEND", "reference")
    tensors = _inputs(21, 1, 4, 4, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, True, 1.5, "cpu")
    want = torchvision.ops.deform_conv2d(
        tensors[0], tensors[1], tensors[2], tensors[3], padding=1, mask=tensors[4]
    )
    low = [t.to(dtype) for t in tensors]
    got = deform_conv2d(low[0], low[1], low[2], low[3], padding=1, mask=low[4])
    assert got.dtype == dtype
    # Rounding the inputs to the dtype dominates; the maths runs in float32.
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    assert _rel(got.double(), want) <= tol


# ------------------------------------------------------------------------------------ CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("use_mask", [True, False])
def test_cuda_triton_against_torchvision(monkeypatch, dtype, use_mask):
    monkeypatch.setenv("DENET_KERNEL_BACKEND", "triton")
    tensors = _inputs(
        31, 2, 64, 32, (17, 19), (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, use_mask, 2.0, "cuda"
    )
    low = [t.to(dtype) if t is not None else None for t in tensors]
    # The float64 oracle sees the same rounded inputs: the offset gradient jumps where a sample
    # crosses a pixel line, and rounding the offsets to 16 bits moves many samples across one.
    rounded = [t.double() if t is not None else None for t in low]
    want, want_grads, go = _run(
        lambda x, o, w, b, m: torchvision.ops.deform_conv2d(x, o, w, b, 1, 1, 1, m), rounded
    )
    got, got_grads, _ = _run(
        lambda x, o, w, b, m: deform_conv2d(x, o, w, b, 1, 1, 1, m), low, go.to(dtype)
    )
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    assert _rel(got.double(), want) <= tol
    for name, a, e in zip(["input", "offset", "weight", "bias", "mask"], got_grads, want_grads):
        assert _rel(a.double(), e) <= 4 * tol, name
    if dtype != torch.bfloat16:  # torchvision has no bfloat16 deform_conv2d
        tv = torchvision.ops.deform_conv2d(*low[:4], 1, 1, 1, low[4])
        assert _rel(got.double(), tv.double()) <= 2 * tol
