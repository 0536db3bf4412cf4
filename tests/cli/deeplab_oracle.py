"""isht7/pytorch-deeplab-resnet's ``MS_Deeplab`` written by hand in plain PyTorch, the oracle of
the DeepLab-v2 import; and Deformable-ConvNets' DeepLab head on ResNet-101 (OS 16) for the
deeplab-r101 string.

Transcribed from the reference description (peer-codebases.md 4.1 and 3.8), not through the
denet compiler, with the original module names (``Scale.conv1``, ``Scale.layer5.conv2d_list.0``)
so that the state dict has isht7's keys. Python 2's integer division where the original relied
on it (``outS``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def out_size(i: int) -> int:
    """``outS``: the 1x branch's output size for a square input of size i (321 -> 41)."""
    i = (int(i) + 1) // 2
    i = int(math.ceil((i + 1) / 2.0))
    return (i + 1) // 2


def _frozen_bn(c):
    bn = nn.BatchNorm2d(c, affine=True)
    for p in bn.parameters():
        p.requires_grad = False
    return bn


class Bottleneck(nn.Module):
    """Caffe's bottleneck: the stride on the first 1x1; the 3x3 dilated (padding = dilation)."""

    expansion = 4

    def __init__(self, cin, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, stride=stride, bias=False)
        self.bn1 = _frozen_bn(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=1, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = _frozen_bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _frozen_bn(planes * 4)
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


class ClassifierModule(nn.Module):
    """ASPP ("layer5"): four 3x3 convs 2048 -> K with bias, dilation = padding, summed."""

    def __init__(self, dilations, classes):
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(2048, classes, 3, padding=d, dilation=d, bias=True) for d in dilations
        )
        for m in self.conv2d_list:
            m.weight.data.normal_(0, 0.01)

    def forward(self, x):
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:]:
            out = out + conv(x)
        return out


