"""Position-sensitive RoI pooling (R-FCN), with torchvision's signature and semantics."""

from .op import PSRoIPool, ps_roi_pool

__all__ = ["ps_roi_pool", "PSRoIPool"]
