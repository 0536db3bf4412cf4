"""model-update-bn: recompute the batch-norm running statistics of a model file over a set of
images (DeNet's tool, broken in its release; detectron2's "precise BN").

    model-update-bn --model trained.pt --input TRAIN --extension png --batches 200 \\
        --output trained-bn.pt

The running statistics that training leaves behind are an exponential moving average over
weights that kept changing. This tool runs the finished network over ``--batches`` batches of
``--batch-size`` images (in a random order fixed by ``--seed``, without augmentation) and sets
every batch norm's ``running_mean`` and ``running_var`` to the **true** mean and unbiased
variance of its input over all those images and pixels (accumulated in float64, batches merged
exactly), not a momentum average. As in training (and in detectron2), each batch norm
normalises with its batch's statistics while the statistics are collected, so a later batch
norm sees the inputs it saw in training. Frozen batch norm is left alone. The result is a new
model file (``--output``, never the input) without training state.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from ..errors import DenetError
from ._common import ArgumentParser, bounded_int, tool_main


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="model-update-bn",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Recompute the batch-norm running statistics of a model file as true "
        "averages over images (precise BN), writing a new model file.",
    )
    a = p.add_argument
    a("--model", required=True, metavar="FILE", help="the model file to update")
    a("--output", required=True, metavar="FILE", help="the new model file (not --model)")
    a("--input", required=True, metavar="PATH", help="the images (a dataset, as model-train's)")
    a("--extension", default="png", help="dataset format, as model-train's --extension")
    a("--batch-size", type=bounded_int(1, 1 << 20), default=128, help="images per batch")
    a(
        "--batches",
        type=bounded_int(1, 1 << 30),
        default=None,
        metavar="N",
        help="batches to average over (default: the whole set once)",
    )
    a("--thread-num", type=bounded_int(0, 1024), default=4, help="data-loading workers")
    a("--seed", type=int, default=23455, help="the random order of the images")
    a("--device", default=None, help="cpu, cuda or cuda:N (default: cuda:0 if present, else cpu)")
    return p


class _Moments:
    """Per-channel count, mean and sum of squared deviations of a batch norm's input, merged
    batch by batch (Chan et al.'s parallel formula, float64)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def __call__(self, module, inputs):
        x = inputs[0].detach().double()
        x = x.transpose(0, 1).reshape(x.shape[1], -1)  # [C, everything else]
        n_b = x.shape[1]
        mean_b = x.mean(dim=1)
        m2_b = ((x - mean_b[:, None]) ** 2).sum(dim=1)
        if self.n == 0:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
        self.n = n


def update_bn(model, loader, device, batches: int | None = None) -> tuple[int, int]:
    """Set the running statistics of every batch norm of ``model`` (tracking statistics, not
    frozen) to the exact mean and unbiased variance of its input over the first ``batches``
    batches of ``loader``; returns (batch norms updated, batches used)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        raise DenetError("the model has no batch norm with running statistics to update")
    moments = [_Moments() for _ in norms]
    hooks = [m.register_forward_pre_hook(h) for m, h in zip(norms, moments)]
    model.eval()
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone()) for m in norms]
    for m in norms:
        m.train()  # normalise with the batch's statistics, as in training
    used = 0
    try:
        with torch.no_grad():
            for images, _ in loader:
                if batches is not None and used >= batches:
                    break
                model(images.to(device))
                used += 1
    finally:
        for h in hooks:
            h.remove()
    if used == 0:
        raise DenetError("no images to compute the statistics from")
    for m, mom, (momentum, _, _) in zip(norms, moments, saved):
        m.eval()
        m.momentum = momentum
        m.running_mean.copy_(mom.mean.to(m.running_mean.dtype))
        m.running_var.copy_((mom.m2 / max(mom.n - 1, 1)).to(m.running_var.dtype))
        if m.num_batches_tracked is not None:
            m.num_batches_tracked.fill_(used)
    return len(norms), used


@tool_main
def main(argv=None) -> int:
    ns = build_parser().parse_args(argv)
    import denet

    from ..data import make_loader, open_dataset

    if os.path.exists(ns.output) and os.path.samefile(ns.output, ns.model):
        raise DenetError(f"--output {ns.output} is the input model; give another file")
    if os.path.abspath(ns.output) == os.path.abspath(ns.model):
        raise DenetError(f"--output {ns.output} is the input model; give another file")
    model = denet.load(ns.model)
    if ns.device:
        try:
            device = torch.device(ns.device)
        except (RuntimeError, ValueError):
            raise DenetError(f"--device: {ns.device!r} is not a device") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DenetError(f"--device {ns.device}: no CUDA device is available")
    else:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    dataset = open_dataset(ns.input, ns.extension, train=False)
    shape = dataset.input_shape
    if shape is not None and tuple(model.input_shape) != tuple(shape)[: len(model.input_shape)]:
        if model.task == "classification":
            raise DenetError(
                f"{ns.input}: images are {'x'.join(map(str, shape))} but the model takes "
                f"{'x'.join(map(str, model.input_shape))}"
            )
    loader = make_loader(dataset, ns.batch_size, shuffle=True, workers=ns.thread_num, seed=ns.seed)
    model.to(device)
    count, used = update_bn(model, loader, device, ns.batches)
    model.to("cpu")
    denet.save(model, ns.output)
    if ns.batches is not None and used < ns.batches:
        print(
            f"model-update-bn: warning: {ns.input} has only {used} batches of {ns.batch_size}",
            file=sys.stderr,
        )
    print(f"updated {count} batch norm(s) over {used} batch(es); wrote {ns.output}")
    return 0
