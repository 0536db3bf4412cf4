"""denet.layers.instance_ops against torchvision's Mask / Keypoint R-CNN functions
(torchvision.models.detection.roi_heads), on random inputs and edge cases."""

import pytest
import torch
from torchvision.models.detection import roi_heads as tv

from denet.layers import instance_ops as ops
from denet.layers.registry import LayerDef

ATOL = 1e-5


def random_boxes(g, n, h, w, outside=0.3, small=False):
    """[n, 4] boxes meeting an h x w image, some partly outside it; ``small``: some under a
    pixel. (torchvision's paste_masks_in_image raises for some boxes that miss the image.)"""
    size = torch.tensor([w, h], dtype=torch.float32)
    xy = torch.rand(n, 2, generator=g) * size * (1 + outside) - outside * size
    wh = torch.maximum(torch.rand(n, 2, generator=g) ** 2 * size, 0.5 - xy)
    if small:
        xy[::2] = torch.rand(len(xy[::2]), 2, generator=g) * (size - 1)
        wh[::2] = torch.rand(len(wh[::2]), 2, generator=g) * 0.9
    return torch.cat([xy, xy + wh], 1)


def test_module_registers_nothing():
    assert not any(
        isinstance(v, type) and issubclass(v, LayerDef) or isinstance(v, LayerDef)
        for v in vars(ops).values()
    )


# paste_masks


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("padding", [0, 1, 2])
def test_paste_masks_random(seed, padding):
    g = torch.Generator().manual_seed(seed)
    n, m = 1 + seed, (28, 14, 7, 3, 1, 5)[seed]
    h, w = (37, 50) if seed % 2 else (64, 29)
    masks = torch.rand(n, 1, m, m, generator=g)
    boxes = random_boxes(g, n, h, w, small=seed >= 3)
    ref = tv.paste_masks_in_image(masks, boxes, (h, w), padding=padding)
    out = ops.paste_masks(masks, boxes, h, w, padding=padding)
    assert out.shape == (n, 1, h, w) and out.dtype == masks.dtype
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_paste_masks_edge_boxes():
    masks = torch.rand(7, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor(
        [
            [5.2, 5.2, 5.4, 5.4],  # under a pixel: a 1-pixel paste
            [-0.7, -0.7, 3.2, 3.2],  # corners truncate towards zero, not down
            [12.0, 2.0, 30.0, 6.0],  # the expanded box reaches into the image
            [30.0, 30.0, 40.0, 40.0],  # entirely outside
            [5.0, 5.0, 3.0, 3.0],  # x2 < x1
            [0.0, 0.0, 9.0, 9.0],  # the whole image
            [2.0, 3.0, 2.0, 3.0],  # a point
        ]
    )
    ref = tv.paste_masks_in_image(masks, boxes, (10, 10))
    out = ops.paste_masks(masks, boxes, 10, 10)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    assert not out[3:5].any()


def test_paste_masks_beyond_torchvision():
    # An expanded box entirely left of the image: torchvision's negative slice end raises.
    masks, boxes = torch.rand(1, 1, 4, 4), torch.tensor([[-20.0, 2.0, -10.0, 6.0]])
    with pytest.raises(RuntimeError):
        tv.paste_masks_in_image(masks, boxes, (10, 10))
    assert not ops.paste_masks(masks, boxes, 10, 10).any()


def test_paste_masks_empty_and_float64():
    out = ops.paste_masks(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), 11, 13)
    assert out.shape == (0, 1, 11, 13)
    g = torch.Generator().manual_seed(2)
    masks = torch.rand(4, 1, 9, 9, generator=g, dtype=torch.float64)
    boxes = random_boxes(g, 4, 20, 30).double()
    out = ops.paste_masks(masks, boxes, 20, 30)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, tv.paste_masks_in_image(masks, boxes, (20, 30)))


# project_masks / mask_loss


