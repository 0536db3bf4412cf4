"""``denet::deform_conv2d``: registration with torch.library (fake kernel, autograd) and the public API."""

import math

import torch
from torch import Tensor, nn
from torch.nn import init

from .._dispatch import implementation
from .._utils import pair
from .reference import BOUNDARIES, output_size


@torch.library.custom_op("denet::deform_conv2d", mutates_args=())
def _deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    boundary: str,
) -> Tensor:
    return implementation(__package__, input, offset, weight).deform_conv2d_forward(
        input, offset, weight, bias, mask, stride, padding, dilation, boundary
    )


@_deform_conv2d.register_fake
def _(input, offset, weight, bias, mask, stride, padding, dilation, boundary):
    return input.new_empty((input.shape[0], weight.shape[0], offset.shape[2], offset.shape[3]))


@torch.library.custom_op("denet::deform_conv2d_backward", mutates_args=())
def _deform_conv2d_backward(
    grad: Tensor,
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    mask: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    boundary: str,
    need_input: bool,
    need_weight: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return implementation(__package__, grad, input, offset, weight).deform_conv2d_backward(
        grad,
        input,
        offset,
        weight,
        mask,
        stride,
        padding,
        dilation,
        boundary,
        need_input,
        need_weight,
    )


@_deform_conv2d_backward.register_fake
def _(
    grad, input, offset, weight, mask, stride, padding, dilation, boundary, need_input, need_weight
):
    g_mask = torch.empty_like(mask) if mask is not None else input.new_empty((0,))
    return (
        torch.empty_like(input),
        torch.empty_like(offset),
        torch.empty_like(weight),
        g_mask,
        weight.new_empty((weight.shape[0],)),
    )


def _setup_context(ctx, inputs, output):
    input, offset, weight, bias, mask, stride, padding, dilation, boundary = inputs
    ctx.save_for_backward(input, offset, weight, mask)
    ctx.args = (stride, padding, dilation, boundary)


def _backward(ctx, grad):
    input, offset, weight, mask = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_input = bool(need[0] or need[1] or need[4])
    need_weight = bool(need[2])
    if not (need_input or need_weight or need[3]):
        return None, None, None, None, None, None, None, None, None
    g_in, g_off, g_w, g_mask, g_bias = torch.ops.denet.deform_conv2d_backward(
        grad, input, offset, weight, mask, *ctx.args, need_input, need_weight
    )
    return (
        g_in if need[0] else None,
        g_off if need[1] else None,
        g_w if need_weight else None,
        g_bias if need[3] else None,
        g_mask if need[4] else None,
        None,
        None,
        None,
        None,
    )


_deform_conv2d.register_autograd(_backward, setup_context=_setup_context)


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def _check(input, offset, weight, bias, mask, stride, padding, dilation, boundary) -> None:
    for name, t in (("input", input), ("offset", offset), ("weight", weight)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"deform_conv2d: {name} must be a 4-d Tensor, got shape {_shape(t)}")
    b, cin, h, w = input.shape
    cout, cin_g, kh, kw = weight.shape
    if kh < 1 or kw < 1 or cin_g < 1 or cout < 1:
        raise ValueError(
            f"deform_conv2d: weight {_shape(weight)} must have a non-empty kernel and channels"
        )
    if cin % cin_g != 0:
        raise ValueError(
            f"deform_conv2d: input channels {cin} (input {_shape(input)}) must be a multiple of "
            f"weight.shape[1] = {cin_g} (weight {_shape(weight)}): the weight groups are C_in / weight.shape[1]"
        )
    groups = cin // cin_g
    if cout % groups != 0:
        raise ValueError(
            f"deform_conv2d: output channels {cout} (weight {_shape(weight)}) must be divisible by the "
            f"{groups} weight groups"
        )
    if offset.shape[1] == 0 or offset.shape[1] % (2 * kh * kw) != 0:
        raise ValueError(
            f"deform_conv2d: offset {_shape(offset)} must have 2 * offset_groups * kh * kw channels, a "
            f"positive multiple of 2 * {kh} * {kw} = {2 * kh * kw} for weight {_shape(weight)}"
        )
    og = offset.shape[1] // (2 * kh * kw)
    if cin % og != 0:
        raise ValueError(
            f"deform_conv2d: input channels {cin} (input {_shape(input)}) must be divisible by the "
            f"{og} offset groups of offset {_shape(offset)}"
        )
    oh, ow = output_size(h, w, kh, kw, stride, padding, dilation)
    if oh < 1 or ow < 1:
        raise ValueError(
            f"deform_conv2d: the output would be empty ({oh}x{ow}) for input {_shape(input)}, weight "
            f"{_shape(weight)}, stride {stride}, padding {padding}, dilation {dilation}"
        )
    if tuple(offset.shape) != (b, offset.shape[1], oh, ow):
        raise ValueError(
            f"deform_conv2d: offset {_shape(offset)} must be [{b}, {offset.shape[1]}, {oh}, {ow}] "
            f"(batch, 2*offset_groups*kh*kw, out_h, out_w) for input {_shape(input)}"
        )
    if mask is not None:
        want = (b, og * kh * kw, oh, ow)
        if not isinstance(mask, Tensor) or tuple(mask.shape) != want:
            raise ValueError(
                f"deform_conv2d: mask {_shape(mask)} must be {list(want)} (batch, offset_groups*kh*kw, "
                f"out_h, out_w) for offset {_shape(offset)} and weight {_shape(weight)}"
            )
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (cout,)):
        raise ValueError(
            f"deform_conv2d: bias {_shape(bias)} must be [{cout}] for weight {_shape(weight)}"
        )
    tensors = [t for t in (input, offset, weight, bias, mask) if t is not None]
    if any(not t.is_floating_point() for t in tensors) or len({t.dtype for t in tensors}) != 1:
        raise ValueError(
            f"deform_conv2d: all tensors must share one floating dtype, got {[t.dtype for t in tensors]}"
        )
    if len({t.device for t in tensors}) != 1:
        raise ValueError(
            f"deform_conv2d: all tensors must be on one device, got {[t.device for t in tensors]}"
        )
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(
            f"deform_conv2d: stride {stride} and dilation {dilation} must be >= 1, padding {padding} >= 0"
        )
    if boundary not in BOUNDARIES:
        raise ValueError(f"deform_conv2d: boundary must be one of {BOUNDARIES}, got {boundary!r}")


