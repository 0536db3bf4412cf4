"""DND's v2 parts (joint fitness ``.J``, bounded IoU ``.B``, independent fitness, soft NMS)
against golden values and the formulas of denet-original.md 3.4 and 4, written out here in
float64 with plain loops."""

import math

import pytest
import torch

import denet
from denet.layers.denet_detect import (
    bounded_iou_costs,
    fitness_bins,
    fitness_targets,
    soft_targets,
)

ROIS = torch.tensor(
    [[[0, 0, 0.5, 0.5], [0.2, 0.2, 0.8, 0.8], [0.5, 0.5, 1, 1], [0.1, 0.5, 0.4, 1.0]]]
)


def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_fitness_bins_golden():
    u = torch.tensor([0.5001, 0.55, 0.6499, 0.75, 0.8999, 0.95, 1.0], dtype=torch.float64)
    assert fitness_bins(u, 0.5).tolist() == [0, 0, 1, 2, 3, 4, 4]
    # t0 = 0.6: bins of width 0.08
    assert fitness_bins(torch.tensor([0.61, 0.69, 0.77, 1.0]), 0.6).tolist() == [0, 1, 2, 4]
    best = torch.tensor([0.0, 0.5, 0.52, 0.71, 0.99])
    assert fitness_targets(best, 0.5).tolist() == [0, 0, 1, 3, 5]


def test_joint_targets_golden():
    rois = torch.tensor([[0, 0, 1, 1.0], [0, 0, 0.5, 0.5], [0.6, 0.6, 1, 1]])
    gt = torch.tensor([[0, 0, 1, 0.8], [0, 0, 0.5, 0.55], [0, 0, 1, 1]])
    labels = torch.tensor([1, 0, 1])
    t = soft_targets(rois, gt, labels, 2, 0.5, joint=True)
    assert t.shape == (3, 11)
    want = torch.zeros(3, 11)
    # roi 0: IoU 0.8 with box 0 (class 1, bin 3) and 1.0 with box 2 (class 1, bin 4)
    want[0, [1 * 5 + 3, 1 * 5 + 4]] = 0.5
    # roi 1: IoU 0.25/0.275 = 0.909 with box 1 (class 0, bin 4); 0.25/0.8 and 0.25 below t0
    want[1, 0 * 5 + 4] = 1.0
    want[2, 10] = 1.0  # roi 2: nothing above 0.5: null
    torch.testing.assert_close(t, want)


def test_bounded_iou_costs_golden():
    gt = torch.tensor([[0.0, 0.0, 1.0, 2.0]], dtype=torch.float64)
    pred = torch.tensor([[0.2, -0.1, 0.7, 2.3]], dtype=torch.float64)  # w 0.5, h 2.4
    e = 1e-3
    # centres: g (0.5, 1.0), p (0.45, 1.1): dx 0.05, dy 0.1
    want = [
        2 * 0.05 / (1.0 + 0.05 + e),
        2 * 0.1 / (2.0 + 0.1 + e),
        1 - min(1.0 / (0.5 + e), 0.5 / (1.0 + e)),
        1 - min(2.0 / (2.4 + e), 2.4 / (2.0 + e)),
    ]
    torch.testing.assert_close(bounded_iou_costs(pred, gt)[0], torch.tensor(want).double())
    # 1 - cost_x is the IoU of two intervals of the target's width offset by dx (eps aside)
    w, dx = 0.8, 0.3
    g = torch.tensor([[0, 0, w, 1.0]], dtype=torch.float64)
    p = g + torch.tensor([dx, 0, dx, 0], dtype=torch.float64)
    cost = bounded_iou_costs(p, g)[0, 0]
    assert abs((1 - cost) - (w - dx) / (w + dx)) < 2e-3


def compiled_head(tags="", args="0.5,1,1", classes=3, seed=0):
    torch.manual_seed(seed)
    desc = f"C[8,3] DNC[4] DNS[3,2,0.01,0] C[16,1] BNA DND{tags}[{args}]"
    m = denet.compile(desc, (3, 16, 16), classes, border_mode="half")
    head = m.l5_DND
    with torch.no_grad():
        head.conv.weight.normal_()
        head.conv.bias.normal_()
    return head, torch.rand(1, 16, 2, 2)


def test_channels_follow_denets_order():
    for tags, args, want in [
        ("", "0.5,1,0", 4),
        ("", "0.5,1,1", 8),
        (".J", "0.5,1,1", 16 + 4),
        ("", "0.5,1,1,1", 4 + 4 + 6),
        (".JB", "0.5,1,1", 16 + 4),
    ]:
        head, _ = compiled_head(tags, args)
        assert head.conv.out_channels == want, (tags, args)
        assert head.conv.weight.abs().sum() > 0  # randomised above; built zero


TARGETS = [
    {
        "boxes": torch.tensor([[0.0, 0.0, 5.0, 10.0], [2.0, 5.0, 8.0, 16.0], [1.0, 10, 4.0, 19]]),
        "labels": torch.tensor([2, 0, 1]),
    }
]
IMAGES = torch.zeros(1, 3, 20, 10)  # boxes are normalised by width 10, height 20


