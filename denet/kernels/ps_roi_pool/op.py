"""``denet::ps_roi_pool``: registration with torch.library (fake kernel, autograd) and the public API."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._dispatch import implementation
from .._utils import pair
from ..ps_roi_align.op import check_position_sensitive
from ..roi_align.op import Boxes, check_roi_args


@torch.library.custom_op("denet::ps_roi_pool", mutates_args=())
def _ps_roi_pool(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> Tensor:
    return implementation(__package__, input, rois).ps_roi_pool_forward(
        input, rois, spatial_scale, pooled_height, pooled_width
    )


@_ps_roi_pool.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width):
    c_out = input.shape[1] // (pooled_height * pooled_width)
    return input.new_empty((rois.shape[0], c_out, pooled_height, pooled_width))


@torch.library.custom_op("denet::ps_roi_pool_backward", mutates_args=())
def _ps_roi_pool_backward(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    return implementation(__package__, grad, rois).ps_roi_pool_backward(
        grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width
    )


@_ps_roi_pool_backward.register_fake
def _(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width):
    return grad.new_empty((batch_size, channels, height, width))


def _setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width = inputs
    ctx.save_for_backward(rois)
    ctx.shape = tuple(input.shape)
    ctx.args = (spatial_scale, pooled_height, pooled_width)


def _backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    grad_input = None
    if ctx.needs_input_grad[0]:
        grad_input = torch.ops.denet.ps_roi_pool_backward(grad, rois, *ctx.args, *ctx.shape)
    # No gradient to the boxes, as in torchvision.
    return grad_input, None, None, None, None


def _setup_backward_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.args = tuple(inputs[2:5])


def _backward_backward(ctx, grad_grad):
    # The backward is linear in its gradient; its adjoint is the forward.
    (rois,) = ctx.saved_tensors
    return (torch.ops.denet.ps_roi_pool(grad_grad, rois, *ctx.args),) + (None,) * 8


_ps_roi_pool.register_autograd(_backward, setup_context=_setup_context)
_ps_roi_pool_backward.register_autograd(_backward_backward, setup_context=_setup_backward_context)


@torch.fx.wrap
def ps_roi_pool(
    input: Tensor, boxes: Boxes, output_size: int | Sequence[int], spatial_scale: float = 1.0
) -> Tensor:
    """Position-sensitive RoI pooling (R-FCN) with ``torchvision.ops.ps_roi_pool``'s signature.

    Args:
        input (Tensor[N, C, H, W]): score maps, ``C = C_out * PH * PW`` (float16, bfloat16,
            float32 or float64).
        boxes (Tensor[K, 5] or list of Tensor[L, 4]): ``(batch_index, x1, y1, x2, y2)`` rows, or one
            ``(x1, y1, x2, y2)`` tensor per image.
        output_size (int or (int, int)): ``(PH, PW)`` bins per RoI.
        spatial_scale (float): map coordinates per box coordinate (1 / stride).

    Returns:
        Tensor[K, C_out, PH, PW]: output channel ``c`` at bin ``(ph, pw)`` averages input channel
        ``(c * PH + ph) * PW + pw`` over the bin's integer window (0 when empty). As in torchvision
        the windows stop before the map's last row and column; the gradient is the exact
        gradient of this output (torchvision's own backward is not, at that border).
    """
    rois, pooled_height, pooled_width = check_roi_args("ps_roi_pool", input, boxes, output_size)
    check_position_sensitive("ps_roi_pool", input, pooled_height, pooled_width)
    return torch.ops.denet.ps_roi_pool(
        input, rois, float(spatial_scale), pooled_height, pooled_width
    )


class PSRoIPool(nn.Module):
    """Module form of :func:`ps_roi_pool`."""

    def __init__(self, output_size: int | Sequence[int], spatial_scale: float):
        super().__init__()
        pair(output_size, "output_size")
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Boxes) -> Tensor:
        return ps_roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
