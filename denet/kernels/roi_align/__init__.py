"""RoIAlign (Mask R-CNN), with torchvision's signature and semantics."""

from .op import RoIAlign, roi_align

__all__ = ["roi_align", "RoIAlign"]