def oracle_losses(out, classes, t0, t_box, joint, bounded, indfit, factors):
    """The reference's losses for one image, from the raw conv output ``[n, width]``."""
    cost_factor, bbox_factor, indfit_factor = factors
    gt = (TARGETS[0]["boxes"] / torch.tensor([10, 20, 10, 20])).double().tolist()
    labels = TARGETS[0]["labels"].tolist()
    rois = ROIS[0].double().tolist()
    s0 = classes * (5 if joint else 1) + 1
    logp = torch.log_softmax(out[:, :s0], 1)
    cls = box = fit = 0.0
    for i, r in enumerate(rois):
        t = [0.0] * s0
        ious = [iou(r, g) for g in gt]
        for u, c in zip(ious, labels):
            if u > t0:
                t[c * 5 + min(4, max(0, int(5 * (u - t0) / (1 - t0)))) if joint else c] = 1.0
        if sum(t) == 0:
            t[-1] = 1.0
        total = sum(t)
        cls += -sum(tv / total * float(logp[i, k]) for k, tv in enumerate(t)) / math.log(s0)
        best = max(ious)
        j = ious.index(best)
        g = gt[j]
        if best > t_box and bbox_factor > 0:
            d = out[i, s0 : s0 + 4]
            sw, sh = r[2] - r[0], r[3] - r[1]
            scx, scy = r[0] + sw / 2, r[1] + sh / 2
            gw, gh = g[2] - g[0], g[3] - g[1]
            gx, gy = g[0] + gw / 2, g[1] + gh / 2
            if bounded:
                px, py = float(d[0]) * sw + scx, float(d[1]) * sh + scy
                pw, ph = math.exp(float(d[2])) * sw, math.exp(float(d[3])) * sh
                e = 1e-3
                costs = [
                    2 * abs(gx - px) / (gw + abs(gx - px) + e),
                    2 * abs(gy - py) / (gh + abs(gy - py) + e),
                    1 - min(gw / (pw + e), pw / (gw + e)),
                    1 - min(gh / (ph + e), ph / (gh + e)),
                ]
            else:
                goal = [(gx - scx) / sw, (gy - scy) / sh, math.log(gw / sw), math.log(gh / sh)]
                costs = [float(d[k]) - goal[k] for k in range(4)]
            box += sum(0.5 * c * c if abs(c) < 1 else abs(c) - 0.5 for c in costs)
        if indfit:
            k = 0 if best <= t0 else min(5, max(1, 1 + math.floor(5 * (best - t0) / (1 - t0))))
            end = s0 + (4 if bbox_factor > 0 else 0)
            fit -= float(torch.log_softmax(out[i, end:], 0)[k]) / math.log(6)
    n = len(rois)
    return {
        "loss_cls": cost_factor * cls / n,
        "loss_box": bbox_factor * box / n,
        "loss_fit": indfit_factor * fit / n,
    }


@pytest.mark.parametrize(
    "tags, args, t_box",
    [
        ("", "0.5,1,1", 0.5),
        (".J", "0.5,2,1", 0.5),
        (".B", "0.5,1,3,bbox_overlap=0.3", 0.3),
        (".JB", "0.4,1,1,bbox_overlap=0.6", 0.6),
        ("", "0.5,1,1,0.5", 0.5),
        (".B", "0.3,1,0.5,2", 0.3),
    ],
)
def test_losses_are_the_reference_formulas(tags, args, t_box):
    head, x = compiled_head(tags, args)
    _, losses = head(x, ROIS, torch.tensor([4]), IMAGES, TARGETS)
    out = head.conv(x).flatten(2).transpose(1, 2)[0].double().detach()
    pos = [float(v) for v in args.split(",") if "=" not in v] + [0.0] * 4
    want = oracle_losses(
        out, 3, pos[0], t_box, "J" in tags, "B" in tags, pos[3] > 0, (pos[1], pos[2], pos[3])
    )
    assert set(losses) == {"loss_cls", "loss_box"} | ({"loss_fit"} if pos[3] > 0 else set())
    for name, value in losses.items():
        torch.testing.assert_close(
            value.double(), torch.tensor(want[name]).double(), rtol=1e-5, atol=1e-6
        )
    assert want["loss_box"] > 0 and want["loss_cls"] > 0


def test_bounded_iou_gradient_reaches_the_deltas():
    head, x = compiled_head(".B", "0.5,1,1")
    x.requires_grad_(True)
    _, losses = head(x, ROIS, torch.tensor([4]), IMAGES, TARGETS)
    losses["loss_box"].backward()
    assert head.conv.weight.grad[4:8].abs().sum() > 0  # the four delta channels


