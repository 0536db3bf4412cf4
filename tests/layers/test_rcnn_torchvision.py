"""torchvision's three FPN R-CNN detectors as strings (examples/*rcnn_resnet50_fpn.desc), converted
from torchvision's state dicts: equal parameter counts, the same detections (boxes, scores,
masks, keypoints) in evaluation, and the same losses in training.

Randomness: both models draw from torch's global generator in the same order (the transform's
training size per image, the RPN's anchor sample, the RoI sample: ``torch.randperm`` of the
positives, then of the negatives, per image), so ``torch.manual_seed(s)`` before each call makes
torchvision's sampling and denet's the same."""

import pytest
import torch
from torchvision.ops import box_iou

from denet import DescError
from denet.cli.convert_rcnn import RCNN_ARCHS, reference_model, torchvision_rcnn

CLASSES = {
    "fasterrcnn_resnet50_fpn": 90,
    "maskrcnn_resnet50_fpn": 90,
    "keypointrcnn_resnet50_fpn": 1,
}


def _pair(arch, size=(800, 800)):
    """torchvision's model with random weights, scaled so that dozens of detections pass the
    0.05 score threshold with spread scores, and the denet model converted from it."""
    torch.manual_seed(0)
    tv = reference_model(arch).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        cls = tv.roi_heads.box_predictor.cls_score
        if arch.startswith("keypoint"):  # person vs background
            cls.bias.copy_(torch.tensor([-4.0, 0.0]))
        else:
            cls.weight.mul_(0.2)
            cls.bias.copy_(torch.randn(cls.bias.shape, generator=g))
            cls.bias[0] = 4.0
    return tv, torchvision_rcnn(arch, tv.state_dict(), size).eval()


def _matched(a, b):
    """For each detection of ``a``: the index of the detection of ``b`` with the same label, box
    IoU > 0.99 and score within 1e-4, or -1."""
    out = torch.full((len(a["boxes"]),), -1)
    if len(a["boxes"]) == 0 or len(b["boxes"]) == 0:
        return out
    iou = box_iou(a["boxes"], b["boxes"])
    same = (a["labels"][:, None] == b["labels"][None, :]) & (iou > 0.99)
    close = (a["scores"][:, None] - b["scores"][None, :]).abs() < 1e-4
    ok = same & close
    for i in range(len(out)):
        hits = torch.where(ok[i])[0]
        if len(hits):
            out[i] = hits[iou[i, hits].argmax()]
    return out


@pytest.mark.parametrize("arch", RCNN_ARCHS)
def test_parameter_counts_equal_torchvision(arch):
    import denet
    from denet.cli.convert import example_desc

    model = denet.compile(example_desc(arch), (3, 800, 800), CLASSES[arch], border_mode="half")
    ours = sum(p.numel() for p in model.parameters())
    theirs = sum(p.numel() for p in reference_model(arch).parameters())
    assert ours == theirs
    assert (
        ours
        == {
            "fasterrcnn_resnet50_fpn": 41_755_286,
            "maskrcnn_resnet50_fpn": 44_401_393,
            "keypointrcnn_resnet50_fpn": 59_137_258,
        }[arch]
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(
        p.numel() for p in reference_model(arch).parameters() if p.requires_grad
    )


@pytest.mark.slow
@pytest.mark.parametrize("arch", RCNN_ARCHS)
def test_detections_match_torchvision(arch):
    tv, ours = _pair(arch)
    images = torch.rand(2 if arch.startswith("faster") else 1, 3, 800, 800)
    with torch.no_grad():
        expected, got = tv(list(images)), ours(images)
    for e, g in zip(expected, got):
        g = {**g, "labels": g["labels"] + 1}  # torchvision's 0 is the background
        assert len(e["boxes"]) >= 12, len(e["boxes"])
        forward, backward = _matched(e, g), _matched(g, e)
        assert (forward >= 0).float().mean() >= 0.95
        assert (backward >= 0).float().mean() >= 0.95
        hit = forward >= 0
        if "masks" in e:
            assert g["masks"].shape == e["masks"].shape
            diff = (e["masks"][hit] - g["masks"][forward[hit]]).abs().max()
            assert diff < 1e-3, diff
        if "keypoints" in e:
            assert g["keypoints"].shape == e["keypoints"].shape
            diff = (e["keypoints"][hit] - g["keypoints"][forward[hit]]).abs().max()
            assert diff < 1e-3, diff
            scores = e["keypoints_scores"][hit] - g["keypoints_scores"][forward[hit]]
            assert scores.abs().max() < 1e-3


def _targets(size):
    h, w = size
    g = torch.Generator().manual_seed(3)
    boxes = torch.tensor([[10.0, 20.0, 200.0, 300.0], [300.0, 100.0, 480.0, 400.0]])
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 30:250, 20:180] = 1
    masks[1, 120:380, 320:470] = 1
    kps = torch.rand(2, 17, 3, generator=g) * torch.tensor([180.0, 270.0, 0.0])
    kps += torch.tensor([[15.0, 25.0, 2.0], [305.0, 105.0, 2.0]])[:, None]
    kps[1, :3, 2] = 0  # unlabelled keypoints count for nothing
    return {"boxes": boxes, "labels": torch.tensor([0, 0]), "masks": masks, "keypoints": kps}


NAMES = {"loss_cls": "loss_classifier", "loss_box": "loss_box_reg"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch, size",
    [
        ("fasterrcnn_resnet50_fpn", (600, 500)),  # RT resizes to 960x800 and pads to 960x800
        ("maskrcnn_resnet50_fpn", (800, 800)),
        ("keypointrcnn_resnet50_fpn", (640, 560)),  # a training size drawn from 640 ... 800
    ],
)
def test_training_losses_match_torchvision(arch, size):
    tv, ours = _pair(arch, size)
    tv.train()
    ours.train()
    images = torch.rand(1, 3, *size)
    target = _targets(size)
    theirs = {**target, "labels": target["labels"] + 1}
    torch.manual_seed(1)
    expected = tv(list(images), [theirs])
    torch.manual_seed(1)
    got = ours(images, [target])
    assert {NAMES.get(k, k) for k in got} == set(expected)
    for k, v in got.items():
        assert v.item() == pytest.approx(expected[NAMES.get(k, k)].item(), rel=1e-4), k
    sum(got.values()).backward()  # every trained weight gets a gradient
    assert all(p.grad is not None for p in ours.parameters() if p.requires_grad)


def test_rpn_sizes_that_fit_no_level_are_refused():
    import denet

    with pytest.raises(DescError, match="3 levels and 2 anchor sizes"):
        denet.compile("C[8,3] @a P[2] C[8,3] @b P[2] C[8,3] RPN[32,64]($a | $b | )", (3, 64, 64), 2)


def test_mask_head_needs_detections():
    import denet

    with pytest.raises(DescError, match="dets= must name a box head's detections"):
        denet.compile(
            "C[8,3] @f BOXES[8] @r $f RA[4,rois=r] C[8,3] MASK[dets=r]",
            (3, 32, 32),
            2,
            border_mode="half",
        )
