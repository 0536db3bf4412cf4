"""UP, BDC and CROP against torch's own resizing, DRN's fill_up_weights in nn.ConvTranspose2d,
and plain slicing; shapes checked against real forward passes."""

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import denet
from denet.dsl import canonical
from denet.dsl.graph import INPUT
from denet.layers import resize


def compile_(desc, shape=(2, 9, 11), classes=None):
    torch.manual_seed(0)
    return denet.compile(desc, shape, classes, border_mode="half").eval()


def error(desc, shape=(2, 9, 11)):
    with pytest.raises(denet.DescError) as err:
        denet.compile(desc, shape, border_mode="half")
    return err.value


# ------------------------------------------------------------------------------------------ UP
@pytest.mark.parametrize("factor", [2.0, 0.5, 0.75, 1.3, 8.0, 1 / 3])
@pytest.mark.parametrize("align", [0, 1])
def test_up_is_f_interpolate_with_the_scale_factor_and_its_size_rule(factor, align):
    m = compile_(f"C[3,3] UP[{factor!r},align_corners={align}]", (2, 13, 10))
    x = torch.randn(2, 2, 13, 10)
    want = F.interpolate(m.l0_C(x), scale_factor=factor, mode="bilinear", align_corners=bool(align))
    y = m(x)
    assert torch.equal(y, want)
    out = m.graph.output_shape
    assert (out.height, out.width) == (math.floor(13 * factor), math.floor(10 * factor))
    assert tuple(y.shape[2:]) == (out.height, out.width)
    assert out.stride == 1 / Fraction(repr(factor))


def test_up_with_align_corners_is_drn_use_torch_up():
    m = compile_("C[3,3] UP[8,align_corners=1]")
    x = torch.randn(1, 2, 9, 11)
    assert torch.equal(m(x), nn.UpsamplingBilinear2d(scale_factor=8)(m.l0_C(x)))
    assert m.graph.output_shape.height == 72 and m.graph.output_shape.stride == Fraction(1, 8)


@pytest.mark.parametrize("size", [321, 320, 17])
def test_up_rule_deeplab_is_deeplab_v2_input_pyramid(size):
    """isht7's MS_Deeplab: UpsamplingBilinear2d(size=(int(s*0.75)+1, ...)) (align_corners)."""
    m = compile_(
        "@x UP[0.75,align_corners=1,rule=deeplab] OUT[a] $x UP[0.5,rule=deeplab]", (3, size, 7)
    )
    x = torch.randn(1, 3, size, 7)
    a, b = int(size * 0.75) + 1, int(size * 0.5) + 1
    y = m(x)
    want = nn.UpsamplingBilinear2d(size=(a, int(7 * 0.75) + 1))(x)
    assert torch.equal(y["a"], want) and m.graph.node("l1_UP").shape.height == a
    assert y["out"].shape[2] == b == m.graph.output_shape.height
    assert torch.equal(y["out"], F.interpolate(x, size=(b, 4), mode="bilinear"))


def test_up_to_a_tap_and_to_the_input():
    m = compile_(
        "C[4,3] @f P[2] C[3,3] UP[to=f] @u $u C[3,3,stride=2] UP[to=input,align_corners=1]"
    )
    x = torch.randn(2, 2, 9, 11)
    f = m.l0_C(x)
    small = m.l3_C(m.l2_P(f))
    u = F.interpolate(small, size=(9, 11), mode="bilinear", align_corners=False)
    assert m.graph.node("l4_UP").shape == denet.layers.ShapeSpec(3, 9, 11, Fraction(1))
    y = m(x)
    want = F.interpolate(m.l7_C(u), size=(9, 11), mode="bilinear", align_corners=True)
    torch.testing.assert_close(y, want)
    # the input's size at run time, not at compile time
    assert m(torch.randn(1, 2, 12, 14)).shape == (1, 3, 12, 14)
    assert INPUT == resize.INPUT


def test_a_tap_named_input_wins_over_the_network_input():
    m = compile_("C[3,3,stride=2] @input C[3,3] UP[2] C[3,3,stride=2] UP[to=input]")
    assert m.graph.output_shape.height == 5  # the tap (5x6), not the 9x11 images


