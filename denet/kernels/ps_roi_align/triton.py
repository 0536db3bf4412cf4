"""Triton kernels for position-sensitive RoIAlign: RoIAlign's sampling kernels
(``roi_align.triton``) with each bin reading its own input channel ``c * PH * PW + bin`` from the
NCHW map (the bins of one tile read different channels, so a channels-last copy would not make
the gathers contiguous). The geometry is ``roi_align``'s with ``aligned=True``."""

from torch import Tensor

from ..roi_align.triton import sample_backward, sample_forward


def ps_roi_align_forward(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
) -> Tensor:
    return sample_forward(
        input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, True, True
    )


def ps_roi_align_backward(
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
    return sample_backward(
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
        True,
        True,
    )
