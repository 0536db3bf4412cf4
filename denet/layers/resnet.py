"""``RSN`` (one residual block) and ``nRSN`` (a stage of ``num`` blocks; only the first strides).

DeNet's blocks (denet-original.md 1.3):

* default, pre-activation: ``BN A conv1 BN A conv2 [BN A conv3]``, output ``shortcut + y``; the
  projection shortcut (1x1 conv, stride s, no bias) reads the first BN's output (DeNet's quirk).
* ``.O``, original (post-activation, torchvision's): ``conv1 BN A conv2 BN [A conv3 BN]``,
  projection = 1x1 conv + BN, output ``A(shortcut + y)``.
* ``bottleneck > 0``: 1x1 (in -> bottleneck), k x k (bottleneck -> bottleneck), 1x1 (-> filters).
  DeNet (and MSRA/Caffe) put the stride on the first 1x1; tag ``V`` puts it on the k x k conv
  (ResNet v1.5, torchvision).
* A projection shortcut is added when the block changes the shape (channels or stride).
* ``deform=1`` (DCNv1) or ``deform=2`` (DCNv2, modulated: mask ``2*sigmoid``) makes the k x k
  conv(s) deformable (both of a basic block, the middle one of a bottleneck; Deformable ConvNets'
  res5a/b/c branch2b): each becomes a :class:`~denet.layers.deform.DeformableConv2d` that owns its
  offset conv as the child ``offset`` (k x k, the conv's stride, dilation ``offset_dilation``,
  default the conv's; zero weight and bias; ``2*k*k*deform_groups`` channels, ``+ k*k*
  deform_groups`` mask channels with 2). Keys: ``conv2.weight`` stays the deformable conv's
  weight, its offset conv is ``conv2.offset.weight`` / ``conv2.offset.bias`` (``conv1.offset.*``
  too in a basic block); in a stage ``l{i}_nRSN.{block}.conv2.offset.weight``.

Module names follow torchvision (``conv1``, ``bn1``, ..., ``downsample.0``/``.1``), so a
torchvision ResNet state dict maps onto an ``nRSN.OV`` stage key for key.
"""

from __future__ import annotations

from torch import nn

from .activation import make_activation
from .deform import BOUNDARIES, DeformableConv2d, make_offset_conv, offset_channels
from .init import WeightInit, init_conv
from .norm import NORMS, make_norm
from .registry import TORCH_INT_MAX, Arg, Call, LayerDef
from .shape import ShapeSpec


