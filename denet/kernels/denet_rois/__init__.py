"""DeNet's RoI generation ("directed sparse sampling"): corner maps to the best boxes."""

from .op import denet_rois

__all__ = ["denet_rois"]