IntPair = int | tuple[int, int]


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = (1, 1),
    padding: IntPair = (0, 0),
    dilation: IntPair = (1, 1),
    mask: Tensor | None = None,
    *,
    boundary: str = "v2",
) -> Tensor:
    """Deformable convolution v1/v2, a drop-in for :func:`torchvision.ops.deform_conv2d`.

    Args:
        input (Tensor[B, C_in, H, W]): the map (float16, bfloat16, float32, float64).
        offset (Tensor[B, 2*offset_groups*kh*kw, out_h, out_w]): for offset group g and tap
            k = i*kw + j, channel ``g*2*kh*kw + 2k`` is dy and ``2k + 1`` is dx. The offset
            groups are ``offset.shape[1] // (2*kh*kw)``; input channels are split into that many
            contiguous chunks.
        weight (Tensor[C_out, C_in/groups, kh, kw]): the conv groups are ``C_in // weight.shape[1]``.
        bias (Tensor[C_out], optional).
        stride, padding, dilation (int or (int, int)).
        mask (Tensor[B, offset_groups*kh*kw, out_h, out_w], optional): the DCNv2 modulation that
            multiplies each sample. ``None`` is DCNv1 (every sample weighs 1).
        boundary (str): how samples near the border are read.
            ``"v2"`` (default; torchvision, DCNv2, and the updated v1 ops of Deformable-ConvNets):
            a sample counts when ``-1 < y < H`` and ``-1 < x < W`` and each bilinear corner outside
            the map reads 0, i.e. the map is zero-padded by one pixel, so samples up to one pixel
            outside still receive offset gradients.
            ``"v1"``: the original Deformable ConvNets (MXNet ``deformable_im2col``) rule: a sample
            counts only when ``0 <= y < H`` and ``0 <= x < W`` (otherwise 0), and one that falls
            in the last row or column (``floor(y) >= H - 1``) is clamped onto it, replicating the
            edge rather than blending with zero; it then passes no offset gradient along that
            axis. The two rules agree for samples with ``0 <= y < H - 1`` and ``0 <= x < W - 1``.

    Returns:
        Tensor[B, C_out, out_h, out_w] with ``out = (size + 2*padding - dilation*(k-1) - 1) // stride + 1``.
        Gradients flow to input, offset, weight, bias and mask (float32 accumulation, or float64).
    """
    stride, padding, dilation = (
        pair(stride, "stride"),
        pair(padding, "padding"),
        pair(dilation, "dilation"),
    )
    _check(input, offset, weight, bias, mask, stride, padding, dilation, boundary)
    return torch.ops.denet.deform_conv2d(
        input, offset, weight, bias, mask, list(stride), list(padding), list(dilation), boundary
    )


class DeformConv2d(nn.Module):
    """Module form of :func:`deform_conv2d`, like :class:`torchvision.ops.DeformConv2d`: it owns the
    weight and bias; ``forward(input, offset, mask=None)`` takes the offsets (and mask) from outside."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        boundary: str = "v2",
    ):
        super().__init__()
        if in_channels % groups != 0 or out_channels % groups != 0:
            raise ValueError(
                f"DeformConv2d: in_channels {in_channels} and out_channels {out_channels} must be "
                f"divisible by groups {groups}"
            )
        if boundary not in BOUNDARIES:
            raise ValueError(
                f"DeformConv2d: boundary must be one of {BOUNDARIES}, got {boundary!r}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding")
        self.dilation = pair(dilation, "dilation")
        self.groups = groups
        self.boundary = boundary
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torchvision's initialisation.
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        return deform_conv2d(
            input,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
            boundary=self.boundary,
        )

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}"
        )
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.boundary != "v2":
            s += f", boundary={self.boundary!r}"
        return s
