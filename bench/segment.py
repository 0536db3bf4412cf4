"""Compiled segmentation strings against the same networks written by hand, on CPU.

    python bench/segment.py [--threads N] [--batch B] [--size S] [--deeplab-size S] [--reps R]

* ``examples/drnseg_drn_d_22.desc`` (DRNSeg(DRN-D-22), 19 classes): forward + backward in training
  mode at S x S (default 512), against fyu/drn's DRNSeg written in plain PyTorch
  (tests/cli/drn_oracle.py) with the same weights; denet through the task contract
  (``model(images, targets)["loss_seg"]``), DRNSeg with segment.py's NLL of its log-softmax,
  ignore 255.
* ``examples/deeplab-v2-msc.desc`` (21 classes): forward in evaluation mode at S x S (default 321,
  batch 1 as isht7), against isht7's MS_Deeplab written in plain PyTorch
  (tests/cli/deeplab_oracle.py) with the same weights, all four outputs.
* ``DCN.B[256,3,dilation=2,offset_dilation=1]`` (Deformable DeepLab's res5 conv, v1 and ``.M``
  v2) on 1x256x64x64, forward + backward, against ``torchvision.ops.DeformConv2d`` fed by its own
  offset conv (``nn.Conv2d``, 18 or 27 channels) with the same weights.

Same threads and inputs, interleaved repetitions (alternating order), median. Prints the machine,
the thread count and the ratios (denet / hand-written; at most 1.05 is the target).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "cli"))
import deeplab_oracle  # noqa: E402
import drn_oracle  # noqa: E402

import denet  # noqa: E402
from denet.cli.convert_deeplab import deeplab_v2  # noqa: E402
from denet.cli.convert_drn import drn_segmenter  # noqa: E402


def interleaved(runs: dict, reps: int, warmup: int = 1) -> dict:
    """name -> median seconds of ``runs[name]()``, repetitions interleaved in alternating
    order after ``warmup`` rounds."""
    names = list(runs)
    for _ in range(warmup):
        for n in names:
            runs[n]()
    times: dict = {n: [] for n in names}
    for r in range(reps):
        for n in names if r % 2 == 0 else reversed(names):
            t0 = time.perf_counter()
            runs[n]()
            times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


def bench_drnseg(batch: int, size: int, reps: int):
    torch.manual_seed(0)
    classes = 19
    ref = drn_oracle.randomise(drn_oracle.DRNSeg("drn_d_22", classes))
    model = drn_segmenter("drn_d_22", ref.state_dict(), image_size=(size, size))
    ref.train()
    model.train()
    x = torch.randn(batch, 3, size, size)
    masks = torch.randint(0, classes, (batch, size, size))
    masks[:, :8] = 255  # some ignored pixels
    targets = [{"mask": m} for m in masks]
    nll = torch.nn.NLLLoss(ignore_index=255)

    def step_ref():
        ref.zero_grad(set_to_none=True)
        nll(ref(x)[0], masks).backward()

    def step_denet():
        model.zero_grad(set_to_none=True)
        model(x, targets)["loss_seg"].backward()

    return interleaved({"denet": step_denet, "hand": step_ref}, reps)


def bench_deeplab(size: int, reps: int):
    torch.manual_seed(0)
    ref = deeplab_oracle.randomise(deeplab_oracle.MSDeeplab(21))
    model = deeplab_v2(ref.state_dict(), image_size=(size, size)).eval()
    x = torch.randn(1, 3, size, size)

    def fwd_ref():
        with torch.no_grad():
            ref(x)

    def fwd_denet():
        with torch.no_grad():
            model(x)

    return interleaved({"denet": fwd_denet, "hand": fwd_ref}, reps)


def bench_deform(reps: int, modulated: bool):
    import torchvision

    torch.manual_seed(0)
    tag = ".BM" if modulated else ".B"
    model = denet.compile(
        f"DCN{tag}[256,3,dilation=2,offset_dilation=1]", (256, 64, 64), border_mode="half"
    ).train()
    dcn = next(m for n, m in model.named_modules() if n.endswith("_DCN"))
    off = next(m for n, m in model.named_modules() if n.endswith("_DCN_offset"))
    with torch.no_grad():
        off.weight.normal_(0, 0.01)  # not zero: the sampling positions move
    tv = torchvision.ops.DeformConv2d(256, 256, 3, padding=2, dilation=2, bias=True)
    tv_off = torch.nn.Conv2d(256, off.weight.shape[0], 3, padding=1)
    with torch.no_grad():
        tv.weight.copy_(dcn.weight)
        tv.bias.copy_(dcn.bias)
        tv_off.weight.copy_(off.weight)
        tv_off.bias.copy_(off.bias)
    x = torch.randn(1, 256, 64, 64, requires_grad=True)

    def step_tv():
        o = tv_off(x)
        if modulated:
            y = tv(x, o[:, :18], 2 * torch.sigmoid(o[:, 18:]))
        else:
            y = tv(x, o)
        y.sum().backward()

    def step_denet():
        model.graph_module(x).sum().backward()

    return interleaved({"denet": step_denet, "hand": step_tv}, reps)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batch", type=int, default=2, help="DRNSeg batch (default 2)")
    p.add_argument("--size", type=int, default=512, help="DRNSeg input size (default 512)")
    p.add_argument("--deeplab-size", type=int, default=321, help="DeepLab input (default 321)")
    p.add_argument("--reps", type=int, default=5)
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
    t = bench_drnseg(args.batch, args.size, args.reps)
    print(
        f"drnseg_drn_d_22, batch {args.batch}, 3x{args.size}x{args.size}, forward+backward "
        f"(train mode): denet {t['denet'] * 1000:.1f} ms, hand-written DRNSeg "
        f"{t['hand'] * 1000:.1f} ms, ratio {t['denet'] / t['hand']:.3f}"
    )
    t = bench_deeplab(args.deeplab_size, args.reps)
    print(
        f"deeplab-v2-msc, batch 1, 3x{args.deeplab_size}x{args.deeplab_size}, forward (eval, "
        f"4 outputs): denet {t['denet'] * 1000:.1f} ms, hand-written MS_Deeplab "
        f"{t['hand'] * 1000:.1f} ms, ratio {t['denet'] / t['hand']:.3f}"
    )
    for modulated in (False, True):
        t = bench_deform(args.reps, modulated)
        print(
            f"DCN{'.M (v2)' if modulated else ' (v1)'} 256->256 3x3 dil 2, 1x256x64x64, forward+"
            f"backward: denet {t['denet'] * 1000:.1f} ms, torchvision DeformConv2d + offset conv "
            f"{t['hand'] * 1000:.1f} ms, ratio {t['denet'] / t['hand']:.3f}"
        )


if __name__ == "__main__":
    main()
