"""SHARE/USE: one sub-network applied to several tensors with a single set of weights."""

import pytest
import torch
import torch.nn.functional as F

import denet
from denet import DescError

DESC = "C[4,3] @c1 P[2] SHARE[head](C[6,3] A C[2,1]) OUT[low] $c1 USE[head]"


def test_shared_body_has_one_set_of_weights_and_is_applied_twice():
    torch.manual_seed(0)
    m = denet.compile(DESC, (1, 8, 8), border_mode="half").eval()
    keys = list(m.state_dict())
    assert keys == ["l0_C.weight", "l4_C.weight", "l6_C.weight"]
    x = torch.randn(2, 1, 8, 8)
    y = m(x)
    c1 = m.l0_C(x)
    c2 = F.max_pool2d(c1, 2)

    def head(t):
        return m.l6_C(F.relu(m.l4_C(t)))

    assert list(y) == ["out", "low"]
    assert torch.allclose(y["low"], head(c2)) and torch.allclose(y["out"], head(c1))
    assert y["low"].shape == (2, 2, 4, 4) and y["out"].shape == (2, 2, 8, 8)


def test_gradients_of_every_application_reach_the_shared_weights():
    m = denet.compile(DESC, (1, 8, 8), border_mode="half").eval()
    x = torch.randn(1, 1, 8, 8)
    y = m(x)
    y["out"].sum().backward()
    g1 = m.l4_C.weight.grad.clone()
    m.zero_grad()
    y = m(x)
    y["low"].sum().backward()
    g2 = m.l4_C.weight.grad.clone()
    m.zero_grad()
    y = m(x)
    (y["out"].sum() + y["low"].sum()).backward()
    assert torch.allclose(m.l4_C.weight.grad, g1 + g2, atol=1e-5)
    assert g1.abs().sum() > 0 and g2.abs().sum() > 0


def test_shared_weights_survive_save_and_load(tmp_path):
    m = denet.compile(DESC, (1, 8, 8), border_mode="half").eval()
    denet.save(m, tmp_path / "m.pt")
    back = denet.load(tmp_path / "m.pt").eval()
    x = torch.randn(1, 1, 8, 8)
    assert all(torch.equal(a, b) for a, b in zip(m(x).values(), back(x).values()))
    assert back.desc == DESC.replace("C[2,1]", "C[2]")  # canonical


def test_taps_inside_a_shared_body_are_local_to_each_application():
    m = denet.compile(
        "C[4,3] @x SHARE[b](@t C[4,3] SUM( | $t)) @y $x USE[b] SUM( | $y)",
        (1, 8, 8),
        border_mode="half",
    )
    assert len([k for k in m.state_dict()]) == 2


@pytest.mark.parametrize(
    "desc, message",
    [
        ("C[4,3] USE[head]", "USE[head]: no SHARE[head](...) before it"),
        (
            "C[4,3] @a SHARE[h](C[2,1]) $a C[8,1] USE[h]",
            "USE[h]: the shared sub-network 'h' was defined on 4 channels",
        ),
        ("SHARE[h](C[2,1]) SHARE[h](C[2,1])", "SHARE[h](…): a sub-network named 'h' is already"),
    ],
)
def test_sharing_errors(desc, message):
    with pytest.raises(DescError) as err:
        denet.compile(desc, (1, 8, 8), border_mode="half")
    assert str(err.value).startswith(message), str(err.value)
