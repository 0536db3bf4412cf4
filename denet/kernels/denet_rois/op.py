"""``denet::denet_rois``: registration with torch.library (fake kernel) and the public API.

There is no Triton kernel: the torch reference (``reference.py``) is pure torch and runs on the
tensors' own device, CUDA included, so it is called directly rather than through
``_dispatch.implementation`` (``DENET_KERNEL_BACKEND`` has nothing to choose here).

No gradient flows through RoI selection (DeNet's boxes come from a non-differentiable step): the
autograd rule marks all three outputs non-differentiable, so they never require grad, even when
``corner_logp`` does, and the corner map gets no gradient through them.
"""

import math

import torch
from torch import Tensor

from . import reference

CORNER_TYPES = (4, 5)


@torch.library.custom_op("denet::denet_rois", mutates_args=())
def _denet_rois(
    corner_logp: Tensor,
    sample_num: int,
    corner_threshold: float,
    local_max: int,
    cluster_threshold: float,
    corner_max: int,
) -> tuple[Tensor, Tensor, Tensor]:
    return reference.denet_rois(
        corner_logp, sample_num, corner_threshold, local_max, cluster_threshold, corner_max
    )


@_denet_rois.register_fake
def _(
    corner_logp: Tensor,
    sample_num: int,
    corner_threshold: float,
    local_max: int,
    cluster_threshold: float,
    corner_max: int,
) -> tuple[Tensor, Tensor, Tensor]:
    # The shapes are static: S = sample_num**2 rows per image, zero-padded past counts[b].
    batch, count = corner_logp.shape[0], sample_num * sample_num
    return (
        corner_logp.new_empty((batch, count, 4), dtype=torch.float32),
        corner_logp.new_empty((batch, count), dtype=torch.float32),
        corner_logp.new_empty((batch,), dtype=torch.int64),
    )


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(*output)


def _backward(ctx, grad_boxes, grad_scores, grad_counts):
    # Never called with a gradient (the outputs are non-differentiable); None for every input.
    return None, None, None, None, None, None


_denet_rois.register_autograd(_backward, setup_context=_setup_context)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive int" if low == 1 else f"an int >= {low}"
        raise ValueError(f"denet_rois: {name} must be {kind}, got {value!r}")
    return value


def _check_float(name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"denet_rois: {name} must be a float, got {value!r}")
    value = float(value)
    if math.isnan(value) or not low <= value <= high:
        raise ValueError(f"denet_rois: {name} must lie in [{low}, {high}], got {value!r}")
    return value


def _check(corner_logp: Tensor) -> None:
    if not isinstance(corner_logp, Tensor) or corner_logp.dim() != 5:
        shape = (
            tuple(corner_logp.shape)
            if isinstance(corner_logp, Tensor)
            else type(corner_logp).__name__
        )
        raise ValueError(f"denet_rois: corner_logp must be a Tensor[B, 2, K, H, W], got {shape}")
    _, two, k, h, w = corner_logp.shape
    if two != 2 or k not in CORNER_TYPES:
        raise ValueError(
            "denet_rois: corner_logp must be a Tensor[B, 2, K, H, W] with K = 4 (TL, TR, BL, BR) "
            f"or 5 (and the centre), got shape {tuple(corner_logp.shape)}"
        )
    if h < 1 or w < 1:
        raise ValueError(
            f"denet_rois: corner_logp must not be an empty map, got shape {tuple(corner_logp.shape)}"
        )
    if not corner_logp.is_floating_point():
        raise ValueError(f"denet_rois: corner_logp must be floating point, got {corner_logp.dtype}")


def denet_rois(
    corner_logp: Tensor,
    sample_num: int,
    corner_threshold: float = 0.01,
    local_max: int = 0,
    cluster_threshold: float = 1.0,
    corner_max: int = 1024,
) -> tuple[Tensor, Tensor, Tensor]:
    """DeNet's RoI generation (``denet_sparse.cc: build_samples``): corner maps to the
    ``sample_num**2`` best boxes per image. No gradient flows through it.

    Args:
        corner_logp (Tensor[B, 2, K, H, W]): log-probabilities as DeNet's corner layer makes
            them: index 1 of axis 1 is "corner present", index 0 "absent"; K = 4 corner types
            (TL, TR, BL, BR) or 5 (and the box centre). Any floating dtype; computed in float32,
            as DeNet.
        sample_num (int): sn; up to S = sn**2 boxes per image.
        corner_threshold (float): tau in [0, 1]; a corner candidate has ``log P > log(tau)``.
        local_max (int): r >= 0; with r > 0 a candidate must also be >= the maximum of DeNet's
            window ``x-r .. x+r-1``, ``y-r .. y+r-1`` (upper bound exclusive, clipped to
            ``0 .. W-2`` and ``0 .. H-2``: DeNet clips to ``W-1`` and then excludes it).
        cluster_threshold (float): >= 0; below 1, DeNet's v2 corner clustering with this IoU
            threshold runs when an image has more than S boxes; 1 or more turns it off.
        corner_max (int): the most probable candidates kept per corner type (ties in raster
            order).

    Returns:
        (boxes, scores, counts): boxes Tensor[B, S, 4] float32, normalised xyxy
        ``(x0/W, y0/H, (x1+1)/W, (y1+1)/H)`` of the pixel corners; scores Tensor[B, S] float32,
        ``1 / (1 + exp(|pr_f - pr_t|))`` (DeNet's ``fabs``: a very confident box scores *low*),
        best first; counts Tensor[B] int64, the boxes found per image. Rows past ``counts[b]``
        are zero.

    Boxes pair every TL with every BR and every TR with every BL, with ``x1 > x0`` and
    ``y1 > y0``; with K = 5 also every centre with every corner, mirrored through the centre,
    when the box lies on the map. Equal boxes count once (the score depends on the box only).
    Ties in score go by ``|pr_f - pr_t|``, then by ``(x0, y0, x1, y1)``. The details, and where
    this differs from DeNet's C++ (only in orders DeNet leaves unspecified and in float32
    rounding of the clustering IoU), are in ``denet/kernels/denet_rois/reference.py`` and
    ``docs/kernels.md``.
    """
    _check(corner_logp)
    sample_num = _check_int("sample_num", sample_num, 1)
    local_max = _check_int("local_max", local_max, 0)
    corner_max = _check_int("corner_max", corner_max, 1)
    corner_threshold = _check_float("corner_threshold", corner_threshold, 0.0, 1.0)
    cluster_threshold = _check_float("cluster_threshold", cluster_threshold, 0.0, math.inf)
    return torch.ops.denet.denet_rois(
        corner_logp,
        sample_num,
        corner_threshold,
        local_max,
        cluster_threshold,
        corner_max,
    )
