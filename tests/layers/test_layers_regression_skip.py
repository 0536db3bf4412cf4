"""R (classifier) and SKIPSRC / SKIP against float64 references."""

import pytest
import torch

import denet


def test_r_fully_connected_probabilities():
    m = denet.compile("R.B", (3, 4, 5), 6).double()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    logits = x.flatten(1) @ m.l0_R.weight.flatten(1).T + m.l0_R.bias
    m.eval()
    assert torch.allclose(m(x), torch.softmax(logits, 1))
    m.train()
    assert torch.allclose(m(x), torch.log_softmax(logits, 1))
    assert m.l0_R.weight.shape == (6, 3, 4, 5)


def test_r_mean_over_positions_and_denet_cost():
    m = denet.compile("R[2]", (3, 5, 5), 4).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    y = torch.nn.functional.conv2d(x, m.l0_R.weight)  # 4x4 positions
    m.eval()
    assert torch.allclose(m(x), torch.softmax(y, 1).mean(dim=(2, 3)))
    m.train()
    target = torch.tensor([1, 3])
    denet_cost = -torch.log_softmax(y, 1)[torch.arange(2), target].mean()  # all positions
    assert torch.allclose(torch.nn.functional.nll_loss(m(x), target), denet_cost)
    assert m.l0_R.bias is None


def test_r_centre_pixel():
    m = denet.compile("R.C[1]", (3, 5, 4), 4).double()
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    y = torch.nn.functional.conv2d(x, m.l0_R.weight)[:, :, 2, 2]
    m.eval()
    assert torch.allclose(m(x), torch.softmax(y, 1))


def test_skip_projection_add_and_concat():
    m = denet.compile("C[4,1] SKIPSRC[3] C[6,1] SKIP[3]", (2, 3, 3)).double()
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    a = m.l0_C(x)
    ref = m.l2_C(a) + torch.nn.functional.conv2d(a, m.l3_SKIP.weight)
    assert torch.allclose(m(x), ref)
    assert m.l3_SKIP.weight.shape == (6, 4, 1, 1) and m.l3_SKIP.bias is None
    m = denet.compile("C[4,1] SKIPSRC C[6,1] SKIP[mode=concat]", (2, 3, 3))
    assert str(m.graph.output_shape) == "10x3x3"
    x = torch.randn(1, 2, 3, 3)
    assert torch.equal(m(x)[:, 6:], m.l0_C(x))
    m = denet.compile("C[4,1] SKIPSRC C[4,1] SKIP", (2, 3, 3))
    assert torch.allclose(m(x), m.l2_C(m.l0_C(x)) + m.l0_C(x))
    assert "l3_SKIP" not in dict(m.named_modules())


def test_sum_cat_max_merges():
    m = denet.compile(
        "C[4,1] SUM(C[4,1] | | A[tanh]) MAX(A[sigmoid] | ) CAT(C[2,1] | )", (2, 3, 3)
    ).double()
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    a = m.l0_C(x)
    s = m.l2_C(a) + a + torch.tanh(a)
    mx = torch.maximum(torch.sigmoid(s), s)
    ref = torch.cat([m.l7_C(mx), mx], 1)
    assert torch.allclose(m(x), ref)


def test_lr_multiplier_frozen_and_weight_decay_groups():
    m = denet.compile("C.B[4,3,lr=0.1] BN[frozen=1] C[4,3,frozen=1] BN R.B[lr=10]", (2, 8, 8), 3)
    assert not m.l1_BN.weight.requires_grad and not m.l2_C.weight.requires_grad
    groups = m.param_groups(0.5, 1e-4)
    by = {(g["lr"], g["weight_decay"]): sum(p.numel() for p in g["params"]) for g in groups}
    assert by == {
        (0.05, 1e-4): 4 * 2 * 9,
        (0.05, 0.0): 4,
        (0.5, 0.0): 8,
        (5.0, 1e-4): 3 * 4 * 4 * 4,
        (5.0, 0.0): 3,
    }
    with pytest.raises(denet.DescError, match="lr must be >= 0"):
        denet.compile("C[4,3,lr=-1]", (2, 8, 8))
    with pytest.raises(denet.DescError, match="A has no argument 'lr'"):
        denet.compile("A[lr=2]", (2, 8, 8))
