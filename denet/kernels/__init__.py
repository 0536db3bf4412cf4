"""Operators for detection and segmentation: a torch reference (the CPU path and the test
oracle), Triton kernels for CUDA tensors, and one ``torch.library`` registration each.
Signatures follow ``torchvision.ops`` wherever torchvision has the operator."""

from .deform_conv2d import DeformConv2d, deform_conv2d
from .deform_roi_pool import DeformRoIPool, deform_roi_pool
from .denet_rois import denet_rois
from .nms import batched_nms, box_iou, denet_nms, nms, soft_nms
from .pool_inv import PoolInv, pool_inv
from .ps_roi_align import PSRoIAlign, ps_roi_align
from .ps_roi_pool import PSRoIPool, ps_roi_pool
from .roi_align import RoIAlign, roi_align
from .roi_pool import RoIPool, roi_pool
from .sparse_sample import SparseSample, sparse_sample

__all__ = [
    "DeformConv2d",
    "deform_conv2d",
    "DeformRoIPool",
    "deform_roi_pool",
    "denet_rois",
    "batched_nms",
    "box_iou",
    "denet_nms",
    "nms",
    "soft_nms",
    "PoolInv",
    "pool_inv",
    "PSRoIAlign",
    "ps_roi_align",
    "PSRoIPool",
    "ps_roi_pool",
    "RoIAlign",
    "roi_align",
    "RoIPool",
    "roi_pool",
    "SparseSample",
    "sparse_sample",
]
