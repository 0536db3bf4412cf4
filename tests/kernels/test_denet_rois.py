"""denet.kernels.denet_rois: DeNet's RoI generation against a plain-Python-loop oracle written
from the reference text (docs/kernels.md, reference section 3.2), hand-computed golden cases
(one pair, the ``fabs`` quirk, the local-max window at the border, the clustering rules),
argument errors, opcheck, torch.export and torch.compile."""

import os
import sys

import pytest
import torch

from denet.kernels import denet_rois
from denet.kernels.denet_rois import reference

sys.path.insert(0, os.path.dirname(__file__))
from denet_rois_oracle import (  # noqa: E402
    oracle_cluster,
    oracle_corners,
    oracle_rois,
    oracle_score,
)


def assert_matches_oracle(logp, sample_num, **kw):
    boxes, scores, counts = denet_rois(logp, sample_num, **kw)
    expected = oracle_rois(logp.cpu(), sample_num, **kw)
    h, w = logp.shape[-2:]
    count = sample_num * sample_num
    assert boxes.shape == (logp.shape[0], count, 4) and scores.shape == (logp.shape[0], count)
    assert counts.tolist() == [len(e) for e in expected]
    for b, exp in enumerate(expected):
        n = len(exp)
        want = torch.tensor(
            [[x0 / w, y0 / h, (x1 + 1) / w, (y1 + 1) / h] for (x0, y0, x1, y1), _ in exp],
            dtype=torch.float64,
        ).reshape(n, 4)
        assert torch.equal(boxes[b, :n].cpu(), want.float())
        want_s = torch.tensor([oracle_score(g) for _, g in exp], dtype=torch.float64)
        torch.testing.assert_close(scores[b, :n].cpu().double(), want_s, rtol=1e-6, atol=1e-30)
        assert not boxes[b, n:].any() and not scores[b, n:].any()
    return counts


