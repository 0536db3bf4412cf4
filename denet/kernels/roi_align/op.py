"""``denet::roi_align``: registration with torch.library (fake kernel, autograd) and the public API."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._dispatch import implementation
from .._utils import as_roi_tensor, pair

Boxes = Tensor | list[Tensor]


@torch.library.custom_op("denet::roi_align", mutates_args=())
def _roi_align(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    return implementation(__package__, input, rois).roi_align_forward(
        input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
    )


@_roi_align.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@torch.library.custom_op("denet::roi_align_backward", mutates_args=())
def _roi_align_backward(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    return implementation(__package__, grad, rois).roi_align_backward(
        grad,
        rois,
        spatial_scale,
        pooled_height,
        pooled_width,
        batch_size,
        channels,
        height,
        width,
        sampling_ratio,
        aligned,
    )


@_roi_align_backward.register_fake
def _(
    grad,
    rois,
    spatial_scale,
    pooled_height,
    pooled_width,
    batch_size,
    channels,
    height,
    width,
    sampling_ratio,
    aligned,
):
    return grad.new_empty((batch_size, channels, height, width))


def _setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.shape = tuple(input.shape)
    ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def _backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ctx.args
    grad_input = None
    if ctx.needs_input_grad[0]:
        n, c, h, w = ctx.shape
        grad_input = torch.ops.denet.roi_align_backward(
            grad,
            rois,
            spatial_scale,
            pooled_height,
            pooled_width,
            n,
            c,
            h,
            w,
            sampling_ratio,
            aligned,
        )
    # No gradient to the boxes, as in torchvision.
    return grad_input, None, None, None, None, None, None


def _setup_backward_context(ctx, inputs, output):
    grad, rois, spatial_scale, pooled_height, pooled_width, _, _, _, _, sampling_ratio, aligned = (
        inputs
    )
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def _backward_backward(ctx, grad_grad):
    # The backward is linear in its gradient; its adjoint is the forward.
    (rois,) = ctx.saved_tensors
    return (torch.ops.denet.roi_align(grad_grad, rois, *ctx.args),) + (None,) * 10


_roi_align.register_autograd(_backward, setup_context=_setup_context)
_roi_align_backward.register_autograd(_backward_backward, setup_context=_setup_backward_context)


def check_roi_args(name: str, input: Tensor, boxes: Boxes, output_size) -> tuple[Tensor, int, int]:
    """Validate the arguments shared by the RoI operators; returns ``(rois [K, 5], PH, PW)``."""
    if not isinstance(input, Tensor) or input.dim() != 4:
        shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"{name}: input must be a Tensor[N, C, H, W], got shape {shape}")
    if not input.is_floating_point():
        raise ValueError(f"{name}: input must be a floating-point tensor, got {input.dtype}")
    if input.shape[2] == 0 or input.shape[3] == 0:
        raise ValueError(
            f"{name}: the feature map must not be empty, got shape {tuple(input.shape)}"
        )
    try:
        rois = as_roi_tensor(boxes)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    if rois.device != input.device:
        raise ValueError(f"{name}: input on {input.device} but boxes on {rois.device}")
    if rois.dtype == torch.bool or rois.is_complex():
        raise ValueError(f"{name}: boxes must be real numbers, got {rois.dtype}")
    if isinstance(output_size, bool):
        raise ValueError(
            f"{name}: output_size must be an int or a pair of ints, got {output_size!r}"
        )
    pooled_height, pooled_width = pair(output_size, "output_size")
    if pooled_height < 1 or pooled_width < 1:
        raise ValueError(
            f"{name}: output_size must be positive, got {(pooled_height, pooled_width)}"
        )
    return rois, pooled_height, pooled_width


@torch.fx.wrap
def roi_align(
    input: Tensor,
    boxes: Boxes,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign (Mask R-CNN) with ``torchvision.ops.roi_align``'s signature and results.

    Args:
        input (Tensor[N, C, H, W]): feature map (float16, bfloat16, float32 or float64).
        boxes (Tensor[K, 5] or list of Tensor[L, 4]): ``(batch_index, x1, y1, x2, y2)`` rows, or one
            ``(x1, y1, x2, y2)`` tensor per image, in input-image coordinates.
        output_size (int or (int, int)): ``(PH, PW)`` bins per RoI.
        spatial_scale (float): map coordinates per box coordinate (1 / stride).
        sampling_ratio (int): samples per bin along each axis; ``<= 0`` takes
            ``ceil(roi_size / output_size)`` per RoI.
        aligned (bool): shift the box by -0.5 pixel (pixel centres) and allow RoIs smaller
            than a pixel; ``False`` is Detectron's legacy behaviour.

    Returns:
        Tensor[K, C, PH, PW]. The gradient flows to ``input`` only.
    """
    rois, pooled_height, pooled_width = check_roi_args("roi_align", input, boxes, output_size)
    return torch.ops.denet.roi_align(
        input,
        rois,
        float(spatial_scale),
        pooled_height,
        pooled_width,
        int(sampling_ratio),
        bool(aligned),
    )


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align`."""

    def __init__(
        self,
        output_size: int | Sequence[int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
    ):
        super().__init__()
        pair(output_size, "output_size")
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Boxes) -> Tensor:
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
