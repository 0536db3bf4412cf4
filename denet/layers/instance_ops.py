"""Instance-level tensor operations of the Mask R-CNN and Keypoint R-CNN heads.

Mask targets and loss (:func:`project_masks`, :func:`mask_loss`), pasting predicted masks back
into the image (:func:`paste_masks`), keypoint targets and loss (:func:`keypoints_to_heatmap`,
:func:`keypoint_loss`) and decoding keypoint heatmaps (:func:`heatmaps_to_keypoints`).

They follow the conventions of torchvision's ``maskrcnn_resnet50_fpn`` and
``keypointrcnn_resnet50_fpn`` (``torchvision.models.detection.roi_heads``) exactly, quirks included,
so that models built from description strings reproduce torchvision's results. Boxes are
``(x1, y1, x2, y2)`` in input-image pixels; per-image arguments are lists, as torchvision takes
them. Plain functions only: the layer registry imports this module but finds nothing to register.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..kernels import roi_align

__all__ = [
    "paste_masks",
    "project_masks",
    "mask_loss",
    "keypoints_to_heatmap",
    "keypoint_loss",
    "heatmaps_to_keypoints",
]


def _linear_taps(
    dst: Tensor, inside: Tensor, in_size: int, out_size: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Source taps of a 1-D bilinear resize (``align_corners=False``) from ``in_size`` samples to
    ``out_size`` ([N, 1]) samples, at destination indices ``dst`` ([N, L]): ``(i0, i1, w0, w1)``
    with the weights zeroed where ``inside`` is False. PyTorch's own rule: source index
    ``(d + 0.5) * in / out - 0.5`` clamped at 0, the upper tap clamped to the last sample."""
    scale = torch.tensor(in_size, dtype=dtype, device=dst.device) / out_size.to(dtype)
    src = (scale * (dst.to(dtype) + 0.5) - 0.5).clamp(min=0)
    i0 = src.floor().clamp(max=in_size - 1)
    lam = (src - i0).clamp(0, 1)
    w0, w1 = (1 - lam) * inside, lam * inside
    i0 = i0.long()
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, w0, w1


def paste_masks(masks: Tensor, boxes: Tensor, height: int, width: int, padding: int = 1) -> Tensor:
    """Paste per-box masks into a ``height x width`` image (torchvision's ``paste_masks_in_image``).

    Each mask ``[M, M]`` is zero-padded by ``padding`` on every side, its box scaled about its
    centre by ``(M + 2 * padding) / M`` and the corners truncated to integers (towards zero, as
    ``.to(int64)`` does); the padded mask is resized bilinearly (``align_corners=False``) to the
    integer box ``x1..x2, y1..y2`` inclusive (at least one pixel) and written there, clipped to the
    image; pixels outside the box are 0. One gather pass over all masks, no loop per mask.

    Args:
        masks (Tensor[N, 1, M, M]): mask probabilities (finite values).
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)`` in image pixels.

    Returns:
        Tensor[N, 1, height, width] of ``masks``' dtype; ``[0, 1, height, width]`` for no masks.
        Boxes that miss the image give all-zero masks (where torchvision's slicing can raise).
    """
    n = masks.shape[0]
    if n == 0:
        return masks.new_zeros((0, 1, height, width))
    m = masks.shape[-1]
    scale = float(m + 2 * padding) / m
    padded = F.pad(masks, (padding,) * 4)[:, 0]  # [N, S, S]
    s_h, s_w = padded.shape[-2:]
    # torchvision's expand_boxes, operation for operation, then truncation.
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    b = torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], 1).to(torch.int64)
    b = b.to(masks.device)
    box_w = (b[:, 2:3] - b[:, 0:1] + 1).clamp(min=1)  # [N, 1]
    box_h = (b[:, 3:4] - b[:, 1:2] + 1).clamp(min=1)

    dtype = torch.promote_types(masks.dtype, torch.float32)
    xs = torch.arange(width, device=masks.device)[None]  # [1, W]
    ys = torch.arange(height, device=masks.device)[None]
    x_in = (xs >= b[:, 0:1]) & (xs <= b[:, 2:3])  # [N, W]
    y_in = (ys >= b[:, 1:2]) & (ys <= b[:, 3:4])
    x0, x1, wx0, wx1 = _linear_taps(xs - b[:, 0:1], x_in, s_w, box_w, dtype)
    y0, y1, wy0, wy1 = _linear_taps(ys - b[:, 1:2], y_in, s_h, box_h, dtype)

    # Along x first, then along y, as PyTorch's bilinear kernel combines the four taps.
    p = padded.to(dtype)
    rows = wx0[:, None] * p.gather(2, x0[:, None].expand(-1, s_h, -1))
    rows = rows + wx1[:, None] * p.gather(2, x1[:, None].expand(-1, s_h, -1))  # [N, S, W]
    out = wy0[:, :, None] * rows.gather(1, y0[:, :, None].expand(-1, -1, width))
    out = out + wy1[:, :, None] * rows.gather(1, y1[:, :, None].expand(-1, -1, width))
    return out.to(masks.dtype)[:, None]