def _conv(cin, cout, k, stride, dilation, groups, init: WeightInit, deform=None):
    """A bias-free conv, border mode half; ``deform = (version, deform_groups, offset_dilation,
    boundary, offset_lr)`` makes it deformable, owning its zero-initialised offset conv whose
    parameters carry the learning-rate multiplier ``offset_lr`` (``Model.param_groups``)."""
    pad = dilation * (k // 2)  # DeNet's blocks always use border mode half
    if deform is None:
        conv = nn.Conv2d(cin, cout, k, stride, pad, dilation, groups, bias=False)
    else:
        version, dg, od, boundary, offset_lr = deform
        od = od or dilation
        channels = offset_channels(k, dg, version == 2)
        offset = make_offset_conv(cin, k, stride, od * (k // 2), od, channels)
        for p in offset.parameters():
            p.lr_mult = offset_lr
        conv = DeformableConv2d(
            cin,
            cout,
            k,
            stride,
            pad,
            dilation,
            groups,
            bias=False,
            deform_groups=dg,
            modulated=version == 2,
            boundary=boundary,
            offset=offset,
        )
    init_conv(conv, init)
    return conv


class _Block(nn.Module):
    """Shared construction of both block versions."""

    def __init__(
        self,
        cin,
        cout,
        k,
        stride,
        bottleneck,
        stride_on_kxk,
        dilation,
        groups,
        norm,
        activation,
        residual,
        momentum,
        eps,
        init,
        pre,
        keep_proj=False,
        deform=None,
    ):
        super().__init__()
        nrm = lambda c: make_norm(norm, c, momentum, eps)  # noqa: E731
        self.residual = residual
        if pre:
            self.bn0 = nrm(cin)
        if bottleneck:
            b = bottleneck
            s1, s2 = (1, stride) if stride_on_kxk else (stride, 1)
            self.conv1 = _conv(cin, b, 1, s1, 1, 1, init)
            self.bn1 = nrm(b)
            self.conv2 = _conv(b, b, k, s2, dilation, groups, init, deform)
            self.bn2 = nrm(b)
            self.conv3 = _conv(b, cout, 1, 1, 1, 1, init)
            if not pre:
                self.bn3 = nrm(cout)
        else:
            self.conv1 = _conv(cin, cout, k, stride, dilation, groups, init, deform)
            self.bn1 = nrm(cout)
            self.conv2 = _conv(cout, cout, k, 1, dilation, groups, init, deform)
            if not pre:
                self.bn2 = nrm(cout)
        self.bottleneck = bool(bottleneck)
        self.downsample = None
        if (residual or keep_proj) and (cin != cout or stride != 1):
            proj = nn.Conv2d(cin, cout, 1, stride, bias=False)
            init_conv(proj, init)
            self.downsample = nn.Sequential(proj) if pre else nn.Sequential(proj, nrm(cout))
            if not residual:  # DRN's unused projection: kept for its weights, never run
                self.downsample.requires_grad_(False)
        # In-place only after the residual sum and BN outputs nobody else reads; the
        # pre-activation projection reads the first BN's output, so that block never works in place.
        act = make_activation(activation, inplace=not pre)
        self.act = act if act is not None else nn.Identity()


class PostActivationBlock(_Block):
    """``RSN.O``: the original ResNet block (torchvision's BasicBlock / Bottleneck)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, pre=False, **kwargs)

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.bottleneck:
            out = self.bn3(self.conv3(self.act(out)))
        if self.residual:
            out += x if self.downsample is None else self.downsample(x)
        return self.act(out)


class PreActivationBlock(_Block):
    """``RSN``: DeNet's default pre-activation block."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, pre=True, **kwargs)

    def forward(self, x):
        pre = self.bn0(x)
        out = self.conv1(self.act(pre))
        out = self.conv2(self.act(self.bn1(out)))
        if self.bottleneck:
            out = self.conv3(self.act(self.bn2(out)))
        if not self.residual:
            return out
        return out + (x if self.downsample is None else self.downsample(pre))


_KEYWORDS = (
    Arg("dilation", "int", 1, min=1, max=TORCH_INT_MAX, doc="dilation of the k x k convs"),
    Arg(
        "first_dilation",
        "int",
        None,
        min=1,
        max=TORCH_INT_MAX,
        doc="dilation of the first block's k x k convs (nRSN; default: dilation)",
    ),
    Arg("groups", "int", 1, min=1, doc="groups of the k x k conv (ResNeXt cardinality)"),
    Arg("residual", "bool", True, doc="0: no shortcut (DRN's degridding blocks)"),
    Arg(
        "keep_proj",
        "bool",
        False,
        doc="with residual=0: keep the projection a shape change needs, frozen and never run "
        "(DRN-C-58's layer7 holds one; weights load key for key)",
    ),
    Arg("norm", "str", "bn", choices=NORMS, doc="norm layer: bn, frozen, affine or gn (32 groups)"),
    Arg("momentum", "float", 0.9, min=0.0, max=1.0, doc="BN momentum, DeNet convention"),
    Arg("eps", "float", 1e-5, min=0.0, doc="BN eps"),
    Arg(
        "deform",
        "int",
        0,
        choices=(0, 1, 2),
        doc="1: deformable k x k convs (DCNv1), 2: modulated (DCNv2, mask 2*sigmoid)",
    ),
    Arg("deform_groups", "int", 1, min=1, doc="offset groups of the deformable convs"),
    Arg(
        "offset_dilation", "int", None, min=1, doc="dilation of the offset convs (default: conv's)"
    ),
    Arg("deform_boundary", "str", "v2", choices=BOUNDARIES, doc="deform_conv2d's border rule"),
    Arg("offset_lr", "float", 1.0, min=0.0, doc="learning-rate multiplier of the offset convs"),
)
_TAGS = {
    "O": "original post-activation block (ResNet v1, torchvision); default: pre-activation",
    "V": "bottleneck stride on the k x k conv (ResNet v1.5, torchvision); default: on the "
    "first 1x1 (DeNet, MSRA)",
}


def _block_out(call: Call, i: ShapeSpec, filters: int, stride: int) -> ShapeSpec:
    h = (i.h - 1) // stride + 1
    w = (i.w - 1) // stride + 1
    return ShapeSpec(filters, h, w, i.stride * stride)


def _check(call: Call, filters: int, size: int, bottleneck: int):
    if size % 2 == 0:
        call.fail(f"the block's kernel size must be odd (border mode half), not {size}", "size")
    if call.args["norm"] == "gn":
        chans = {filters, bottleneck or filters} | (
            {call.input.channels} if not call.has("O") else set()
        )
        bad = sorted(c for c in chans if c % 32)
        if bad:
            call.fail(
                f"norm=gn uses 32 groups, which must divide the block's channels ({bad[0]})", "norm"
            )
    g = call.args["groups"]
    width = bottleneck or filters
    if width % g or (not bottleneck and call.input.channels % g):
        call.fail(f"groups={g} must divide the block's channels ({width})", "groups")
    a = call.args
    if not a["deform"]:
        for name, default in (("deform_groups", 1), ("offset_dilation", None), ("offset_lr", 1.0)):
            if a[name] != default:
                call.fail(f"{name} sets the deformable convs of deform=1 or deform=2", name)
        if a["deform_boundary"] != "v2":
            call.fail(
                "deform_boundary sets the deformable convs of deform=1 or 2", "deform_boundary"
            )
        return
    dg = a["deform_groups"]
    ins = {width} if bottleneck else {call.input.channels, filters}
    bad = sorted(c for c in ins if c % dg)
    if bad:
        call.fail(
            f"deform_groups={dg} must divide the deformable convs' input channels ({bad[0]})",
            "deform_groups",
        )


def _block_params(call: Call, cin: int, stride: int) -> int:
    """Parameters of one block made by :func:`_make_block`, computed (Python integers)."""
    a = call.args
    cout, k, g, b = a["filters"], a["size"], a["groups"], a["bottleneck"]
    pre = not call.has("O")
    norm = 0 if a["norm"] == "frozen" else 2  # parameters per channel of a norm layer
    n = norm * cin if pre else 0
    if b:
        n += cin * b + norm * b + b // g * b * k * k + norm * b + b * cout
        n += 0 if pre else norm * cout
    else:
        n += cin // g * cout * k * k + norm * cout + cout // g * cout * k * k
        n += 0 if pre else norm * cout
    if (a["residual"] or a["keep_proj"]) and (cin != cout or stride != 1):
        n += cin * cout + (0 if pre else norm * cout)
    if a["deform"]:  # the offset convs (weight and bias) of the deformable k x k convs
        off = offset_channels(k, a["deform_groups"], a["deform"] == 2)
        for c in [b] if b else [cin, cout]:
            n += c * off * k * k + off
    return n


def _make_block(call: Call, cin: int, stride: int, dilation: int):
    a = call.args
    cls = PostActivationBlock if call.has("O") else PreActivationBlock
    return cls(
        cin,
        a["filters"],
        a["size"],
        stride,
        a["bottleneck"],
        call.has("V"),
        dilation,
        a["groups"],
        a["norm"],
        call.activation,
        a["residual"],
        a["momentum"],
        a["eps"],
        call.init,
        keep_proj=a["keep_proj"],
        deform=(
            (
                a["deform"],
                a["deform_groups"],
                a["offset_dilation"],
                a["deform_boundary"],
                a["offset_lr"],
            )
            if a["deform"]
            else None
        ),
    )


class ResidualBlock(LayerDef):
    type = "RSN"
    denet_name = "resnet"
    doc = "One residual block."
    tags = _TAGS
    args = (
        Arg("filters", "int", min=1, doc="output channels"),
        Arg("size", "int", min=1, doc="kernel size of the spatial convs"),
        Arg("stride", "int", 1, min=1, max=TORCH_INT_MAX, doc="stride"),
        Arg("bottleneck", "int", 0, min=0, doc="bottleneck width (0: basic block)"),
    )
    keywords = _KEYWORDS
    has_params = True

    def shape(self, call: Call):
        a = call.args
        _check(call, a["filters"], a["size"], a["bottleneck"])
        return _block_out(call, call.input, a["filters"], a["stride"])

    def params(self, call: Call) -> int:
        return _block_params(call, call.input.channels, call.args["stride"])

    def build(self, call: Call):
        a = call.args
        d = a["first_dilation"] or a["dilation"]
        return _make_block(call, call.input.channels, a["stride"], d)


class ResidualStage(LayerDef):
    type = "nRSN"
    doc = (
        "A stage of num residual blocks; only the first has the stride (and "
        "first_dilation) and a projection when the shape changes."
    )
    tags = _TAGS
    args = (
        Arg("num", "int", min=1, doc="number of blocks"),
        Arg("filters", "int", min=1, doc="output channels"),
        Arg("size", "int", min=1, doc="kernel size of the spatial convs"),
        Arg("stride", "int", 1, min=1, max=TORCH_INT_MAX, doc="stride of the first block"),
        Arg("bottleneck", "int", 0, min=0, doc="bottleneck width (0: basic blocks)"),
    )
    keywords = _KEYWORDS
    has_params = True

    def shape(self, call: Call):
        a = call.args
        _check(call, a["filters"], a["size"], a["bottleneck"])
        return _block_out(call, call.input, a["filters"], a["stride"])

    def count(self, call: Call) -> int:
        return call.args["num"]  # one node per block for the node limit

    def params(self, call: Call) -> int:
        first = _block_params(call, call.input.channels, call.args["stride"])
        rest = _block_params(call, call.args["filters"], 1)
        return first + (call.args["num"] - 1) * rest

    def build(self, call: Call):
        a = call.args
        first = a["first_dilation"] or a["dilation"]
        blocks = [_make_block(call, call.input.channels, a["stride"], first)]
        for _ in range(a["num"] - 1):
            blocks.append(_make_block(call, a["filters"], 1, a["dilation"]))
        return nn.Sequential(*blocks)
