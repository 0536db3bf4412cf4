"""denet.kernels.nms: box_iou / nms / batched_nms equal torchvision's; denet_nms and soft_nms
against hand-computed cases and literal loop transcriptions; both backends; opcheck."""

import math

import pytest
import torch

from denet.kernels.nms import batched_nms, box_iou, denet_nms, nms, soft_nms

torchvision = pytest.importorskip("torchvision")
tv_ops = torchvision.ops

# Masked-out lanes and empty boxes divide 0 by 0 in the Triton interpreter (numpy warns).
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _boxes(n, seed, dtype=torch.float64, clustered=True):
    """Random xyxy boxes with heavy overlap, exact duplicates, degenerate (zero-width/height and
    empty) boxes, and repeated scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(max(n // 6, 1), 2, generator=g) * 60
    pick = torch.randint(0, centres.shape[0], (n,), generator=g)
    xy = (
        centres[pick] + torch.randn(n, 2, generator=g) * 4
        if clustered
        else torch.rand(n, 2, generator=g) * 60
    )
    wh = torch.rand(n, 2, generator=g) * 20 + 2
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(n, generator=g)
    if n >= 12:
        boxes[1::7] = boxes[0::7][: boxes[1::7].shape[0]]  # exact duplicates
        boxes[3::11, 2] = boxes[3::11, 0]  # zero width
        boxes[5::13, 2:] = boxes[5::13, :2]  # empty
        scores[2::5] = scores[0]  # ties
    return boxes.to(dtype), scores.to(dtype)


# ------------------------------------------------------------------------------ torchvision


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed,n", [(0, 1), (1, 7), (2, 60), (3, 150)])
def test_nms_equals_torchvision(device, dtype, seed, n):
    boxes, scores = _boxes(n, seed, dtype)
    for threshold in (0.3, 0.5, 0.7):  # 0.3 and 0.7 round up in float32
        expected = tv_ops.nms(boxes, scores, threshold)
        keep = nms(boxes.to(device), scores.to(device), threshold)
        assert keep.dtype == torch.int64
        assert torch.equal(keep.cpu(), expected), threshold


@pytest.mark.parametrize("clustered", [True, False])
def test_blocked_reference_nms_equals_torchvision(monkeypatch, clustered):
    # The reference decides 256 boxes at a time: a block's boxes must meet the boxes kept in
    # every earlier block (the interpreted Triton path is too slow at this size for CI).
    monkeypatch.setenv("DENET_KERNEL_BACKEND", "reference")
    for seed, n in ((5, 700), (6, 2049)):
        boxes, scores = _boxes(n, seed, torch.float32, clustered)
        for threshold in (0.3, 0.5, 0.7):
            assert torch.equal(nms(boxes, scores, threshold), tv_ops.nms(boxes, scores, threshold))


def test_nms_threshold_rounding(device):
    # inter 3, union 6.5 + 6.5 - 3 = 10: IoU = 3/10, which is float32(0.3) = 0.30000001 in float32
    # (above the double 0.3, so torchvision suppresses) and exactly 0.3 in float64 (not above).
    boxes = torch.tensor([[0.0, 0.0, 6.5, 1.0], [3.5, 0.0, 10.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    for dtype, expected in ((torch.float32, [0]), (torch.float64, [0, 1])):
        b, s = boxes.to(dtype), scores.to(dtype)
        assert tv_ops.nms(b, s, 0.3).tolist() == expected
        assert nms(b.to(device), s.to(device), 0.3).tolist() == expected
        assert denet_nms(b.to(device), s.to(device), 0.3).tolist() == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed,n,classes", [(4, 40, 3), (5, 120, 5), (6, 1001, 4)])
def test_batched_nms_equals_torchvision(device, dtype, seed, n, classes):
    # 1001 boxes (4004 coordinates) take torchvision's per-class path on CPU.
    boxes, scores = _boxes(n, seed, dtype)
    idxs = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))
    if device == "cpu":
        expected = tv_ops.batched_nms(boxes, scores, idxs, 0.5)
    else:
        # Off the CPU torchvision switches strategy at 100000 coordinates; run the strategy our GPU
        # path takes on torchvision's CPU kernel (its CUDA kernel sorts tied scores unstably).
        from torchvision.ops.boxes import _batched_nms_coordinate_trick

        expected = _batched_nms_coordinate_trick(boxes, scores, idxs, 0.5)
    keep = batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5)
    assert torch.equal(keep.cpu(), expected)


@pytest.mark.parametrize("clustered", [True, False])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_sparse_reference_equals_torchvision(monkeypatch, clustered, threshold):
    # The reference sweeps strips for intersecting pairs only: many boxes, duplicates, empty
    # and zero-width boxes, ties, thresholds at the edges (0: any intersection suppresses).
    from torchvision.ops.boxes import _batched_nms_vanilla

    monkeypatch.setenv("DENET_KERNEL_BACKEND", "reference")
    for seed, n in ((7, 3000), (8, 1200)):
        boxes, scores = _boxes(n, seed, torch.float32, clustered)
        assert torch.equal(nms(boxes, scores, threshold), tv_ops.nms(boxes, scores, threshold))
        for classes in (1, 7, n // 2, n):  # n: every category has one box
            idxs = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(n))
            expected = _batched_nms_vanilla(boxes, scores, idxs, threshold)
            assert torch.equal(batched_nms(boxes, scores, idxs, threshold), expected)


def test_sparse_reference_fallbacks(monkeypatch):
    # Negative thresholds (disjoint boxes suppress) and non-finite coordinates take the dense path.
    from denet.kernels.nms import reference

    monkeypatch.setenv("DENET_KERNEL_BACKEND", "reference")
    boxes, scores = _boxes(1100, 9, torch.float64)
    assert not reference.sparse_applies(boxes, -0.1)
    assert torch.equal(nms(boxes, scores, -0.1), tv_ops.nms(boxes, scores, -0.1))
    boxes[4, 2] = math.inf
    boxes[9, 0] = math.nan
    assert not reference.sparse_applies(boxes, 0.5)
    idxs = torch.randint(0, 3, (1100,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(nms(boxes, scores, 0.5), tv_ops.nms(boxes, scores, 0.5))
    assert torch.equal(
        batched_nms(boxes, scores, idxs, 0.5), tv_ops.batched_nms(boxes, scores, idxs, 0.5)
    )


def test_sparse_reference_small_cases():
    from denet.kernels.nms import reference

    one = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert reference.nms(one, torch.ones(1), 0.5).tolist() == [0]
    # disjoint boxes: no candidate pairs at all
    far = torch.tensor([[0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 6.0], [9.0, 0.0, 10.0, 1.0]])
    assert reference.nms(far, torch.tensor([0.1, 0.3, 0.2]), 0.5).tolist() == [1, 2, 0]
    # equal boxes with equal scores: the first in input order stays
    same = torch.tensor([[0.0, 0.0, 2.0, 2.0]] * 3)
    assert reference.nms(same, torch.ones(3), 0.5).tolist() == [0]
    idxs = torch.tensor([0, 1, 0])
    assert reference.batched_nms(same, torch.ones(3), idxs, 0.5).tolist() == [0, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_equals_torchvision(device, dtype):
    b1, _ = _boxes(37, 8, dtype)
    b2, _ = _boxes(70, 9, dtype, clustered=False)
    b2[:5] = b1[:5]
    expected = tv_ops.box_iou(b1, b2)
    out = box_iou(b1.to(device), b2.to(device))
    assert out.dtype == dtype
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=0, equal_nan=True)
    # Leading batch dimensions broadcast, as in torchvision.
    batched = box_iou(b1[:4].to(device)[None].expand(3, 4, 4), b2[:6].to(device))
    torch.testing.assert_close(
        batched.cpu(), expected[:4, :6].expand(3, 4, 6), rtol=0, atol=0, equal_nan=True
    )


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
def test_box_iou_formats(fmt):
    b1, _ = _boxes(10, 10)
    b2, _ = _boxes(12, 11)
    b1 = tv_ops.box_convert(b1[b1[:, 2] > b1[:, 0] + 1], "xyxy", fmt)
    b2 = tv_ops.box_convert(b2[b2[:, 2] > b2[:, 0] + 1], "xyxy", fmt)
    torch.testing.assert_close(box_iou(b1, b2, fmt=fmt), tv_ops.box_iou(b1, b2, fmt=fmt))


def test_box_iou_gradient(device):
    g = torch.Generator().manual_seed(12)
    lo = torch.rand(3, 2, generator=g, dtype=torch.float64) * 4
    b1 = torch.cat([lo, lo + 3], dim=1).to(device).requires_grad_()
    b2 = (torch.cat([lo, lo + 3], dim=1) + 1.3).to(device).requires_grad_()
    assert torch.autograd.gradcheck(box_iou, (b1, b2), fast_mode=True)
    w = torch.randn(3, 3, dtype=torch.float64, device=device)
    g_ours = torch.autograd.grad((box_iou(b1, b2) * w).sum(), (b1, b2))
    g_tv = torch.autograd.grad((tv_ops.box_iou(b1, b2) * w).sum(), (b1, b2))
    for a, b in zip(g_ours, g_tv):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(device, dtype):
    # Low-precision boxes give the same result on every backend; IoU is computed in float32.
    boxes, scores = _boxes(80, 13, torch.float32)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    ref = tv_ops.nms(boxes.float(), scores.float(), 0.5)  # same values, upcast exactly
    assert torch.equal(nms(boxes.to(device), scores.to(device), 0.5).cpu(), ref)
    assert box_iou(boxes.to(device), boxes.to(device)).dtype == torch.float32
    keep, kept = soft_nms(boxes.to(device), scores.to(device))
    assert kept.dtype == dtype and keep.dtype == torch.int64


# ---------------------------------------------------------------------------------- denet_nms

A, B, C = [0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [10.0, 0.0, 20.0, 10.0]
# IoU(A, B) = IoU(B, C) = 50 / 150 = 1/3; A and C only touch: IoU 0.


def test_golden_denet_nms_suppressed_box_still_suppresses(device):
    boxes = torch.tensor([A, B, C], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7], device=device)
    # Greedy: A kept, B suppressed by A, C kept (its only suppressor B is gone).
    assert nms(boxes, scores, 0.3).tolist() == [0, 2]
    # DeNet: C is dropped by B although B itself was dropped.
    assert denet_nms(boxes, scores, 0.3).tolist() == [0]
    # Above 1/3 nothing overlaps enough.
    assert denet_nms(boxes, scores, 0.34).tolist() == [0, 1, 2]


def test_golden_denet_nms_order_and_ties(device):
    boxes = torch.tensor([C, A, [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], B], device=device)
    scores = torch.tensor([0.2, 0.1, 0.5, 0.5, 0.05], device=device)
    # The two identical unit boxes have equal scores: neither is strictly better, both stay
    # (greedy keeps only the first). A (0.1) overlaps the unit boxes by 1/100 only. B is dropped
    # by C and by A. Order: decreasing score, ties by index.
    assert denet_nms(boxes, scores, 0.3).tolist() == [2, 3, 0, 1]
    assert nms(boxes, scores, 0.3).tolist() == [2, 0, 1]


def _denet_nms_loop(boxes, scores, threshold):
    """``perform_nms`` from DeNet's denet_detect.cc, literally (with torchvision's IoU)."""
    iou = tv_ops.box_iou(boxes, boxes)
    kept = [
        a
        for a in range(len(boxes))
        if not any(scores[a] < scores[b] and iou[a, b] > threshold for b in range(len(boxes)))
    ]
    return sorted(kept, key=lambda i: (-float(scores[i]), i))


@pytest.mark.parametrize("seed", [0, 1])
def test_denet_nms_matches_loop(device, seed):
    boxes, scores = _boxes(60, 20 + seed)
    expected = _denet_nms_loop(boxes, scores, 0.5)
    keep = denet_nms(boxes.to(device), scores.to(device), 0.5)
    assert keep.cpu().tolist() == expected
    assert set(expected) <= set(tv_ops.nms(boxes, scores, 0.5).tolist())


# ----------------------------------------------------------------------------------- soft_nms


def test_golden_soft_nms(device):
    boxes = torch.tensor(
        [A, B, [20.0, 0.0, 30.0, 10.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64, device=device
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.0005], dtype=torch.float64, device=device)
    # Gaussian, sigma 0.5: picking A rescales B by exp(-(1/3)^2 / 0.5) = exp(-2/9) ~ 0.8007, so
    # B (0.6406) falls behind the disjoint box 2 (0.7). Box 3 starts below 0.001 and is dropped.
    keep, kept = soft_nms(boxes, scores, sigma=0.5)
    assert keep.tolist() == [0, 2, 1]
    torch.testing.assert_close(
        kept, torch.tensor([0.9, 0.7, 0.8 * math.exp(-2 / 9)], dtype=torch.float64, device=device)
    )
    # Linear: IoU 1/3 > 0.3 scales B by 2/3; with the threshold at 0.4 B is untouched.
    keep, kept = soft_nms(boxes, scores, iou_threshold=0.3, method="linear")
    assert keep.tolist() == [0, 2, 1]
    torch.testing.assert_close(
        kept, torch.tensor([0.9, 0.7, 0.8 * 2 / 3], dtype=torch.float64, device=device)
    )
    keep, kept = soft_nms(boxes, scores, iou_threshold=0.4, method="linear")
    assert keep.tolist() == [0, 1, 2] and kept.tolist() == [0.9, 0.8, 0.7]
    # score_threshold 0.65 drops B after its rescoring to 0.6406.
    keep, kept = soft_nms(boxes, scores, sigma=0.5, score_threshold=0.65)
    assert keep.tolist() == [0, 2] and kept.tolist() == [0.9, 0.7]


def _soft_nms_loop(boxes, scores, sigma, nt, method, threshold):
    """Bodla et al.'s ``cpu_soft_nms`` loop (without its "+1" areas; NaN IoU counts as 0)."""
    iou = tv_ops.box_iou(boxes, boxes).nan_to_num(0.0).tolist()
    cur = scores.tolist()
    alive = [i for i in range(len(cur)) if cur[i] >= threshold]
    keep, kept = [], []
    while alive:
        m = max(alive, key=lambda i: (cur[i], -i))
        keep.append(m)
        kept.append(cur[m])
        alive.remove(m)
        for i in alive:
            ov = iou[m][i]
            if method == "gaussian":
                cur[i] *= math.exp(-(ov * ov) / sigma)
            elif ov > nt:
                cur[i] *= 1 - ov
        alive = [i for i in alive if cur[i] >= threshold]
    return keep, kept


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_matches_loop(device, method):
    boxes, scores = _boxes(50, 30)
    keep_ref, kept_ref = _soft_nms_loop(boxes, scores, 0.5, 0.3, method, 0.01)
    keep, kept = soft_nms(boxes.to(device), scores.to(device), 0.5, 0.3, method, 0.01)
    assert keep.cpu().tolist() == keep_ref
    torch.testing.assert_close(kept.cpu(), torch.tensor(kept_ref, dtype=torch.float64))