@pytest.mark.parametrize("seed", range(3))
def test_project_masks(seed):
    g = torch.Generator().manual_seed(seed)
    gt = (torch.rand(3, 40, 50, generator=g) > 0.5).to(torch.uint8)
    boxes = random_boxes(g, 9, 40, 50, small=True)
    idx = torch.randint(0, 3, (9,), generator=g)
    out = ops.project_masks(gt, boxes, idx, 14)
    assert out.shape == (9, 14, 14)
    torch.testing.assert_close(
        out, tv.project_masks_on_boxes(gt, boxes, idx, 14), atol=ATOL, rtol=0
    )
    empty = ops.project_masks(gt, boxes[:0], idx[:0], 14)
    assert empty.shape == (0, 14, 14)


def mask_case(g, counts, classes=4, m=14):
    proposals, gt_masks, gt_labels, matched = [], [], [], []
    for n in counts:
        n_gt = 3
        proposals.append(random_boxes(g, n, 32, 24, small=True))
        gt_masks.append((torch.rand(n_gt, 32, 24, generator=g) > 0.4).to(torch.uint8))
        gt_labels.append(torch.randint(1, classes, (n_gt,), generator=g))
        matched.append(torch.randint(0, n_gt, (n,), generator=g))
    logits = torch.randn(sum(counts), classes, m, m, generator=g)
    return logits, proposals, gt_masks, gt_labels, matched


def loss_and_grad(fn, logits, *args):
    logits = logits.clone().requires_grad_(True)
    loss = fn(logits, *args)
    loss.backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize("counts", [(5,), (3, 0, 4), (0, 2)])
