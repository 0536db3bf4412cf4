"""Argument handling shared by the operators, following torchvision.ops._utils."""

from collections.abc import Sequence

import torch
from torch import Tensor


def pair(x: int | Sequence[int], name: str = "value") -> tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    t = tuple(int(v) for v in x)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {t}")
    return t[0], t[1]


def check_roi_boxes_shape(boxes: Tensor | list[Tensor]) -> None:
    if isinstance(boxes, (list, tuple)):
        for i, b in enumerate(boxes):
            if b.dim() != 2 or b.size(1) != 4:
                raise ValueError(
                    f"boxes[{i}] must be a Tensor[L, 4] of (x1, y1, x2, y2), got shape {tuple(b.shape)}"
                )
    elif isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.size(1) != 5:
            raise ValueError(
                "boxes must be a Tensor[K, 5] of (batch_index, x1, y1, x2, y2), "
                f"got shape {tuple(boxes.shape)}"
            )
    else:
        raise ValueError(
            f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}"
        )


def convert_boxes_to_roi_format(boxes: list[Tensor]) -> Tensor:
    """A list of per-image ``Tensor[L, 4]`` becomes one ``Tensor[K, 5]`` with the image index first."""
    concat = torch.cat(list(boxes), dim=0)
    idx = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0)
    return torch.cat([idx, concat], dim=1)


def as_roi_tensor(boxes: Tensor | list[Tensor]) -> Tensor:
    check_roi_boxes_shape(boxes)
    if isinstance(boxes, (list, tuple)):
        return convert_boxes_to_roi_format(list(boxes))
    return boxes
