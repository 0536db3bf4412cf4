"""DNC, DeNet's corner layer: init, corner log-probabilities, targets and loss from the formulas
of the reference (denet-original.md 3.1), and its side outputs."""

import math

import torch

import denet
from denet.layers import REGISTRY, Call, FunctionOp, LayerDef, Registry
from denet.layers.denet_corner import corner_targets


def test_corner_targets_round_half_to_even_and_pull_the_far_corner_in():
    # 32x32 input, 8x8 map: box (4, 6, 20, 30) px -> (0.125, 0.1875, 0.625, 0.9375)
    # x0 = round(1.0) = 1, y0 = round(1.5) = 2, x1 = max(1, round(5.0) - 1) = 4,
    # y1 = max(2, round(7.5) - 1) = 7; centre (round(3.0), round(4.5)) = (3, 4)
    t = corner_targets(torch.tensor([[4.0, 6.0, 20.0, 30.0]]), 5, 8, 8, (32, 32))
    want = {0: (2, 1), 1: (2, 4), 2: (7, 1), 3: (7, 4), 4: (4, 3)}
    for k, (y, x) in want.items():
        assert t[k, y, x] == 1 and t[k].sum() == 1, k
    # a box thinner than a cell: x1 = max(x0, ...) keeps it on x0; a corner off the map is dropped
    t = corner_targets(torch.tensor([[8.0, 8.0, 9.0, 40.0]]), 4, 8, 8, (32, 32))
    assert t[0, 2, 2] == 1 and t[1, 2, 2] == 1  # x1 = max(2, round(2.25) - 1) = 2
    assert t[2].sum() == 0 and t[3].sum() == 0  # y1 = round(10) - 1 = 9 is off the 8-row map


def test_init_probabilities_and_the_main_chain():
    torch.manual_seed(0)
    m = denet.compile("C[8,3] DNC.C[6] C[2,1]", (3, 16, 16), border_mode="half").eval()
    conv = m.l1_DNC.conv
    assert conv.out_channels == 5 + 6
    assert torch.all(conv.weight[:5] == 0) and torch.all(conv.bias[:5] == 5.0)
    assert torch.all(conv.bias[5:] == 0) and conv.weight[5:].abs().sum() > 0
    x = torch.randn(2, 3, 16, 16)
    f = m.l0_C(x)
    main, sides = m.l1_DNC(f, images=x)
    assert main is f  # the main chain is the input, unchanged
    logp = sides["DNC.corners"]
    assert logp.shape == (2, 2, 5, 16, 16)
    torch.testing.assert_close(
        logp[:, 1].exp(), torch.full_like(logp[:, 1], torch.sigmoid(torch.tensor(-10.0)).item())
    )
    torch.testing.assert_close(m(x), m.l2_C(f))


def test_corner_loss_is_bits_per_position():
    torch.manual_seed(1)
    m = denet.compile("C[4,3] DNC[3]", (3, 16, 16), border_mode="half").train()
    with torch.no_grad():
        m.l1_DNC.conv.weight.normal_()
    x = torch.randn(2, 3, 16, 16)
    targets = [
        {"boxes": torch.tensor([[1.0, 2.0, 9.0, 12.0], [4.0, 4.0, 15.0, 15.0]])},
        {"boxes": torch.zeros(0, 4)},
    ]
    losses = m(x, targets)
    assert list(losses) == ["loss_corner"]
    # the formula in float64, written out
    out = m.l1_DNC.conv(m.l0_C(x)).double()
    lh = out[:, :4]
    p = torch.sigmoid(-2 * lh)  # P(present)
    t = torch.stack([corner_targets(tg["boxes"], 4, 16, 16, (16, 16)).double() for tg in targets])
    ce = -(t * p.log() + (1 - t) * (1 - p).log()).sum((1, 2, 3))
    want = (ce / (16 * 16 * 4) / math.log(2)).mean()
    torch.testing.assert_close(losses["loss_corner"].double(), want, rtol=1e-5, atol=1e-6)
    assert t[0].sum() == 8 and t[1].sum() == 0


class ReadSample(LayerDef):
    """A test-only reader of a side output."""

    type = "READ_SAMPLE"

    def uses(self, call: Call):
        return ["DNC.sample"]

    def shape(self, call: Call):
        return call.inputs[1]

    def build(self, call: Call):
        return FunctionOp(lambda x, sample: sample)


def test_side_outputs_reach_a_later_layer_and_need_their_maker():
    registry = Registry([*REGISTRY, ReadSample])
    m = denet.compile(
        "C[4,3] DNC[3] C[5,1] READ_SAMPLE", (3, 8, 8), border_mode="half", registry=registry
    ).eval()
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(m(x), m.l1_DNC.conv(m.l0_C(x))[:, 4:])
    assert m.graph.output_shape.channels == 3
    try:
        denet.compile("C[4,3] READ_SAMPLE", (3, 8, 8), registry=registry)
    except denet.DescError as err:
        assert "DNC.sample is used before it is defined" in str(err)
    else:
        raise AssertionError("a reader without DNC compiled")