def test_up_gradients_are_those_of_bilinear_interpolation():
    m = denet.compile("UP[0.75,align_corners=1,rule=deeplab]", (1, 5, 6)).double()
    x = torch.randn(1, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))
    g = torch.randn(1, 1, 4, 5, dtype=torch.float64)
    (gx,) = torch.autograd.grad(m(x), x, g)
    x2 = x.detach().clone().requires_grad_(True)
    want = nn.UpsamplingBilinear2d(size=(4, 5))(x2)
    (gw,) = torch.autograd.grad(want, x2, g)
    torch.testing.assert_close(gx, gw)


@pytest.mark.parametrize(
    "desc, message, at",
    [
        ("C[2,3] UP[0]", "UP[0]: the factor must be > 0, not 0", "0]"),
        ("C[2,3] UP[-1.5]", "UP[-1.5]: the factor must be > 0, not -1.5", "-1.5"),
        ("C[2,3] UP", "UP: UP needs a factor (UP[2]) or a map to resize to", "UP"),
        ("C[2,3] UP[0.05]", "UP[0.05]: output would be empty: 9x11 times 0.05 is 0x0", "0.05"),
        ("C[2,3] UP[to=f]", "UP[to=f]: to=f refers to no earlier @f (no @taps so far)", "to="),
        ("@f C[2,3] UP[2,to=f]", "UP[2,to=f]: give a factor or to=, not both", "2,to"),
        ("@f C[2,3] UP[to=f,rule=deeplab]", "UP[to=f,rule=deeplab]: rule= sets the size", "rule"),
        ("C[2,3] UP[2,rule=ceil]", "UP[2,rule=ceil]: rule must be one of floor, deeplab", "rule"),
        (
            "C[2,3] @f BOXES[3] @b $f UP[to=b]",
            "UP[to=b]: to= must name a feature map, not a set",
            "to=",
        ),
    ],
)
def test_up_misuse_is_one_desc_error_with_a_caret(desc, message, at):
    err = error(desc)
    first, shown, caret = str(err).split("\n")
    assert first.startswith(message), first
    assert err.column == desc.index(at) + 1, str(err)
    assert shown == "  " + desc and caret == "  " + " " * desc.index(at) + "^"


def test_up_canonical_form_round_trips():
    desc = "C[2,3] @f UP[2.0,align_corners=1] UP[to=f,rule=floor] UP[factor=0.5,rule=deeplab]"
    text = canonical(desc)
    assert text == "C[2,3] @f UP[2.0,align_corners=1] UP[to=f] UP[0.5,rule=deeplab]"
    a, b = compile_(desc), compile_(text)
    assert a.graph.signature() == b.graph.signature()


