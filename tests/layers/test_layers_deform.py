"""DCN (deformable conv v1/v2 with its own offset conv) against torchvision.ops.deform_conv2d fed
the offsets and mask computed here with F.conv2d, forward and backward; deformable residual
blocks against the same oracle."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

import denet


def compile_(desc, shape=(4, 9, 11), border_mode="half"):
    torch.manual_seed(0)
    return denet.compile(desc, shape, border_mode=border_mode)


def randomise_offsets(conv, scale=0.5):
    """Zero-initialised offset convs give zero offsets; random ones exercise the sampling."""
    with torch.no_grad():
        conv.weight.normal_(0, scale)
        conv.bias.normal_(0, scale)


def oracle(x, off_conv, dcn, modulated, mask_scale=2.0):
    """torchvision's deform_conv2d fed offsets and mask made by F.conv2d here."""
    om = F.conv2d(
        x, off_conv.weight, off_conv.bias, off_conv.stride, off_conv.padding, off_conv.dilation
    )
    kh, kw = dcn.weight.shape[2:]
    n = om.shape[1] // 3 * 2 if modulated else om.shape[1]
    mask = mask_scale * torch.sigmoid(om[:, n:]) if modulated else None
    return torchvision.ops.deform_conv2d(
        x, om[:, :n], dcn.weight, dcn.bias, dcn.stride, dcn.padding, dcn.dilation, mask
    )


CASES = [
    "DCN[6,3]",
    "DCN.M[6,3]",
    "DCN.B[6,3,stride=2]",
    "DCN.MB[6,3,dilation=2,offset_dilation=1]",
    "DCN.M[6,3,dilation=2,deform_groups=2]",
    "DCN[6,3,groups=2,deform_groups=4,dilation=3]",
    "DCN.M[4,5,stride=2,dilation=2,offset_dilation=1,border=4]",
    "DCN.M[6,3,mask_scale=1]",
    "DCN[6,1]",
]


@pytest.mark.parametrize("desc", CASES)
def test_dcn_equals_torchvision_deform_conv2d_forward_and_backward(desc):
    m = compile_("C[4,3] " + desc).double()
    off, dcn = m.l1_DCN_offset, m.l1_DCN
    randomise_offsets(off)
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64, requires_grad=True)
    y = m(x)
    assert tuple(y.shape[1:]) == (
        m.graph.output_shape.channels,
        m.graph.output_shape.height,
        m.graph.output_shape.width,
    )
    modulated = ".M" in desc or "MB" in desc
    scale = 1.0 if "mask_scale=1" in desc else 2.0
    x2 = x.detach().clone().requires_grad_(True)
    feat = m.l0_C(x2)
    want = oracle(feat, off, dcn, modulated, scale)
    torch.testing.assert_close(y, want)
    g = torch.randn_like(y)
    params = [x, dcn.weight, off.weight, off.bias] + ([dcn.bias] if dcn.bias is not None else [])
    got = torch.autograd.grad(y, params, g)
    want_g = torch.autograd.grad(want, [x2] + params[1:], g)
    for a, b in zip(got, want_g):
        torch.testing.assert_close(a, b)
    assert got[2].abs().sum() > 0  # the offset conv learns


def test_offset_conv_channels_padding_and_init():
    m = compile_("DCN.M[8,3,dilation=2,offset_dilation=1,deform_groups=2]")
    off = m.l0_DCN_offset
    assert off.weight.shape == (3 * 9 * 2, 4, 3, 3) and off.bias.shape == (54,)
    assert off.padding == (1, 1) and off.dilation == (1, 1) and off.stride == (1, 1)
    assert m.l0_DCN.padding == (2, 2) and m.l0_DCN.dilation == (2, 2)
    assert not off.weight.any() and not off.bias.any()
    m = compile_("DCN[8,3,stride=2,dilation=2]")
    off = m.l0_DCN_offset
    assert off.weight.shape[0] == 18 and off.padding == (2, 2) and off.dilation == (2, 2)
    assert off.stride == (2, 2)
    # valid border: an offset conv of a larger effective size is padded to the same output
    m = compile_("DCN[8,3,offset_dilation=3]", border_mode="valid")
    assert m.l0_DCN.padding == (0, 0) and m.l0_DCN_offset.padding == (2, 2)
    out = m.graph.output_shape
    assert m(torch.randn(1, 4, 9, 11)).shape == (1, 8, 7, 9) == (1, 8, out.height, out.width)