def test_soft_nms_duplicates_and_long_runs(device):
    # 40 copies of one box: the first pick gives the others IoU 1, i.e. factor 0 under "linear",
    # so they all drop; then 45 disjoint boxes are picked one by one (more than one host check).
    dup = torch.tensor([[0.0, 0.0, 4.0, 4.0]]).repeat(40, 1)
    x = torch.arange(45, dtype=torch.float32)[:, None] * 10 + 100
    disjoint = torch.cat([x, torch.zeros_like(x), x + 5, torch.full_like(x, 5)], dim=1)
    boxes = torch.cat([dup, disjoint]).to(device)
    scores = torch.cat([torch.linspace(0.5, 0.9, 40), torch.linspace(0.01, 0.45, 45)]).to(device)
    keep, kept = soft_nms(boxes, scores, iou_threshold=0.3, method="linear")
    assert keep.tolist() == [39] + list(range(84, 39, -1))
    assert torch.equal(kept, scores[keep])
    # Gaussian: each pick of a copy scales the other copies by exp(-1/0.5), until they drop.
    keep, kept = soft_nms(boxes.double(), scores.double(), sigma=0.5)
    keep_ref, kept_ref = _soft_nms_loop(
        boxes.cpu().double(), scores.cpu().double(), 0.5, 0.3, "gaussian", 0.001
    )
    assert keep.tolist() == keep_ref and 40 < len(keep_ref) < 85
    torch.testing.assert_close(kept.cpu(), torch.tensor(kept_ref, dtype=torch.float64))


