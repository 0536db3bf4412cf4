"""Deformable (position-sensitive) RoI pooling of Deformable ConvNets."""

from .op import DeformRoIPool, deform_roi_pool

__all__ = ["deform_roi_pool", "DeformRoIPool"]
