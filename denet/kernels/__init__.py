"""Operators for detection and segmentation: a torch reference (the CPU path and the test
oracle), Triton kernels for CUDA tensors, and one ``torch.library`` registration each.
Signatures follow ``torchvision.ops`` wherever torchvision has the operator."""
from .nms import batched_nms, box_iou, denet_nms, nms, soft_nms
from .pool_inv import PoolInv, pool_inv
from .sparse_sample import SparseSample, sparse_sample

__all__ = [
    "batched_nms", "box_iou", "denet_nms", "nms", "soft_nms",
    "PoolInv", "pool_inv",
    "SparseSample", "sparse_sample",
]
