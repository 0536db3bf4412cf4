"""RoIPool (Fast R-CNN max pooling), with torchvision's signature and semantics."""

from .op import RoIPool, roi_pool

__all__ = ["roi_pool", "RoIPool"]
