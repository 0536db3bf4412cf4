"""Training images per second of ResNet-18 (examples/resnet18.desc, border mode half) with one
and with two CPU worker processes under DistributedDataParallel (Gloo), and the overhead of DDP
against the same global batch in one process, measured in one run.

    python bench/distributed.py [--size 64] [--batch 16] [--steps 6] [--reps 3]

Rows (each a full training step: forward, loss, backward, SGD step, on random images):

- ``1 process  batch B,  1 thread``: the one-worker baseline;
- ``2 workers  batch B each, 1 thread each``: DDP with Gloo (the global batch is 2B);
- ``1 process  batch 2B, 2 threads``: the same global batch and the same cores in one process,
  the peer DDP is measured against.

Prints the machine, the thread counts, images/s (median over --reps, each --steps timed steps
after one warm-up step) and the ratios: scaling (2 workers / 1 worker) and DDP overhead (one
process with 2B / 2 workers, above 1 when DDP costs more than it gains on these cores).
On a machine with GPUs, ``--gpus`` runs the same with one worker per GPU (NCCL).
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
import denet  # noqa: E402


def resnet18_desc() -> str:
    with open(os.path.join(ROOT, "examples", "resnet18.desc"), encoding="utf-8") as fh:
        return " ".join(line for line in fh.read().splitlines() if not line.startswith("#"))


def build(size: int, device):
    torch.manual_seed(0)
    model = denet.compile(resnet18_desc(), (3, size, size), 10, border_mode="half").to(device)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def timed_steps(model, opt, batch, size, steps, device, net=None) -> float:
    """Seconds of ``steps`` training steps after one warm-up step."""
    net = net or model
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    targets = [{"label": torch.tensor(i % 10, device=device)} for i in range(batch)]
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        net(images, targets)["loss_cls"].backward()
        opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def single(batch, size, steps, threads, device) -> float:
    torch.set_num_threads(threads)
    model, opt = build(size, device)
    return batch * steps / timed_steps(model, opt, batch, size, steps, device)


def _worker(rank, world, init_file, batch, size, steps, gpu, out):
    torch.set_num_threads(1)
    device = torch.device("cuda", rank) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if gpu else "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    from torch.nn.parallel import DistributedDataParallel

    model, opt = build(size, device)
    net = DistributedDataParallel(model, device_ids=[rank] if gpu else None)
    seconds = timed_steps(model, opt, batch, size, steps, device, net)
    t = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the slowest worker sets the pace
    if rank == 0:
        out.put(world * batch * steps / float(t))
    dist.destroy_process_group()


def ddp(world, batch, size, steps, gpu=False) -> float:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "init")
        mp.start_processes(
            _worker,
            args=(world, init, batch, size, steps, gpu, out),
            nprocs=world,
            join=True,
            start_method="spawn",
        )
        return out.get()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, help="image side (pixels)")
    p.add_argument("--batch", type=int, default=16, help="images per worker per step")
    p.add_argument("--steps", type=int, default=6, help="timed steps per repetition")
    p.add_argument("--reps", type=int, default=3, help="repetitions (median)")
    p.add_argument("--gpus", type=int, default=0, help="also scale over this many GPUs")
    a = p.parse_args()
    cpu = torch.device("cpu")
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}; ResNet-18 {a.size}x{a.size}, batch {a.batch} per worker, "
        f"{a.steps} steps x {a.reps} repetitions (median)"
    )
    rows = {"one": [], "two": [], "same": []}
    for _ in range(a.reps):  # interleaved, so a busy moment hits every row alike
        rows["one"].append(single(a.batch, a.size, a.steps, 1, cpu))
        rows["two"].append(ddp(2, a.batch, a.size, a.steps))
        rows["same"].append(single(2 * a.batch, a.size, a.steps, 2, cpu))
    one, two, same = (statistics.median(rows[k]) for k in ("one", "two", "same"))
    print(f"1 process  batch {a.batch:3d}, 1 thread        : {one:8.1f} images/s")
    print(f"2 workers  batch {a.batch:3d} each, 1 thread each: {two:8.1f} images/s (DDP, Gloo)")
    print(f"1 process  batch {2 * a.batch:3d}, 2 threads       : {same:8.1f} images/s")
    print(f"scaling 2 workers / 1 worker                 : {two / one:.3f}")
    print(f"DDP overhead: 1 process (2B) / 2 workers     : {same / two:.3f}")
    if a.gpus:
        one_gpu = ddp(1, a.batch, a.size, a.steps, gpu=True)
        many = ddp(a.gpus, a.batch, a.size, a.steps, gpu=True)
        print(
            f"GPU: 1 worker {one_gpu:.1f} images/s, {a.gpus} workers {many:.1f} images/s, "
            f"scaling {many / one_gpu:.3f} (ideal {a.gpus})"
        )


if __name__ == "__main__":
    main()
