"""``denet::box_iou``, ``denet::nms``, ``denet::denet_nms``, ``denet::soft_nms``: registration with
torch.library and the public API (signatures and defaults of ``torchvision.ops`` where it has
the op)."""

import math

import torch
from torch import Tensor

from .._dispatch import backend_for, implementation
from . import reference

SOFT_NMS_METHODS = ("gaussian", "linear")
BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


# ----------------------------------------------------------------------------------------- IoU


@torch.library.custom_op("denet::box_iou", mutates_args=())
def _box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    return implementation(__package__, boxes1, boxes2).box_iou(boxes1, boxes2)


@_box_iou.register_fake
def _(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    return boxes1.new_empty(
        (boxes1.shape[0], boxes1.shape[1], boxes2.shape[1]), dtype=reference.iou_dtype(boxes1.dtype)
    )


def _iou_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _iou_backward(ctx, grad):
    boxes1, boxes2 = ctx.saved_tensors
    # IoU is cheap to recompute; differentiating the torch formula avoids a second kernel.
    _, vjp = torch.func.vjp(reference.box_iou, boxes1, boxes2)
    return vjp(grad)


_box_iou.register_autograd(_iou_backward, setup_context=_iou_setup)


def _to_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    if fmt == "xyxy":
        return boxes
    if fmt == "xywh":
        xy, wh = boxes[..., :2], boxes[..., 2:]
        return torch.cat((xy, xy + wh), dim=-1)
    centre, half = boxes[..., :2], boxes[..., 2:] / 2
    return torch.cat((centre - half, centre + half), dim=-1)


def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """Pairwise IoU, as ``torchvision.ops.box_iou``.

    Args:
        boxes1 (Tensor[..., N, 4]), boxes2 (Tensor[..., M, 4]): leading dimensions broadcast.
        fmt (str): ``"xyxy"`` (bit-identical to torchvision), ``"xywh"`` or ``"cxcywh"`` (converted
            to xyxy first, so equal to torchvision up to rounding). Rotated formats are not
            supported.

    Returns:
        Tensor[..., N, M] in ``promote_types(dtype, float32)``. Differentiable.
    """
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not isinstance(b, Tensor) or b.dim() < 2 or b.shape[-1] != 4:
            shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"box_iou: {name} must be a Tensor[..., K, 4], got shape {shape}")
    if fmt not in BOX_FORMATS:
        raise ValueError(f"box_iou: fmt must be one of {BOX_FORMATS}, got {fmt!r}")
    try:
        lead = torch.broadcast_shapes(boxes1.shape[:-2], boxes2.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"box_iou: leading dimensions of boxes1 {tuple(boxes1.shape)} and "
            f"boxes2 {tuple(boxes2.shape)} do not broadcast"
        ) from None
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    batch = math.prod(lead)
    b1 = (
        _to_xyxy(boxes1.to(dtype), fmt)
        .expand(*lead, *boxes1.shape[-2:])
        .reshape(batch, *boxes1.shape[-2:])
    )
    b2 = (
        _to_xyxy(boxes2.to(dtype), fmt)
        .expand(*lead, *boxes2.shape[-2:])
        .reshape(batch, *boxes2.shape[-2:])
    )
    out = torch.ops.denet.box_iou(b1, b2)
    return out.reshape(*lead, boxes1.shape[-2], boxes2.shape[-2])


# ----------------------------------------------------------------------------------------- NMS


def _dynamic_keep(boxes: Tensor) -> Tensor:
    n = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((n,), dtype=torch.int64)


@torch.library.custom_op("denet::nms", mutates_args=())
def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    if boxes.shape[0] == 0:
        return boxes.new_empty((0,), dtype=torch.int64)
    return implementation(__package__, boxes, scores).nms(boxes, scores, iou_threshold)