def test_mask_loss(counts):
    logits, *args = mask_case(torch.Generator().manual_seed(sum(counts)), counts)
    loss, grad = loss_and_grad(ops.mask_loss, logits, *args)
    ref, ref_grad = loss_and_grad(tv.maskrcnn_loss, logits, *args)
    assert loss.shape == ()
    torch.testing.assert_close(loss, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(grad, ref_grad, atol=ATOL, rtol=0)
    assert grad.abs().sum() > 0


def test_mask_loss_no_targets():
    logits, *args = mask_case(torch.Generator().manual_seed(0), (0, 0))
    loss, grad = loss_and_grad(ops.mask_loss, logits, *args)
    assert loss.item() == 0 and grad.shape == logits.shape
    assert tv.maskrcnn_loss(logits, *args).item() == 0


# keypoints


def keypoint_case(g, n, k, rois):
    x = rois[:, None, 0] + torch.rand(n, k, generator=g) * 1.4 * (
        rois[:, None, 2] - rois[:, None, 0]
    )
    y = rois[:, None, 1] + torch.rand(n, k, generator=g) * 1.4 * (
        rois[:, None, 3] - rois[:, None, 1]
    )
    x -= 0.2 * (rois[:, None, 2] - rois[:, None, 0])
    v = torch.randint(0, 3, (n, k), generator=g).float()
    kp = torch.stack([x, y, v], 2)
    kp[:, 0, 0] = rois[:, 2]  # exactly on the right edge: the last column
    kp[:, 1, 1] = rois[:, 3]  # exactly on the bottom edge: the last row
    kp[:, 1:3, 2] = 1
    kp[:, 2, :2] = rois[:, :2]  # the top-left corner
    return kp


@pytest.mark.parametrize("seed", range(3))
def test_keypoints_to_heatmap(seed):
    g = torch.Generator().manual_seed(seed)
    rois = random_boxes(g, 10, 60, 80, small=True)
    kp = keypoint_case(g, 10, 17, rois)
    heat, valid = ops.keypoints_to_heatmap(kp, rois, 56)
    ref_heat, ref_valid = tv.keypoints_to_heatmap(kp, rois, 56)
    assert heat.dtype == valid.dtype == torch.int64
    assert torch.equal(heat, ref_heat) and torch.equal(valid, ref_valid)
    assert valid.any() and not valid.all()
    assert (heat[valid.bool()] >= 0).all()


def keypoints_loss_case(g, counts, k=5, s=8):
    proposals, gt_kps, matched = [], [], []
    for n in counts:
        rois = random_boxes(g, n, 40, 40)
        proposals.append(rois)
        perm = torch.randperm(n, generator=g)
        gt_kps.append(keypoint_case(g, n, k, rois)[perm])
        matched.append(perm.argsort())
    return torch.randn(sum(counts), k, s, s, generator=g), proposals, gt_kps, matched


@pytest.mark.parametrize("counts", [(6,), (4, 0, 3)])
def test_keypoint_loss(counts):
    logits, *args = keypoints_loss_case(torch.Generator().manual_seed(len(counts)), counts)
    loss, grad = loss_and_grad(ops.keypoint_loss, logits, *args)
    ref, ref_grad = loss_and_grad(tv.keypointrcnn_loss, logits, *args)
    torch.testing.assert_close(loss, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(grad, ref_grad, atol=ATOL, rtol=0)
    assert grad.abs().sum() > 0


def test_keypoint_loss_nothing_valid():
    g = torch.Generator().manual_seed(5)
    logits, proposals, gt_kps, matched = keypoints_loss_case(g, (3, 2))
    for kp in gt_kps:
        kp[..., 2] = 0
    loss, grad = loss_and_grad(ops.keypoint_loss, logits, proposals, gt_kps, matched)
    assert loss.item() == 0 and grad.shape == logits.shape
    empty = keypoints_loss_case(g, (0, 0))
    loss, grad = loss_and_grad(ops.keypoint_loss, *empty)
    assert loss.item() == 0
    with pytest.raises(ValueError):
        ops.keypoint_loss(torch.zeros(1, 5, 8, 6), *keypoints_loss_case(g, (1,))[1:])


@pytest.mark.parametrize("seed", range(3))
def test_heatmaps_to_keypoints(seed):
    g = torch.Generator().manual_seed(seed)
    rois = random_boxes(g, 12, 60, 70, small=True)
    rois[3:6] = rois[2]  # equal sizes: decoded together
    rois[7, 2:] = rois[7, :2] + torch.tensor([4.0, 0.3])  # one side under a pixel
    maps = torch.randn(12, 4, 14, 14, generator=g)
    kp, scores = ops.heatmaps_to_keypoints(maps, rois)
    ref_kp, ref_scores = tv.heatmaps_to_keypoints(maps, rois)
    assert kp.shape == (12, 4, 3) and scores.shape == (12, 4)
    assert kp.dtype == scores.dtype == torch.float32
    # The same interpolation and argmax: equal, not merely close.
    assert torch.equal(kp, ref_kp) and torch.equal(scores, ref_scores)


def test_heatmaps_to_keypoints_ties_and_empty():
    rois = torch.tensor([[0.0, 0.0, 10.0, 10.0], [3.0, 4.0, 9.5, 30.0]])
    maps = torch.zeros(2, 3, 7, 7)
    maps[:, 1, 2:4, 2:4] = 1.0  # a plateau: the first maximum wins
    kp, scores = ops.heatmaps_to_keypoints(maps, rois)
    ref_kp, ref_scores = tv.heatmaps_to_keypoints(maps, rois)
    assert torch.equal(kp, ref_kp) and torch.equal(scores, ref_scores)
    kp, scores = ops.heatmaps_to_keypoints(torch.zeros(0, 17, 56, 56), torch.zeros(0, 4))
    assert kp.shape == (0, 17, 3) and scores.shape == (0, 17)
    ref_kp, ref_scores = tv.heatmaps_to_keypoints(torch.zeros(0, 17, 56, 56), torch.zeros(0, 4))
    assert ref_kp.shape == kp.shape and ref_scores.shape == scores.shape
