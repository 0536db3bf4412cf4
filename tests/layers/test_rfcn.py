"""R-FCN and Deformable R-FCN: position-sensitive pooling with average voting (plain and
deformable) and deformable RoI pooling against Python loops written from the reference text
(peer-codebases.md 3.3, 3.5, 3.6), the softmax RPN's loss against a direct computation, OHEM's
choice of RoIs, bad strings, and (slow) a small R-FCN trained through bin/model-train."""

import importlib.util
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import denet
from denet import DescError
from denet.layers.box_head import BoxHead
from denet.layers.rfcn import DeformablePSRoIPooling, DeformableRoIPooling, PSRoIPooling

HERE = os.path.dirname(__file__)


def round_half_away(v: float) -> float:
    return math.copysign(math.floor(abs(v) + 0.5), v)


def ps_roi_pool_loop(x, rois, k, scale):
    """[R, D, k, k]: torchvision's ps_roi_pool, a bin at a time (denet.kernels' text: corners
    round(c * scale), size at least 1, bins floor/ceil, windows clipped to H - 1 and W - 1,
    channel (d*k + gh)*k + gw averaged over the window, 0 when empty)."""
    n, c, h, w = x.shape
    d = c // (k * k)
    out = torch.zeros(len(rois), d, k, k, dtype=x.dtype)
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sw, sh = round_half_away(x1 * scale), round_half_away(y1 * scale)
        ew, eh = round_half_away(x2 * scale), round_half_away(y2 * scale)
        bw, bh = max(ew - sw, 1) / k, max(eh - sh, 1) / k
        for ch in range(d):
            for gh in range(k):
                for gw in range(k):
                    hs = min(max(math.floor(gh * bh) + sh, 0), h - 1)
                    he = min(max(math.ceil((gh + 1) * bh) + sh, 0), h - 1)
                    ws = min(max(math.floor(gw * bw) + sw, 0), w - 1)
                    we = min(max(math.ceil((gw + 1) * bw) + sw, 0), w - 1)
                    if he <= hs or we <= ws:
                        continue
                    plane = x[int(b), (ch * k + gh) * k + gw]
                    out[r, ch, gh, gw] = plane[int(hs) : int(he), int(ws) : int(we)].mean()
    return out


def bilinear(plane, hy, wx):
    h, w = plane.shape
    y1, y2, x1, x2 = math.floor(hy), math.ceil(hy), math.floor(wx), math.ceil(wx)
    dy, dx = hy - y1, wx - x1
    return (
        (1 - dx) * (1 - dy) * plane[y1, x1]
        + (1 - dx) * dy * plane[y2, x1]
        + dx * (1 - dy) * plane[y1, x2]
        + dx * dy * plane[y2, x2]
    )


