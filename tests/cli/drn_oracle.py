"""fyu/drn's networks written by hand in plain PyTorch, the oracle of the DRN imports.

Transcribed from the reference description (peer-codebases.md section 1: drn.py's
``BasicBlock``, ``Bottleneck``, ``DRN``, ``DRN_A`` and segment.py's ``DRNSeg``), not through the
denet compiler, with the original module names so that their state dicts have fyu/drn's keys.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def conv3x3(cin, cout, stride=1, dilation=1):
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Both 3x3 convs dilated; the projection runs even without residual (output dropped)."""

    expansion = 1

    def __init__(self, cin, planes, stride=1, downsample=None, dilation=(1, 1), residual=True):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride, dilation[0])
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, dilation=dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x):
        shortcut = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            shortcut = self.downsample(x)
        if self.residual:
            out = out + shortcut
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation[1]) -> 1x1 x4; always residual."""

    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None, dilation=(1, 1), residual=True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            shortcut = self.downsample(x)
        return self.relu(out + shortcut)


def _init(model):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()


class DRN(nn.Module):
    def __init__(
        self,
        block,
        layers,
        num_classes=1000,
        channels=(16, 32, 64, 128, 256, 512, 512, 512),
        pool_size=28,
        arch="D",
    ):
        super().__init__()
        self.inplanes = channels[0]
        self.out_dim = channels[-1]
        self.arch = arch
        if arch == "C":
            self.conv1 = nn.Conv2d(3, channels[0], 7, 1, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(channels[0])
            self.relu = nn.ReLU(inplace=True)
            self.layer1 = self._make_layer(BasicBlock, channels[0], layers[0], stride=1)
            self.layer2 = self._make_layer(BasicBlock, channels[1], layers[1], stride=2)
        else:
            self.layer0 = nn.Sequential(
                nn.Conv2d(3, channels[0], 7, 1, 3, bias=False),
                nn.BatchNorm2d(channels[0]),
                nn.ReLU(inplace=True),
            )
            self.layer1 = self._make_conv_layers(channels[0], layers[0], stride=1)
            self.layer2 = self._make_conv_layers(channels[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, channels[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, channels[3], layers[3], stride=2)
        self.layer5 = self._make_layer(block, channels[4], layers[4], dilation=2, new_level=False)
        self.layer6 = self._make_layer(block, channels[5], layers[5], dilation=4, new_level=False)
        if arch == "C":
            self.layer7 = self._make_layer(
                BasicBlock, channels[6], layers[6], dilation=2, new_level=False, residual=False
            )
            self.layer8 = self._make_layer(
                BasicBlock, channels[7], layers[7], dilation=1, new_level=False, residual=False
            )
        else:
            self.layer7 = self._make_conv_layers(channels[6], layers[6], dilation=2)
            self.layer8 = self._make_conv_layers(channels[7], layers[7], dilation=1)
        if num_classes > 0:
            self.avgpool = nn.AvgPool2d(pool_size)
            self.fc = nn.Conv2d(self.out_dim, num_classes, 1, bias=True)
        _init(self)

    def _make_layer(
        self, block, planes, blocks, stride=1, dilation=1, new_level=True, residual=True
    ):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        first = (1, 1) if dilation == 1 else (dilation // 2 if new_level else dilation, dilation)
        layers = [block(self.inplanes, planes, stride, downsample, first, residual)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(
                block(self.inplanes, planes, residual=residual, dilation=(dilation, dilation))
            )
        return nn.Sequential(*layers)

    def _make_conv_layers(self, channels, convs, stride=1, dilation=1):
        modules = []
        for i in range(convs):
            modules += [
                conv3x3(self.inplanes, channels, stride if i == 0 else 1, dilation),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            self.inplanes = channels
        return nn.Sequential(*modules)

    def features(self, x):
        if self.arch == "C":
            x = self.relu(self.bn1(self.conv1(x)))
        else:
            x = self.layer0(x)
        for i in range(1, 9):
            x = getattr(self, f"layer{i}")(x)
        return x

    def forward(self, x):
        x = self.fc(self.avgpool(self.features(x)))
        return x.view(x.size(0), -1)


class DRN_A(nn.Module):  # noqa: N801 - fyu/drn's name
    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.out_dim = 512 * block.expansion
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=1, dilation=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=1, dilation=4)
        self.avgpool = nn.AvgPool2d(28, stride=1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        _init(self)

    def _make_layer(self, block, planes, blocks, stride=1, dilation=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]  # first block undilated
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, dilation=(dilation, dilation)))
        return nn.Sequential(*layers)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.fc(x.view(x.size(0), -1))


_ARCHS = {
    "drn_a_18": ("A", BasicBlock, [2, 2, 2, 2]),
    "drn_a_34": ("A", BasicBlock, [3, 4, 6, 3]),
    "drn_a_50": ("A", Bottleneck, [3, 4, 6, 3]),
    "drn_c_26": ("C", BasicBlock, [1, 1, 2, 2, 2, 2, 1, 1]),
    "drn_c_42": ("C", BasicBlock, [1, 1, 3, 4, 6, 3, 1, 1]),
    "drn_c_58": ("C", Bottleneck, [1, 1, 3, 4, 6, 3, 1, 1]),
    "drn_d_22": ("D", BasicBlock, [1, 1, 2, 2, 2, 2, 1, 1]),
    "drn_d_24": ("D", BasicBlock, [1, 1, 2, 2, 2, 2, 2, 2]),
    "drn_d_38": ("D", BasicBlock, [1, 1, 3, 4, 6, 3, 1, 1]),
    "drn_d_40": ("D", BasicBlock, [1, 1, 3, 4, 6, 3, 2, 2]),
    "drn_d_54": ("D", Bottleneck, [1, 1, 3, 4, 6, 3, 1, 1]),
    "drn_d_56": ("D", Bottleneck, [1, 1, 3, 4, 6, 3, 2, 2]),
    "drn_d_105": ("D", Bottleneck, [1, 1, 3, 4, 23, 3, 1, 1]),
    "drn_d_107": ("D", Bottleneck, [1, 1, 3, 4, 23, 3, 2, 2]),
}
ARCHS = tuple(_ARCHS)


def drn(arch: str, num_classes: int = 1000) -> nn.Module:
    """The classifier ``drn.<arch>(num_classes=...)``."""
    kind, block, layers = _ARCHS[arch]
    if kind == "A":
        return DRN_A(block, layers, num_classes)
    return DRN(block, layers, num_classes, arch=kind)


def fill_up_weights(up):
    """segment.py's bilinear kernel in every channel of the depthwise transposed conv."""
    w = up.weight.data
    f = math.ceil(w.size(2) / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    for i in range(w.size(2)):
        for j in range(w.size(3)):
            w[0, 0, i, j] = (1 - math.fabs(i / f - c)) * (1 - math.fabs(j / f - c))
    for ch in range(1, w.size(0)):
        w[ch, 0, :, :] = w[0, 0, :, :]


class DRNSeg(nn.Module):
    """segment.py's DRNSeg: the classifier without avgpool and fc (``base``), a 1x1 conv to the
    classes (``seg``) and a frozen bilinear x8 depthwise transposed conv (``up``)."""

    def __init__(self, arch: str, classes: int):
        super().__init__()
        model = drn(arch, num_classes=1000)
        self.base = nn.Sequential(*list(model.children())[:-2])
        self.seg = nn.Conv2d(model.out_dim, classes, 1, bias=True)
        self.softmax = nn.LogSoftmax(dim=1)
        m = self.seg
        n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
        m.weight.data.normal_(0, math.sqrt(2.0 / n))
        m.bias.data.zero_()
        up = nn.ConvTranspose2d(
            classes, classes, 16, stride=8, padding=4, output_padding=0, groups=classes, bias=False
        )
        fill_up_weights(up)
        up.weight.requires_grad = False
        self.up = up

    def forward(self, x):
        x = self.seg(self.base(x))
        y = self.up(x)
        return self.softmax(y), x


def randomise(model: nn.Module, seed: int = 0, damp: float = 0.2) -> nn.Module:
    """Random weights and batch-norm statistics (so that a wrongly mapped statistic shows);
    the last norm of every residual branch scaled by ``damp`` so deep nets stay finite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for m in model.modules():
            if isinstance(m, Bottleneck):
                m.bn3.weight.mul_(damp)
            elif isinstance(m, BasicBlock) and m.residual:
                m.bn2.weight.mul_(damp)
    return model.eval()