def project_masks(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, size: int) -> Tensor:
    """Mask targets: each box's matched ground-truth mask cropped and resized to ``size x size``
    by RoIAlign (scale 1, ``aligned=False``, adaptive sampling), as torchvision's
    ``project_masks_on_boxes``.

    Args:
        gt_masks (Tensor[G, H, W]): one image's ground-truth masks (any dtype; cast to ``boxes``').
        boxes (Tensor[N, 4]): the boxes (proposals), image pixels.
        matched_idxs (Tensor[N]): index into ``gt_masks`` of each box's ground truth.

    Returns:
        Tensor[N, size, size] in ``boxes``' dtype.
    """
    rois = torch.cat([matched_idxs.to(boxes)[:, None], boxes], 1)
    return roi_align(gt_masks[:, None].to(rois), rois, (size, size), 1.0)[:, 0]


def mask_loss(
    mask_logits: Tensor,
    proposals: list[Tensor],
    gt_masks: list[Tensor],
    gt_labels: list[Tensor],
    mask_matched_idxs: list[Tensor],
) -> Tensor:
    """Mask R-CNN's mask loss (torchvision's ``maskrcnn_loss``): the mean binary cross-entropy
    with logits between each proposal's logits of its matched ground truth's class and the
    projected ground-truth mask (:func:`project_masks`).

    Args:
        mask_logits (Tensor[N, C, M, M]): logits of all images' positive proposals, concatenated.
        proposals, gt_masks, gt_labels, mask_matched_idxs: per image, ``[N_i, 4]`` boxes,
            ``[G_i, H, W]`` masks, ``[G_i]`` labels and ``[N_i]`` matches.

    Returns:
        Scalar; ``mask_logits.sum() * 0`` (keeps the graph) when there are no targets.
    """
    m = mask_logits.shape[-1]
    labels = torch.cat([lab[idx] for lab, idx in zip(gt_labels, mask_matched_idxs)], 0)
    targets = torch.cat(
        [project_masks(g, p, i, m) for g, p, i in zip(gt_masks, proposals, mask_matched_idxs)], 0
    )
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    rows = torch.arange(labels.shape[0], device=labels.device)
    return F.binary_cross_entropy_with_logits(mask_logits[rows, labels], targets)


def keypoints_to_heatmap(
    keypoints: Tensor, rois: Tensor, heatmap_size: int
) -> tuple[Tensor, Tensor]:
    """Keypoint targets (torchvision's ``keypoints_to_heatmap``): each keypoint's heatmap cell
    ``floor((x - x1) * size / (x2 - x1))`` (likewise y) as a flat index ``y * size + x``.

    A keypoint exactly on the box's right (bottom) edge goes to the last column (row). A keypoint
    is valid if its cell lies in the heatmap and its visibility ``v > 0``; invalid ones get index 0.

    Args:
        keypoints (Tensor[N, K, 3]): ``(x, y, v)`` per keypoint, image pixels.
        rois (Tensor[N, 4]): the boxes.

    Returns:
        ``(heatmaps, valid)``, both int64 ``[N, K]``.
    """
    x1, y1 = rois[:, 0:1], rois[:, 1:2]
    x2, y2 = rois[:, 2:3], rois[:, 3:4]
    x, y = keypoints[..., 0], keypoints[..., 1]
    on_x2, on_y2 = x == x2, y == y2
    cx = ((x - x1) * (heatmap_size / (x2 - x1))).floor().long()
    cy = ((y - y1) * (heatmap_size / (y2 - y1))).floor().long()
    cx = cx.masked_fill(on_x2, heatmap_size - 1)
    cy = cy.masked_fill(on_y2, heatmap_size - 1)
    inside = (cx >= 0) & (cy >= 0) & (cx < heatmap_size) & (cy < heatmap_size)
    valid = (inside & (keypoints[..., 2] > 0)).long()
    return (cy * heatmap_size + cx) * valid, valid


