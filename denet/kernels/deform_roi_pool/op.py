"""``denet::deform_roi_pool``: registration with torch.library (fake kernel, autograd) and the public API."""

import torch
from torch import Tensor, nn

from .._dispatch import implementation
from .._utils import as_roi_tensor, pair
from . import reference


@torch.library.custom_op("denet::deform_roi_pool", mutates_args=())
def _deform_roi_pool(
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    output_size: list[int],
    spatial_scale: float,
    group_size: int,
    part_size: list[int],
    sample_per_part: int,
    trans_std: float,
) -> Tensor:
    return implementation(__package__, input, rois).deform_roi_pool_forward(
        input,
        rois,
        offset,
        output_size,
        spatial_scale,
        group_size,
        part_size,
        sample_per_part,
        trans_std,
    )


@_deform_roi_pool.register_fake
def _(
    input,
    rois,
    offset,
    output_size,
    spatial_scale,
    group_size,
    part_size,
    sample_per_part,
    trans_std,
):
    d = input.shape[1] // (group_size * group_size)
    return input.new_empty((rois.shape[0], d, output_size[0], output_size[1]))


@torch.library.custom_op("denet::deform_roi_pool_backward", mutates_args=())
def _deform_roi_pool_backward(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    output_size: list[int],
    spatial_scale: float,
    group_size: int,
    part_size: list[int],
    sample_per_part: int,
    trans_std: float,
) -> tuple[Tensor, Tensor]:
    return implementation(__package__, grad, input, rois).deform_roi_pool_backward(
        grad,
        input,
        rois,
        offset,
        output_size,
        spatial_scale,
        group_size,
        part_size,
        sample_per_part,
        trans_std,
    )


@_deform_roi_pool_backward.register_fake
def _(
    grad,
    input,
    rois,
    offset,
    output_size,
    spatial_scale,
    group_size,
    part_size,
    sample_per_part,
    trans_std,
):
    g_off = torch.empty_like(offset) if offset is not None else input.new_empty((0,))
    return torch.empty_like(input), g_off


def _setup_context(ctx, inputs, output):
    input, rois, offset, *args = inputs
    ctx.save_for_backward(input, rois, offset)
    ctx.args = args


def _backward(ctx, grad):
    input, rois, offset = ctx.saved_tensors
    need = ctx.needs_input_grad
    g_in = g_off = None
    if need[0] or need[2]:
        g_in, g_off = torch.ops.denet.deform_roi_pool_backward(grad, input, rois, offset, *ctx.args)
    # No gradient to the boxes, as in the original (they come from the proposal step).
    return (g_in if need[0] else None, None, g_off if need[2] else None) + (None,) * 6


_deform_roi_pool.register_autograd(_backward, setup_context=_setup_context)


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def _check(input, rois, offset, output_size, group_size, part_size, sample_per_part) -> None:
    if not isinstance(input, Tensor) or input.dim() != 4:
        raise ValueError(
            f"deform_roi_pool: input must be a Tensor[N, C, H, W], got shape {_shape(input)}"
        )
    for name, v in (("output_size", output_size), ("part_size", part_size)):
        if min(v) < 1:
            raise ValueError(f"deform_roi_pool: {name} must be positive, got {v}")
    for name, v in (("group_size", group_size), ("sample_per_part", sample_per_part)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"deform_roi_pool: {name} must be a positive int, got {v!r}")
    c = input.shape[1]
    if c == 0 or c % (group_size * group_size) != 0:
        raise ValueError(
            f"deform_roi_pool: input channels {c} (input {_shape(input)}) must be a positive multiple of "
            f"group_size^2 = {group_size * group_size}"
        )
    d = c // (group_size * group_size)
    k = rois.shape[0]
    if offset is not None:
        if (
            not isinstance(offset, Tensor)
            or offset.dim() != 4
            or offset.shape[0] != k
            or offset.shape[1] == 0
            or offset.shape[1] % 2
            or tuple(offset.shape[2:]) != tuple(part_size)
        ):
            raise ValueError(
                f"deform_roi_pool: offset {_shape(offset)} must be [{k}, 2*num_classes, {part_size[0]}, "
                f"{part_size[1]}] (RoIs, (dx, dy) per class, part_size) for boxes {_shape(rois)}"
            )
        ncls = offset.shape[1] // 2
        if d % ncls != 0:
            raise ValueError(
                f"deform_roi_pool: the {d} output channels (input {_shape(input)} / group_size^2) must be "
                f"divisible by the {ncls} classes of offset {_shape(offset)}"
            )
    tensors = [t for t in (input, rois, offset) if t is not None]
    if any(not t.is_floating_point() for t in tensors):
        raise ValueError(
            f"deform_roi_pool: tensors must be floating point, got {[t.dtype for t in tensors]}"
        )
    if offset is not None and offset.dtype != input.dtype:
        raise ValueError(
            f"deform_roi_pool: offset dtype {offset.dtype} must match input dtype {input.dtype}"
        )
    if len({t.device for t in tensors}) != 1:
        raise ValueError(
            f"deform_roi_pool: all tensors must be on one device, got {[t.device for t in tensors]}"
        )