def deform_psroi_loop(x, rois, trans, k, scale, group, part, spp, trans_std):
    """[R, D, k, k]: Deformable ConvNets' DeformablePSROIPooling as peer-codebases.md 3.3 states
    it: RoI from round(x1)*s - 0.5 to (round(x2)+1)*s - 0.5 (at least 0.1), spp^2 samples per
    bin at sub-bin starts shifted by trans * trans_std * the RoI size (channel 2c dx, 2c+1 dy),
    samples outside [-0.5, W-0.5] skipped, the rest clamped and bilinear, the mean over them."""
    n, c, h, w = x.shape
    d = c // (group * group)
    ncls = trans.shape[1] // 2 if trans is not None else 1
    out = torch.zeros(len(rois), d, k, k, dtype=x.dtype)
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sw = round_half_away(x1) * scale - 0.5
        sh = round_half_away(y1) * scale - 0.5
        rw = max((round_half_away(x2) + 1) * scale - 0.5 - sw, 0.1)
        rh = max((round_half_away(y2) + 1) * scale - 0.5 - sh, 0.1)
        bw, bh = rw / k, rh / k
        for ch in range(d):
            cls = ch // (d // ncls)
            for ph in range(k):
                for pw in range(k):
                    part_h, part_w = ph * part // k, pw * part // k
                    tx = ty = 0.0
                    if trans is not None:
                        tx = float(trans[r, 2 * cls, part_h, part_w]) * trans_std
                        ty = float(trans[r, 2 * cls + 1, part_h, part_w]) * trans_std
                    ws, hs = pw * bw + sw + tx * rw, ph * bh + sh + ty * rh
                    gh, gw = min(ph * group // k, group - 1), min(pw * group // k, group - 1)
                    plane = x[int(b), (ch * group + gh) * group + gw]
                    total, count = 0.0, 0
                    for ih in range(spp):
                        for iw in range(spp):
                            wx, hy = ws + iw * bw / spp, hs + ih * bh / spp
                            if wx < -0.5 or wx > w - 0.5 or hy < -0.5 or hy > h - 0.5:
                                continue
                            wx, hy = min(max(wx, 0.0), w - 1.0), min(max(hy, 0.0), h - 1.0)
                            total = total + bilinear(plane, hy, wx)
                            count += 1
                    out[r, ch, ph, pw] = total / count if count else 0.0
    return out


def rois_on(size: int, n: int, seed: int, images: int = 2):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size * 0.6
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * size * 0.5 + 2
    b = torch.randint(0, images, (n, 1), generator=g).to(torch.float64)
    return torch.cat([b, xy, (xy + wh).clamp(max=size + 3)], 1)


def test_ps_pooling_with_voting_equals_the_loop():
    torch.manual_seed(0)
    k, d = 3, 2
    x = torch.randn(2, k * k * d, 9, 11, dtype=torch.float64)
    rois = rois_on(36, 7, 1)
    layer = PSRoIPooling(k, 0.25, "avg", -1, vote=True)
    bins = ps_roi_pool_loop(x, rois, k, 0.25)
    torch.testing.assert_close(layer(x, rois), bins.mean((2, 3)))
    torch.testing.assert_close(PSRoIPooling(k, 0.25, "avg", -1, vote=False)(x, rois), bins)


def test_deformable_ps_pooling_with_voting_equals_the_loop():
    """Deformable R-FCN's cls branch (one offset set per output) and box branch (one set for
    all), offsets from a PS pooling without offsets of a 1x1 conv's maps."""
    torch.manual_seed(1)
    k, d, cin, scale, spp = 3, 2, 5, 0.5, 2
    x = torch.randn(2, k * k * d, 8, 9, dtype=torch.float64)
    feat = torch.randn(2, cin, 8, 9, dtype=torch.float64)
    rois = rois_on(16, 5, 2)
    for sets in (d, 1):
        layer = DeformablePSRoIPooling(cin, k, k, sets, scale, spp, 0.1, 1.0, True).double()
        with torch.no_grad():  # offsets that move the samples (zero init would not)
            layer.offset.weight.normal_(0, 2.0)
            layer.offset.bias.normal_(0, 1.0)
        maps = torch.einsum("oc,bchw->bohw", layer.offset.weight[:, :, 0, 0], feat)
        maps = maps + layer.offset.bias.view(1, -1, 1, 1)
        trans = deform_psroi_loop(maps.detach(), rois, None, k, scale, k, k, spp, 0.0)
        assert trans.abs().max() > 0.5
        want = deform_psroi_loop(x, rois, trans, k, scale, k, k, spp, 0.1).mean((2, 3))
        torch.testing.assert_close(layer(x, rois, feat), want)


def test_deformable_roi_pooling_with_fc_offsets_equals_the_loop():
    """Deformable ConvNets' 2fc head: plain deformable pooling (group 1, no offsets), a fully
    connected layer to 2*7*7 offsets, deformable pooling with them."""
    torch.manual_seed(2)
    k, c, scale, spp = 3, 4, 0.25, 2
    x = torch.randn(2, c, 10, 10, dtype=torch.float64)
    rois = rois_on(40, 4, 3)
    layer = DeformableRoIPooling(c, k, k, scale, spp, 0.1, 0.01).double()
    with torch.no_grad():
        layer.offset.weight.normal_(0, 1.0)
    plain = deform_psroi_loop(x, rois, None, k, scale, 1, k, spp, 0.0)
    trans = (plain.flatten(1) @ layer.offset.weight.detach().T + layer.offset.bias.detach()).view(
        -1, 2, k, k
    )
    want = deform_psroi_loop(x, rois, trans, k, scale, 1, k, spp, 0.1)
    torch.testing.assert_close(layer(x, rois), want)
    assert all(p.lr_mult == 0.01 for p in layer.offset.parameters())


def test_softmax_rpn_loss_equals_a_direct_computation():
    """RPN.S: 2A logits, background first; the loss is the 2-class cross-entropy over every
    anchor that is not ignored (a batch large enough to sample them all)."""
    torch.manual_seed(3)
    model = denet.compile(
        "C[8,3] A P[2] C[8,3] A P[2] @f RPN.S[16,ratios=1,batch=100000,positive=1]($f)",
        (3, 32, 32),
        border_mode="half",
    )
    rpn = next(m for n, m in model.graph_module.named_modules() if n.endswith("RPN"))
    assert rpn.head.cls_logits.out_channels == 2  # A = 1 anchor: one background, one foreground
    with torch.no_grad():
        rpn.head.cls_logits.weight.normal_(0, 0.3)
    x = torch.rand(1, 3, 32, 32)
    gt = torch.tensor([[3.0, 5.0, 19.0, 20.0], [14.0, 12.0, 30.0, 29.0]])
    targets = [{"boxes": gt, "labels": torch.tensor([0, 1])}]
    model.train()
    losses = model(x, targets)
    # direct: the feature map, the head's logits, square 16-pixel anchors at stride 4
    f = model.graph_module.l0_C(x)
    f = model.graph_module.l3_C(F.max_pool2d(F.relu(f), 2))
    f = F.max_pool2d(F.relu(f), 2)
    logits = rpn.head.cls_logits(F.relu(rpn.head.conv(f)))[0]  # [2, 8, 8]
    terms, iou_rows = [], []
    anchors = []
    for i in range(8):
        for j in range(8):
            anchors.append([j * 4 - 8.0, i * 4 - 8.0, j * 4 + 8.0, i * 4 + 8.0])
    anchors = torch.tensor(anchors)
    for g in gt:
        lt = torch.maximum(anchors[:, :2], g[:2])
        rb = torch.minimum(anchors[:, 2:], g[2:])
        inter = (rb - lt).clamp(min=0).prod(1)
        area = (anchors[:, 2:] - anchors[:, :2]).prod(1) + (g[2:] - g[:2]).prod()
        iou_rows.append(inter / (area - inter))
    iou = torch.stack(iou_rows)  # [G, 64]
    best = iou.max(0).values
    for a in range(64):
        i, j = divmod(a, 8)
        top_for_a_box = bool((iou[:, a] == iou.max(1).values).any())
        if best[a] >= 0.7 or top_for_a_box:
            label = 1
        elif best[a] < 0.3:
            label = 0
        else:
            continue
        pair = logits[:, i, j]  # (background, foreground)
        terms.append(-(pair[label] - torch.logsumexp(pair, 0)))
    torch.testing.assert_close(losses["loss_objectness"], torch.stack(terms).mean())
    # the proposals are ranked by the softmax's foreground probability
    model.eval()
    assert model(x).shape[1] == 5


def ohem_head(n: int) -> BoxHead:
    a = {"iou": 0.5, "score": 0.05, "nms": 0.5, "max": 100, "min_size": 0.01, "ohem": n}
    return BoxHead(0, 2, False, a, precomputed=True)


def test_ohem_keeps_the_hardest_rois_of_each_image():
    torch.manual_seed(4)
    rois = torch.tensor(
        [
            [0, 2.0, 2.0, 12.0, 12.0],  # foreground (IoU 1 with the first box)
            [0, 3.0, 3.0, 12.0, 12.0],  # foreground
            [0, 20.0, 20.0, 30.0, 30.0],  # background
            [0, 18.0, 2.0, 28.0, 10.0],  # background
            [1, 5.0, 5.0, 25.0, 25.0],  # foreground in image 1
            [1, 0.0, 0.0, 4.0, 4.0],  # background
            [1, 26.0, 26.0, 31.0, 31.0],  # background
        ],
        dtype=torch.float64,
    )
    targets = [
        {"boxes": torch.tensor([[2.0, 2.0, 12.0, 12.0]]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[5.0, 5.0, 25.0, 25.0]]), "labels": torch.tensor([1])},
    ]
    logits = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    deltas = torch.randn(7, 8, dtype=torch.float64, requires_grad=True)
    images = torch.zeros(2, 3, 32, 32)
    head = ohem_head(2)
    head.train()
    _, losses = head(logits, rois, images, targets=targets, deltas=deltas)
    labels = torch.tensor([1, 1, 0, 0, 2, 0, 0])
    # direct: per-RoI cross-entropy + smooth L1 (beta 1) of the foreground deltas (last 4)
    ce = -torch.log_softmax(logits, 1)[torch.arange(7), labels]
    goals = torch.zeros(7, 4, dtype=torch.float64)
    for r, b in ((0, 0), (1, 0), (4, 1)):
        g = targets[b]["boxes"][0].double()
        box = rois[r, 1:]
        w, h = box[2] - box[0], box[3] - box[1]
        gw, gh = g[2] - g[0], g[3] - g[1]
        goals[r] = torch.stack(
            [
                10 * ((g[0] + gw / 2) - (box[0] + w / 2)) / w,
                10 * ((g[1] + gh / 2) - (box[1] + h / 2)) / h,
                5 * torch.log(gw / w),
                5 * torch.log(gh / h),
            ]
        )
    diff = (deltas[:, 4:] - goals).abs()
    sl1 = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).sum(1) * (labels > 0)
    per_roi = (ce + sl1).detach()
    kept = [
        int(i) for b in (range(4), range(4, 7)) for i in sorted(b, key=lambda i: -per_roi[i])[:2]
    ]
    torch.testing.assert_close(losses["loss_cls"], ce[kept].mean())
    torch.testing.assert_close(losses["loss_box"], sl1[kept].sum() / (2 * 2))
    (losses["loss_cls"] + losses["loss_box"]).backward()
    ignored = sorted(set(range(7)) - set(kept))
    assert logits.grad[ignored].abs().max() == 0 and logits.grad[kept].abs().min() > 0
    assert deltas.grad[ignored].abs().max() == 0


