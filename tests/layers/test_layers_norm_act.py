"""BN family, activations, dropout, crop-mirror."""

import pytest
import torch

import denet


def test_bn_momentum_is_denet_style():
    m = denet.compile("BN BN[0.5,1e-3]", (3, 4, 4))
    assert m.l0_BN.momentum == pytest.approx(0.1) and m.l0_BN.eps == 1e-5
    assert m.l1_BN.momentum == pytest.approx(0.5) and m.l1_BN.eps == 1e-3
    x = torch.randn(8, 3, 4, 4) + 2.0
    m.train()
    m(x)
    # DeNet: mean <- 0.9 * mean + 0.1 * batch_mean, starting from 0
    assert torch.allclose(m.l0_BN.running_mean, 0.1 * x.mean(dim=(0, 2, 3)), atol=1e-6)


def test_bna_is_bn_then_relu():
    m = denet.compile("BNA", (3, 4, 4))
    ref = denet.compile("BN A", (3, 4, 4))
    ref.l0_BN.load_state_dict(m.l0_BNA.state_dict())
    x = torch.randn(4, 3, 4, 4)
    assert torch.equal(m(x), ref(x))
    assert (m(x) >= 0).all()


def test_frozen_bn_equals_bn_in_eval_and_trains_nothing():
    bn = denet.compile("BN", (3, 4, 4))
    with torch.no_grad():
        bn.l0_BN.running_mean.normal_()
        bn.l0_BN.running_var.uniform_(0.5, 2)
        bn.l0_BN.weight.normal_()
    fbn = denet.compile("FBN", (3, 4, 4))
    fbn.l0_FBN.load_state_dict(bn.l0_BN.state_dict())
    bn.eval()
    fbn.train()
    x = torch.randn(2, 3, 4, 4)
    assert torch.allclose(fbn(x), bn(x), atol=1e-6)
    assert list(fbn.parameters()) == [] and fbn.param_groups(0.1, 1e-4) == []


def test_affine_channel_and_group_norm():
    m = denet.compile("AC GN[2]", (4, 3, 3))
    assert sum(p.numel() for p in m.parameters()) == 16
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    m = m.double()
    ref = torch.nn.functional.group_norm(x, 2, eps=1e-5)
    assert torch.allclose(m(x), ref)
    with pytest.raises(denet.DescError, match="must divide"):
        denet.compile("GN[3]", (4, 3, 3))


@pytest.mark.parametrize(
    "name, fn",
    [
        ("none", lambda x: x),
        ("sigmoid", torch.sigmoid),
        ("relu", torch.relu),
        ("relu-safe", lambda x: torch.clamp_min(x, 0)),
        ("elu", torch.nn.functional.elu),
        ("tanh", torch.tanh),
        ("softmax", lambda x: torch.softmax(x, 1)),
        ("softplus", torch.nn.functional.softplus),
        ("leaky-relu", lambda x: torch.where(x > 0, x, 0.01 * x)),
    ],
)
def test_activations(name, fn):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    m = denet.compile("A", (3, 4, 4), activation=name)
    assert torch.allclose(m(x.clone()), fn(x))
    m = denet.compile(f"A[{name}]", (3, 4, 4), activation="tanh")
    assert torch.allclose(m(x.clone()), fn(x))


def test_dropout_scales_in_training_only():
    torch.manual_seed(0)
    m = denet.compile("D[0.25]", (1, 100, 100))
    x = torch.ones(1, 1, 100, 100)
    m.train()
    y = m(x)
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.75))
    assert (y == 0).float().mean().item() == pytest.approx(0.25, abs=0.02)
    m.eval()
    assert torch.equal(m(x), x)


def test_crop_mirror():
    torch.manual_seed(0)
    m = denet.compile("CM[4,1.0,0]", (1, 6, 6))
    x = torch.arange(36.0).reshape(1, 1, 6, 6).repeat(16, 1, 1, 1)
    m.eval()
    assert torch.equal(m(x), x[:, :, 1:5, 1:5])
    m.train()
    y = m(x)
    assert y.shape == (16, 1, 4, 4)
    # every training crop is a mirrored 4x4 window of the input
    for b in range(16):
        found = any(
            torch.equal(y[b, 0], x[b, 0, i : i + 4, j : j + 4].flip(1))
            for i in range(3)
            for j in range(3)
        )
        assert found