@pytest.mark.parametrize("tags, scale, factor", [("", 2.0, 1.0), ("M", 2.0, 1.0), ("M", 1, 0.5)])
def test_zero_offsets_make_a_plain_conv(tags, scale, factor):
    """With the offset conv at its zero init the layer starts as a plain conv (DCNv2's 2*sigmoid
    mask is then 1; a plain sigmoid halves it)."""
    desc = f"DCN.B{tags}[6,3,stride=2,dilation=2,mask_scale={scale}]"
    if not tags:
        desc = "DCN.B[6,3,stride=2,dilation=2]"
    m = compile_(desc).double()
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    d = m.l0_DCN
    conv = F.conv2d(x, d.weight, None, 2, 2, 2) * factor + d.bias[:, None, None]
    torch.testing.assert_close(m(x), conv)


def test_state_dict_keys_and_the_offset_learning_rate():
    m = compile_("DCN.MB[6,3,offset_lr=0.1,lr=2] A DCN[4,3,frozen=1]")
    assert list(m.state_dict()) == [
        "l0_DCN_offset.weight",
        "l0_DCN_offset.bias",
        "l0_DCN.weight",
        "l0_DCN.bias",
        "l2_DCN_offset.weight",
        "l2_DCN_offset.bias",
        "l2_DCN.weight",
    ]
    groups = m.param_groups(0.01, 1e-4)
    lr = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert lr[id(m.l0_DCN_offset.weight)] == pytest.approx((0.002, 1e-4))
    assert lr[id(m.l0_DCN_offset.bias)] == pytest.approx((0.002, 0.0))
    assert lr[id(m.l0_DCN.weight)] == pytest.approx((0.02, 1e-4))
    assert id(m.l2_DCN.weight) not in lr and id(m.l2_DCN_offset.weight) not in lr
    assert not m.l2_DCN_offset.weight.requires_grad


def test_parameter_count_for_the_limits_equals_the_modules():
    m = compile_("DCN.MB[6,3,groups=2,deform_groups=2]")
    n = sum(p.numel() for p in m.parameters())
    assert n == 4 // 2 * 6 * 9 + 6 + 4 * 54 * 9 + 54
    with denet.dsl.limit(params=n):
        compile_("DCN.MB[6,3,groups=2,deform_groups=2]")
    with denet.dsl.limit(params=n - 1), pytest.raises(denet.DescError, match="parameters"):
        compile_("DCN.MB[6,3,groups=2,deform_groups=2]")


def test_boundary_v1_reaches_the_operator():
    m = compile_("DCN[6,3,boundary=v1]").double()
    randomise_offsets(m.l0_DCN_offset, 2.0)
    x = torch.randn(1, 4, 9, 11, dtype=torch.float64)
    om = m.l0_DCN_offset(x)
    d = m.l0_DCN
    want = denet.kernels.deform_conv2d(x, om, d.weight, None, 1, 1, 1, boundary="v1")
    other = denet.kernels.deform_conv2d(x, om, d.weight, None, 1, 1, 1, boundary="v2")
    assert torch.equal(m(x), want) and not torch.allclose(want, other)


