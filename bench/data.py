"""Images per second of denet's loader (DataLoader workers) against a plain PIL loop, measured
in one run on the same JPEGs with the same work per image (decode, shorter side -> 224 with
antialiasing, 224x224 crop, float tensor).

    python bench/data.py [--images 256] [--workers 2] [--batch-size 32]

Prints the machine, the thread counts and the ratio loader / PIL loop.
"""

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from denet.data import make_loader, open_dataset  # noqa: E402


def make_jpegs(root, n, seed=0):
    """n JPEGs of 500x375 or 375x500 with smooth structure and noise (like photographs,
    unlike flat colour, so decoding costs what real images cost)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    for i in range(n):
        folder = os.path.join(root, f"class{i % 4}")
        os.makedirs(folder, exist_ok=True)
        f = rng.uniform(0.005, 0.05, size=3)
        base = np.stack([np.sin(xx * f[c] + yy * f[(c + 1) % 3] + c) for c in range(3)], -1)
        arr = np.clip((base * 0.4 + 0.5) * 255 + rng.normal(0, 12, base.shape), 0, 255)
        img = Image.fromarray(arr.astype(np.uint8))
        if i % 3 == 0:
            img = img.transpose(Image.Transpose.TRANSPOSE)
        img.save(os.path.join(folder, f"{i:05d}.JPEG"), quality=90)


def pil_loop(paths, crop=224):
    """The reference: one process, PIL decode + resize + centre crop + tensor."""
    n = 0
    for p in paths:
        img = Image.open(p).convert("RGB")
        w, h = img.size
        s = crop / min(w, h)
        img = img.resize(
            (max(crop, round(w * s)), max(crop, round(h * s))), Image.Resampling.LANCZOS
        )
        w, h = img.size
        x0, y0 = (w - crop) // 2, (h - crop) // 2
        img = img.crop((x0, y0, x0 + crop, y0 + crop))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        n += x.shape[0] > 0
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as root:
        make_jpegs(root, args.images)
        ds = open_dataset(root, "imagenet,crop=224", train=True)
        paths = [p for p, _ in ds.items]

        loader = make_loader(ds, args.batch_size, True, args.workers, seed=0)
        loader.set_epoch(0)
        for _ in loader:  # starts the persistent workers and warms the page cache
            pass
        pil_loop(paths[:16])

        pil_times, loader_times, inproc_times = [], [], []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            pil_loop(paths)
            pil_times.append(time.perf_counter() - t0)
            ds.set_epoch(r + 1)
            t0 = time.perf_counter()
            for i in range(len(ds)):
                ds[i]
            inproc_times.append(time.perf_counter() - t0)
            loader.set_epoch(r + 1)
            t0 = time.perf_counter()
            count = sum(images.shape[0] for images, _ in loader)
            loader_times.append(time.perf_counter() - t0)
            assert count == len(paths)

    pil_rate = len(paths) / min(pil_times)
    loader_rate = len(paths) / min(loader_times)
    inproc_rate = len(paths) / min(inproc_times)
    print(
        f"machine: {platform.machine()} {platform.processor() or platform.platform()}, "
        f"{os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}, "
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f} (other work competes for the CPUs)"
    )
    print(
        f"data: {len(paths)} JPEGs of 500x375/375x500 -> 224x224 float tensors "
        f"(imagenet,crop=224 training: scale + random crop + mirror)"
    )
    print(f"plain PIL loop (1 process):          {pil_rate:8.1f} images/s")
    print(
        f"denet dataset items, in process:     {inproc_rate:8.1f} images/s "
        f"({inproc_rate / pil_rate:.2f}x: the per-image cost of the pipeline)"
    )
    print(
        f"denet make_loader ({args.workers} workers, batch {args.batch_size}): "
        f"{loader_rate:8.1f} images/s"
    )
    print(
        f"ratio loader / PIL loop: {loader_rate / pil_rate:.2f}x (best of {args.repeats} runs each)"
    )


if __name__ == "__main__":
    main()