IntPair = int | tuple[int, int]


def deform_roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    offset: Tensor | None,
    output_size: IntPair,
    spatial_scale: float = 1.0,
    group_size: int = 1,
    part_size: IntPair | None = None,
    sample_per_part: int = 1,
    trans_std: float = 0.0,
) -> Tensor:
    """Deformable (position-sensitive) RoI pooling of Deformable ConvNets (``DeformablePSROIPooling``).

    Each output bin averages ``sample_per_part**2`` bilinear samples taken at sub-bin *starts*
    (not centres) of the bin, shifted by a learned offset normalised by the RoI size; samples
    outside ``[-0.5, W-0.5] x [-0.5, H-0.5]`` are skipped, the rest are clamped onto the map.
    The RoI spans ``round(x1)*scale - 0.5`` to ``(round(x2)+1)*scale - 0.5`` (at least 0.1 wide).
    See ``reference.py`` for the exact formulas.

    Args:
        input (Tensor[N, C, H, W]): score maps; ``C = D * group_size**2``.
        boxes (Tensor[K, 5] or list of Tensor[L, 4]): ``(batch_index, x1, y1, x2, y2)`` in
            input-image pixels (a list gives one tensor of ``(x1, y1, x2, y2)`` per image).
        offset (Tensor[K, 2*num_classes, part_h, part_w] or None): per-RoI part offsets, channel
            ``2c`` is dx and ``2c+1`` is dy of class c (the opposite order from deform_conv2d),
            scaled by ``trans_std * roi_width`` (``roi_height``). The D output channels are split
            into ``num_classes`` contiguous classes. ``None`` is the original's ``no_trans``.
        output_size (int or (int, int)): the pooled grid (OH, OW).
        spatial_scale (float): maps box coordinates onto the input (1 / stride).
        group_size (int): G; output channel d of bin (ph, pw) reads input channel
            ``(d*G + gh)*G + gw`` with ``gh = floor(ph*G/OH)``, ``gw = floor(pw*G/OW)`` (R-FCN's
            position-sensitive layout, class-major). ``group_size=1`` is plain deformable RoI
            pooling (Deformable Faster R-CNN / FPN): every bin reads channel d.
        part_size (int or (int, int), optional): the offset grid; bin (ph, pw) uses part cell
            ``(floor(ph*part_h/OH), floor(pw*part_w/OW))``. Defaults to ``output_size``.
        sample_per_part (int): samples per bin along each axis.
        trans_std (float): offset scale.

    Returns:
        Tensor[K, C / group_size**2, OH, OW]. Gradients flow to ``input`` and ``offset`` (not to
        the boxes), computed as in the original CUDA backward.
    """
    output_size = pair(output_size, "output_size")
    part_size = pair(part_size, "part_size") if part_size is not None else output_size
    rois = as_roi_tensor(boxes)
    _check(input, rois, offset, output_size, group_size, part_size, sample_per_part)
    # Boxes stay at least float32: float16 cannot hold pixel coordinates of large images.
    rois = rois.to(reference.compute_dtype(input.dtype))
    return torch.ops.denet.deform_roi_pool(
        input,
        rois,
        offset,
        list(output_size),
        float(spatial_scale),
        group_size,
        list(part_size),
        sample_per_part,
        float(trans_std),
    )


class DeformRoIPool(nn.Module):
    """Module form of :func:`deform_roi_pool`; it owns only the arguments and takes
    ``forward(input, boxes, offset=None)`` (the offsets come from the caller's offset branch)."""

    def __init__(
        self,
        output_size: IntPair,
        spatial_scale: float = 1.0,
        group_size: int = 1,
        part_size: IntPair | None = None,
        sample_per_part: int = 1,
        trans_std: float = 0.0,
    ):
        super().__init__()
        self.output_size = pair(output_size, "output_size")
        self.spatial_scale = float(spatial_scale)
        self.group_size = group_size
        self.part_size = pair(part_size, "part_size") if part_size is not None else self.output_size
        self.sample_per_part = sample_per_part
        self.trans_std = float(trans_std)

    def forward(
        self, input: Tensor, boxes: Tensor | list[Tensor], offset: Tensor | None = None
    ) -> Tensor:
        return deform_roi_pool(
            input,
            boxes,
            offset,
            self.output_size,
            self.spatial_scale,
            self.group_size,
            self.part_size,
            self.sample_per_part,
            self.trans_std,
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, group_size={self.group_size}, "
            f"part_size={self.part_size}, sample_per_part={self.sample_per_part}, trans_std={self.trans_std}"
        )
