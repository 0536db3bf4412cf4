"""C / DC / B: border modes against Theano's output-size formulas and float64 references."""

import math

import pytest
import torch
import torch.nn.functional as F

import denet


def theano_conv_out(h, k, s, mode):
    """DeNet's convolution.py formulas (ceil((H + 2p - k + 1) / s))."""
    if mode == "valid":
        return math.ceil((h - k + 1) / s)
    if mode == "full":
        return math.ceil((h + k - 1) / s)
    if mode == "half":
        return math.ceil((h + 2 * (k // 2) - k + 1) / s)
    if mode == "same":
        return h
    return math.ceil((h + 2 * mode - k + 1) / s)


@pytest.mark.parametrize(
    "mode, s", [(m, s) for m in ("valid", "half", "full", 2) for s in (1, 2, 3)] + [("same", 1)]
)
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_border_mode_output_sizes(mode, k, s):
    h = 11
    m = denet.compile(f"C[2,{k},{s}]", (1, h, h), border_mode=mode)
    expected = theano_conv_out(h, k, s, mode)
    assert m.graph.output_shape.height == expected
    assert m(torch.randn(1, 1, h, h)).shape == (1, 2, expected, expected)


def test_same_border_is_a_cropped_full_convolution_float64():
    """Theano 'same': full conv, then crop from (k-1)//2 (DeNet convolution.py); even kernels
    are asymmetric."""
    for k in (2, 3, 4):
        m = denet.compile(f"C[3,{k}]", (2, 7, 9), border_mode="same").double()
        x = torch.randn(1, 2, 7, 9, dtype=torch.float64)
        w = m.l0_C.weight
        full = F.conv2d(x, w, padding=k - 1)
        y0 = (k - 1) // 2
        ref = full[:, :, y0 : y0 + 7, y0 : y0 + 9]
        assert torch.allclose(m(x), ref, atol=1e-12)


def test_c_bias_follows_denet_code():
    m = denet.compile("C[4,3] C.B[4,3] C.X[4,1,3,1,2]", (2, 9, 9))
    assert m.l0_C.bias is None  # plain C: no bias
    assert m.l1_C.bias is not None  # C.B: bias ON (code, not README)
    assert m.l2_C.weight.shape == (4, 4, 1, 3) and m.l2_C.stride == (1, 2)


def test_dilation_groups_and_param_count():
    m = denet.compile("C[8,3,dilation=2,groups=2]", (4, 9, 9), border_mode="half")
    assert m.graph.output_shape.height == 9
    assert sum(p.numel() for p in m.parameters()) == 8 * 2 * 9
    x = torch.randn(1, 4, 9, 9, dtype=torch.float64)
    m = m.double()
    ref = F.conv2d(x, m.l0_C.weight, padding=2, dilation=2, groups=2)
    assert torch.allclose(m(x), ref)


def test_deconv_output_size_and_bias():
    for k, s in [(3, 2), (2, 2), (4, 2), (3, 1), (5, 3)]:
        m = denet.compile(f"DC[4,{k},{s}] DC.B[2,{k}]", (3, 5, 6), border_mode="half")
        h = 5 * s - 2 * (k // 2) + k - 1
        w = 6 * s - 2 * (k // 2) + k - 1
        assert m.graph.nodes[0].shape.height == h and m.graph.nodes[0].shape.width == w
        assert m(torch.randn(1, 3, 5, 6)).shape[2:] == (
            h - 2 * (k // 2) + k - 1,
            w - 2 * (k // 2) + k - 1,
        )
        assert m.l0_DC.bias is not None and m.l1_DC.bias is None


def test_weight_init_statistics():
    torch.manual_seed(0)
    m = denet.compile(
        "C[256,3] C[128,3,init=he-forward] C[64,3,init=xavier-backward-uniform] "
        "C[8,1,init=0] C[8,1,init=0.5]",
        (64, 16, 16),
        border_mode="half",
    )
    assert m.l0_C.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 256)), rel=0.03)
    assert m.l1_C.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 256)), rel=0.03)
    b = math.sqrt(1 / (9 * 64))
    assert m.l2_C.weight.abs().max().item() <= b and m.l2_C.weight.std().item() == pytest.approx(
        b / math.sqrt(3), rel=0.05
    )
    assert m.l3_C.weight.abs().sum().item() == 0
    assert m.l4_C.weight.std().item() == pytest.approx(0.5, rel=0.2)


def test_global_weight_init_list_is_per_token():
    torch.manual_seed(0)
    m = denet.compile(
        "C[64,3] C[64,3] C[64,3]", (64, 8, 8), border_mode="half", weight_init=["0.0", 1.0]
    )
    assert m.l0_C.weight.abs().sum() == 0
    assert m.l1_C.weight.std().item() == pytest.approx(1.0, rel=0.05)
    assert m.l2_C.weight.std().item() == pytest.approx(1.0, rel=0.05)
    assert m.options["weight_init"] == [0.0, 1.0]


def test_border_layer():
    m = denet.compile("B[2]", (1, 3, 3))
    y = m(torch.ones(1, 1, 3, 3))
    assert y.shape == (1, 1, 7, 7) and y.sum() == 9 and y[0, 0, 0].abs().sum() == 0