# ----------------------------------------------------------------------------------------- BDC
def drn_fill_up_weights(up):
    """DRN's segment.py fill_up_weights, transcribed."""
    w = up.weight.data
    f = math.ceil(w.size(2) / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    for i in range(w.size(2)):
        for j in range(w.size(3)):
            w[0, 0, i, j] = (1 - math.fabs(i / f - c)) * (1 - math.fabs(j / f - c))
    for c in range(1, w.size(0)):
        w[c, 0, :, :] = w[0, 0, :, :]


@pytest.mark.parametrize("k, s, p", [(16, 8, 4), (32, 16, 0), (4, 2, 1), (3, 1, 1), (5, 3, 0)])
def test_bdc_is_drn_up_a_frozen_bilinear_conv_transpose(k, s, p):
    m = compile_(f"C[3,3] BDC[{k},{s},{p}]")
    up = nn.ConvTranspose2d(3, 3, k, stride=s, padding=p, output_padding=0, groups=3, bias=False)
    drn_fill_up_weights(up)
    assert torch.equal(m.l1_BDC.weight, up.weight.data)
    x = torch.randn(2, 2, 9, 11)
    feat = m.l0_C(x)
    y = m(x)
    torch.testing.assert_close(y, up(feat))
    out = m.graph.output_shape
    assert tuple(y.shape[1:]) == (out.channels, out.height, out.width)
    assert out.height == (9 - 1) * s - 2 * p + k and out.stride == Fraction(1, s)


def test_bdc_16_8_4_is_exactly_x8_and_its_weight_is_stored_but_never_trained():
    m = denet.compile("C[3,3] BDC[16,8,4] SEG", (2, 6, 7), 3, border_mode="half")
    assert m.graph.output_shape.height == 48 and m.graph.output_shape.width == 56
    assert "l1_BDC.weight" in m.state_dict()
    assert not m.l1_BDC.weight.requires_grad
    opt_params = [p for g in m.param_groups(0.1, 1e-4) for p in g["params"]]
    assert all(p is not m.l1_BDC.weight for p in opt_params) and len(opt_params) == 1
    before = m.l1_BDC.weight.clone()
    opt = torch.optim.SGD(m.param_groups(0.1, 1e-4), lr=0.1)
    m.train()
    x = torch.randn(2, 2, 6, 7)
    targets = [{"mask": torch.randint(0, 3, (48, 56))} for _ in range(2)]
    loss = m(x, targets)["loss_seg"]
    loss.backward()
    opt.step()
    assert m.l1_BDC.weight.grad is None and torch.equal(m.l1_BDC.weight, before)
    assert m.l0_C.weight.grad is not None
    # trainable parameter counts in summary: the BDC's 3*16*16 are stored, not trainable
    assert "total parameters: 822 (trainable 54)" in denet.summary(m)


def test_bdc_weight_survives_save_and_load(tmp_path):
    m = compile_("C[3,3] BDC[4,2,1]")
    denet.save(m, tmp_path / "m.pt")
    back = denet.load(tmp_path / "m.pt")
    assert torch.equal(back.l1_BDC.weight, m.l1_BDC.weight)
    assert not back.l1_BDC.weight.requires_grad


def test_bdc_input_gradient_is_the_conv_transpose_gradient():
    m = denet.compile("BDC[4,2,1]", (2, 4, 5)).double()
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_bdc_misuse():
    err = error("C[2,3] BDC[4,2,4]")
    assert str(err).startswith("BDC[4,2,4]: pad must be < size (4), not 4 (column 16)")
    err = error("C[2,3] BDC[4]")
    assert str(err).startswith("BDC[4]: BDC needs stride (BDC[size, stride, pad=…])")
    err = error("C[2,3] BDC[3,1,2]", (2, 1, 1))
    assert "output would be empty" in str(err).split("\n")[0]


# ---------------------------------------------------------------------------------------- CROP
def test_crop_to_the_input_is_deformable_deeplab_crop_after_the_deconv():
    """resnet_v1_101_deeplab: Deconvolution(k32, s16, num_group=K, bilinear) then Crop to the
    data at offset (8, 8)."""
    m = compile_("C[3,3] P[16] BDC[32,16] CROP[8,to=input]", (2, 40, 36))
    x = torch.randn(2, 2, 40, 36)
    up = m.l2_BDC(m.l1_P(m.l0_C(x)))
    assert up.shape[2:] == (16 * 2 + 16, 16 * 2 + 16)
    y = m(x)
    assert torch.equal(y, up[:, :, 8:48, 8:44])
    assert m.graph.output_shape == denet.layers.ShapeSpec(3, 40, 36, Fraction(1, 1))


def test_crop_to_a_tap_with_the_default_offset():
    m = compile_("C[3,3] @a C[3,3] P[2] BDC[4,2,0] CROP[to=a]")
    x = torch.randn(1, 2, 9, 11)
    full = m.l4_BDC(m.l3_P(m.l2_C(m.l0_C(x))))
    assert full.shape[2:] == (10, 12)
    assert torch.equal(m(x), full[:, :, :9, :11])


def test_crop_misuse():
    err = error("C[2,3] CROP[2,to=input]")
    assert str(err).startswith(
        "CROP[2,to=input]: the 9x11 map is too small to crop 9x11 at offset 2 (column 13)"
    )
    err = error("C[2,3] CROP[0]")
    assert str(err).startswith("CROP[0]: CROP needs to (CROP[offset=…])")
    err = error("C[2,3] CROP[to=x]")
    assert str(err).startswith("CROP[to=x]: to=x refers to no earlier @x")
    m = compile_("C[3,3] BDC[4,2,1] CROP[5,to=input]")
    with pytest.raises(ValueError, match="a 4x4 map cannot be cropped to 2x2 at offset 5"):
        m(torch.randn(1, 2, 2, 2))  # fits at 9x11, not at 2x2
