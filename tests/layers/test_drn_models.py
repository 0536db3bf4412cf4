"""The DRN strings (examples/drn_*.desc): parameter counts of the reference and output shapes;
the Deformable ConvNets DeepLab strings (examples/deeplab-r101.desc, deeplab-dcn.desc)."""

import os
import sys

import pytest
import torch

import denet
from denet.cli.convert_drn import port_state, renamer, unit_nodes

EX = os.path.join(os.path.dirname(__file__), "..", "..", "examples")

# fyu/drn's README rows, recomputed to the parameter (peer-codebases.md 1.4, the figures);
# DRN-A-18/34 are torchvision's ResNet-18/34; D-24/40/56/107 have no README row (about 21.11M,
# 31.22M, 40.53M, 59.52M), their exact counts are the hand-written DRN's (tests/cli/drn_oracle.py).
COUNTS = {
    "drn_a_18": 11_689_512,
    "drn_a_34": 21_797_672,
    "drn_a_50": 25_557_032,
    "drn_c_26": 21_126_584,
    "drn_c_42": 31_234_744,
    "drn_c_58": 41_591_608,
    "drn_d_22": 16_393_752,
    "drn_d_24": 21_114_392,
    "drn_d_38": 26_501_912,
    "drn_d_40": 31_222_552,
    "drn_d_54": 35_809_176,
    "drn_d_56": 40_529_816,
    "drn_d_105": 54_801_304,
    "drn_d_107": 59_521_944,
}
APPROX = {"drn_d_24": 21.11e6, "drn_d_40": 31.22e6, "drn_d_56": 40.53e6, "drn_d_107": 59.52e6}


def example(name):
    with open(os.path.join(EX, f"{name}.desc")) as f:
        return f.read()


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_drn_parameter_count(name):
    with torch.device("meta"):
        model = denet.compile(example(name), (3, 224, 224), 1000, border_mode="half")
    n = sum(p.numel() for p in model.parameters())
    assert n == COUNTS[name]
    if name in APPROX:
        assert abs(n - APPROX[name]) < 0.005e6
    # the compiler's own count (summary, limits) agrees with the modules
    assert f"total parameters: {n:,}" in denet.summary(model)


def test_drn_c_58_keeps_the_unused_projection_frozen():
    """layer7's first block (2048 -> 512, residual=0) holds DRN's 1x1 projection + BN
    (1,049,600 parameters), frozen: the optimiser never sees it and DDP never waits for it."""
    with torch.device("meta"):
        model = denet.compile(example("drn_c_58"), (3, 224, 224), 1000, border_mode="half")
    stage = [n for n in model.graph.nodes if n.type == "nRSN"][-2]
    block = getattr(model, stage.name)[0]
    proj = sum(p.numel() for p in block.downsample.parameters())
    assert proj == 2048 * 512 + 2 * 512
    assert not any(p.requires_grad for p in block.downsample.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == COUNTS["drn_c_58"] - proj
    # without keep_proj a residual=0 block has no projection at all
    plain = denet.compile("nRSN.O[1,8,3,residual=0]", (4, 6, 6))
    assert plain.l0_nRSN[0].downsample is None


def test_keep_proj_block_output_ignores_the_projection():
    torch.manual_seed(0)
    a = denet.compile("nRSN.O[1,8,3,residual=0,keep_proj=1]", (4, 6, 6)).eval()
    b = denet.compile("nRSN.O[1,8,3,residual=0]", (4, 6, 6)).eval()
    b.load_state_dict({k: v for k, v in a.state_dict().items() if "downsample" not in k})
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("name", ["drn_a_18", "drn_c_26", "drn_d_22"])
def test_drn_output_shape(name):
    """A 224 x 224 image gives one probability vector; every DRN runs at output stride 8
    (28 x 28 before the pool)."""
    torch.manual_seed(0)
    model = denet.compile(example(name), (3, 224, 224), 1000, border_mode="half").eval()
    pool = [n for n in model.graph.nodes if n.type == "P" and "A" in n.tags][0]
    before = model.graph.nodes[model.graph.nodes.index(pool) - 1]
    assert (before.shape.height, before.shape.width, before.shape.stride) == (28, 28, 8)
    with torch.no_grad():
        p = model(torch.randn(1, 3, 224, 224))
    assert p.shape == (1, 1000)
    assert torch.allclose(p.sum(1), torch.ones(1), atol=1e-5)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_drn_shapes_on_meta(name):
    """Every string's output is [B, 1000] and its last map is 28 x 28 at stride 8."""
    with torch.device("meta"):
        model = denet.compile(example(name), (3, 224, 224), 1000, border_mode="half").eval()
        out = model(torch.empty(2, 3, 224, 224))
    assert out.shape == (2, 1000)
    pool = [n for n in model.graph.nodes if n.type == "P" and "A" in n.tags][0]
    before = model.graph.nodes[model.graph.nodes.index(pool) - 1]
    assert (before.shape.height, before.shape.width, before.shape.stride) == (28, 28, 8)
    assert before.shape.channels == (2048 if name == "drn_a_50" else 512)


# ------------------------------------------------------------------------- DeepLab strings
def _deeplab_oracle():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "cli"))
    import deeplab_oracle

    return deeplab_oracle