# --------------------------------------------------------------------------- edges and checks


def test_empty(device):
    for dtype in (torch.float32, torch.float64):
        boxes = torch.zeros(0, 4, dtype=dtype, device=device)
        scores = torch.zeros(0, dtype=dtype, device=device)
        for keep in (
            nms(boxes, scores, 0.5),
            denet_nms(boxes, scores, 0.5),
            batched_nms(boxes, scores, torch.zeros(0, dtype=torch.int64, device=device), 0.5),
        ):
            assert keep.shape == (0,) and keep.dtype == torch.int64
        keep, kept = soft_nms(boxes, scores)
        assert keep.shape == (0,) and keep.dtype == torch.int64 and kept.dtype == dtype
        assert box_iou(boxes, torch.zeros(3, 4, dtype=dtype, device=device)).shape == (0, 3)
        assert box_iou(torch.zeros(3, 4, dtype=dtype, device=device), boxes).shape == (3, 0)


def test_errors():
    b, s = torch.zeros(3, 4), torch.zeros(3)
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        nms(torch.zeros(3, 5), s, 0.5)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        denet_nms(b, torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match=r"\(2,\)"):
        batched_nms(b, s, torch.zeros(2, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="method"):
        soft_nms(b, s, method="hard")
    with pytest.raises(ValueError, match="sigma"):
        soft_nms(b, s, sigma=0.0)
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        box_iou(torch.zeros(3, 3), b)
    with pytest.raises(ValueError, match="fmt"):
        box_iou(b, b, fmt="xyxyxyxy")
    with pytest.raises(ValueError, match="floating"):
        nms(b.long(), s, 0.5)


@pytest.mark.parametrize("dev", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_opcheck(dev, monkeypatch):
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.delenv("DENET_KERNEL_BACKEND", raising=False)
    boxes, scores = _boxes(20, 40, torch.float32)
    boxes, scores = boxes.to(dev), scores.to(dev)
    torch.library.opcheck(torch.ops.denet.nms, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.denet.denet_nms, (boxes, scores, 0.5))
    if dev == "cpu":
        idxs = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(0))
        torch.library.opcheck(torch.ops.denet.batched_nms, (boxes, scores, idxs, 0.5))
    torch.library.opcheck(torch.ops.denet.soft_nms, (boxes, scores, 0.5, 0.3, "gaussian", 0.001))
    proper, _ = _boxes(11, 41, torch.float32)  # fewer than 12: no empty boxes, so no NaN IoU
    proper = proper.to(dev)
    torch.library.opcheck(
        torch.ops.denet.box_iou, (proper[None, :5].clone().requires_grad_(), proper[None, 5:])
    )
