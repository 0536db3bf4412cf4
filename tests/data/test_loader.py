"""Batching: collate with varying box counts and sizes, aspect-ratio grouping, distributed use."""

import pytest
import torch
from data_builders import SCENES, make_coco, make_seglist
from torch.utils.data import DistributedSampler

from denet.data import AspectRatioBatchSampler, collate, make_loader, open_dataset


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    make_coco(str(root))
    return str(root)


def test_collate_pads_images_and_keeps_one_target_per_image(coco_root):
    ds = open_dataset(coco_root, "mscoco,2017-val,crop=0")
    batch = [ds[i] for i in range(len(ds))]
    images, targets = collate(batch)
    H = max(s[1] for s in SCENES)
    W = max(s[0] for s in SCENES)
    assert images.shape == (len(SCENES), 3, H, W)
    assert isinstance(targets, list) and len(targets) == len(SCENES)
    for k, (w, h, objects) in enumerate(SCENES):
        assert torch.equal(images[k, :, :h, :w], batch[k][0])
        assert images[k, :, h:, :].abs().sum() == 0 and images[k, :, :, w:].abs().sum() == 0
        assert targets[k].keys() == batch[k][1].keys()
        assert targets[k]["boxes"].shape == (len(objects), 4)
        assert torch.equal(targets[k]["boxes"], batch[k][1]["boxes"])
        assert targets[k]["labels"].tolist() == [o[4] for o in objects]
        assert targets[k]["size"].tolist() == [h, w]
        assert targets[k]["image_id"] == ds.records[k].image_id


def test_collate_keeps_masks_at_their_own_size(tmp_path):
    make_seglist(str(tmp_path), "val")
    ds = open_dataset(str(tmp_path), "seglist,val")
    images, targets = collate([ds[0], ds[1]])
    (w0, h0, _), (w1, h1, _) = SCENES[:2]
    assert images.shape == (2, 3, max(h0, h1), max(w0, w1))
    assert targets[0]["mask"].shape == (h0, w0) and targets[1]["mask"].shape == (h1, w1)
    assert torch.equal(targets[1]["mask"], ds[1][1]["mask"])


def test_collate_of_classification_items():
    batch = [(torch.full((1, 2, 2), float(i)), {"label": i}) for i in (3, 1, 4)]
    images, targets = collate(batch)
    assert images.shape == (3, 1, 2, 2) and images[2, 0, 0, 0] == 4
    assert targets == [{"label": 3}, {"label": 1}, {"label": 4}]
    assert targets[0] is not batch[0][1]  # a copy: a model may not change the dataset's dicts


def test_aspect_ratio_batches_group_similar_shapes():
    ratios = [0.5, 2.0, 0.7, 1.9, 0.52, 0.72, 1.0, 1.05]
    sampler = AspectRatioBatchSampler(ratios, 2, shuffle=True, seed=1)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(ratios)))
        for b in batches:  # each batch: neighbours in sorted ratio order
            r = sorted(ratios[i] for i in b)
            assert r[-1] / r[0] < 1.25
    sampler.set_epoch(0)
    a = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == a and len(sampler) == 4


def test_aspect_ratio_batches_split_across_ranks(coco_root):
    ds = open_dataset(coco_root, "mscoco,2017-val,crop=0")
    ranks = [AspectRatioBatchSampler(ds, 2, seed=4, num_replicas=2, rank=r) for r in (0, 1)]
    got = [list(s) for s in ranks]
    assert len(got[0]) == len(got[1]) == len(ranks[0]) == 2
    flat = [i for g in got for b in g for i in b]
    assert set(flat) == set(range(len(ds)))  # five images, three batches padded to four
    loader = make_loader(ds, 2, True, 0, seed=0, sampler=ranks[1])
    assert [[d["image_id"] for d in t] for _, t in loader] == [
        [ds.records[i].image_id for i in b] for b in got[1]
    ]


def test_make_loader_with_distributed_sampler_and_workers(coco_root):
    ds = open_dataset(coco_root, "mscoco,2017-val,scale=32,crop=32", train=True)
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = make_loader(ds, 2, True, 2, seed=9, sampler=sampler)
        loader.set_epoch(1)
        assert sampler.epoch == 1 and ds.epoch == 1
        for images, targets in loader:
            assert images.shape[1:] == (3, 32, 32)
            seen += [t["image_id"] for t in targets]
    assert sorted(set(seen)) == sorted(r.image_id for r in ds.records)
    assert loader.pin_memory == torch.cuda.is_available() and loader.persistent_workers
