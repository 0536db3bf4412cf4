"""Pool-inverse in plain torch: the CPU path and the test oracle.

DeNet's ``PI[size]`` (``pool_inv_op.py``) copies each pixel into a ``sh x sw`` block, i.e. nearest
upsampling by an integer factor; its gradient is the sum over each block.
"""

import torch
from torch import Tensor


def pool_inv_forward(x: Tensor, sh: int, sw: int) -> Tensor:
    b, c, h, w = x.shape
    # One broadcast copy: no index tensors, no loops, and never a view of x.
    out = x.new_empty((b, c, h * sh, w * sw))
    out.view(b, c, h, sh, w, sw).copy_(x[:, :, :, None, :, None])
    return out


def pool_inv_backward(grad: Tensor, sh: int, sw: int) -> Tensor:
    b, c, oh, ow = grad.shape
    acc = grad.to(torch.promote_types(grad.dtype, torch.float32))
    out = acc.reshape(b, c, oh // sh, sh, ow // sw, sw).sum(dim=(3, 5))
    return out.to(grad.dtype)
