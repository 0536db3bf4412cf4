"""``denet::sparse_sample``: registration with torch.library (fake kernel, autograd) and the public API."""

import torch
from torch import Tensor, nn

from .._dispatch import implementation

MODES = ("nearest", "bilinear")


@torch.library.custom_op("denet::sparse_sample", mutates_args=())
def _sparse_sample(features: Tensor, boxes: Tensor, grid_size: int, mode: str) -> Tensor:
    return implementation(__package__, features, boxes).sparse_sample_forward(
        features, boxes, grid_size, mode
    )


@_sparse_sample.register_fake
def _(features: Tensor, boxes: Tensor, grid_size: int, mode: str) -> Tensor:
    b, f = features.shape[:2]
    return features.new_empty((b, grid_size * grid_size * f + 2, boxes.shape[1]))


@torch.library.custom_op("denet::sparse_sample_backward", mutates_args=())
def _sparse_sample_backward(
    grad: Tensor,
    boxes: Tensor,
    num_features: int,
    height: int,
    width: int,
    grid_size: int,
    mode: str,
) -> Tensor:
    return implementation(__package__, grad, boxes).sparse_sample_backward(
        grad, boxes, num_features, height, width, grid_size, mode
    )


@_sparse_sample_backward.register_fake
def _(
    grad: Tensor,
    boxes: Tensor,
    num_features: int,
    height: int,
    width: int,
    grid_size: int,
    mode: str,
) -> Tensor:
    return grad.new_empty((grad.shape[0], num_features, height, width))


def _setup_context(ctx, inputs, output):
    features, boxes, grid_size, mode = inputs
    ctx.save_for_backward(boxes)
    ctx.shape = tuple(features.shape[1:])
    ctx.grid_size = grid_size
    ctx.mode = mode


def _backward(ctx, grad):
    (boxes,) = ctx.saved_tensors
    f, h, w = ctx.shape
    grad_features = None
    if ctx.needs_input_grad[0]:
        grad_features = torch.ops.denet.sparse_sample_backward(
            grad, boxes, f, h, w, ctx.grid_size, ctx.mode
        )
    # No gradient to the boxes, as in DeNet: they come from a non-differentiable proposal step.
    return grad_features, None, None, None


_sparse_sample.register_autograd(_backward, setup_context=_setup_context)


def _check(features: Tensor, boxes: Tensor, grid_size: int, mode: str) -> None:
    if not isinstance(features, Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"sparse_sample: features must be a Tensor[B, F, H, W], got shape {shape}")
    if not isinstance(boxes, Tensor) or boxes.dim() != 3 or boxes.shape[2] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(
            f"sparse_sample: boxes must be a Tensor[B, N, 4] of (x0, y0, x1, y1), got shape {shape}"
        )
    if boxes.shape[0] != features.shape[0]:
        raise ValueError(
            f"sparse_sample: features {tuple(features.shape)} and boxes {tuple(boxes.shape)} "
            "must have the same batch size"
        )
    if features.shape[2] < 1 or features.shape[3] < 1:
        raise ValueError(
            f"sparse_sample: the feature map must not be empty, got shape {tuple(features.shape)}"
        )
    if not features.is_floating_point() or not boxes.is_floating_point():
        raise ValueError(
            f"sparse_sample: features and boxes must be floating point, got {features.dtype} and {boxes.dtype}"
        )
    if features.device != boxes.device:
        raise ValueError(
            f"sparse_sample: features on {features.device} but boxes on {boxes.device}"
        )
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
        raise ValueError(f"sparse_sample: grid_size must be a positive int, got {grid_size!r}")
    if mode not in MODES:
        raise ValueError(f"sparse_sample: mode must be one of {MODES}, got {mode!r}")


def sparse_sample(features: Tensor, boxes: Tensor, grid_size: int, mode: str = "nearest") -> Tensor:
    """DeNet's sparse sampling (the ``DNS`` layer's feature op).

    Args:
        features (Tensor[B, F, H, W]): the map to sample (float16, bfloat16, float32, float64).
        boxes (Tensor[B, N, 4]): ``(x0, y0, x1, y1)`` per image, normalised to [0, 1].
        grid_size (int): G; a G x G grid spans each box edge to edge (linspace, inclusive). For
            G = 1 the single point is the box centre.
        mode (str): ``"nearest"`` (DeNet: pixel ``lroundf(clamp(y*H, 0, H-1))``, halves away from
            zero, no half-pixel offset) or ``"bilinear"`` (interpolation at the same, clamped,
            pixel coordinates).

    Returns:
        Tensor[B, G*G*F + 2, N]: channel ``(gy*G + gx)*F + f`` holds feature f at grid point
        (gy, gx); channel ``G*G*F`` is the box height ``y1 - y0`` and ``G*G*F + 1`` the width
        ``x1 - x0``, in normalised units. The gradient flows to ``features`` only (nearest:
        scatter-add into the sampled pixels; bilinear: the bilinear weights).
    """
    _check(features, boxes, grid_size, mode)
    return torch.ops.denet.sparse_sample(features, boxes, grid_size, mode)


class SparseSample(nn.Module):
    """Module form of :func:`sparse_sample`; ``forward(features, boxes)``."""

    def __init__(self, grid_size: int, mode: str = "nearest"):
        super().__init__()
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
            raise ValueError(f"SparseSample: grid_size must be a positive int, got {grid_size!r}")
        if mode not in MODES:
            raise ValueError(f"SparseSample: mode must be one of {MODES}, got {mode!r}")
        self.grid_size = grid_size
        self.mode = mode

    def forward(self, features: Tensor, boxes: Tensor) -> Tensor:
        return sparse_sample(features, boxes, self.grid_size, self.mode)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, mode={self.mode!r}"