class ResNet(nn.Module):
    """DeepLab-v2's ResNet-101 trunk + ASPP at output stride 8."""

    def __init__(self, layers, classes):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _frozen_bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=1, dilation=2)
        self.layer4 = self._make_layer(512, layers[3], stride=1, dilation=4)
        self.layer5 = ClassifierModule([6, 12, 18, 24], classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def _make_layer(self, planes, blocks, stride=1, dilation=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4 or dilation in (2, 4):
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                _frozen_bn(planes * 4),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * 4
        for _ in range(1, blocks):
            layers.append(Bottleneck(self.inplanes, planes, dilation=dilation))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.layer5(x)


def _interp(x, size):
    """``nn.UpsamplingBilinear2d(size=(s, s))``: bilinear with align_corners=True."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)


class MSDeeplab(nn.Module):
    """``MS_Deeplab``: one weight-shared trunk on the image and on its 0.75x and 0.5x resizes
    (square inputs: only the height is read). Returns the four maps: 1x, 0.75x resized to the
    1x map's size, 0.5x as it is, and the element-wise max of the three at the 1x size."""

    def __init__(self, classes=21):
        super().__init__()
        self.Scale = ResNet([3, 4, 23, 3], classes)  # noqa: N815 - isht7's name

    def forward(self, x):
        s = x.size(2)
        x2 = _interp(x, int(s * 0.75) + 1)
        x3 = _interp(x, int(s * 0.5) + 1)
        size = out_size(s)
        out = [self.Scale(x), _interp(self.Scale(x2), size), self.Scale(x3)]
        out.append(torch.max(torch.max(out[0], out[1]), _interp(out[2], size)))
        return out


def randomise(model: nn.Module, seed: int = 0, damp: float = 0.2) -> nn.Module:
    """Random weights, biases and batch-norm statistics; each block's last BN scaled by
    ``damp`` so that 33 blocks keep activations finite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for m in model.modules():
            if isinstance(m, Bottleneck):
                m.bn3.weight.mul_(damp)
    return model.eval()


def deform_conv_v1(x, offset, weight, pad, dilation):
    """Deformable ConvNets' v1 deformable convolution (stride 1, one deformable group, no bias),
    from the description of deformable_im2col.cuh (peer-codebases.md 3.1): tap k = i*kw + j of
    output (y, x) samples at (y - pad + i*dil + dy, x - pad + j*dil + dx), dy = offset[2k],
    dx = offset[2k + 1]; a sample outside 0 <= h < H, 0 <= w < W reads 0, and inside, a point
    at or past the last row (column) is clamped to it instead of blended with zero."""
    n, c, h, w = x.shape
    cout, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    ys = torch.arange(ho, dtype=x.dtype).view(1, 1, ho, 1)
    xs = torch.arange(wo, dtype=x.dtype).view(1, 1, 1, wo)
    ki = torch.arange(kh, dtype=x.dtype).repeat_interleave(kw).view(1, -1, 1, 1)
    kj = torch.arange(kw, dtype=x.dtype).repeat(kh).view(1, -1, 1, 1)
    hs = ys - pad + ki * dilation + offset[:, 0::2]  # [N, K, Ho, Wo]
    ws = xs - pad + kj * dilation + offset[:, 1::2]
    inside = (hs >= 0) & (ws >= 0) & (hs < h) & (ws < w)
    hl, wl = hs.floor(), ws.floor()
    clamp_h, clamp_w = hl >= h - 1, wl >= w - 1
    hs = torch.where(clamp_h, torch.full_like(hs, h - 1), hs)
    ws = torch.where(clamp_w, torch.full_like(ws, w - 1), ws)
    hl = torch.where(clamp_h, torch.full_like(hl, h - 1), hl)
    wl = torch.where(clamp_w, torch.full_like(wl, w - 1), wl)
    hh = torch.where(clamp_h, hl, hl + 1)
    wh = torch.where(clamp_w, wl, wl + 1)
    lh, lw = hs - hl, ws - wl
    flat = x.reshape(n, c, h * w)

    def read(yy, xx):  # [N, C, K, Ho, Wo]; indices clamped into the map, masked afterwards
        idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).long().view(n, 1, -1)
        return flat.gather(2, idx.expand(n, c, idx.shape[-1])).view(n, c, *yy.shape[1:])

    val = (
        ((1 - lh) * (1 - lw)).unsqueeze(1) * read(hl, wl)
        + ((1 - lh) * lw).unsqueeze(1) * read(hl, wh)
        + (lh * (1 - lw)).unsqueeze(1) * read(hh, wl)
        + (lh * lw).unsqueeze(1) * read(hh, wh)
    ) * inside.unsqueeze(1)
    cols = val.reshape(n, c * kh * kw, ho * wo)
    return (weight.reshape(cout, -1) @ cols).view(n, cout, ho, wo)


class DeformConvV1(nn.Module):
    """res5's branch2b in the DCN DeepLab: a 3x3 deformable conv (dilation 2, pad 2, no bias)
    fed by ``offset``, a plain 3x3 conv with bias, pad 1, not dilated, 18 channels."""

    def __init__(self, cin, cout, dilation):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, 3, 3).normal_(0, 0.01))
        self.offset = nn.Conv2d(cin, 18, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.dilation = dilation

    def forward(self, x):
        return deform_conv_v1(x, self.offset(x), self.weight, self.dilation, self.dilation)


class DeformableDeepLab(nn.Module):
    """Deformable ConvNets' DeepLab (resnet_v1_101_deeplab.py; with ``deformable``,
    resnet_v1_101_deeplab_dcn.py): MSRA ResNet-v1-101 (pool1 3x3/2 in ceil mode without pad,
    res4 stride 2, res5 stride 1 dilation 2: output stride 16; with ``deformable`` the 3x3 of
    res5a/b/c is :class:`DeformConvV1`), fc6 (1x1, 1024, bias) + ReLU, score (1x1, bias), the
    depthwise bilinear deconv k32 s16 without bias, and the crop at offset 8 to the input's
    size."""

    def __init__(self, classes=19, deformable=False):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _frozen_bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
        self.layer1 = ResNet._make_layer(self, 64, 3)
        self.layer2 = ResNet._make_layer(self, 128, 4, stride=2)
        self.layer3 = ResNet._make_layer(self, 256, 23, stride=2)
        self.layer4 = ResNet._make_layer(self, 512, 3, stride=1, dilation=2)
        if deformable:
            for block in self.layer4:
                block.conv2 = DeformConvV1(512, 512, 2)
        self.fc6 = nn.Conv2d(2048, 1024, 1)
        self.score = nn.Conv2d(1024, classes, 1)
        self.upsampling = nn.ConvTranspose2d(classes, classes, 32, 16, groups=classes, bias=False)
        with torch.no_grad():  # MXNet's Bilinear initializer, in every group
            f = math.ceil(32 / 2)
            c = (2 * f - 1 - f % 2) / (2.0 * f)
            t = torch.tensor([1 - abs(i / f - c) for i in range(32)])
            self.upsampling.weight.copy_(
                (t[:, None] * t[None, :]).expand_as(self.upsampling.weight)
            )
        self.upsampling.weight.requires_grad = False

    def forward(self, x):
        y = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        y = self.layer4(self.layer3(self.layer2(self.layer1(y))))
        y = self.upsampling(self.score(self.relu(self.fc6(y))))
        return y[:, :, 8 : 8 + x.size(2), 8 : 8 + x.size(3)]
