"""``denet::roi_pool``: registration with torch.library (fake kernel, autograd) and the public API."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._dispatch import implementation
from .._utils import pair
from ..roi_align.op import Boxes, check_roi_args


@torch.library.custom_op("denet::roi_pool", mutates_args=())
def _roi_pool(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> tuple[Tensor, Tensor]:
    """Returns the pooled maxima and their ``argmax`` (int32 ``h * W + w``, -1 for none)."""
    return implementation(__package__, input, rois).roi_pool_forward(
        input, rois, spatial_scale, pooled_height, pooled_width
    )


@_roi_pool.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width):
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@torch.library.custom_op("denet::roi_pool_backward", mutates_args=())
def _roi_pool_backward(
    grad: Tensor,
    rois: Tensor,
    argmax: Tensor,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    return implementation(__package__, grad, rois).roi_pool_backward(
        grad, rois, argmax, batch_size, channels, height, width
    )


@_roi_pool_backward.register_fake
def _(grad, rois, argmax, batch_size, channels, height, width):
    return grad.new_empty((batch_size, channels, height, width))


def _setup_context(ctx, inputs, output):
    input, rois = inputs[:2]
    ctx.save_for_backward(rois, output[1])
    ctx.shape = tuple(input.shape)


def _backward(ctx, grad, grad_argmax):
    rois, argmax = ctx.saved_tensors
    grad_input = None
    if ctx.needs_input_grad[0]:
        grad_input = torch.ops.denet.roi_pool_backward(grad, rois, argmax, *ctx.shape)
    # No gradient to the boxes, as in torchvision.
    return grad_input, None, None, None, None


def _setup_backward_context(ctx, inputs, output):
    grad, rois, argmax, batch_size, channels, height, width = inputs
    ctx.save_for_backward(rois, argmax)


def _backward_backward(ctx, grad_grad):
    # The backward adds each gradient at its argmax; its adjoint reads the argmax back.
    rois, argmax = ctx.saved_tensors
    n, c, h, w = grad_grad.shape
    batch = rois[:, 0].to(torch.int64)
    plane = (batch[:, None] * c + torch.arange(c, device=rois.device)) * (h * w)
    index = plane[:, :, None, None] + argmax.clamp(min=0).to(torch.int64)
    picked = grad_grad.reshape(-1)[index.reshape(-1)].view(argmax.shape)
    return (torch.where(argmax >= 0, picked, 0.0).to(grad_grad.dtype),) + (None,) * 6


_roi_pool.register_autograd(_backward, setup_context=_setup_context)
_roi_pool_backward.register_autograd(_backward_backward, setup_context=_setup_backward_context)


@torch.fx.wrap
def roi_pool(
    input: Tensor, boxes: Boxes, output_size: int | Sequence[int], spatial_scale: float = 1.0
) -> Tensor:
    """RoIPool (Fast R-CNN) with ``torchvision.ops.roi_pool``'s signature and results.

    Args:
        input (Tensor[N, C, H, W]): feature map (float16, bfloat16, float32 or float64).
        boxes (Tensor[K, 5] or list of Tensor[L, 4]): ``(batch_index, x1, y1, x2, y2)`` rows, or one
            ``(x1, y1, x2, y2)`` tensor per image.
        output_size (int or (int, int)): ``(PH, PW)`` bins per RoI.
        spatial_scale (float): map coordinates per box coordinate (1 / stride).

    Returns:
        Tensor[K, C, PH, PW]: the maximum over each bin's integer window (0 for an empty window).
        The gradient goes to the first maximum of each window; none goes to the boxes.
    """
    rois, pooled_height, pooled_width = check_roi_args("roi_pool", input, boxes, output_size)
    return torch.ops.denet.roi_pool(input, rois, float(spatial_scale), pooled_height, pooled_width)[
        0
    ]


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool`."""

    def __init__(self, output_size: int | Sequence[int], spatial_scale: float):
        super().__init__()
        pair(output_size, "output_size")
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Boxes) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