@pytest.mark.parametrize(
    "desc, message, at",
    [
        ("C[4,3] DCN[6,2]", "DCN[6,2]: border half needs an odd size", "2]"),
        ("C[4,3] DCN[6,4,border=same]", "DCN[6,4,border=same]: border same pads the 4x4", "border"),
        ("C[4,3] DCN[6,3,groups=4]", "DCN[6,3,groups=4]: groups=4 must divide", "groups"),
        (
            "C[4,3] DCN[6,3,deform_groups=3]",
            "DCN[6,3,deform_groups=3]: deform_groups=3 must divide the input channels (4)",
            "deform",
        ),
        (
            "C[4,3] DCN[6,3,dilation=2,offset_dilation=1,border=valid]",
            "DCN[6,3,dilation=2,offset_dilation=1,border=valid]: no padding gives the offset conv "
            "(dilation 1) the output size of the deformable conv (dilation 2, padding 0)",
            "offset_dilation",
        ),
        (
            "C[4,3] DCN[6,2,dilation=2,offset_dilation=1,border=1]",
            "DCN[6,2,dilation=2,offset_dilation=1,border=1]: no padding gives the offset conv",
            "offset_dilation",
        ),
        (
            "C[4,3] DCN[6,3,mask_scale=1]",
            "DCN[6,3,mask_scale=1]: mask_scale sets the mask of a modulated DCN",
            "mask",
        ),
        (
            "C[4,3] DCN[6,3,boundary=v3]",
            "DCN[6,3,boundary=v3]: boundary must be one of v1, v2",
            "boundary",
        ),
        (
            "C[4,3] P.A R DCN[6,3]",
            "DCN[6,3]: DCN needs a feature map as input, not a vector",
            "DCN",
        ),
        ("C[4,3] DCN[6,13]", "DCN[6,13]: output would be empty", "DCN"),
    ],
)
def test_dcn_misuse_is_one_desc_error_with_a_caret(desc, message, at):
    with pytest.raises(denet.DescError) as err:
        denet.compile(desc, (2, 9, 11), 3, border_mode="half" if "13" not in desc else "valid")
    first, shown, caret = str(err.value).split("\n")
    assert first.startswith(message), first
    assert caret == "  " + " " * desc.index(at) + "^", str(err.value)


def test_dcn_shares_weights_inside_share_use():
    m = compile_(
        "DCN.M[4,3] @a SHARE[b](DCN.M[4,3] A) @s $a P[2] USE[b] UP[2] SUM( | $s)", (4, 8, 10)
    )
    keys = list(m.state_dict())
    assert keys.count("l3_DCN_offset.weight") == 1 and len(keys) == 6
    shared = {n.shared for n in m.graph.nodes if n.shared}
    assert shared == {"l3_DCN_offset", "l3_DCN", "l4_A"}  # USE reruns the offset conv too
    y = m(torch.randn(1, 4, 8, 10))
    assert y.shape == (1, 4, 8, 10)


# ----------------------------------------------------------------------- deformable residual blocks
def test_a_deformable_bottleneck_stage_is_deformable_convnets_res5():
    """Deformable DeepLab's res5: stride 1, dilation 2, the 3x3 of every block deformable with an
    undilated 18-channel offset conv (pad 1) feeding the dilation-2 deformable conv (pad 2)."""
    m = compile_("nRSN.O[3,32,3,1,8,dilation=2,deform=1,offset_dilation=1,norm=frozen]", (16, 9, 9))
    for block in m.l0_nRSN:
        off = block.conv2.offset
        assert off.weight.shape == (18, 8, 3, 3) and off.padding == (1, 1)
        assert off.dilation == (1, 1) and block.conv2.padding == (2, 2)
        assert block.conv2.dilation == (2, 2) and not block.conv2.modulated
        assert block.conv1.kernel_size == (1, 1) and not hasattr(block.conv1, "offset")
    keys = list(m.state_dict())
    assert "l0_nRSN.0.conv2.weight" in keys and "l0_nRSN.2.conv2.offset.bias" in keys
    assert [k for k in keys if "offset" in k] == [
        f"l0_nRSN.{b}.conv2.offset.{p}" for b in range(3) for p in ("weight", "bias")
    ]
    # R-FCN's res5: 4 deformable groups, a dilated 72-channel offset conv
    m = compile_("nRSN.O[1,32,3,1,8,dilation=2,deform=1,deform_groups=4]", (16, 9, 9))
    off = m.l0_nRSN[0].conv2.offset
    assert off.weight.shape == (72, 8, 3, 3) and off.padding == (2, 2) and off.dilation == (2, 2)


def block_by_hand(block, x, stride, modulated):
    """RSN.O bottleneck (stride on the first 1x1) with torchvision's deform_conv2d as the 3x3."""
    out = F.relu(block.bn1(block.conv1(x)))
    dcn = block.conv2
    om = dcn.offset(out)
    n = 18 * dcn.deform_groups
    mask = 2 * torch.sigmoid(om[:, n:]) if modulated else None
    out = torchvision.ops.deform_conv2d(
        out, om[:, :n], dcn.weight, None, dcn.stride, dcn.padding, dcn.dilation, mask
    )
    out = block.bn3(block.conv3(F.relu(block.bn2(out))))
    return F.relu(out + block.downsample(x))


