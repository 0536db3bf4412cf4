"""RSN / nRSN: torchvision blocks key for key, DeNet's pre-activation block, stride placement."""

import pytest
import torch
from torchvision.models.resnet import BasicBlock, Bottleneck

import denet


def _copy_from_torchvision(block, stage):
    stage.load_state_dict(block.state_dict())


@pytest.mark.parametrize(
    "desc, tv",
    [
        (
            "RSN.O[64,3,2]",
            lambda: BasicBlock(
                32,
                64,
                2,
                torch.nn.Sequential(
                    torch.nn.Conv2d(32, 64, 1, 2, bias=False), torch.nn.BatchNorm2d(64)
                ),
            ),
        ),
        (
            "RSN.OV[128,3,2,32]",
            lambda: Bottleneck(
                32,
                32,
                2,
                torch.nn.Sequential(
                    torch.nn.Conv2d(32, 128, 1, 2, bias=False), torch.nn.BatchNorm2d(128)
                ),
            ),
        ),
        (
            "RSN.OV[128,3,1,32,groups=4]",
            lambda: Bottleneck(
                32,
                32,
                1,
                torch.nn.Sequential(
                    torch.nn.Conv2d(32, 128, 1, bias=False), torch.nn.BatchNorm2d(128)
                ),
                groups=4,
                base_width=16,
            ),
        ),
        (
            "RSN.OV[128,3,1,32,dilation=2]",
            lambda: Bottleneck(
                32,
                32,
                1,
                torch.nn.Sequential(
                    torch.nn.Conv2d(32, 128, 1, bias=False), torch.nn.BatchNorm2d(128)
                ),
                dilation=2,
            ),
        ),
    ],
)
def test_original_blocks_equal_torchvision(desc, tv):
    torch.manual_seed(0)
    block = tv().eval()
    for mod in block.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
    m = denet.compile(desc, (32, 9, 9), border_mode="half")
    m.l0_RSN.load_state_dict(block.state_dict())
    m.eval()
    x = torch.randn(2, 32, 9, 9)
    assert torch.allclose(m(x), block(x), atol=1e-5)
    assert tuple(m.graph.output_shape.__dict__[k] for k in ("height", "width")) == tuple(
        block(x).shape[2:]
    )


def test_stride_on_1x1_is_denet_and_on_3x3_with_v():
    m = denet.compile("RSN.O[64,3,2,16] RSN.OV[64,3,2,16]", (32, 8, 8))
    assert m.l0_RSN.conv1.stride == (2, 2) and m.l0_RSN.conv2.stride == (1, 1)
    assert m.l1_RSN.conv1.stride == (1, 1) and m.l1_RSN.conv2.stride == (2, 2)


def test_pre_activation_block_float64():
    """DeNet default: BN A conv BN A conv; projection from the first BN's output (pre-A)."""
    m = denet.compile("RSN[8,3,2]", (4, 6, 6)).double()
    b = m.l0_RSN
    with torch.no_grad():
        for bn in (b.bn0, b.bn1):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
    m.eval()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    F = torch.nn.functional

    def bn(mod, t):
        return F.batch_norm(t, mod.running_mean, mod.running_var, mod.weight, mod.bias, eps=1e-5)

    pre = bn(b.bn0, x)
    y = F.conv2d(torch.relu(pre), b.conv1.weight, stride=2, padding=1)
    y = F.conv2d(torch.relu(bn(b.bn1, y)), b.conv2.weight, padding=1)
    ref = y + F.conv2d(pre, b.downsample[0].weight, stride=2)
    assert torch.allclose(m(x), ref)


def test_stage_first_block_differs():
    m = denet.compile("nRSN.OV[3,64,3,2,16,dilation=2,first_dilation=1]", (32, 16, 16))
    blocks = list(m.l0_nRSN)
    assert len(blocks) == 3
    assert blocks[0].conv2.stride == (2, 2) and blocks[0].conv2.dilation == (1, 1)
    assert blocks[0].downsample is not None
    assert all(
        b.conv2.stride == (1, 1) and b.conv2.dilation == (2, 2) and b.downsample is None
        for b in blocks[1:]
    )
    assert str(m.graph.output_shape) == "64x8x8"
    assert m(torch.randn(1, 32, 16, 16)).shape == (1, 64, 8, 8)


def test_residual_off_and_norm_choices():
    m = denet.compile(
        "RSN.O[8,3,residual=0] RSN.O[8,3,norm=frozen] RSN.O[32,3,norm=gn,bottleneck=0]", (8, 5, 5)
    )
    assert m.l0_RSN.downsample is None
    x = torch.randn(1, 8, 5, 5)
    m.eval()
    b = m.l0_RSN
    ref = torch.relu(b.bn2(b.conv2(torch.relu(b.bn1(b.conv1(x))))))
    assert torch.allclose(b(x), ref)
    assert type(m.l1_RSN.bn1).__name__ == "FrozenBatchNorm2d"
    assert isinstance(m.l2_RSN.downsample[1], torch.nn.GroupNorm)
    with pytest.raises(denet.DescError, match="norm must be one of"):
        denet.compile("RSN[8,3,norm=sync]", (8, 5, 5))
    with pytest.raises(denet.DescError, match="norm=gn uses 32 groups"):
        denet.compile("RSN.O[16,3,norm=gn]", (8, 5, 5))
    with pytest.raises(denet.DescError, match="kernel size must be odd"):
        denet.compile("RSN[8,2]", (8, 5, 5))