@_nms.register_fake
def _(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    return _dynamic_keep(boxes)


@torch.library.custom_op("denet::batched_nms", mutates_args=())
def _batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's per-category strategy in one call (the torch reference only)."""
    if boxes.shape[0] == 0:
        return boxes.new_empty((0,), dtype=torch.int64)
    return reference.batched_nms(boxes, scores, idxs, iou_threshold)


@_batched_nms.register_fake
def _(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    return _dynamic_keep(boxes)


@torch.library.custom_op("denet::denet_nms", mutates_args=())
def _denet_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    if boxes.shape[0] == 0:
        return boxes.new_empty((0,), dtype=torch.int64)
    return implementation(__package__, boxes, scores).denet_nms(boxes, scores, iou_threshold)


@_denet_nms.register_fake
def _(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    return _dynamic_keep(boxes)


@torch.library.custom_op("denet::soft_nms", mutates_args=())
def _soft_nms(
    boxes: Tensor,
    scores: Tensor,
    sigma: float,
    iou_threshold: float,
    method: str,
    score_threshold: float,
) -> tuple[Tensor, Tensor]:
    if boxes.shape[0] == 0:
        return boxes.new_empty((0,), dtype=torch.int64), scores.new_empty((0,))
    return implementation(__package__, boxes, scores).soft_nms(
        boxes, scores, sigma, iou_threshold, method, score_threshold
    )


@_soft_nms.register_fake
def _(
    boxes: Tensor,
    scores: Tensor,
    sigma: float,
    iou_threshold: float,
    method: str,
    score_threshold: float,
) -> tuple[Tensor, Tensor]:
    n = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((n,), dtype=torch.int64), scores.new_empty((n,))


def _check_nms(name: str, boxes: Tensor, scores: Tensor) -> None:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(
            f"{name}: boxes must be a Tensor[N, 4] of (x1, y1, x2, y2), got shape {shape}"
        )
    if not isinstance(scores, Tensor) or scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(
            f"{name}: scores must be a Tensor[N] matching boxes {tuple(boxes.shape)}, got shape {shape}"
        )
    if not boxes.is_floating_point() or not scores.is_floating_point():
        raise ValueError(
            f"{name}: boxes and scores must be floating point, got {boxes.dtype} and {scores.dtype}"
        )
    if boxes.device != scores.device:
        raise ValueError(f"{name}: boxes on {boxes.device} but scores on {scores.device}")


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS with ``torchvision.ops.nms`` semantics.

    Boxes are visited by decreasing score (ties in input order); a box is kept unless a box kept
    before it has IoU > ``iou_threshold`` with it.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)``.
        scores (Tensor[N]).
        iou_threshold (float): discards overlapping boxes with IoU > iou_threshold.

    Returns:
        Tensor[K] int64: kept indices, sorted by decreasing score.
    """
    _check_nms("nms", boxes, scores)
    return torch.ops.denet.nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each category ``idxs``, as ``torchvision.ops.batched_nms``.

    The strategy (and with it the rounding of the IoU) is torchvision's: small inputs shift each
    category's boxes by ``idx * (max_coordinate + 1)`` and run one NMS; larger ones (more than
    4000 coordinates on CPU, 100000 elsewhere) run one NMS per category.

    Returns:
        Tensor[K] int64: kept indices, sorted by decreasing score.
    """
    _check_nms("batched_nms", boxes, scores)
    if not isinstance(idxs, Tensor) or idxs.dim() != 1 or idxs.shape[0] != boxes.shape[0]:
        shape = tuple(idxs.shape) if isinstance(idxs, Tensor) else type(idxs).__name__
        raise ValueError(
            f"batched_nms: idxs must be a Tensor[N] matching boxes {tuple(boxes.shape)}, got shape {shape}"
        )
    if torch.compiler.is_compiling():
        # Under torch.compile the number of boxes is often data-dependent (after a score
        # threshold): one NMS over offset boxes, with no branch on the size. max() of an empty
        # tensor fails, so a zero joins the coordinates.
        max_coordinate = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()
        offsets = idxs.to(boxes) * (max_coordinate + 1)
        return nms(boxes + offsets[:, None], scores, iou_threshold)
    if boxes.numel() > (4000 if boxes.device.type == "cpu" else 100_000):
        if backend_for(boxes) == "reference":
            # one call: the per-category NMS as one sweep over (category, position) cells
            return torch.ops.denet.batched_nms(boxes, scores, idxs, float(iou_threshold))
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for class_id in torch.unique(idxs):  # a loop over categories, as torchvision's
            curr = torch.where(idxs == class_id)[0]
            keep_mask[curr[nms(boxes[curr], scores[curr], iou_threshold)]] = True
        keep = torch.where(keep_mask)[0]
        return keep[scores[keep].sort(descending=True)[1]]
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def denet_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """DeNet's NMS (``denet_detect.cc``): a box is dropped when *any* box with a strictly higher
    score has IoU > ``iou_threshold`` with it, even one that was itself dropped. It removes at
    least what greedy NMS removes. Equal scores never suppress each other.

    DeNet skips NMS when the threshold is outside (0, 1); this op applies the rule as given
    (threshold >= 1 keeps everything), so that choice is the caller's.

    Returns:
        Tensor[K] int64: kept indices, sorted by decreasing score (ties in input order).
    """
    _check_nms("denet_nms", boxes, scores)
    return torch.ops.denet.denet_nms(boxes, scores, float(iou_threshold))


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    method: str = "gaussian",
    score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017; Deformable ConvNets' ``soft_nms``).

    Repeatedly selects the box with the highest current score (ties: lowest index) and rescales
    the scores of the remaining boxes by its IoU with them:

    - ``"gaussian"``: ``s *= exp(-iou**2 / sigma)`` for every remaining box;
    - ``"linear"``: ``s *= 1 - iou`` where ``iou > iou_threshold`` (Bodla's ``ov > Nt``).

    Boxes whose score is below ``score_threshold`` are dropped, including before the first pick.
    IoU is torchvision's (no "+1" pixel; two empty boxes count as IoU 0). DeNet's soft NMS is the
    Gaussian form with ``sigma = nms_threshold`` and ``score_threshold = exp(-6.9)``.

    Returns:
        (keep, scores): Tensor[K] int64 indices in selection order, and Tensor[K] their scores
        at selection (non-increasing), in the dtype of ``scores``.
    """
    _check_nms("soft_nms", boxes, scores)
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"soft_nms: method must be one of {SOFT_NMS_METHODS}, got {method!r}")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"soft_nms: sigma must be positive, got {sigma!r}")
    return torch.ops.denet.soft_nms(
        boxes, scores, float(sigma), float(iou_threshold), method, float(score_threshold)
    )