def test_rfcn_strings_compile_and_run_both_modes():
    desc = (
        "C[8,3] BN A P[2] C[16,3] BN A P[2] @f RPN.S[8,16,pre_nms=200,post_nms=50]($f) "
        "SAMPLE[32,0.25] @rois $f C.B[16,1] A @h PSC[3,8] DPSP[3,rois=rois,offsets=h,sets=1] @box "
        "$h PSC[3,classes,background=1] DPSP[3,rois=rois,offsets=h] "
        "DET[rois=rois,deltas=box,ohem=16,soft_nms=0.6]"
    )
    model = denet.compile(desc, (3, 32, 32), 3, border_mode="half")
    # the class maps: 3*3*(3+1) channels; the box maps 3*3*8; offsets 2*4*9 and 2*1*9 channels
    sd = model.state_dict()
    assert sd["l21_PSC.weight"].shape[0] == 36 and sd["l17_PSC.weight"].shape[0] == 72
    assert sd["l22_DPSP.offset.weight"].shape[0] == 72
    assert sd["l18_DPSP.offset.weight"].shape[0] == 18
    x = torch.rand(2, 3, 32, 32)
    t = {"boxes": torch.tensor([[4.0, 4.0, 20.0, 18.0]]), "labels": torch.tensor([2])}
    model.train()
    losses = model(x, [t, t])
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_cls", "loss_box"}
    sum(losses.values()).backward()
    assert model.graph_module.l21_PSC.weight.grad.abs().max() > 0
    model.eval()
    out = model(x)
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}