def keypoint_loss(
    keypoint_logits: Tensor,
    proposals: list[Tensor],
    gt_keypoints: list[Tensor],
    keypoint_matched_idxs: list[Tensor],
) -> Tensor:
    """Keypoint R-CNN's loss (torchvision's ``keypointrcnn_loss``): the mean over valid keypoints
    of the cross-entropy of the ``H * W`` heatmap logits against the target cell
    (:func:`keypoints_to_heatmap`).

    Args:
        keypoint_logits (Tensor[N, K, S, S]): all images' positive proposals, concatenated.
        proposals, gt_keypoints, keypoint_matched_idxs: per image, ``[N_i, 4]`` boxes,
            ``[G_i, K, 3]`` keypoints and ``[N_i]`` matches.

    Returns:
        Scalar; ``keypoint_logits.sum() * 0`` when no keypoint is valid.
    """
    n, k, h, w = keypoint_logits.shape
    if h != w:
        raise ValueError(f"keypoint_loss: heatmaps must be square, got {h} x {w}")
    targets, valid = [], []
    for boxes, kps, idx in zip(proposals, gt_keypoints, keypoint_matched_idxs):
        t, v = keypoints_to_heatmap(kps[idx], boxes, h)
        targets.append(t.reshape(-1))
        valid.append(v.reshape(-1))
    target = torch.cat(targets, 0)
    keep = torch.cat(valid, 0).nonzero()[:, 0]
    if target.numel() == 0 or keep.numel() == 0:
        return keypoint_logits.sum() * 0
    return F.cross_entropy(keypoint_logits.reshape(n * k, h * w)[keep], target[keep])


def heatmaps_to_keypoints(maps: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
    """Decode keypoint heatmaps (torchvision's ``heatmaps_to_keypoints``).

    Each RoI's maps are resized bicubically (``align_corners=False``) to
    ``ceil(max(w, 1)) x ceil(max(h, 1))`` pixels; the argmax cell ``(i, j)`` (first one on ties)
    gives ``x = x1 + (j + 0.5) * max(w, 1) / ceil(max(w, 1))`` (likewise y), visibility 1, and the
    score is the resized map's value there. RoIs of equal resized size are decoded together.

    Args:
        maps (Tensor[N, K, S, S]): heatmap logits per RoI and keypoint.
        rois (Tensor[N, 4]): the boxes.

    Returns:
        ``(keypoints [N, K, 3], scores [N, K])``, float32 as torchvision's.
    """
    n, k = maps.shape[:2]
    if n == 0:
        empty = maps.new_zeros((0, k, 3), dtype=torch.float32)
        return empty, empty[..., 0]
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    sizes = torch.stack([heights.ceil(), widths.ceil()], 1).long()
    uniq, group = sizes.unique(dim=0, return_inverse=True)
    # RoIs sorted by resized size: each size is one slice, and one interpolate call.
    order = group.argsort(stable=True)
    maps, rois = maps[order], rois[order]
    widths, heights = widths[order], heights[order]
    xs, ys, scores = [], [], []
    start = 0
    for (h, w), count in zip(uniq.tolist(), group.bincount(minlength=len(uniq)).tolist()):
        end = start + count
        up = F.interpolate(maps[start:end], size=(h, w), mode="bicubic", align_corners=False)
        flat = up.flatten(2)
        pos = flat.argmax(2)  # [G, K], the first maximum
        x_int = pos % w
        y_int = torch.div(pos - x_int, w, rounding_mode="floor")
        # torchvision scales by 0-d tensors, which compute in float32 whatever their dtype.
        x = (x_int.float() + 0.5) * (widths[start:end] / w).float()[:, None]
        y = (y_int.float() + 0.5) * (heights[start:end] / h).float()[:, None]
        xs.append(x + rois[start:end, 0:1].float())
        ys.append(y + rois[start:end, 1:2].float())
        scores.append(flat.gather(2, pos[..., None])[..., 0].float())
        start = end
    x, y = torch.cat(xs), torch.cat(ys)
    keypoints = torch.stack([x, y, torch.ones_like(x)], 2)
    back = order.argsort()
    return keypoints[back], torch.cat(scores)[back]
