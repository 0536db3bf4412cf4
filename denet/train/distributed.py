"""One process or many: ``torch.distributed`` set-up when torchrun launched us, rank helpers, and
the device choice (``--device``, DeNet's ``GPU=N``, else the first GPU, else the CPU)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import DenetError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def env_dist_info() -> DistInfo:
    """Rank, world size and local rank from torchrun's environment (1 process otherwise)."""
    if not launched_by_torchrun():
        return DistInfo()
    try:
        return DistInfo(
            int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
        )
    except ValueError:
        raise DenetError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)"
        ) from None


def select_device(device: str | None, info: DistInfo, warn=None) -> torch.device:
    """``--device`` if given; else ``GPU=N`` from the environment (single process); under
    torchrun ``cuda:LOCAL_RANK``; else ``cuda:0`` when a GPU exists; else the CPU."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    cuda = torch.cuda.is_available()
    if device:
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise DenetError(f"--device: {device!r} is not a device (cpu, cuda, cuda:N)") from None
        if dev.type == "cuda":
            if not cuda:
                raise DenetError(f"--device {device}: no CUDA device is available")
            index = (
                dev.index if dev.index is not None else (info.local_rank if info.distributed else 0)
            )
            if index >= torch.cuda.device_count():
                raise DenetError(
                    f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)"
                )
            return torch.device("cuda", index)
        if dev.type != "cpu":
            raise DenetError(f"--device: {device!r} is not supported (cpu, cuda, cuda:N)")
        return dev
    gpu = os.environ.get("GPU")
    if info.distributed:
        if cuda:
            if info.local_rank >= torch.cuda.device_count():
                raise DenetError(
                    f"LOCAL_RANK {info.local_rank}: only "
                    f"{torch.cuda.device_count()} CUDA device(s) on this machine"
                )
            return torch.device("cuda", info.local_rank)
        return torch.device("cpu")
    if gpu not in (None, ""):
        try:
            index = int(gpu)
        except ValueError:
            raise DenetError(f"GPU={gpu!r}: expected a GPU number such as GPU=0") from None
        if not cuda:
            warn(f"GPU={gpu} is set but no CUDA device is available; training on the CPU")
            return torch.device("cpu")
        if not 0 <= index < torch.cuda.device_count():
            raise DenetError(f"GPU={gpu}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    return torch.device("cuda", 0) if cuda else torch.device("cpu")


def init_distributed(device: torch.device, info: DistInfo) -> None:
    """Join the process group torchrun set up (NCCL on GPUs, Gloo on CPUs)."""
    if not info.distributed or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():
        raise DenetError("this torch build has no torch.distributed")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    store = _elastic_store(info)
    if store is None:
        dist.init_process_group(backend=backend, init_method="env://")
    else:
        dist.init_process_group(
            backend=backend, store=store, rank=info.rank, world_size=info.world_size
        )


def _elastic_store(info: DistInfo):
    """Under torch's elastic agent (model-train-multi, torchrun) after a restart: the agent's
    store with a prefix of this attempt. The agent keeps one store across restarts, and
    ``env://`` would read the addresses the killed group left there (workers then connect to
    dead ports and hang or fail); None otherwise (plain ``env://``)."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or restart in ("", "0"):
        return None
    from datetime import timedelta

    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        info.world_size,
        is_master=False,
        timeout=timedelta(minutes=30),
    )
    return dist.PrefixStore(f"denet/attempt_{restart}", store)


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def all_sum(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    """Sum each value over every rank (float64)."""
    if not info.distributed:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardedShuffleSampler:
    """The training order of one rank of ``world_size``: the permutation one process visits in
    epoch ``e`` (``EpochShuffleSampler``'s, from (seed, e) alone), padded by repeating its start
    to a multiple of ``world_size``, rank r taking positions r, r + W, r + 2W, ...

    So batch k of every rank together hold positions [k*W*b, (k+1)*W*b) of that permutation:
    W workers with ``--batch-size b`` see the images one process sees with ``--batch-size W*b``
    (when W divides the set; otherwise the padding repeats up to W - 1 images), and the order
    does not depend on W, which is what lets a checkpoint of W workers resume with another
    number."""

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        self.n, self.seed, self.rank, self.world_size = int(n), int(seed), int(rank), world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.n // self.world_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        total = len(self) * self.world_size
        while len(order) < total:  # pad by repeating the start (as DistributedSampler does)
            order += order[: total - len(order)]
        return iter(order[self.rank : total : self.world_size])


class SyncBatchNormReLU(torch.nn.SyncBatchNorm):
    """``BNA`` (batch norm then ReLU in one module) with statistics over every worker."""

    ends_in_activation = True

    def forward(self, x):
        return torch.nn.functional.relu(super().forward(x), inplace=True)


class GlooSyncBatchNorm(torch.nn.BatchNorm2d):
    """Synchronised batch norm for CPU workers (Gloo), where torch's ``SyncBatchNorm`` refuses
    to run: in training the per-channel mean and then the variance are all-reduced over the
    workers (two passes, for accuracy) through the differentiable ``all_reduce``, so the
    gradient flows to every worker's images as in one large batch; running statistics as
    ``BatchNorm2d`` updates them from the whole batch (unbiased variance)."""

    fused_relu = False

    def forward(self, x):
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if not self.training or world == 1:
            y = super().forward(x)
        else:
            from torch.distributed.nn.functional import all_reduce

            dims = [d for d in range(x.dim()) if d != 1]
            shape = [1, -1] + [1] * (x.dim() - 2)
            count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype)
            n = all_reduce(count.detach())[0]
            mean = all_reduce(x.sum(dims)) / n
            centred = x - mean.reshape(shape)
            var = all_reduce((centred * centred).sum(dims)) / n
            if self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked += 1
                    m = self.momentum
                    if m is None:
                        m = 1.0 / float(self.num_batches_tracked)
                    self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                    unbiased = var.detach() * (n / max(float(n) - 1, 1.0))
                    self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
            y = centred * torch.rsqrt(var + self.eps).reshape(shape)
            if self.affine:
                y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return torch.nn.functional.relu(y, inplace=True) if self.fused_relu else y