def _weights(model) -> int:
    """Parameters plus the frozen norms' scales and shifts (buffers in FBN)."""
    params = {k for k, _ in model.named_parameters()}
    frozen = sum(
        v.numel()
        for k, v in model.state_dict().items()
        if k not in params and k.endswith((".weight", ".bias"))
    )
    return sum(p.numel() for p in model.parameters()) + frozen


def _port_deformable_deeplab(model, ref):
    """Deformable ConvNets' DeepLab (the hand-written one) into the string's modules, unit by
    unit in string order."""
    units = [("conv1", "C"), ("bn1", "FBN"), *((f"layer{i}", "nRSN") for i in range(1, 5))]
    units += [("fc6", "C"), ("score", "C"), ("upsampling", "BDC")]
    nodes = unit_nodes(model, ("C", "FBN", "nRSN", "BDC"))
    assert [t for _, t in units] == [n.type for n in nodes]
    rename, unrename = renamer({p: n.name for (p, _), n in zip(units, nodes)})
    port_state(model, ref.state_dict(), rename, unrename, "DeepLab")


def test_deeplab_r101_is_deformable_convnets_deeplab():
    """examples/deeplab-r101.desc: output stride 16, the crop gives the input's size, and with the
    weights of the hand-written network (random, random BN statistics) the same logits; the
    weights are as many (44,637,267 at 19 classes: 44,531,923 parameters + the frozen BN's
    105,344 scales and shifts)."""
    oracle = _deeplab_oracle()
    with torch.device("meta"):
        big = denet.compile(example("deeplab-r101"), (3, 768, 1024), 19, border_mode="half")
        ref_meta = oracle.DeformableDeepLab(19)
    assert sum(p.numel() for p in big.parameters()) == 44_531_923
    assert _weights(big) == sum(p.numel() for p in ref_meta.parameters()) == 44_637_267
    res5 = [n for n in big.graph.nodes if n.type == "nRSN"][-1]
    assert (res5.shape.h, res5.shape.w, res5.shape.stride) == (48, 64, 16)
    assert big.graph.nodes[-1].shape.h == 768 and big.graph.nodes[-1].shape.w == 1024

    torch.manual_seed(0)
    ref = oracle.randomise(oracle.DeformableDeepLab(19))
    model = denet.compile(example("deeplab-r101"), (3, 97, 81), 19, border_mode="half").eval()
    _port_deformable_deeplab(model, ref)
    x = torch.randn(1, 3, 97, 81)
    with torch.no_grad():
        want = ref(x)
        got = model(x)
    assert list(got) == ["out"]
    got = got["out"]
    assert got.shape == want.shape == (1, 19, 97, 81)
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-4


def test_deeplab_dcn_is_deformable_convnets_dcn_deeplab():
    """examples/deeplab-dcn.desc: deeplab-r101 with res5's 3x3s deformable (v1, offsets from an
    undilated 3x3 conv): 248,886 parameters more; with zero offsets (its init) the plain
    network's logits; with random offset convs the same logits as the hand-written network
    with its own v1 deformable conv (tests/cli/deeplab_oracle.py)."""
    oracle = _deeplab_oracle()
    with torch.device("meta"):
        big = denet.compile(example("deeplab-dcn"), (3, 768, 1024), 19, border_mode="half")
        ref_meta = oracle.DeformableDeepLab(19, deformable=True)
    assert sum(p.numel() for p in big.parameters()) == 44_531_923 + 3 * (512 * 18 * 9 + 18)
    assert _weights(big) == sum(p.numel() for p in ref_meta.parameters()) == 44_886_153

    torch.manual_seed(0)
    ref = oracle.randomise(oracle.DeformableDeepLab(19, deformable=True))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in ref.layer4:
            block.conv2.weight.copy_(torch.randn(block.conv2.weight.shape, generator=g) / 48)
            block.conv2.offset.weight.zero_()
            block.conv2.offset.bias.zero_()
    model = denet.compile(example("deeplab-dcn"), (3, 97, 81), 19, border_mode="half").eval()
    _port_deformable_deeplab(model, ref)
    x = torch.randn(1, 3, 97, 81)
    plain = oracle.DeformableDeepLab(19).eval()
    plain.load_state_dict({k: v for k, v in ref.state_dict().items() if ".offset." not in k})
    with torch.no_grad():
        zero = model(x)["out"]
        want = plain(x)
    assert ((zero - want).abs().max() / want.abs().max()).item() < 1e-4
    with torch.no_grad():  # offsets of a few pixels, fractional, some leaving the map
        for block in ref.layer4:
            block.conv2.offset.weight.copy_(
                torch.randn(block.conv2.offset.weight.shape, generator=g) * 0.02
            )
            block.conv2.offset.bias.copy_(torch.randn(18, generator=g) * 1.5)
    _port_deformable_deeplab(model, ref)
    with torch.no_grad():
        got = model(x)["out"]
        want = ref(x)
        assert (got - zero).abs().max() > 0.01 * zero.abs().max()  # the offsets matter
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-4