@pytest.mark.parametrize("version", [1, 2])
def test_a_deformable_block_equals_the_block_written_with_torchvision(version):
    m = compile_(f"RSN.O[16,3,2,8,deform={version},deform_groups=2]", (4, 9, 11)).double().eval()
    randomise_offsets(m.l0_RSN.conv2.offset)
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64, requires_grad=True)
    y = m(x)
    x2 = x.detach().clone().requires_grad_(True)
    want = block_by_hand(m.l0_RSN, x2, 2, version == 2)
    torch.testing.assert_close(y, want)
    assert y.shape == (2, 16, 5, 6)
    g = torch.randn_like(y)
    off = m.l0_RSN.conv2.offset
    got = torch.autograd.grad(y, [x, off.weight, off.bias, m.l0_RSN.conv2.weight], g)
    ref = torch.autograd.grad(want, [x2, off.weight, off.bias, m.l0_RSN.conv2.weight], g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


def test_a_deformable_basic_block_deforms_both_convs_and_starts_as_the_plain_block():
    desc = "RSN[8,3,2,deform=2]"
    m = compile_(desc, (4, 9, 11)).eval()
    plain = compile_("RSN[8,3,2]", (4, 9, 11)).eval()
    assert m.l0_RSN.conv1.offset.weight.shape == (27, 4, 3, 3)
    assert m.l0_RSN.conv2.offset.weight.shape == (27, 8, 3, 3)
    assert m.l0_RSN.conv1.offset.stride == (2, 2) and m.l0_RSN.conv2.offset.stride == (1, 1)
    state = {k: v for k, v in m.state_dict().items() if "offset" not in k}
    plain.load_state_dict(state)  # the same keys as the plain block, plus the offset convs
    x = torch.randn(2, 4, 9, 11)
    torch.testing.assert_close(m(x), plain(x), atol=1e-5, rtol=1e-5)  # zero offsets, mask 1


def test_deformable_block_parameter_counts_for_the_limits():
    for desc in ("nRSN.O[3,32,3,2,8,deform=2,deform_groups=2]", "nRSN[2,16,3,2,deform=1]"):
        m = compile_(desc, (16, 9, 9))
        n = sum(p.numel() for p in m.parameters())
        with denet.dsl.limit(params=n):
            compile_(desc, (16, 9, 9))
        with denet.dsl.limit(params=n - 1), pytest.raises(denet.DescError, match="parameters"):
            compile_(desc, (16, 9, 9))


@pytest.mark.parametrize(
    "desc, message, at",
    [
        ("nRSN[2,16,3,deform_groups=2]", "deform_groups sets the deformable convs", "deform_"),
        ("RSN[16,3,offset_dilation=1]", "offset_dilation sets the deformable convs", "offset"),
        ("RSN[16,3,deform=3]", "deform must be one of 0, 1, 2, not 3", "deform"),
        (
            "nRSN.O[2,16,3,1,6,deform=1,deform_groups=4]",
            "deform_groups=4 must divide the deformable convs' input channels (6)",
            "deform_groups",
        ),
    ],
)
def test_deformable_block_misuse(desc, message, at):
    with pytest.raises(denet.DescError) as err:
        denet.compile(desc, (4, 9, 11))
    first, shown, caret = str(err.value).split("\n")
    assert message in first, first
    assert caret == "  " + " " * desc.index(at) + "^", str(err.value)


def test_offset_lr_of_deformable_blocks_reaches_the_optimizer():
    """``offset_lr`` on a deformable stage: its offset convs train at lr x offset_lr x the
    layer's own ``lr=``; every other parameter at lr x the layer's ``lr=``."""
    desc = "C[8,3] nRSN.O[2,8,3,deform=1,offset_lr=0.1,lr=2]"
    m = denet.compile(desc, (3, 16, 16), border_mode="half")
    offsets = {id(p) for n, p in m.named_parameters() if ".offset." in n}
    assert len(offsets) == 2 * 2 * 2  # 2 blocks x 2 basic convs x (weight, bias)
    for group in m.param_groups(1.0, 0.0):
        ids = {id(p) for p in group["params"]}
        if ids & offsets:
            assert ids <= offsets and group["lr"] == pytest.approx(0.2)
        else:
            assert group["lr"] in (1.0, 2.0)
    with pytest.raises(denet.DescError, match="offset_lr sets the deformable convs"):
        denet.compile("C[8,3] nRSN.O[2,8,3,offset_lr=0.1]", (3, 16, 16), border_mode="half")