def oracle_detections(pr_c, score_c, boxes, threshold, nms, soft):
    """Per class, DeNet's hard NMS (suppressed boxes still suppress) or its log-domain
    Gaussian soft NMS; returns (score, class, box) best first."""
    found = []
    for c in range(pr_c.shape[1]):
        cand = [(float(score_c[i, c]), i) for i in range(len(boxes)) if pr_c[i, c] >= threshold]
        if soft:
            live = [(math.log(s), i) for s, i in cand]
            while live:
                live.sort(key=lambda v: -v[0])
                top, ti = live.pop(0)
                found.append((math.exp(top), c, ti))
                live = [(ls - iou(boxes[ti], boxes[i]) ** 2 / nms, i) for ls, i in live]
                live = [(ls, i) for ls, i in live if ls >= -6.9]
        else:
            for s, i in cand:
                if not any(s2 > s and iou(boxes[i], boxes[i2]) > nms for s2, i2 in cand):
                    found.append((s, c, i))
    return sorted(found, key=lambda v: -v[0])


@pytest.mark.parametrize(
    "tags, args, soft",
    [
        (".J", "0.5,1,1", False),
        ("", "0.5,1,1,1", False),
        (".J", "0.5,1,1", True),
        ("", "0.5,1,1", True),
    ],
)
def test_test_scores_and_nms_are_the_reference(tags, args, soft):
    head, x = compiled_head(tags, args, seed=2)
    head.set_test_params(score=0.05, nms=0.3, soft_nms=soft)
    out = head(x, ROIS, torch.tensor([4]), torch.zeros(1, 3, 16, 16))[0]
    raw = head.conv(x).detach().flatten(2).transpose(1, 2)[0].double()
    joint, classes = "J" in tags, 3
    s0 = classes * (5 if joint else 1) + 1
    p = raw[:, :s0].softmax(1)
    v = torch.tensor([0.5, 0.6, 0.7, 0.8, 0.9], dtype=torch.float64)
    if joint:
        pcf = p[:, :-1].reshape(-1, classes, 5)
        pr_c, score_c = pcf.sum(2), (pcf * v).sum(2)
    else:
        pr_c = p[:, :-1]
        fit = raw[:, s0 + 4 :]
        if fit.shape[1]:
            ef = fit.softmax(1) @ torch.cat([torch.zeros(1, dtype=torch.float64), v])
            score_c = pr_c * ef[:, None]
        else:
            score_c = pr_c
    boxes = []
    for i in range(4):
        r = ROIS[0, i].double().tolist()
        d = raw[i, s0 : s0 + 4].tolist()
        sw, sh = r[2] - r[0], r[3] - r[1]
        cx, cy = d[0] * sw + r[0] + sw / 2, d[1] * sh + r[1] + sh / 2
        w, h = math.exp(d[2]) * sw, math.exp(d[3]) * sh
        boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    want = oracle_detections(pr_c, score_c, boxes, 0.05, 0.3, soft)
    assert len(want) >= 3
    assert out["labels"].tolist() == [c for _, c, _ in want]
    torch.testing.assert_close(
        out["scores"].double(), torch.tensor([s for s, _, _ in want]).double(), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        out["boxes"].double(),
        torch.tensor([boxes[i] for _, _, i in want]).double() * 16,
        rtol=1e-5,
        atol=1e-5,
    )


def test_set_test_params_changes_what_is_kept():
    head, x = compiled_head("", "0.5,1,1", seed=2)
    counts, images = torch.tensor([4]), torch.zeros(1, 3, 16, 16)
    n0 = len(head(x, ROIS, counts, images)[0]["scores"])
    head.set_test_params(score=0.99)
    assert len(head(x, ROIS, counts, images)[0]["scores"]) < n0
    head.set_test_params(score=0.0, nms=0.0)  # no NMS: every class of every RoI
    assert len(head(x, ROIS, counts, images)[0]["scores"]) == 4 * 3
    head.set_test_params(nms=0.5, soft_nms=1)
    assert head.soft and head.nms == 0.5 and head.score == 0.0


def test_v2_string_trains_through_the_model():
    desc = "C[8,3] DNC[4] DNS[3,2,0.01,0] C[16,1] BNA DND.JB[0.5,1,1,bbox_overlap=0.6]"
    m = denet.compile(desc, (3, 16, 16), 3, border_mode="half")
    m.train()
    targets = [
        {"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    losses = m(torch.rand(2, 3, 16, 16), targets)
    assert set(losses) >= {"loss_corner", "loss_cls", "loss_box"}
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    m.eval()
    out = m(torch.rand(2, 3, 16, 16))
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}


@pytest.mark.parametrize("tags, args", [("", "0.5,2,1,0.5"), (".J", "0.5,1,1")])
def test_an_image_without_boxes_has_only_background_losses(tags, args):
    head, x = compiled_head(tags, args)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    _, losses = head(x, ROIS, torch.tensor([4]), IMAGES, empty)
    out = head.conv(x).flatten(2).transpose(1, 2)[0].double().detach()
    s0 = 3 * (5 if "J" in tags else 1) + 1
    factor = float(args.split(",")[1])
    null = -torch.log_softmax(out[:, :s0], 1)[:, -1] / math.log(s0)
    torch.testing.assert_close(losses["loss_cls"].double(), factor * null.mean())
    assert losses["loss_box"].item() == 0.0
    if "loss_fit" in losses:
        no_object = -torch.log_softmax(out[:, s0 + 4 :], 1)[:, 0] / math.log(6)
        torch.testing.assert_close(losses["loss_fit"].double(), 0.5 * no_object.mean())
