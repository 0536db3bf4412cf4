"""MIoUEvaluator against scikit-learn's confusion_matrix / jaccard_score, and a numpy bilinear
upsampling written out here for the resize-then-crop rule."""

import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    jaccard_score,
)

from denet.eval import MIoUEvaluator, make_evaluator

K = 6


def sklearn_metrics(gt: np.ndarray, pred: np.ndarray, k=K, ignore=255):
    keep = (gt != ignore) & (gt >= 0) & (gt < k)
    y, p = gt[keep], pred[keep]
    cm = confusion_matrix(y, p, labels=list(range(k)))
    present = sorted(set(y.tolist()) | set(p.tolist()))
    iou = jaccard_score(y, p, labels=present, average=None)
    iou_full = np.full(k, np.nan)
    iou_full[present] = iou
    freq = cm.sum(1) / cm.sum()
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": intended
        warnings.simplefilter("ignore", UserWarning)
        mean_acc = balanced_accuracy_score(y, p)
    return {
        "cm": cm,
        "mIoU": iou.mean(),
        "pixel_acc": accuracy_score(y, p),
        "mean_acc": mean_acc,
        "iou": iou_full,
        "fwIoU": np.nansum(freq * iou_full),
    }


def check(ev, ref):
    assert torch.equal(ev.confusion, torch.from_numpy(ref["cm"]).long())
    m = ev.compute()
    for key in ("mIoU", "pixel_acc", "mean_acc", "fwIoU"):
        assert m[key] == pytest.approx(ref[key], abs=1e-12), key
    for c in range(K):
        if math.isnan(ref["iou"][c]):
            assert math.isnan(m[f"IoU_{c}"])
        else:
            assert m[f"IoU_{c}"] == pytest.approx(ref["iou"][c], abs=1e-12)
    return m


def random_batch(g, b=3, h=9, w=11):
    logits = torch.randn(b, K, h, w, generator=g, dtype=torch.float64)
    logits[:, 5] -= 100  # class 5 is never predicted ...
    mask = torch.randint(0, 4, (b, h, w), generator=g)  # ... nor in the ground truth: IoU nan
    mask[torch.rand(b, h, w, generator=g) < 0.2] = 255
    mask[0, 0, :3] = 7  # outside 0..K-1: skipped like ignore
    return logits, mask


def test_random_batches_match_sklearn():
    g = torch.Generator().manual_seed(0)
    ev = make_evaluator("segmentation", num_classes=K)
    gts, preds = [], []
    for _ in range(4):
        logits, mask = random_batch(g)
        ev.update({"out": logits, "aux": torch.zeros(3, K, 1, 1)}, [{"mask": m} for m in mask])
        gts.append(mask.numpy().ravel())
        preds.append(logits.argmax(1).numpy().ravel())
    m = check(ev, sklearn_metrics(np.concatenate(gts), np.concatenate(preds)))
    assert math.isnan(m["IoU_5"]) and m["IoU_4"] == 0.0  # 4 predicted, never in the GT
    assert 0 < m["mIoU"] < 1 and ev.primary == "mIoU"
    assert m["mIoU"] == pytest.approx(np.mean([m[f"IoU_{c}"] for c in range(5)]))
    assert all(isinstance(v, float) for v in m.values())
    assert ev.summary().startswith(f"mIoU {100 * m['mIoU']:.1f}%  pixel acc ")


def bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``[C, h, w]`` -> ``[C, out_h, out_w]``, half-pixel centres, edges clamped."""

    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, fy = axis(x.shape[1], out_h)
    x0, x1, fx = axis(x.shape[2], out_w)
    rows = x[:, y0] * (1 - fy)[None, :, None] + x[:, y1] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


def test_low_resolution_logits_are_resized_to_the_padded_size_then_cropped():
    g = torch.Generator().manual_seed(1)
    sizes = [(13, 17), (9, 20), (16, 8)]  # padded batch: 16 x 20
    logits = torch.randn(3, K, 4, 5, generator=g, dtype=torch.float64)
    masks = [torch.randint(0, K, s, generator=g) for s in sizes]
    masks[1][2:5, 3:9] = 255
    ev = MIoUEvaluator(K)
    ev.update(logits, [{"mask": m} for m in masks])
    gts, preds = [], []
    for i, (h, w) in enumerate(sizes):
        up = bilinear(logits[i].numpy(), 16, 20)
        preds.append(up[:, :h, :w].argmax(0).ravel())
        gts.append(masks[i].numpy().ravel())
    check(ev, sklearn_metrics(np.concatenate(gts), np.concatenate(preds)))
    # resizing each image's logits to its own mask instead gives other counts
    wrong = np.concatenate(
        [bilinear(logits[i].numpy(), h, w).argmax(0).ravel() for i, (h, w) in enumerate(sizes)]
    )
    assert not np.array_equal(
        sklearn_metrics(np.concatenate(gts), wrong)["cm"], ev.confusion.numpy()
    )


def test_crop_is_top_left_and_padding_is_left_out():
    masks = [torch.full((4, 6), 1), torch.full((6, 3), 2)]
    masks[0][0, 0] = 3
    logits = torch.zeros(2, K, 6, 6)
    logits[:, 0] = 1.0  # class 0 everywhere ...
    logits[0, 1, :4, :6] = 2.0  # ... except each image's top-left region of its mask's size
    logits[0, 3, 0, 0] = 3.0
    logits[1, 2, :6, :3] = 2.0
    ev = MIoUEvaluator(K)
    ev.update({"out": logits}, [{"mask": m} for m in masks])
    m = ev.compute()
    assert m["pixel_acc"] == 1.0 and m["mIoU"] == 1.0 and int(ev.confusion.sum()) == 24 + 18
    assert math.isnan(m["IoU_0"])  # class 0 lies only in the padding
    padded = torch.full((2, 6, 6), 255)  # the masks padded with ignore count the same
    padded[0, :4, :6], padded[1, :6, :3] = masks
    other = MIoUEvaluator(K)
    other.update({"out": logits}, [{"mask": m} for m in padded])
    assert torch.equal(other.confusion, ev.confusion)


def test_merge_pickle_ignore_index_and_errors():
    g = torch.Generator().manual_seed(2)
    (la, ma), (lb, mb) = random_batch(g), random_batch(g)
    whole, a, b = MIoUEvaluator(K), MIoUEvaluator(K), MIoUEvaluator(K)
    whole.update(la, [{"mask": m} for m in ma])
    whole.update(lb, [{"mask": m} for m in mb])
    a.update(la, [{"mask": m} for m in ma])
    b.update(lb, [{"mask": m} for m in mb])
    a.merge(pickle.loads(pickle.dumps(b)))
    assert torch.equal(a.confusion, whole.confusion)
    assert a.compute() == pytest.approx(whole.compute(), nan_ok=True)
    zero_ignored = MIoUEvaluator(K, ignore_index=0)
    zero_ignored.update(la, [{"mask": m} for m in ma])
    gt, pred = ma.numpy().ravel(), la.argmax(1).numpy().ravel()
    assert torch.equal(
        zero_ignored.confusion,
        torch.from_numpy(sklearn_metrics(np.where(gt == 0, 255, gt), pred)["cm"]).long(),
    )
    with pytest.raises(ValueError):
        MIoUEvaluator(K, ignore_index=0).merge(a)
    with pytest.raises(ValueError):
        a.update(torch.zeros(1, K + 1, 2, 2), [{"mask": torch.zeros(2, 2)}])
    a.reset()
    assert all(math.isnan(v) for v in a.compute().values())
