"""DND, DeNet's detection classifier (v1 and v2): soft targets, losses, decode and test-time scoring
against the formulas of the reference (denet-original.md 3.4, 4.1-4.2) written out."""

import math

import pytest
import torch
import torch.nn.functional as F

import denet
from denet.kernels import denet_nms
from denet.layers.box_coding import decode
from denet.layers.box_coding import encode as box_deltas
from denet.layers.denet_detect import soft_targets

DESC = "C[8,3] DNC[4] DNS[3,2,0.01,0] C[16,1] BNA DND[0.5,1,1]"


def test_soft_targets_are_every_overlapping_class_normalised():
    rois = torch.tensor([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0, 1, 1.0]])
    gt = torch.tensor([[0, 0, 0.5, 0.5], [0, 0, 0.6, 0.6], [0.5, 0.5, 1, 1.0]])
    labels = torch.tensor([0, 2, 1])
    t = soft_targets(rois, gt, labels, 3, 0.5)
    # roi 0: IoU 1 with class 0, 0.25/0.36 = 0.69 with class 2; roi 1: class 1; roi 2: below 0.5
    want = torch.tensor([[0.5, 0, 0.5, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])
    torch.testing.assert_close(t, want)
    torch.testing.assert_close(soft_targets(rois, gt[:0], labels[:0], 3, 0.5)[:, 3], torch.ones(3))


def test_box_deltas_golden_and_decode_inverts_them():
    roi, gt = torch.tensor([[0, 0, 0.5, 0.5]]), torch.tensor([[0.1, 0, 0.6, 0.5]])
    torch.testing.assert_close(box_deltas(gt, roi), torch.tensor([[0.2, 0, 0, 0.0]]))
    g = torch.rand(5, 4) * 0.4 + torch.tensor([0, 0, 0.5, 0.5])
    r = torch.rand(5, 4) * 0.4 + torch.tensor([0, 0, 0.5, 0.5])
    torch.testing.assert_close(decode(box_deltas(g, r), r), g)


def head_inputs(seed=0):
    torch.manual_seed(seed)
    m = denet.compile(DESC, (3, 16, 16), 3, border_mode="half")
    with torch.no_grad():
        m.l5_DND.conv.weight.normal_()
        m.l5_DND.conv.bias.normal_()
    x = torch.rand(1, 16, 2, 2)  # the RoI map the head reads
    rois = torch.tensor(
        [[[0, 0, 0.5, 0.5], [0.2, 0.2, 0.8, 0.8], [0.5, 0.5, 1, 1], [0.1, 0.5, 0.4, 1.0]]]
    )
    return m.l5_DND, x, rois


def test_losses_are_the_reference_formulas():
    head, x, rois = head_inputs()
    images = torch.zeros(1, 3, 20, 10)  # boxes are normalised by width 10, height 20
    targets = [
        {
            "boxes": torch.tensor([[0.0, 0.0, 5.0, 10.0], [2.0, 4.0, 8.0, 16.0]]),
            "labels": torch.tensor([2, 0]),
        }
    ]
    _, losses = head(x, rois, torch.tensor([4]), images, targets)
    out = head.conv(x).flatten(2).transpose(1, 2)[0].double()
    logp = torch.log_softmax(out[:, :4], 1)
    gt = torch.tensor([[0, 0, 0.5, 0.5], [0.2, 0.2, 0.8, 0.8]], dtype=torch.float64)
    t = soft_targets(rois[0].double(), gt, torch.tensor([2, 0]), 3, 0.5)
    want_cls = (-(t * logp).sum(1) / math.log(4)).sum() / 4
    torch.testing.assert_close(losses["loss_cls"].double(), want_cls, rtol=1e-5, atol=1e-6)
    # rois 0 and 1 match their box exactly (IoU 1 > 0.5); the others match nothing
    goal = torch.zeros(2, 4, dtype=torch.float64)
    want_box = F.smooth_l1_loss(out[:2, 4:], goal, beta=1.0, reduction="sum") / 4
    torch.testing.assert_close(losses["loss_box"].double(), want_box, rtol=1e-5, atol=1e-6)


def test_detections_are_pr_threshold_and_per_class_denet_nms():
    head, x, rois = head_inputs(1)
    images = torch.zeros(1, 3, 16, 16)
    out = head(x, rois, torch.tensor([3]), images)[0]  # the 4th RoI is padding
    logits = head.conv(x).detach().flatten(2).transpose(1, 2)[0]
    pr = logits[:3, :4].softmax(1)[:, :3]
    boxes = decode(logits[:3, 4:], rois[0, :3])
    want = []
    for c in range(3):
        sel = (pr[:, c] >= 0.01).nonzero().flatten()
        keep = denet_nms(boxes[sel], pr[sel, c], 0.5)
        want += [(float(pr[sel[k], c]), c, boxes[sel[k]] * 16) for k in keep]
    want.sort(key=lambda w: -w[0])
    assert len(out["scores"]) == len(want) > 0
    torch.testing.assert_close(out["scores"], torch.tensor([w[0] for w in want]))
    assert out["labels"].tolist() == [w[1] for w in want]
    torch.testing.assert_close(out["boxes"], torch.stack([w[2] for w in want]))


@pytest.mark.parametrize(
    "desc, message",
    [
        ("C[8,3] DNC[4] C[16,1] DND[0.5,1,1]", "DND classifies the RoIs of a DNS layer"),
        ("C[8,3] DNC[4] DNS[3,2] C[16,1] DND.J[0.5,1,1,1]", "both score fitness: choose one"),
        ("C[8,3] DNC[4] DNS[3,2] C[16,1] DND.B[0.5,1,0]", r"bounded IoU loss \(.B\) needs box"),
        ("C[8,3] DNC[4] DNS[3,2] C[16,1] DND[1.0,1,1]", "overlap_threshold"),
    ],
)
def test_dnd_errors(desc, message):
    with pytest.raises(denet.DescError, match=message):
        denet.compile(desc, (3, 16, 16), 3, border_mode="half")


@pytest.mark.parametrize(
    "name, params, rois, features, script",
    [
        ("denet34-std", 32_809_401, 24, 4706, 0),
        ("denet34-skip", 32_807_481, 24, 4706, 1),
        # 1,536 more than a count that takes the wide head's first FC as C[1536,1] (the skip
        # string's): the wide string of the paper script has C.B[1536,1], with a bias
        ("denet34-wide", 33_020_809, 48, 4802, 2),
        ("denet101-std", 68_704_537, 24, 6274, 3),
        ("denet101-skip", 69_196_057, 24, 6274, 4),
        ("denet101-wide", 85_746_009, 48, 6274, 5),
        # v2: the wide strings with DND.JB (5C + 1 class outputs) and clustering DNS
        ("denet34-wide-v2", 33_184_969, 24, 4802, None),
        ("denet101-wide-v2", 85_992_089, 24, 6274, None),
    ],
)
def test_published_denet_models_have_the_papers_shapes_and_sizes(
    name, params, rois, features, script
):
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "dsl"))
    from denet_strings import DENET_STRINGS

    path = os.path.join(os.path.dirname(__file__), "..", "..", "examples", f"{name}.desc")
    with open(path, encoding="utf-8") as f:
        desc = f.read()
    head = desc[desc.index("PI[2]") :].strip()
    if script is not None:
        assert head == DENET_STRINGS[script]  # the script's head string, verbatim
    else:
        v1 = DENET_STRINGS[2 if "34" in name else 5]
        assert "DND.JB[" in head and "DND[" in v1 and head.split(" DNS")[0] == v1.split(" DNS")[0]
    with torch.device("meta"):
        m = denet.compile(desc, (3, 512, 512), 80, border_mode="half")
    assert sum(p.numel() for p in m.parameters()) == params
    dns = next(n for n in m.graph.nodes if n.type == "DNS")
    assert (dns.shape.channels, dns.shape.height, dns.shape.width) == (features, rois, rois)
    dnd = next(n for n in m.graph.nodes if n.type == "DND")
    want = (5 * 80 + 1 if script is None else 81) + 4
    assert m.get_submodule(dnd.name).conv.out_channels == want
