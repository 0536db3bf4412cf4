"""TopKEvaluator against a numpy oracle (ranking by argsort, loss by hand)."""

import math
import pickle

import numpy as np
import pytest
import torch

from denet.eval import TopKEvaluator, make_evaluator


def oracle(probs: np.ndarray, labels: np.ndarray):
    rank = (-probs).argsort(axis=1, kind="stable")
    pos = np.array([list(r).index(lab) for r, lab in zip(rank, labels)])
    loss = -np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-30)).mean()
    return (pos < 1).mean(), (pos < 5).mean(), loss


def batches(n=37, k=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, k, generator=g, dtype=torch.float64) * 2, dim=1)
    probs[3, 4] = 0.0  # a zero probability of the true label: clamped at 1e-30
    labels = torch.randint(0, k, (n,), generator=g)
    labels[3] = 4
    return probs, labels


def test_matches_numpy_oracle_over_batches():
    probs, labels = batches()
    ev = make_evaluator("classification")
    for s in range(0, len(labels), 8):  # int and 0-d tensor labels both accepted
        ev.update(
            probs[s : s + 8],
            [{"label": int(v) if i % 2 else v} for i, v in enumerate(labels[s : s + 8])],
        )
    m = ev.compute()
    top1, top5, loss = oracle(probs.numpy(), labels.numpy())
    assert m["samples"] == 37.0
    assert m["top1"] == pytest.approx(top1, abs=1e-12)
    assert m["top5"] == pytest.approx(top5, abs=1e-12)
    assert m["loss"] == pytest.approx(loss, rel=1e-12)
    assert loss > 69.0 / 37  # the clamped sample alone contributes -log(1e-30) = 69.08
    assert 0 < top1 < top5 < 1
    assert set(m) == {"top1", "top5", "loss", "samples"}
    assert all(isinstance(v, float) for v in m.values())
    assert ev.primary == "top1"


def test_label_map():
    probs, labels = batches(n=20, k=6, seed=1)
    label_map = torch.tensor([5, 4, 3, 2, 1, 0])  # dataset label d is model class 5 - d
    ev = TopKEvaluator(label_map=label_map)
    ev.update(probs, [{"label": int(5 - v)} for v in labels])
    top1, top5, loss = oracle(probs.numpy(), labels.numpy())
    m = ev.compute()
    assert (m["top1"], m["top5"]) == pytest.approx((top1, top5))
    assert m["loss"] == pytest.approx(loss)
    plain = TopKEvaluator()
    plain.update(probs, [{"label": int(5 - v)} for v in labels])
    assert plain.compute()["loss"] != pytest.approx(loss)


def test_merge_pickle_summary_and_empty():
    probs, labels = batches()
    whole, a, b = TopKEvaluator(), TopKEvaluator(), TopKEvaluator()
    targets = [{"label": v} for v in labels]
    whole.update(probs, targets)
    a.update(probs[:10], targets[:10])
    b.update(probs[10:], targets[10:])
    a.merge(pickle.loads(pickle.dumps(b)))
    assert a.compute() == pytest.approx(whole.compute())
    top1, top5, _ = oracle(probs.numpy(), labels.numpy())
    assert whole.summary().startswith(f"top-1 {100 * top1:.2f}%  top-5 {100 * top5:.2f}%")
    whole.reset()
    m = whole.compute()
    assert m["samples"] == 0.0 and math.isnan(m["top1"]) and math.isnan(m["loss"])
    with pytest.raises(ValueError):
        a.update(probs[:3], targets[:2])
    with pytest.raises(TypeError):
        a.merge(make_evaluator("segmentation", num_classes=3))
