"""Box IoU and non-maximum suppression: greedy (torchvision), DeNet's rule, and soft-NMS."""

from .op import batched_nms, box_iou, denet_nms, nms, soft_nms

__all__ = ["box_iou", "nms", "batched_nms", "denet_nms", "soft_nms"]