@pytest.mark.parametrize(
    "desc, token, words",
    [
        ("@f BOXES[8] @r $f C[10,1] PSP[3,rois=r]", "PSP[3,rois=r]", "k*k*D channels"),
        (
            "@f BOXES[8] @r $f C[18,1] DPSP[3,rois=r,offsets=f,sets=3]",
            "DPSP[3,rois=r,offsets=f,sets=3]",
            "sets=3 must divide the 2 outputs",
        ),
        (
            "@f BOXES[8] @r $f C[9,1] PSP[3,rois=r] @b $f C[36,1] PSP[3,rois=r] DET[rois=r,deltas=b]",
            "DET[rois=r,deltas=b]",
            "deltas= must name 4 or 8 box deltas per RoI, not 1",
        ),
        (
            "@f BOXES[8] @r $f C[9,1] PSP[3,rois=f]",
            "PSP[3,rois=f]",
            "rois= must name a set of boxes",
        ),
    ],
)
def test_bad_strings_are_one_line_desc_errors(desc, token, words):
    with pytest.raises(DescError) as err:
        denet.compile(desc, (3, 16, 16), 3, border_mode="half")
    first = str(err.value).splitlines()[0]
    assert first.startswith(token + ":") and words in first, first


# -- end to end ------------------------------------------------------------------------------

