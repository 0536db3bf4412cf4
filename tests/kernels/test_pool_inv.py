"""denet.kernels.pool_inv: hand-computed golden values, gradcheck, both backends, opcheck."""

import pytest
import torch

from denet.kernels.pool_inv import PoolInv, pool_inv


def test_golden_square_factor(device):
    x = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], device=device).view(1, 1, 2, 3)
    expected = torch.tensor(
        [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5], [3, 3, 4, 4, 5, 5]],
        dtype=torch.float32,
        device=device,
    ).view(1, 1, 4, 6)
    assert torch.equal(pool_inv(x, 2), expected)


def test_golden_pair_factor_and_channels(device):
    x = torch.tensor([[[1.0], [2.0]], [[-1.0], [7.0]]], device=device).view(1, 2, 2, 1)
    expected = torch.tensor(
        [[[1, 1, 1], [2, 2, 2]], [[-1, -1, -1], [7, 7, 7]]], dtype=torch.float32, device=device
    ).view(1, 2, 2, 3)
    assert torch.equal(pool_inv(x, (1, 3)), expected)


def test_golden_gradient_is_block_sum(device):
    x = torch.zeros(1, 1, 2, 3, device=device, requires_grad=True)
    g = torch.arange(24.0, device=device).view(1, 1, 4, 6)  # g[y, x] = 6y + x
    pool_inv(x, 2).backward(g)
    # Block (0,0): 0+1+6+7; (0,1): 2+3+8+9; (0,2): 4+5+10+11; row 1 adds 12 per cell, 4 cells.
    expected = torch.tensor([[14.0, 22.0, 30.0], [62.0, 70.0, 78.0]], device=device).view(
        1, 1, 2, 3
    )
    assert torch.equal(x.grad, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_matches_repeat_interleave(device, dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 4, device=device).to(dtype)
    expected = x.repeat_interleave(3, dim=2).repeat_interleave(2, dim=3)
    assert torch.equal(pool_inv(x, (3, 2)), expected)


def test_non_contiguous_input(device):
    x = torch.randn(2, 3, 4, 5, device=device).to(memory_format=torch.channels_last)
    assert torch.equal(
        pool_inv(x, 2), x.contiguous().repeat_interleave(2, 2).repeat_interleave(2, 3)
    )


def test_gradcheck(device):
    x = torch.randn(2, 1, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: pool_inv(t, (2, 3)), (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda t: pool_inv(t, (2, 3)), (x,), fast_mode=True)


def test_half_gradient_accumulates_in_float32(device):
    x = torch.zeros(1, 1, 1, 1, dtype=torch.float16, device=device, requires_grad=True)
    # 2048 + 1 + 1 + 1 is not representable in float16 step by step (2049 rounds to 2048), but is
    # exact when summed in float32 and rounded once: 2051 -> 2052.
    g = torch.tensor([2048.0, 1.0, 1.0, 1.0], dtype=torch.float16, device=device).view(1, 1, 2, 2)
    pool_inv(x, 2).backward(g)
    assert x.grad.item() == 2052.0


@pytest.mark.parametrize("shape", [(0, 3, 2, 2), (1, 0, 2, 2), (1, 2, 0, 3)])
def test_empty(device, shape):
    x = torch.zeros(shape, device=device, requires_grad=True)
    y = pool_inv(x, (2, 3))
    assert y.shape == (shape[0], shape[1], shape[2] * 2, shape[3] * 3) and y.dtype == x.dtype
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_errors():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        pool_inv(torch.zeros(2, 3, 4), 2)
    with pytest.raises(ValueError, match="positive"):
        pool_inv(torch.zeros(1, 1, 2, 2), (2, 0))
    with pytest.raises(ValueError, match="pair"):
        pool_inv(torch.zeros(1, 1, 2, 2), (2, 2, 2))
    with pytest.raises(ValueError, match="floating"):
        pool_inv(torch.zeros(1, 1, 2, 2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="positive"):
        PoolInv(0)


def test_module():
    m = PoolInv((2, 1))
    assert repr(m) == "PoolInv(size=(2, 1))"
    x = torch.randn(1, 2, 3, 3)
    assert torch.equal(m(x), pool_inv(x, (2, 1)))


@pytest.mark.parametrize("dev", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_opcheck(dev, monkeypatch):
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.delenv("DENET_KERNEL_BACKEND", raising=False)
    x = torch.randn(2, 3, 4, 5, device=dev, requires_grad=True)
    torch.library.opcheck(torch.ops.denet.pool_inv, (x, 2, 3))
    torch.library.opcheck(
        torch.ops.denet.pool_inv_backward, (torch.randn(2, 3, 8, 15, device=dev), 2, 3)
    )
