"""Batching: a collate for any of the three tasks (images padded to one size, a list of
per-image targets), an epoch-seeded shuffle, Detectron's aspect-ratio grouping, and
``make_loader`` (workers, pinned memory, persistent workers)."""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, Sampler, get_worker_info

from ..errors import DataError


def _new_batch(like, shape):
    """An empty batch tensor; in a worker it is allocated in shared memory at once, as
    default_collate does, so sending it to the main process costs no extra copy."""
    if get_worker_info() is None:
        return like.new_empty(shape)
    storage = like._typed_storage()._new_shared(math.prod(shape), device=like.device)
    return like.new(storage).resize_(shape)


def _pad_stack(tensors, value):
    """Stack tensors of equal rank, padding the last two dims at the bottom/right with value."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) == 1:
        return torch.stack(tensors, out=_new_batch(tensors[0], (len(tensors), *tensors[0].shape)))
    h = max(t.shape[-2] for t in tensors)
    w = max(t.shape[-1] for t in tensors)
    out = _new_batch(tensors[0], (len(tensors), *tensors[0].shape[:-2], h, w)).fill_(value)
    for i, t in enumerate(tensors):
        out[i, ..., : t.shape[-2], : t.shape[-1]] = t
    return out


def collate(batch):
    """``[(image, target), ...] -> (images, targets)``, torchvision's convention.

    ``images`` is ``[B,C,H,W]``; images of different sizes are zero-padded at the bottom and right
    (each target's ``size`` keeps the real one). ``targets`` is the list of the items' target
    dicts, one per image, as the dataset yields them (``{"label": 3}``; ``boxes`` ``[N,4]`` with
    N per image; ``mask`` ``[H,W]`` at the image's own size ...). This is what a model's
    ``forward(images, targets)`` and the evaluators read."""
    images = _pad_stack([item[0] for item in batch], 0.0)
    return images, [dict(item[1]) for item in batch]


class EpochShuffleSampler(Sampler):
    """A permutation of ``range(n)`` that depends only on (seed, epoch), so resuming at an epoch
    boundary replays the same order (DataLoader's own shuffle depends on every earlier epoch)."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = int(n), int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self):
        return self.n


class AspectRatioBatchSampler(Sampler):
    """Detectron's aspect-ratio grouping: each epoch the images are put in a random order, then
    sorted (stably) by width/height; consecutive ``batch_size`` images form a batch, and the
    batches are shuffled as units. A batch therefore holds images of similar shape, which keeps
    the padding in ``collate`` small.

    Distributed: with ``num_replicas`` and ``rank`` (taken from ``torch.distributed`` when it is
    initialised), rank r takes batches r, r + R, ...; the batch list is padded by repeating from
    its start so every rank gets the same number. Call ``set_epoch`` each epoch.
    """

    def __init__(
        self,
        dataset_or_ratios,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        if hasattr(dataset_or_ratios, "aspect_ratios"):
            ratios = dataset_or_ratios.aspect_ratios()
        else:
            ratios = list(dataset_or_ratios)
        self.ratios = np.asarray(ratios, dtype=np.float64)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.drop_last, self.num_replicas, self.rank = drop_last, num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _all_batches(self):
        n = len(self.ratios)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(n)
        else:
            order = np.arange(n)
        order = order[np.argsort(self.ratios[order], kind="stable")]
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _per_rank(self, total):
        return math.ceil(total / self.num_replicas) if total else 0

    def __iter__(self):
        batches = self._all_batches()
        per_rank = self._per_rank(len(batches))
        want = per_rank * self.num_replicas
        while batches and len(batches) < want:
            batches += batches[: want - len(batches)]
        return iter(batches[self.rank : want : self.num_replicas])

    def __len__(self):
        n = len(self.ratios)
        total = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return self._per_rank(total)


_WORKER_TRACE = re.compile(r"(?:denet\.errors\.)?DataError: (.+)\s*$", re.S)


class Loader(DataLoader):
    """A DataLoader with ``set_epoch`` (dataset and sampler together) and clean DataErrors:
    an error raised in a worker arrives as the one-line message naming the file."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        for s in (self.sampler, self.batch_sampler, getattr(self.batch_sampler, "sampler", None)):
            if hasattr(s, "set_epoch"):
                s.set_epoch(epoch)

    def __iter__(self):
        it = super().__iter__()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except DataError as err:
                # a failed iterator cannot be resumed: stop its workers now rather than at exit
                if hasattr(it, "_shutdown_workers"):
                    it._shutdown_workers()
                self._iterator = None
                text = str(err)
                if "Traceback" in text:
                    m = _WORKER_TRACE.search(text.strip().splitlines()[-1])
                    if m:
                        raise DataError(m.group(1).strip()) from None
                raise
            yield batch


def make_loader(
    dataset,
    batch_size: int,
    shuffle: bool,
    workers: int,
    seed: int,
    sampler=None,
    drop_last: bool = False,
) -> Loader:
    """A ``Loader`` for any denet dataset.

    - ``workers`` background processes (``--thread-num``); persistent between epochs, so call
      ``loader.set_epoch(e)`` before iterating epoch ``e`` (it reaches running workers).
    - ``seed`` becomes ``dataset.seed`` (augmentation) and seeds the shuffle order.
    - ``sampler``: None (an ``EpochShuffleSampler``), any index sampler (``DistributedSampler``),
      or a batch sampler (``AspectRatioBatchSampler`` or ``torch.utils.data.BatchSampler``),
      which then sets the batches itself.
    - memory is pinned when CUDA is available.
    - the loader draws its per-iterator base seed from a private generator seeded from ``seed``,
      never from the global torch RNG, so a resumed run sees the same stream as an unbroken one.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if hasattr(dataset, "seed"):
        dataset.seed = seed
    kwargs = dict(
        num_workers=int(workers),
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=int(workers) > 0,
        generator=torch.Generator().manual_seed(int(seed)),
    )
    if isinstance(sampler, (AspectRatioBatchSampler, BatchSampler)):
        loader = Loader(dataset, batch_sampler=sampler, **kwargs)
    else:
        if sampler is None:
            sampler = EpochShuffleSampler(len(dataset), seed, shuffle)
        loader = Loader(
            dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **kwargs
        )
    loader.set_epoch(getattr(dataset, "epoch", 0))
    return loader
