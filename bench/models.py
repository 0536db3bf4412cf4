"""Compiled description strings against torchvision on CPU.

    python bench/models.py [--threads N] [--batch B] [--size S] [--reps R]

Forward+backward time of the compiled ResNet-18 and ResNet-50 strings (examples/*.desc) against
torchvision's models, same threads, batch and input, interleaved repetitions, median; and the
compile time of the ResNet-101 string (parse + resolve + build + init). Prints the machine, the
thread count and the ratios (denet / torchvision; below 1.05 is the target).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import denet  # noqa: E402

EX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def desc(name):
    with open(os.path.join(EX, f"{name}.desc")) as f:
        return f.read()


def step_time(model, x, target):
    """One forward + backward: torchvision's model with cross-entropy; denet's through the task
    contract (``model(images, targets)`` returns ``loss_cls``), as its trainer runs it."""
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    if isinstance(model, denet.Model):
        loss = model(x, [{"label": int(k)} for k in target])["loss_cls"]
    else:
        loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    return time.perf_counter() - t0


def bench_arch(arch, batch, size, reps):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)().train()
    dn = denet.compile(desc(arch), (3, size, size), 1000, border_mode="half").train()
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, 1000, (batch,))
    for _ in range(2):  # warm-up
        step_time(tv, x, target)
        step_time(dn, x, target)
    t_tv, t_dn = [], []
    for r in range(reps):  # interleaved, alternating order
        pair = [(tv, t_tv), (dn, t_dn)] if r % 2 == 0 else [(dn, t_dn), (tv, t_tv)]
        for model, times in pair:
            times.append(step_time(model, x, target))
    return statistics.median(t_dn), statistics.median(t_tv)


def compile_time(name, reps=5):
    text = desc(name)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        denet.compile(text, (3, 224, 224), 1000, border_mode="half")
        times.append(time.perf_counter() - t0)
    with torch.device("meta"):
        t0 = time.perf_counter()
        denet.compile(text, (3, 224, 224), 1000, border_mode="half")
        meta = time.perf_counter() - t0
    return statistics.median(times), meta


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    )
    print(
        f"threads {torch.get_num_threads()}, batch {args.batch}, input 3x{args.size}x"
        f"{args.size}, {args.reps} interleaved repetitions, median, forward+backward, train "
        f"mode"
    )
    for arch in ("resnet18", "resnet50"):
        t_dn, t_tv = bench_arch(arch, args.batch, args.size, args.reps)
        print(
            f"{arch}: denet {t_dn * 1000:.1f} ms, torchvision {t_tv * 1000:.1f} ms, "
            f"ratio {t_dn / t_tv:.3f}"
        )
    full, meta = compile_time("resnet101")
    print(
        f"resnet101 compile (parse+resolve+build+weight init): {full * 1000:.1f} ms; "
        f"on the meta device (no weight init): {meta * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
