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
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo", init_method="env://"
    )


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
