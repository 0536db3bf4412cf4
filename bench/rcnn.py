"""The converted ``fasterrcnn_resnet50_fpn`` against torchvision's own model, on CPU.

    python bench/rcnn.py [--threads N] [--batch B] [--size S] [--reps R] [--arch A]

Both models hold the same weights (torchvision's model as its pretrained weights build it:
frozen BN, three trainable stages; random weights scaled so that detections pass the score
threshold) and take the same [0, 1] images (default batch 1 at 800 x 800):

* evaluation: images per second of ``model(images)`` (transform, backbone, FPN, RPN, RoI heads,
  post-processing);
* training: one step, ``sum(losses).backward()`` with the same targets and the same random
  state before each call (so both sample the same anchors and RoIs).

Same threads, interleaved repetitions (alternating order), median. Prints the machine, the
thread count and the ratios denet / torchvision (the target is at most 1.10).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from segment import interleaved  # noqa: E402

import denet  # noqa: E402
from denet.cli.convert_rcnn import RCNN_ARCHS, reference_model, torchvision_rcnn  # noqa: E402


def models(arch: str, size: int):
    torch.manual_seed(0)
    tv = reference_model(arch)
    with torch.no_grad():  # dozens of detections above the 0.05 threshold
        cls = tv.roi_heads.box_predictor.cls_score
        cls.weight.mul_(0.2)
        cls.bias.normal_()
        cls.bias[0] = 4.0
    return tv, torchvision_rcnn(arch, tv.state_dict(), (size, size))


def targets(batch: int, size: int, arch: str):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(batch):
        xy = torch.rand(4, 2, generator=g) * size * 0.6
        wh = torch.rand(4, 2, generator=g) * size * 0.3 + 16
        boxes = torch.cat([xy, xy + wh], 1)
        t = {"boxes": boxes, "labels": torch.randint(0, 1 if "keypoint" in arch else 90, (4,))}
        if "mask" in arch:
            t["masks"] = torch.zeros(4, size, size, dtype=torch.uint8)
            for m, b in zip(t["masks"], boxes.long()):
                m[b[1] : b[3], b[0] : b[2]] = 1
        if "keypoint" in arch:
            kp = torch.rand(4, 17, 3, generator=g)
            t["keypoints"] = torch.cat(
                [boxes[:, None, :2] + kp[..., :2] * wh[:, None], kp[..., 2:] * 0 + 2], 2
            )
        out.append(t)
    return out


def bench(arch: str, batch: int, size: int, reps: int):
    tv, ours = models(arch, size)
    images = torch.rand(batch, 3, size, size)
    tv.eval()
    ours.eval()

    @torch.no_grad()
    def eval_tv():
        tv(list(images))

    @torch.no_grad()
    def eval_denet():
        ours(images)

    evaluation = interleaved({"denet": eval_denet, "torchvision": eval_tv}, reps)
    tv.train()
    ours.train()
    ts = targets(batch, size, arch)
    theirs = [{**t, "labels": t["labels"] + 1} for t in ts]

    def step_tv():
        torch.manual_seed(2)
        tv.zero_grad(set_to_none=True)
        sum(tv(list(images), theirs).values()).backward()

    def step_denet():
        torch.manual_seed(2)
        ours.zero_grad(set_to_none=True)
        sum(ours(images, ts).values()).backward()

    training = interleaved({"denet": step_denet, "torchvision": step_tv}, reps)
    return evaluation, training


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=800)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--arch", choices=RCNN_ARCHS, default="fasterrcnn_resnet50_fpn")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, denet {getattr(denet, '__version__', '?')}"
    )
    print(
        f"threads {torch.get_num_threads()}, {args.reps} interleaved repetitions after one "
        f"warm-up, median"
    )
    ev, tr = bench(args.arch, args.batch, args.size, args.reps)
    what = f"{args.arch}, batch {args.batch}, 3x{args.size}x{args.size}"
    print(
        f"{what}, evaluation: denet {args.batch / ev['denet']:.3f} images/s, torchvision "
        f"{args.batch / ev['torchvision']:.3f} images/s, time ratio "
        f"{ev['denet'] / ev['torchvision']:.3f}"
    )
    print(
        f"{what}, training step: denet {tr['denet'] * 1000:.0f} ms, torchvision "
        f"{tr['torchvision'] * 1000:.0f} ms, ratio {tr['denet'] / tr['torchvision']:.3f}"
    )


if __name__ == "__main__":
    main()
