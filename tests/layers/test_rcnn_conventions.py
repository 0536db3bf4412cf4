"""Detectron's box conventions (plus1=1: widths x2 - x1 + 1, its anchors, clipping to W - 1, its
FPN level rule) and RoIAlign without the half-pixel offset (aligned=0), against torchvision's,
on hand-computed boxes: the two strings differ exactly where the conventions say."""

import math

import pytest
import torch

import denet
from denet.layers.box_coding import box_iou, decode, encode
from denet.layers.roi_levels import roi_levels
from denet.layers.rpn import clip_boxes

TOY = (
    "C[8,3,stride=4] @p2 C[8,3,stride=2] @p3 "
    "RPN[32,64{plus}]($p2 | $p3) SAMPLE[16,0.25{plus}] @rois "
    "MRA[1,rois=rois,sampling_ratio=1,aligned={aligned}{plus}]($p2 | $p3) C.B[8,1] A "
    "DET.S[rois=rois{plus}]"
)


def _models():
    tv = denet.compile(TOY.format(plus="", aligned=1), (1, 64, 64), 2, border_mode="half")
    dt = denet.compile(TOY.format(plus=",plus1=1", aligned=0), (1, 64, 64), 2, border_mode="half")
    dt.load_state_dict(tv.state_dict())
    return tv, dt


def _module(model, type_):
    node = next(n for n in model.graph.nodes if n.type == type_)
    return model.get_submodule(node.name)


def test_box_coder_widths():
    roi = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    gt = torch.tensor([[0.0, 0.0, 19.0, 9.0]])
    w = (10.0, 10.0, 5.0, 5.0)
    # torchvision: roi 9 wide centred at 4.5, gt 19 wide centred at 9.5
    expected = [10 * 5 / 9, 0.0, 5 * math.log(19 / 9), 0.0]
    assert encode(gt, roi, w).tolist()[0] == pytest.approx(expected)
    # Detectron: roi 10 wide centred at 5, gt 20 wide centred at 10
    expected = [10 * 5 / 10, 0.0, 5 * math.log(2.0), 0.0]
    assert encode(gt, roi, w, plus1=True).tolist()[0] == pytest.approx(expected)
    # each decodes its own deltas back, and the same deltas differently: x2 = cx + w/2 - 1
    d = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    assert decode(d, roi, w).tolist()[0] == pytest.approx([0.0, 0.0, 9.0, 9.0])
    assert decode(d, roi, w, plus1=True).tolist()[0] == pytest.approx([0.0, 0.0, 9.0, 9.0])
    d = torch.tensor([[0.0, 0.0, 5 * math.log(2.0), 0.0]])
    assert decode(d, roi, w).tolist()[0] == pytest.approx([-4.5, 0.0, 13.5, 9.0])
    assert decode(d, roi, w, plus1=True).tolist()[0] == pytest.approx([-5.0, 0.0, 14.0, 9.0])


def test_iou_clip_and_levels():
    a, b = torch.tensor([[0.0, 0.0, 9.0, 9.0]]), torch.tensor([[5.0, 0.0, 14.0, 9.0]])
    assert box_iou(a, b).item() == pytest.approx(36 / 126)  # 4 x 9 of 81 + 81 - 36
    assert box_iou(a, b, plus1=True).item() == pytest.approx(50 / 150)  # 5 x 10 of 100 + 100 - 50
    box = torch.tensor([[-5.0, -5.0, 805.0, 405.0]])
    assert clip_boxes(box, 400, 800).tolist()[0] == [0, 0, 800, 400]
    assert clip_boxes(box, 400, 800, plus1=True).tolist()[0] == [0, 0, 799, 399]
    # a 223-pixel box: level 3 for torchvision (sqrt(area) 223 < 224), 4 for Detectron (224)
    box = torch.tensor([[0.0, 0.0, 223.0, 223.0]])
    assert roi_levels(box, 2, 5, 224, 4).item() == 1
    assert roi_levels(box, 2, 5, 224, 4, plus1=True).item() == 2


def test_strings_differ_where_the_conventions_say():
    tv, dt = _models()
    # anchors at position (0, 0) of P2 (stride 4), size 32, ratios 0.5, 1, 2. torchvision:
    # sides 32 sqrt(1/r) x 32 sqrt(r) centred on 0, rounded; Detectron: the cell (0, 0, 3, 3)
    # (centre 1.5) reshaped to w = round(sqrt(16 / r)), h = round(w r), then scaled by 32 / 4
    assert _module(tv, "RPN").base0.tolist() == [
        [-23.0, -11.0, 23.0, 11.0],
        [-16.0, -16.0, 16.0, 16.0],
        [-11.0, -23.0, 11.0, 23.0],
    ]
    assert _module(dt, "RPN").base0.tolist() == [
        [-22.0, -10.0, 25.0, 13.0],  # r 0.5: 6 x 3 -> 48 x 24
        [-14.0, -14.0, 17.0, 17.0],  # r 1: 4 x 4 -> 32 x 32
        [-10.0, -22.0, 13.0, 25.0],  # r 2: 3 x 6 -> 24 x 48
    ]
    # RoIAlign of a ramp (value = column of P2) at the box (0, 0, 16, 16), P2's level under both
    # rules: one bin, one sample at its centre, column 2 without the half-pixel offset, 1.5 with
    ramp = torch.arange(16.0).repeat(16, 1)[None, None].expand(1, 8, 16, 16)
    coarse = ramp[..., ::2, ::2]
    rois = torch.tensor([[0.0, 0.0, 0.0, 16.0, 16.0]])
    images = torch.zeros(1, 1, 64, 64)
    out_tv = _module(tv, "MRA")(ramp, coarse, rois=rois, images=images)
    out_dt = _module(dt, "MRA")(ramp, coarse, rois=rois, images=images)
    assert out_tv.flatten()[0].item() == pytest.approx(1.5)
    assert out_dt.flatten()[0].item() == pytest.approx(2.0)
    # the box head decodes the same deltas with each convention and clips at W or W - 1
    head_tv, head_dt = _module(tv, "DET"), _module(dt, "DET")
    logits = torch.tensor([[-5.0, 5.0, -5.0]])
    deltas = torch.zeros(1, 12)
    deltas[0, 4 + 2] = 5 * math.log(2.0)  # class 0 twice as wide
    rois = torch.tensor([[0.0, 50.0, 10.0, 59.0, 19.0]])
    got_tv = head_tv.detections(logits, deltas, rois, images)[0]["boxes"].tolist()
    got_dt = head_dt.detections(logits, deltas, rois, images)[0]["boxes"].tolist()
    assert got_tv == [pytest.approx([45.5, 10.0, 63.5, 19.0])]  # 9 wide -> 18, centre 54.5
    assert got_dt == [pytest.approx([45.0, 10.0, 63.0, 19.0])]  # 10 wide -> 20, clipped at 63


@pytest.mark.parametrize(
    "name, params",
    [("faster_rcnn_R-50-FPN_1x", 41_704_164), ("mask_rcnn_R-50-FPN_1x", 44_347_701)],
)
def test_detectron_examples_compile(name, params):
    from denet.cli.convert import example_desc

    model = denet.compile(example_desc(name), (3, 800, 800), 80, border_mode="half")
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.task == "detection"
    assert {"loss_objectness", "loss_rpn_box_reg", "loss_cls", "loss_box"} <= set(model.loss_names)