def random_logp(batch, k, h, w, seed, mean=-1.0, levels=None, device="cpu"):
    """DeNet's corner layer output for a random logit map: ``log_softmax([z, -z])``-style
    ``(log(1-p), log p)`` with p = sigmoid(z); ``levels`` quantises p (ties everywhere)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, k, h, w, generator=g) * 2.0 + mean
    if levels is not None:
        choice = torch.randint(len(levels), (batch, k, h, w), generator=g)
        p = torch.tensor(levels)[choice]
        z = torch.log(p) - torch.log1p(-p)
    logp = torch.stack((torch.nn.functional.logsigmoid(-z), torch.nn.functional.logsigmoid(z)), 1)
    return logp.float().to(device)


# ------------------------------------------------------------------------- against the oracle


@pytest.mark.parametrize("k", [4, 5])
@pytest.mark.parametrize("r", [0, 1, 2])
def test_matches_oracle(k, r):
    logp = random_logp(2, k, 9, 11, seed=10 * k + r)
    assert_matches_oracle(logp, 6, corner_threshold=0.3, local_max=r)


@pytest.mark.parametrize("k", [4, 5])
def test_corner_max_cuts_candidates(k):
    logp = random_logp(2, k, 10, 10, seed=3 + k, mean=0.0)
    counts = assert_matches_oracle(logp, 20, corner_threshold=0.1, corner_max=5)
    full = denet_rois(logp, 20, corner_threshold=0.1)[2]
    assert (counts < full).all()  # the cap removed boxes


def test_more_rows_than_boxes_zero_padded_and_counts_differ():
    # Image 1 has a much stricter map than image 0: different counts, both below S = 1600.
    logp = torch.cat(
        (random_logp(1, 4, 10, 12, seed=1, mean=-2), random_logp(1, 4, 10, 12, seed=2, mean=-3))
    )
    counts = assert_matches_oracle(logp, 40, corner_threshold=0.3)
    assert counts[0] != counts[1] and counts.max() < 1600 and counts.min() > 0


@pytest.mark.parametrize("k", [4, 5])
def test_ties_everywhere(k):
    # Quantised probabilities: equal corner values (the corner_max cut in raster order), equal
    # gaps (ranked by box), equal cluster sizes (list order).
    logp = random_logp(2, k, 8, 9, seed=7, levels=[0.05, 0.3, 0.6, 0.9])
    assert_matches_oracle(logp, 5, corner_threshold=0.2, local_max=1, corner_max=7)
    assert_matches_oracle(logp, 3, corner_threshold=0.2, cluster_threshold=0.4, corner_max=7)


@pytest.mark.parametrize("k", [4, 5])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.45, 0.6])
def test_clustering_matches_oracle(k, threshold):
    logp = random_logp(2, k, 10, 10, seed=int(threshold * 10) + k, mean=0.0)
    counts = assert_matches_oracle(logp, 3, corner_threshold=0.3, cluster_threshold=threshold)
    assert (counts == 9).all()


def test_cluster_keep_matches_oracle_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        n, count = (
            int(torch.randint(2, 60, (1,), generator=g)),
            int(torch.randint(1, 12, (1,), generator=g)),
        )
        xy = torch.randint(0, 12, (n, 2), generator=g) * 2
        wh = torch.randint(1, 6, (n, 2), generator=g) * 2
        boxes = torch.cat((xy, xy + wh), 1)
        threshold = [0.0, 0.2, 0.5][trial % 3]
        got = reference.cluster_keep(boxes, threshold, count).tolist()
        assert got == oracle_cluster(boxes.tolist(), threshold, count), trial


def _shuffled_chains(g):
    """Groups of 1-4 boxes 3 pixels apart (IoU 0.54 with the next, 0.25 with the one after), in
    random rank order: clusters are chains that often form from two halves merged later."""
    boxes = []
    for c in range(int(torch.randint(2, 9, (1,), generator=g))):
        for i in range(int(torch.randint(1, 5, (1,), generator=g))):
            boxes.append((30 * c + 3 * i, 0, 30 * c + 3 * i + 9, 9))
    return torch.tensor(boxes)[torch.randperm(len(boxes), generator=g)]


def test_cluster_keep_matches_oracle_on_merging_chains():
    # Equal-size clusters at the S cut, some of them merged: DeNet's list order decides.
    g = torch.Generator().manual_seed(1)
    for trial in range(100):
        boxes = _shuffled_chains(g)
        count = int(torch.randint(1, 6, (1,), generator=g))
        got = reference.cluster_keep(boxes, 0.5, count).tolist()
        assert got == oracle_cluster(boxes.tolist(), 0.5, count), trial


# ------------------------------------------------------------------------------ golden cases


def logp_from_probabilities(p):
    """[B, K, H, W] probabilities of "present" -> [B, 2, K, H, W] (log(1-p), log p)."""
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.stack((torch.log1p(-p), torch.log(p)), 1).float()


def test_golden_single_pair():
    p = torch.full((1, 4, 10, 8), 0.001)
    p[0, 0, 3, 2] = 0.9  # TL at (x0, y0) = (2, 3)
    p[0, 3, 7, 6] = 0.8  # BR at (x1, y1) = (6, 7)
    boxes, scores, counts = denet_rois(logp_from_probabilities(p), 2)
    assert counts.tolist() == [1]
    # (x0/W, y0/H, (x1+1)/W, (y1+1)/H) with W = 8, H = 10.
    assert torch.equal(boxes[0, 0], torch.tensor([2 / 8, 3 / 10, 7 / 8, 8 / 10]))
    # Summed logit ln 9 + ln 4 + 2 ln(1/999) < 0, so the score is the odds' sigmoid:
    # (36/998001) / (1 + 36/998001) = 36/998037. TR (6,3) and BL (2,7) sit at p = 0.001.
    torch.testing.assert_close(scores[0, 0].double(), torch.tensor(36 / 998037).double())
    assert not boxes[0, 1:].any() and not scores[0, 1:].any()


def test_golden_fabs_quirk():
    # Box A: four corners at p = 0.9 (x 8..11, y 0..3); box B: four at p = 0.4 (x 0..3, y 8..11).
    p = torch.full((1, 4, 12, 12), 0.001)
    for k, (x, y) in enumerate([(8, 0), (11, 0), (8, 3), (11, 3)]):
        p[0, k, y, x] = 0.9
    for k, (x, y) in enumerate([(0, 8), (3, 8), (0, 11), (3, 11)]):
        p[0, k, y, x] = 0.4
    boxes, scores, counts = denet_rois(logp_from_probabilities(p), 2)
    # A: summed logit 4 ln 9 > 0, |.| = 4 ln 9: 1/(1 + 9^4) = 1/6562.
    # B: 4 ln(2/3) < 0: 1/(1 + 1.5^4) = 1/6.0625 = 0.16495.
    # The only cross pair, TR of A (11, 0) with BL of B (0, 11), is the box (0, 0, 11, 11) with
    # corners 0.001, 0.9, 0.4, 0.001: summed logit ln(9 * 2/3 / 999^2) < 0: 6/998007.
    assert counts.tolist() == [3]
    expected_boxes = torch.tensor(
        [[0, 8, 4, 12], [8, 0, 12, 4], [0, 0, 12, 12]], dtype=torch.float32
    ) / torch.tensor([12.0, 12.0, 12.0, 12.0])
    assert torch.equal(boxes[0, :3], expected_boxes)
    torch.testing.assert_close(
        scores[0, :3].double(), torch.tensor([1 / 6.0625, 1 / 6562, 6 / 998007]).double()
    )
    # sigmoid(summed logit) would rank A (0.99985) first: the fabs puts it second.
    assert scores[0, 0] > scores[0, 1]


def test_golden_local_max_window_at_the_border():
    # r = 1: the window of (x, y) is x-1 .. x, y-1 .. y, clipped to 0 .. W-2, 0 .. H-2.
    p = torch.full((1, 1, 4, 4), 0.001)
    p[0, 0, 0, 2], p[0, 0, 0, 3] = 0.9, 0.5  # window of (3, 0): column 2 only, so 0.5 loses
    p[0, 0, 3, 0], p[0, 0, 3, 1] = 0.9, 0.5  # window of (1, 3): row 2 only, so 0.5 survives
    p[0, 0, 1, 1] = 0.2  # window (0..1, 0..1) holds itself and 0.001: survives
    present = logp_from_probabilities(p)[:, 1]
    mask = reference.candidate_mask(present, 0.01, 1)[0, 0]
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0, 2] = expected[3, 0] = expected[3, 1] = expected[1, 1] = True
    assert torch.equal(mask, expected)
    # The oracle agrees, and without the window all five pass.
    got = {(x, y) for x, y in oracle_corners(present[0, 0].tolist(), 0.01, 1, 99)}
    assert got == {(2, 0), (0, 3), (1, 3), (1, 1)}
    assert reference.candidate_mask(present, 0.01, 0).sum() == 5


def test_golden_centre_boxes():
    # K = 5; only a centre at (4, 4) and a TL at (2, 3) are candidates: the mirrored box is
    # (2, 3, 6, 5). The TL at (2, 3) has no BR, so it is the only box.
    p = torch.full((1, 5, 9, 9), 0.001)
    p[0, 4, 4, 4] = 0.9
    p[0, 0, 3, 2] = 0.9
    boxes, scores, counts = denet_rois(logp_from_probabilities(p), 1)
    assert counts.tolist() == [1]
    assert torch.equal(boxes[0, 0], torch.tensor([2 / 9, 3 / 9, 7 / 9, 6 / 9]))
    # Corners TL 0.9, TR/BL/BR 0.001, centre ((2+6)//2, (3+5)//2) = (4, 4) at 0.9.
    expected = 81 / (81 + 999**3)
    torch.testing.assert_close(scores[0, 0].double(), torch.tensor(expected).double())


def test_golden_centre_box_off_the_map_is_dropped():
    p = torch.full((1, 5, 6, 6), 0.001)
    p[0, 4, 2, 4] = 0.9  # centre (4, 2)
    p[0, 0, 1, 1] = 0.9  # TL (1, 1): mirror x1 = 7 >= W = 6
    assert denet_rois(logp_from_probabilities(p), 1)[2].tolist() == [0]


def _cluster(boxes, threshold, count):
    return reference.cluster_keep(torch.tensor(boxes), threshold, count).tolist()


A1, A2, A3 = (0, 0, 9, 9), (1, 0, 10, 9), (0, 1, 9, 10)  # IoU 0.82 (a1, a2), 0.68 (a2, a3)
B1, B2 = (20, 20, 29, 29), (21, 21, 30, 30)  # IoU 81/119 = 0.68
C = (40, 0, 44, 4)


def test_golden_clustering_two_groups_and_ratio():
    samples = [A1, A2, B1, B2, C, A3]  # best first
    # Clusters {0, 1, 5}, {2, 3}, {4}; ratio = (4 - 3) / (6 - 3) = 1/3; each keeps
    # 1 + floor(size / 3): 2, 1, 1. So C (rank 4) replaces B2 (rank 3) in the top 4.
    assert _cluster(samples, 0.5, 4) == [0, 1, 2, 4] == oracle_cluster(samples, 0.5, 4)


def test_golden_clustering_floor_of_the_ratio():
    group_a = [(i, 0, i + 19, 19) for i in range(10)]
    group_b = [(100 + i, 0, 119 + i, 19) for i in range(5)]
    samples = group_a + group_b + [(200, 0, 204, 4)]
    # ratio = (9 - 3) / (16 - 3) = 6/13: 1 + floor(60/13) = 5, 1 + floor(30/13) = 3, 1 + 0 = 1.
    assert _cluster(samples, 0.5, 9) == [0, 1, 2, 3, 4, 10, 11, 12, 15]


L, R, M = (0, 0, 9, 9), (8, 0, 17, 9), (4, 0, 13, 9)  # IoU(L, R) = 0.11, M-L = M-R = 0.43
X1, X2, X3 = (30, 0, 39, 9), (31, 0, 40, 9), (30, 1, 39, 10)


def test_golden_clustering_merge():
    samples = [L, R, M, (50, 50, 54, 54), (60, 60, 64, 64)]
    # M links the clusters of L and R: one cluster {L, R, M} (size 3) and two singletons. Only
    # S = 2 clusters are kept (the biggest, then the first singleton); ratio 0: one box each.
    assert _cluster(samples, 0.3, 2) == [0, 3] == oracle_cluster(samples, 0.3, 2)
    # Without the merge (threshold 0.5 links nothing) the four best singletons would decide.
    assert _cluster(samples, 0.5, 2) == [0, 1]


def test_golden_clustering_equal_sizes_keep_list_order():
    # {L, R, M} opened by L (rank 0) and again by R (rank 2), merged by M: DeNet's merged
    # cluster sits where R's was, after X1's (rank 1). Both clusters have 3 boxes; S = 1 keeps
    # the first in the list, X1's, although L is the better box.
    samples = [L, X1, R, M, X2, X3]
    assert _cluster(samples, 0.3, 1) == [1] == oracle_cluster(samples, 0.3, 1)


def test_clustering_only_with_more_boxes_than_rows_and_threshold_below_one():
    logp = random_logp(1, 4, 10, 10, seed=5, mean=0.0)
    plain = denet_rois(logp, 3, corner_threshold=0.3)
    assert plain[2].item() == 9
    # A threshold of 1 (or more) is off; so is clustering when S covers every box.
    for threshold in (1.0, 2.0):
        got = denet_rois(logp, 3, corner_threshold=0.3, cluster_threshold=threshold)
        assert all(torch.equal(a, b) for a, b in zip(got, plain))
    everything = denet_rois(logp, 60, corner_threshold=0.3)
    clustered = denet_rois(logp, 60, corner_threshold=0.3, cluster_threshold=0.1)
    assert all(torch.equal(a, b) for a, b in zip(everything, clustered))
    assert not torch.equal(
        denet_rois(logp, 3, corner_threshold=0.3, cluster_threshold=0.3)[0], plain[0]
    )


# ----------------------------------------------------------------------- dtypes, grad, errors


def test_other_dtypes_are_computed_in_float32():
    logp = random_logp(1, 4, 8, 8, seed=11)
    expected = denet_rois(logp, 4, corner_threshold=0.2)
    for dtype in (torch.float64, torch.float16):
        got = denet_rois(logp.to(dtype), 4, corner_threshold=0.2)
        reference_got = denet_rois(logp.to(dtype).float(), 4, corner_threshold=0.2)
        assert all(torch.equal(a, b) for a, b in zip(got, reference_got))
        assert got[0].dtype == got[1].dtype == torch.float32 and got[2].dtype == torch.int64
    assert all(torch.equal(a, b) for a, b in zip(denet_rois(logp.double(), 4, 0.2), expected))


def test_no_gradient_flows():
    logp = random_logp(1, 4, 6, 6, seed=0).requires_grad_()
    for out in (
        denet_rois(logp, 2, corner_threshold=0.2),
        torch.ops.denet.denet_rois(logp, 2, 0.2, 0, 1.0, 1024),
    ):
        assert not any(t.requires_grad for t in out)
    boxes, scores, _ = denet_rois(logp, 2, corner_threshold=0.2)
    (logp.sum() + scores.sum() + boxes.sum()).backward()
    assert torch.equal(logp.grad, torch.ones_like(logp))  # only the direct term


def test_empty_result():
    logp = logp_from_probabilities(torch.full((2, 4, 3, 3), 0.001))
    boxes, scores, counts = denet_rois(logp, 2)
    assert counts.tolist() == [0, 0] and not boxes.any() and not scores.any()
    one_pixel = denet_rois(logp_from_probabilities(torch.full((1, 5, 1, 1), 0.5)), 2, local_max=2)
    assert one_pixel[2].tolist() == [0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"corner_logp": torch.zeros(1, 4, 3, 3)}, "corner_logp"),
        ({"corner_logp": torch.zeros(1, 3, 4, 3, 3)}, "corner_logp"),
        ({"corner_logp": torch.zeros(1, 2, 3, 3, 3)}, "corner_logp"),
        ({"corner_logp": torch.zeros(1, 2, 4, 0, 3)}, "corner_logp"),
        ({"corner_logp": torch.zeros(1, 2, 4, 3, 3, dtype=torch.int64)}, "corner_logp"),
        ({"corner_logp": [0.0]}, "corner_logp"),
        ({"sample_num": 0}, "sample_num"),
        ({"sample_num": True}, "sample_num"),
        ({"sample_num": 2.0}, "sample_num"),
        ({"local_max": -1}, "local_max"),
        ({"corner_max": 0}, "corner_max"),
        ({"corner_threshold": 1.5}, "corner_threshold"),
        ({"corner_threshold": float("nan")}, "corner_threshold"),
        ({"corner_threshold": "0.1"}, "corner_threshold"),
        ({"cluster_threshold": -0.1}, "cluster_threshold"),
    ],
)
def test_errors_name_the_argument(kwargs, match):
    args = {"corner_logp": torch.zeros(1, 2, 4, 3, 3), "sample_num": 2, **kwargs}
    with pytest.raises(ValueError, match=f"denet_rois: {match}"):
        denet_rois(**args)


# ------------------------------------------------------------------ registration and devices


def test_opcheck():
    # The fake kernel's shapes are static ([B, S, 4], [B, S], [B]), so every opcheck test
    # applies, the data-dependent internals included (the op is opaque to tracing).
    logp = random_logp(2, 5, 7, 8, seed=1)
    torch.library.opcheck(torch.ops.denet.denet_rois, (logp, 3, 0.2, 1, 0.5, 16))
    logp.requires_grad_()  # the autograd rule: outputs non-differentiable
    torch.library.opcheck(torch.ops.denet.denet_rois, (logp, 2, 0.3, 0, 1.0, 1024))


class _Rois(torch.nn.Module):
    def forward(self, logp):
        return denet_rois(logp, 3, corner_threshold=0.2, local_max=1, cluster_threshold=0.5)


def test_export_and_compile():
    logp = random_logp(2, 4, 7, 8, seed=2)
    expected = _Rois()(logp)
    exported = torch.export.export(_Rois(), (logp,))
    assert all(torch.equal(a, b) for a, b in zip(exported.module()(logp), expected))
    compiled = torch.compile(_Rois(), backend="aot_eager", fullgraph=True)
    assert all(torch.equal(a, b) for a, b in zip(compiled(logp), expected))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    for k in (4, 5):
        logp = random_logp(2, k, 12, 14, seed=k, mean=0.0)
        for kw in ({"local_max": 1}, {"cluster_threshold": 0.4}, {"corner_max": 6}):
            cpu = denet_rois(logp, 4, corner_threshold=0.2, **kw)
            gpu = denet_rois(logp.cuda(), 4, corner_threshold=0.2, **kw)
            assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[2].cpu(), cpu[2])
            torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=1e-6, atol=0.0)
        assert_matches_oracle(logp.cuda(), 4, corner_threshold=0.2, local_max=2)
