"""Position-sensitive RoIAlign (R-FCN), with torchvision's signature and semantics."""

from .op import PSRoIAlign, ps_roi_align

__all__ = ["ps_roi_align", "PSRoIAlign"]