class GlooSyncBatchNormReLU(GlooSyncBatchNorm):
    fused_relu = True
    ends_in_activation = True


def convert_sync_batchnorm(
    module: torch.nn.Module, cpu: bool = False
) -> tuple[torch.nn.Module, int]:
    """``--sync-bn``: every batch norm of ``module`` (``nn.BatchNorm2d`` and denet's ``BNA``,
    ``BatchNormReLU``) replaced by a ``SyncBatchNorm`` with the same parameters and running
    statistics, in place (fx calls submodules by name). Frozen batch norm has no batch
    statistics and stays. Another ``_BatchNorm`` subclass with its own ``forward`` is refused
    rather than silently losing its behaviour. ``cpu``: :class:`GlooSyncBatchNorm` instead of
    torch's (which runs on GPUs only). Returns (module, number converted)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    count = 0

    def convert(bn):
        base = type(bn)
        if base is torch.nn.BatchNorm2d:
            cls = GlooSyncBatchNorm if cpu else torch.nn.SyncBatchNorm
        elif getattr(bn, "ends_in_activation", False) and isinstance(bn, torch.nn.BatchNorm2d):
            cls = GlooSyncBatchNormReLU if cpu else SyncBatchNormReLU
        else:
            raise DenetError(
                f"--sync-bn: cannot synchronise {base.__name__} (not a plain batch norm)"
            )
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        if bn.affine:
            with torch.no_grad():
                new.weight = bn.weight
                new.bias = bn.bias
        new.running_mean = bn.running_mean
        new.running_var = bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
        new.train(bn.training)
        return new

    def walk(parent):
        nonlocal count
        for name, child in list(parent.named_children()):
            synced = (torch.nn.SyncBatchNorm, GlooSyncBatchNorm)
            if isinstance(child, _BatchNorm) and not isinstance(child, synced):
                setattr(parent, name, convert(child))
                count += 1
            else:
                walk(child)

    walk(module)
    return module, count
