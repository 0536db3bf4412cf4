"""P / PI: pooling against Theano's pool_2d semantics computed in float64."""

import numpy as np
import pytest
import torch

import denet


def theano_pool(x, k, s, pad, mode, ignore_border):
    """Reference of theano.tensor.signal.pool.pool_2d (max / average_inc_pad), numpy float64."""
    b, c, h, w = x.shape
    xp = np.zeros((b, c, h + 2 * pad, w + 2 * pad))
    if mode == "max":
        xp[:] = -np.inf
    xp[:, :, pad : pad + h, pad : pad + w] = x
    r = h + 2 * pad

    def out_len(r):
        if ignore_border:
            return (r - k) // s + 1
        return (r - 1) // s + 1 if s >= k else max(0, (r - 1 - k + s) // s) + 1

    oh, ow = out_len(r), out_len(w + 2 * pad)
    out = np.zeros((b, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * s : min(i * s + k, r), j * s : min(j * s + k, w + 2 * pad)]
            out[:, :, i, j] = win.max(axis=(2, 3)) if mode == "max" else win.mean(axis=(2, 3))
    return out


@pytest.mark.parametrize("tags", ["", ".A", ".B", ".AB"])
@pytest.mark.parametrize(
    "k, s, pad", [(2, 2, 0), (3, 2, 0), (3, 2, 1), (3, 3, 0), (2, 1, 1), (3, 1, 0)]
)
@pytest.mark.parametrize("h", [7, 8])
def test_pool_matches_theano(tags, k, s, pad, h):
    x = torch.randn(2, 3, h, h + 1, dtype=torch.float64)
    m = denet.compile(f"P{tags}[{k},{s},{pad}]", (3, h, h + 1)).double()
    mode = "avg" if "A" in tags else "max"
    ref = theano_pool(x.numpy(), k, s, pad, mode, ignore_border="B" not in tags)
    y = m(x)
    assert tuple(y.shape[2:]) == ref.shape[2:]
    assert (m.graph.output_shape.height, m.graph.output_shape.width) == ref.shape[2:]
    assert np.allclose(y.numpy(), ref, atol=1e-12)


def test_pool_defaults_and_global_pooling():
    m = denet.compile("P[3] P.A", (2, 9, 9))
    assert str(m.graph.nodes[0].shape) == "2x3x3"
    assert str(m.graph.output_shape) == "2x1x1"
    x = torch.randn(1, 2, 9, 9)
    ref = torch.nn.functional.max_pool2d(x, 3).mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(m(x), ref)
    m = denet.compile("P", (2, 5, 7))
    assert torch.equal(m(x[:, :, :5, :7]), x[:, :, :5, :7].amax(dim=(2, 3), keepdim=True))


def test_pool_errors():
    with pytest.raises(denet.DescError, match="pad .2. must be at most half"):
        denet.compile("P[3,2,2]", (1, 8, 8))
    with pytest.raises(denet.DescError, match="global pooling .* takes no padding"):
        denet.compile("P[pad=1]", (1, 8, 8))


def test_pool_inverse_copies_blocks_and_sums_gradients():
    m = denet.compile("PI[3]", (2, 2, 3))
    x = torch.arange(12.0).reshape(1, 2, 2, 3).requires_grad_()
    y = m(x)
    assert y.shape == (1, 2, 6, 9)
    assert torch.equal(y[0, 1, 3:6, 6:9], torch.full((3, 3), x[0, 1, 1, 2].item()))
    g = torch.randn_like(y)
    y.backward(g)
    ref = g.reshape(1, 2, 2, 3, 3, 3).sum(dim=(3, 5))
    assert torch.allclose(x.grad, ref)
    assert m.graph.output_shape.stride == pytest.approx(1 / 3)
