"""DeNet-34 skip inference against torchvision's Faster R-CNN R50-FPN, and RoI generation
against a plain loop.

    python bench/detect.py [--threads N] [--batch B] [--size S] [--reps R] [--device D]

1. Images/s of ``examples/denet34-skip.desc`` (80 classes, eval mode, images -> per-image
   detections) against ``torchvision.models.detection.fasterrcnn_resnet50_fpn`` (91 classes,
   eval mode, the same images; its transform resizes to ``--size`` both ways, so both networks
   see the same pixels), random weights, same threads and batch, interleaved repetitions, median.
2. The RoI generation of DeNet-34 skip (``denet.kernels.denet_rois`` on its 64x64 corner map,
   sample_num 24) per image, against the same work done by a plain Python loop (the oracle of
   tests/kernels/denet_rois_oracle.py, written from the reference text); the outputs are
   checked equal.

Random weights would leave both detectors without work after their classifiers (DeNet's corner
bias of +5 gives P(corner) = 4.5e-5, below its 0.01 threshold; torchvision's random classifier
scores stay under its 0.05), so both are given heads that do work, and the detections per image
are printed: DeNet's corner logits are shifted so that about ``--corner-rate`` of the cells of
each corner type pass the threshold, and both classifiers' final layers are drawn with a spread
(std ``--logit-std``) so that some classes pass the score thresholds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "kernels"))
import denet  # noqa: E402
from denet.kernels import denet_rois  # noqa: E402


def desc(name):
    with open(os.path.join(HERE, "..", "examples", f"{name}.desc")) as f:
        return f.read()


def denet_detector(size, device, corner_rate, logit_std, x):
    model = denet.compile(desc("denet34-skip"), (3, size, size), 80, border_mode="half")
    model = model.to(device).eval()
    dnc = next(m for m in model.modules() if type(m).__name__ == "Corners")
    k = dnc.corners
    with torch.no_grad():
        # DeNet starts the corner weights at zero (every cell alike): give them a spread
        dnc.conv.weight[:k].normal_(0, 1 / dnc.conv.in_channels**0.5)
        # shift each corner type's bias so that ``corner_rate`` of its cells pass P > 0.01
        # (P = sigmoid(-2 logit)), measured on the benchmark batch itself
        logits = corner_logits(model, dnc, x)  # [B, K, H, W]
        q = torch.quantile(logits.transpose(0, 1).flatten(1).float(), corner_rate, dim=1)
        target = -0.5 * torch.log(torch.tensor(0.01 / 0.99))  # logit at P = 0.01
        dnc.conv.bias[:k] += (target - q).to(dnc.conv.bias)
        dnd = next(m for m in model.modules() if type(m).__name__ == "DetectionClassifier")
        dnd.conv.weight.normal_(0, logit_std / dnd.conv.in_channels**0.5)
    return model


def corner_logits(model, dnc, x):
    found = {}
    handle = dnc.conv.register_forward_hook(lambda m, i, o: found.setdefault("out", o))
    try:
        model(x)
    finally:
        handle.remove()
    return found["out"][:, : dnc.corners]


def torchvision_detector(size, device, logit_std):
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    model = fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=size, max_size=size
    )
    with torch.no_grad():
        head = model.roi_heads.box_predictor.cls_score
        head.weight.normal_(0, logit_std / head.in_features**0.5)
    return model.to(device).eval()


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


@torch.no_grad()
def bench_models(args, device):
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    dn = denet_detector(args.size, device, args.corner_rate, args.logit_std, x)
    tv = torchvision_detector(args.size, device, args.logit_std)
    images = list(x)
    runs = {"denet34-skip": lambda: dn(x), "fasterrcnn_resnet50_fpn": lambda: tv(images)}
    for fn in runs.values():  # warm-up
        timed(fn, device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    found: dict[str, float] = {}
    for r in range(args.reps):  # interleaved, alternating order
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for name in order:
            t, out = timed(runs[name], device)
            times[name].append(t)
            found[name] = sum(len(o["scores"]) for o in out) / len(out)
    return {name: statistics.median(t) for name, t in times.items()}, found, dn, x


@torch.no_grad()
def bench_rois(dn, x, reps):
    from denet_rois_oracle import oracle_rois

    dnc = next(m for m in dn.modules() if type(m).__name__ == "Corners")
    logits = corner_logits(dn, dnc, x).float().cpu()
    # DNC's log-softmax over [l, -l]: index 0 = absent, 1 = present, P(present) = sigmoid(-2l)
    logp = torch.stack((F.logsigmoid(2 * logits), F.logsigmoid(-2 * logits)), 1)
    sn = 24
    t_op = statistics.median(
        timed(lambda: denet_rois(logp, sn), torch.device("cpu"))[0] for _ in range(reps)
    )
    t_loop, expected = timed(lambda: oracle_rois(logp, sn), torch.device("cpu"))
    boxes, _, counts = denet_rois(logp, sn)
    assert counts.tolist() == [len(e) for e in expected], "denet_rois differs from the loop"
    h, w = logp.shape[-2:]
    for b, exp in enumerate(expected):
        want = torch.tensor(
            [[x0 / w, y0 / h, (x1 + 1) / w, (y1 + 1) / h] for (x0, y0, x1, y1), _ in exp]
        )
        assert torch.equal(boxes[b, : len(exp)], want.reshape(-1, 4).float())
    above = (logp[:, 1] > torch.log(torch.tensor(0.01))).flatten(2).sum(-1).float().mean()
    return t_op / len(logp), t_loop / len(logp), float(above), counts.float().mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--corner-rate", type=float, default=0.02, help="share of cells above 0.01")
    p.add_argument("--logit-std", type=float, default=3.0, help="spread of the class logits")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"{torch.get_num_threads()} threads"
        )
    )
    print(f"machine: {where}, torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(
        f"batch {args.batch}, input 3x{args.size}x{args.size}, eval mode, random weights, "
        f"{args.reps} interleaved repetitions, median"
    )
    t, found, dn, x = bench_models(args, device)
    for name in t:
        print(
            f"{name}: {t[name] * 1000:.0f} ms per batch, {args.batch / t[name]:.2f} images/s, "
            f"{found[name]:.0f} detections per image"
        )
    ratio = t["fasterrcnn_resnet50_fpn"] / t["denet34-skip"]
    print(f"images/s ratio denet34-skip / fasterrcnn_resnet50_fpn: {ratio:.2f}")
    op, loop, above, count = bench_rois(dn, x, args.reps)
    print(
        f"RoI generation per image (CPU, {above:.0f} cells above 0.01 per corner type, "
        f"{count:.0f} RoIs): denet_rois {op * 1000:.1f} ms, plain loop {loop * 1000:.0f} ms, "
        f"ratio {loop / op:.0f}x"
    )


if __name__ == "__main__":
    main()
