"""What the trainer puts between a dataset and its loaders: ``SubsetDataset`` (``--max-samples``)
and ``StridedSampler`` (the test set split between the processes of a distributed run)."""

from __future__ import annotations

from torch.utils.data import Dataset, Sampler


class SubsetDataset(Dataset):
    """A fixed subset of a denet dataset (``--max-samples``). It keeps ``set_epoch`` and
    ``seed``, so augmentation stays a function of (seed, epoch, original index), and answers
    ``classes``, ``num_classes``, ``task`` and ``input_shape`` as the full set does."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)

    @property
    def seed(self):
        return self.dataset.seed

    @seed.setter
    def seed(self, value):
        self.dataset.seed = value

    @property
    def epoch(self):
        return self.dataset.epoch

    @property
    def classes(self):
        return self.dataset.classes

    @property
    def num_classes(self):
        return self.dataset.num_classes

    @property
    def task(self):
        return self.dataset.task

    @property
    def input_shape(self):
        return self.dataset.input_shape


class StridedSampler(Sampler):
    """Rank ``r`` of ``R`` visits items r, r + R, ...: every item exactly once overall, without
    the padding of ``DistributedSampler`` (so evaluation counts each test image once)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self):
        return len(range(self.rank, self.n, self.world_size))