# A small R-FCN on 64x64 scenes: three conv stages (stride 4), a softmax RPN on that level,
# R-FCN's head (1x1 conv, 3x3 position-sensitive class and box maps, PS pooling, voting).
RFCN_TOY = (
    "C[16,3] BN A P[2] C[32,3] BN A P[2] C[64,3] BN A @f "
    "RPN.S[16,32,pre_nms=300,post_nms=50,train_pre_nms=300,train_post_nms=100]($f) "
    "SAMPLE[64,0.25] @rois $f C.B[64,1] A @h PSC[3,8] PSP[3,rois=rois] @box "
    "$h PSC[3,classes,background=1] PSP[3,rois=rois] DET[rois=rois,deltas=box]"
)


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train_on_shapes(tmp_path, desc, name, epochs):
    """Trains ``desc`` through bin/model-train on the generated COCO shapes set of
    tests/cli/test_model_train_tasks.py (300 train, 60 val images, 64x64) and returns its log."""
    sys.path.insert(0, os.path.join(HERE, "..", "cli"))
    tasks = importlib.import_module("test_model_train_tasks")
    cli = _load("cli_conftest_for_rfcn", os.path.join(HERE, "..", "cli", "conftest.py"))
    root = tmp_path / "coco"
    tasks.make_coco(str(root), "train", 2017, tasks.scenes(300, 0, 64, (14, 30)), ext="png")
    tasks.make_coco(
        str(root), "val", 2017, tasks.scenes(60, 1, 64, (14, 30)), first_id=5000, ext="png"
    )
    prefix = tmp_path / "out" / name

    def tool(*args):
        return cli.run_tool(*args, timeout=600)

    res = tasks.train(tool, desc, root, tasks.COCO_TRAIN, prefix, "0.003", epochs, tasks.COCO_VAL)
    assert res.returncode == 0, res.stderr
    return tasks.read_log(f"{prefix}_log.jsonl")


@pytest.mark.slow
def test_small_rfcn_trains_to_ap50_through_model_train(tmp_path):
    log = _train_on_shapes(tmp_path, RFCN_TOY, "rfcn", "8")
    assert {"train_loss_objectness", "train_loss_cls", "train_loss_box"} <= set(log[-1])
    assert log[-1]["train_loss_cls"] < log[0]["train_loss_cls"]
    assert log[-1]["test_AP50"] >= 0.5, log[-1]


@pytest.mark.parametrize(
    "name, params",
    [
        ("rfcn_resnet101", 53_719_057),
        ("rfcn_dcn_resnet101", 62_951_501),
        ("faster_rcnn_dcn_resnet101", 64_211_159),
    ],
)
def test_examples_compile_with_the_parameter_count_their_header_states(name, params):
    with open(os.path.join(HERE, "..", "..", "examples", f"{name}.desc"), encoding="utf-8") as fh:
        text = fh.read()
    with torch.device("meta"):
        model = denet.compile(text, (3, 600, 600), 80, border_mode="half")
    assert sum(p.numel() for p in model.parameters()) == params
    assert f"{params:,} parameters" in text


# Deformable R-FCN in small: DPSP for boxes (one offset set) and classes, OHEM, soft-NMS
DRFCN_TOY = (
    "C[16,3] BN A P[2] C[32,3] BN A P[2] C[64,3] BN A @f "
    "RPN.S[16,32,pre_nms=300,post_nms=50,train_pre_nms=300,train_post_nms=100]($f) "
    "SAMPLE[100,0.25] @rois $f C.B[64,1] A @h PSC[3,8] DPSP[3,rois=rois,offsets=h,sets=1] @box "
    "$h PSC[3,classes,background=1] DPSP[3,rois=rois,offsets=h] "
    "DET[rois=rois,deltas=box,ohem=32,soft_nms=0.6]"
)


@pytest.mark.slow
def test_small_deformable_rfcn_with_ohem_trains_to_ap50(tmp_path):
    log = _train_on_shapes(tmp_path, DRFCN_TOY, "drfcn", "4")
    assert log[-1]["train_loss_box"] < log[0]["train_loss_box"]
    assert log[-1]["test_AP50"] >= 0.5, log[-1]
