"""Box grid, RoIAlign layer and the DET head against torchvision's detection code; PI against
nearest upsampling."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection._utils import BoxCoder

import denet

DET = "C[8,3] BN A P[2] @f BOXES[6] @r $f RA[2,rois=r] C[16,2] A DET[rois=r,score=0.0]"


def test_pi_runs_the_pool_inverse_operator_and_equals_nearest_upsampling():
    m = denet.compile("C[4,3] PI[3]", (1, 5, 5), border_mode="half").eval()
    assert "pool_inv" in m.graph_module.code
    x = torch.randn(2, 1, 5, 5)
    y = m(x)
    assert torch.equal(y, F.interpolate(m.l0_C(x), scale_factor=3, mode="nearest"))


def test_boxes_are_centred_on_every_position_of_the_map():
    m = denet.compile("C[2,3] P[4] BOXES[6]", (1, 8, 12), border_mode="half").eval()
    rois = m(torch.zeros(2, 1, 8, 12))
    assert rois.shape == (2 * 2 * 3, 5)
    # stride 4: centres (2 + 4j, 2 + 4i)
    assert rois[0].tolist() == [0, -1, -1, 5, 5]
    assert rois[4].tolist() == [0, 3, 3, 9, 9]
    assert rois[6].tolist() == [1, -1, -1, 5, 5]
    assert m.graph.output_shape.kind == "boxes" and m.graph.output_shape.channels == 6


@pytest.mark.parametrize("aligned", [0, 1])
def test_ra_is_torchvision_roi_align_at_the_map_stride(aligned):
    m = denet.compile(
        f"C[4,3] P[2] @f BOXES[5] @r $f RA[3,rois=r,aligned={aligned}]",
        (1, 10, 10),
        border_mode="half",
    ).eval()
    x = torch.randn(2, 1, 10, 10)
    feat = m.l1_P(m.l0_C(x))
    rois = m.l3_BOXES(feat)
    want = torchvision.ops.roi_align(feat, rois, 3, 0.5, -1, bool(aligned))
    torch.testing.assert_close(m(x), want, atol=1e-5, rtol=1e-5)


def test_ra_needs_boxes():
    with pytest.raises(denet.DescError, match="rois= must name a set of boxes"):
        denet.compile("C[4,3] @f C[4,3] RA[3,rois=f]", (1, 10, 10), border_mode="half")
    with pytest.raises(denet.DescError, match="rois=r refers to no earlier @r"):
        denet.compile("C[4,3] RA[3,rois=r]", (1, 10, 10), border_mode="half")


def detector():
    torch.manual_seed(0)
    return denet.compile(DET, (3, 16, 16), 2, border_mode="half")


def features(m, x):
    """The RoIs and the per-RoI features, computed module by module."""
    f = m.l3_P(m.l2_A(m.l1_BN(m.l0_C(x))))
    rois = m.l5_BOXES(f)
    return rois, m.l10_A(m.l9_C(m.l8_RA(f, rois=rois))).flatten(1)


TARGETS = [
    {
        "boxes": torch.tensor([[1.0, 1.0, 7.0, 6.0], [8.0, 9.0, 15.0, 15.0]]),
        "labels": torch.tensor([1, 0]),
    },
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
]


def test_det_training_matches_torchvision_fast_rcnn_targets_and_losses():
    m = detector().eval()  # eval: BN uses running statistics in both computations
    x = torch.rand(2, 3, 16, 16)
    rois, feat = features(m, x)
    head = m.l11_DET
    logits, deltas = head.cls_score(feat), head.bbox_pred(feat)
    # oracle: torchvision's IoU, the max-IoU matching rule and its box coder
    want_labels = torch.zeros(len(rois), dtype=torch.long)
    want_goals = torch.zeros(len(rois), 4)
    sel = rois[:, 0] == 0
    best, which = torchvision.ops.box_iou(rois[sel, 1:], TARGETS[0]["boxes"]).max(1)
    want_labels[sel] = torch.where(best >= 0.5, TARGETS[0]["labels"][which] + 1, 0)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    want_goals[sel] = coder.encode_single(TARGETS[0]["boxes"][which], rois[sel, 1:])
    fg = want_labels > 0
    assert fg.sum() >= 2  # the case exercises foreground boxes of both classes
    want_cls = F.cross_entropy(logits, want_labels)
    want_box = F.smooth_l1_loss(deltas[fg], want_goals[fg], beta=1 / 9, reduction="sum") / len(rois)
    m.train()
    for mod in m.modules():  # keep BN on its running statistics, as above
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
    out = m(x, TARGETS)
    assert list(out) == ["loss_cls", "loss_box"]
    torch.testing.assert_close(out["loss_cls"], want_cls)
    torch.testing.assert_close(out["loss_box"], want_box)
    (out["loss_cls"] + out["loss_box"]).backward()
    assert m.l0_C.weight.grad.abs().sum() > 0


def test_det_evaluation_is_decode_clip_and_torchvision_batched_nms():
    m = detector().eval()
    with torch.no_grad():
        m.l11_DET.bbox_pred.weight.normal_(std=0.5)  # boxes that move and overlap
    x = torch.rand(2, 3, 16, 16)
    out = m(x)
    rois, feat = features(m, x)
    head = m.l11_DET
    probs = head.cls_score(feat).softmax(1)[:, 1:]
    boxes = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(head.bbox_pred(feat), rois[:, 1:])
    boxes = torchvision.ops.clip_boxes_to_image(boxes, (16, 16))
    assert len(out) == 2
    for b in range(2):
        sel = rois[:, 0] == b
        p, bx = probs[sel], boxes[sel]
        idx, cls = (p > 0.0).nonzero(as_tuple=True)
        keep = torchvision.ops.batched_nms(bx[idx], p[idx, cls], cls, 0.5)[:100]
        torch.testing.assert_close(out[b]["boxes"], bx[idx][keep], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out[b]["scores"], p[idx, cls][keep])
        assert torch.equal(out[b]["labels"], cls[keep])
    assert m.task == "detection" and m.graph.output_shape.kind == "detections"
