"""``denet::ps_roi_align``: registration with torch.library (fake kernel, autograd) and the public API."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._dispatch import implementation
from .._utils import pair
from ..roi_align.op import Boxes, check_roi_args


@torch.library.custom_op("denet::ps_roi_align", mutates_args=())
def _ps_roi_align(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
) -> Tensor:
    return implementation(__package__, input, rois).ps_roi_align_forward(
        input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio
    )


@_ps_roi_align.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    c_out = input.shape[1] // (pooled_height * pooled_width)
    return input.new_empty((rois.shape[0], c_out, pooled_height, pooled_width))


@torch.library.custom_op("denet::ps_roi_align_backward", mutates_args=())
def _ps_roi_align_backward(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    return implementation(__package__, grad, rois).ps_roi_align_backward(
        grad,
        rois,
        spatial_scale,
        pooled_height,
        pooled_width,
        sampling_ratio,
        batch_size,
        channels,
        height,
        width,
    )


@_ps_roi_align_backward.register_fake
def _(
    grad,
    rois,
    spatial_scale,
    pooled_height,
    pooled_width,
    sampling_ratio,
    batch_size,
    channels,
    height,
    width,
):
    return grad.new_empty((batch_size, channels, height, width))


def _setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio = inputs
    ctx.save_for_backward(rois)
    ctx.shape = tuple(input.shape)
    ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio)


def _backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    grad_input = None
    if ctx.needs_input_grad[0]:
        grad_input = torch.ops.denet.ps_roi_align_backward(grad, rois, *ctx.args, *ctx.shape)
    # No gradient to the boxes, as in torchvision.
    return grad_input, None, None, None, None, None


def _setup_backward_context(ctx, inputs, output):
    grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio = inputs[:6]
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio)


def _backward_backward(ctx, grad_grad):
    # The backward is linear in its gradient; its adjoint is the forward.
    (rois,) = ctx.saved_tensors
    return (torch.ops.denet.ps_roi_align(grad_grad, rois, *ctx.args),) + (None,) * 9


_ps_roi_align.register_autograd(_backward, setup_context=_setup_context)
_ps_roi_align_backward.register_autograd(_backward_backward, setup_context=_setup_backward_context)


def check_position_sensitive(
    name: str, input: Tensor, pooled_height: int, pooled_width: int
) -> None:
    bins = pooled_height * pooled_width
    if input.shape[1] % bins != 0:
        raise ValueError(
            f"{name}: the input's {input.shape[1]} channels (shape {tuple(input.shape)}) must be a multiple "
            f"of output_size[0] * output_size[1] = {pooled_height} * {pooled_width} = {bins}"
        )


@torch.fx.wrap
def ps_roi_align(
    input: Tensor,
    boxes: Boxes,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Tensor:
    """Position-sensitive RoIAlign (R-FCN) with ``torchvision.ops.ps_roi_align``'s signature.

    Args:
        input (Tensor[N, C, H, W]): score maps, ``C = C_out * PH * PW`` (float16, bfloat16,
            float32 or float64).
        boxes (Tensor[K, 5] or list of Tensor[L, 4]): ``(batch_index, x1, y1, x2, y2)`` rows, or one
            ``(x1, y1, x2, y2)`` tensor per image.
        output_size (int or (int, int)): ``(PH, PW)`` bins per RoI.
        spatial_scale (float): map coordinates per box coordinate (1 / stride).
        sampling_ratio (int): samples per bin along each axis; ``<= 0`` takes
            ``ceil(roi_size / output_size)`` per RoI.

    Returns:
        Tensor[K, C_out, PH, PW]: output channel ``c`` at bin ``(ph, pw)`` averages bilinear samples of
        input channel ``(c * PH + ph) * PW + pw``, with RoIAlign's ``aligned=True`` geometry. A bin
        with no samples is 0 (torchvision returns NaN there). The gradient flows to ``input`` only.
    """
    rois, pooled_height, pooled_width = check_roi_args("ps_roi_align", input, boxes, output_size)
    check_position_sensitive("ps_roi_align", input, pooled_height, pooled_width)
    return torch.ops.denet.ps_roi_align(
        input, rois, float(spatial_scale), pooled_height, pooled_width, int(sampling_ratio)
    )


class PSRoIAlign(nn.Module):
    """Module form of :func:`ps_roi_align`."""

    def __init__(self, output_size: int | Sequence[int], spatial_scale: float, sampling_ratio: int):
        super().__init__()
        pair(output_size, "output_size")
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio

    def forward(self, input: Tensor, rois: Boxes) -> Tensor:
        return ps_roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}"
        )
