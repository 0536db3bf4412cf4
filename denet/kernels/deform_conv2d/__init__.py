"""Deformable convolution v1/v2 (torchvision's ``deform_conv2d`` semantics, plus the original v1 boundary rule)."""

from .op import DeformConv2d, deform_conv2d

__all__ = ["deform_conv2d", "DeformConv2d"]
