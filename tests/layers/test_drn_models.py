"""The DRN strings (examples/drn_*.desc): parameter counts of the reference and output shapes."""

import os

import pytest
import torch

import denet

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
