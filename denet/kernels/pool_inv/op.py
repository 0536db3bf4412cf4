"""``denet::pool_inv``: registration with torch.library (fake kernel, autograd) and the public API."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._dispatch import implementation
from .._utils import pair


@torch.library.custom_op("denet::pool_inv", mutates_args=())
def _pool_inv(x: Tensor, sh: int, sw: int) -> Tensor:
    return implementation(__package__, x).pool_inv_forward(x, sh, sw)


@_pool_inv.register_fake
def _(x: Tensor, sh: int, sw: int) -> Tensor:
    b, c, h, w = x.shape
    return x.new_empty((b, c, h * sh, w * sw))


@torch.library.custom_op("denet::pool_inv_backward", mutates_args=())
def _pool_inv_backward(grad: Tensor, sh: int, sw: int) -> Tensor:
    return implementation(__package__, grad).pool_inv_backward(grad, sh, sw)


@_pool_inv_backward.register_fake
def _(grad: Tensor, sh: int, sw: int) -> Tensor:
    b, c, oh, ow = grad.shape
    return grad.new_empty((b, c, oh // sh, ow // sw))


def _setup_context(ctx, inputs, output):
    _, ctx.sh, ctx.sw = inputs


def _backward(ctx, grad):
    return torch.ops.denet.pool_inv_backward(grad, ctx.sh, ctx.sw), None, None


def _backward_backward(ctx, grad):
    # The block sum is linear; its adjoint is the forward copy.
    return torch.ops.denet.pool_inv(grad, ctx.sh, ctx.sw), None, None


_pool_inv.register_autograd(_backward, setup_context=_setup_context)
_pool_inv_backward.register_autograd(_backward_backward, setup_context=_setup_context)


def _check(x: Tensor, size) -> tuple[int, int]:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"pool_inv: x must be a Tensor[B, C, H, W], got shape {shape}")
    if not x.is_floating_point():
        raise ValueError(f"pool_inv: x must be a floating-point tensor, got {x.dtype}")
    if isinstance(size, bool):
        raise ValueError(f"pool_inv: size must be a positive int or a pair of them, got {size!r}")
    sh, sw = pair(size, "size")
    if sh < 1 or sw < 1:
        raise ValueError(f"pool_inv: size must be positive, got {(sh, sw)}")
    return sh, sw


def pool_inv(x: Tensor, size: int | Sequence[int]) -> Tensor:
    """DeNet's pool-inverse ``PI[size]``: nearest upsampling by an integer factor.

    Args:
        x (Tensor[B, C, H, W]): input map (float16, bfloat16, float32 or float64).
        size (int or (int, int)): factor ``s`` or ``(sh, sw)``; each pixel becomes an
            ``sh x sw`` block.

    Returns:
        Tensor[B, C, H*sh, W*sw] with ``out[b, c, y, x] = x[b, c, y // sh, x // sw]``. The gradient
        is the sum over each block.
    """
    sh, sw = _check(x, size)
    return torch.ops.denet.pool_inv(x, sh, sw)


class PoolInv(nn.Module):
    """Module form of :func:`pool_inv`."""

    def __init__(self, size: int | Sequence[int]):
        super().__init__()
        self.size = pair(size, "size")
        if self.size[0] < 1 or self.size[1] < 1:
            raise ValueError(f"PoolInv: size must be positive, got {self.size}")

    def forward(self, x: Tensor) -> Tensor:
        return pool_inv(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"
