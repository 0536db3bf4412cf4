"""make_evaluator, the shared interface, and merging evaluators across two real processes."""

import json
import math
import pickle

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from denet.eval import (
    CocoEvaluator,
    Evaluator,
    MIoUEvaluator,
    TopKEvaluator,
    VocEvaluator,
    make_evaluator,
    merge_across_ranks,
)


def test_factory_picks_the_evaluator():
    assert type(make_evaluator("classification")) is TopKEvaluator
    assert type(make_evaluator("classification", classes=["a", "b"])) is TopKEvaluator
    assert type(make_evaluator("detection", num_classes=3)) is CocoEvaluator
    assert type(make_evaluator("detection", metric="coco", classes=["a"])) is CocoEvaluator
    v07 = make_evaluator("detection", metric="voc07", classes=["a", "b"])
    v12 = make_evaluator("detection", metric="voc12", num_classes=2, plus_one=True)
    assert type(v07) is VocEvaluator and v07.use_07_metric and not v07.plus_one
    assert type(v12) is VocEvaluator and not v12.use_07_metric and v12.plus_one
    seg = make_evaluator("segmentation", num_classes=21, ignore_index=0)
    assert type(seg) is MIoUEvaluator and (seg.num_classes, seg.ignore_index) == (21, 0)
    assert make_evaluator("segmentation", classes=list("abc")).ignore_index == 255
    primaries = {"classification": "top1", "segmentation": "mIoU"}
    for task, key in primaries.items():
        assert make_evaluator(task, num_classes=3).primary == key
    assert (v07.primary, make_evaluator("detection", num_classes=1).primary) == ("mAP", "AP")


def test_factory_errors_name_the_problem():
    with pytest.raises(ValueError, match="'keypoint'"):
        make_evaluator("keypoint")
    with pytest.raises(ValueError, match="'voc10'"):
        make_evaluator("detection", metric="voc10", num_classes=2)
    with pytest.raises(ValueError):
        make_evaluator("segmentation")  # needs num_classes
    with pytest.raises(ValueError):
        make_evaluator("detection")  # needs classes, num_classes or coco_gt
    with pytest.raises(TypeError):
        make_evaluator("segmentation", num_classes=2, ignore=3)
    with pytest.raises(TypeError):
        Evaluator()  # abstract


def test_no_process_group_is_a_no_op():
    ev = MIoUEvaluator(2)
    assert merge_across_ranks(ev) is ev


# ---------------------------------------------------------------- two ranks, gloo, CPU
def shard(rank):
    """Rank 0 sees images 0, 1, 2; rank 1 sees 3 and image 0 again (sampler padding)."""
    ids = [0, 1, 2] if rank == 0 else [3, 0]
    outs, tgts = [], []
    for i in ids:
        box = torch.tensor([[10.0 * i, 0, 10.0 * i + 30, 40]], dtype=torch.float64)
        dx = 12.0 if i == 0 else 3.0 * (i % 2)  # image 0's box is a false positive (IoU 0.43)
        outs.append(
            {
                "boxes": box + torch.tensor([[dx, 0, dx, 0]]),
                "scores": torch.tensor([0.5 + 0.1 * i]),
                "labels": torch.tensor([i % 2]),
            }
        )
        tgts.append(
            {
                "image_id": i,
                "boxes": box,
                "labels": torch.tensor([i % 2]),
                "difficult": torch.tensor([i == 3]),
            }
        )
    g = torch.Generator().manual_seed(rank)
    logits = torch.randn(2, 3, 5, 5, generator=g)
    masks = [{"mask": torch.randint(0, 3, (5, 5), generator=g)} for _ in range(2)]
    probs = torch.softmax(torch.randn(4, 7, generator=g), 1)
    labels = [{"label": int(v)} for v in torch.randint(0, 7, (4,), generator=g)]
    return (outs, tgts), (logits, masks), (probs, labels)


def fill(evs, rank):
    (outs, tgts), (logits, masks), (probs, labels) = shard(rank)
    coco, voc, seg, cls = evs
    coco.update(outs, tgts)
    voc.update(outs, tgts)
    seg.update({"out": logits}, masks)
    cls.update(probs, labels)


def coco_gt():
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = {
        "images": [{"id": i} for i in range(4)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": i,
                "category_id": i % 2 + 1,
                "bbox": [10.0 * i, 0, 30, 40],
                "area": 1200.0,
                "iscrowd": 0,
            }
            for i in range(4)
        ],
    }
    gt.createIndex()
    return gt


def make_all():
    return [
        CocoEvaluator(coco_gt=coco_gt()),
        VocEvaluator(["a", "b"]),
        MIoUEvaluator(3),
        TopKEvaluator(),
    ]


def worker(rank, path):
    dist.init_process_group("gloo", init_method=f"file://{path}.store", rank=rank, world_size=2)
    try:
        evs = make_all()
        fill(evs, rank)
        for ev in evs:
            assert merge_across_ranks(ev) is ev
        with open(f"{path}.{rank}.json", "w") as fh:
            json.dump([ev.compute() for ev in evs], fh)
    finally:
        dist.destroy_process_group()


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_merge_across_two_gloo_ranks(tmp_path):
    path = str(tmp_path / "rank")
    mp.spawn(worker, args=(path,), nprocs=2, join=True)
    single = make_all()
    fill(single, 0)
    fill(single, 1)
    want = [ev.compute() for ev in single]
    assert want[0]["AP"] < 1 and want[2]["mIoU"] > 0  # something to compare
    for rank in (0, 1):
        with open(f"{path}.{rank}.json") as fh:
            got = json.load(fh)
        for g, w in zip(got, want):
            assert g == pytest.approx(w, abs=1e-12, nan_ok=True)
    # a single evaluator given each image once agrees: image 0's repeat was counted once
    once = make_all()[:2]
    (outs, tgts), _, _ = shard(0)
    (outs1, tgts1), _, _ = shard(1)
    for ev in once:
        ev.update(outs + outs1[:1], tgts + tgts1[:1])
    assert once[0].compute() == pytest.approx(want[0], nan_ok=True)
    assert once[1].compute() == pytest.approx(want[1], nan_ok=True)
    twice = VocEvaluator(["a", "b"])
    twice.update(outs + outs1, tgts + tgts1)
    twice.records[-1]["image_id"] = 99  # not recognised as a repeat: counts again
    assert twice.compute()["AP_a"] != pytest.approx(want[1]["AP_a"])


def test_every_evaluator_pickles_and_reports_floats():
    evs = make_all()
    fill(evs, 0)
    for ev in evs:
        copy = pickle.loads(pickle.dumps(ev))
        if isinstance(ev, CocoEvaluator):
            copy = ev  # its COCO object stays home (tested in test_coco)
        m = copy.compute()
        assert ev.primary in m and all(type(v) is float for v in m.values())
        assert not math.isnan(m[ev.primary])
        json.dumps(m)
        assert isinstance(ev.summary(), str) and ev.summary()
