#!/usr/bin/env python3
"""The denet demo (``make demo``): train a small CNN on real handwritten digits with the
command-line tools, then classify test images with the trained model.

1. Writes scikit-learn's digits (1797 real 8x8 handwritten digits that ship with the package)
   as a Basic Dir tree: ``OUT/digits/{train,test}/<digit>/NNNN.png`` (a stratified 75/25 split).
2. Runs ``bin/model-train`` on it with the description string below.
3. Runs ``bin/model-predict`` on the test tree, shows a few predictions and prints the accuracy.

    python examples/digits_demo.py --output demo-out
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESC = "C[32,3] BN A C[32,3] BN A P[2] C[64,3] BN A P.A R.B"
TRAIN_OPTIONS = [
    "--border-mode",
    "half",
    "--solver",
    "nesterov",
    "--learn-rate",
    "0.02",
    "--learn-momentum",
    "0.9",
    "--learn-anneal",
    "0.75",
    "--learn-decay",
    "0.0005",
    "--batch-size",
    "32",
    "--epochs",
    "8",
    "--extension",
    "png",
]


def write_digits(root: str) -> tuple[int, int]:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    index = np.arange(len(d.target))
    train, test = train_test_split(index, test_size=0.25, random_state=0, stratify=d.target)
    pixels = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    for split, ids in (("train", train), ("test", test)):
        for i in ids:
            folder = os.path.join(root, split, str(d.target[i]))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(pixels[i], "L").save(os.path.join(folder, f"{i:04d}.png"))
    return len(train), len(test)


def run_tool(name: str, *args: str) -> None:
    # One intra-op thread: 8x8 images gain nothing from more, and it keeps the demo fast on
    # small machines. The tools print to this terminal as they run.
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, os.path.join(ROOT, "bin", name), *args]
    print("$ " + " ".join(cmd[1:]), flush=True)
    res = subprocess.run(cmd, env=env)
    if res.returncode != 0:
        sys.exit(f"digits_demo: {name} failed with exit status {res.returncode}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="demo-out", help="folder for the data and models")
    args = parser.parse_args()
    out = os.path.abspath(args.output)
    data = os.path.join(out, "digits")
    t0 = time.time()

    print(f"== 1. writing scikit-learn's handwritten digits to {data}", flush=True)
    if os.path.isdir(data):
        import shutil

        shutil.rmtree(data)
    n_train, n_test = write_digits(data)
    print(f"   {n_train} training and {n_test} test images, 8x8 greyscale PNG, 10 classes")

    print(f"\n== 2. training {DESC!r}", flush=True)
    prefix = os.path.join(out, "digits-cnn")
    run_tool(
        "model-train",
        "--model-desc",
        DESC,
        *TRAIN_OPTIONS,
        "--train",
        os.path.join(data, "train"),
        "--test",
        os.path.join(data, "test"),
        "--output-prefix",
        prefix,
        "--thread-num",
        "1",
    )
    with open(prefix + "_log.jsonl", encoding="utf-8") as fh:
        log = [json.loads(line) for line in fh]

    print("\n== 3. classifying the test images with the trained model", flush=True)
    predictions = os.path.join(out, "predictions.json")
    run_tool(
        "model-predict",
        "--model",
        prefix + "_final.pt",
        "--input",
        os.path.join(data, "test"),
        "--predict-mode",
        "classify",
        "--output",
        predictions,
    )
    with open(predictions, encoding="utf-8") as fh:
        results = json.load(fh)
    print("\n   a few of them (image: true class -> top predictions):")
    for r in results[::45][:10]:
        top = ", ".join(f"{c} {100 * p:.1f}%" for c, p in r["top5"][:3])
        print(f"   {os.path.relpath(r['path'], data)}: {r['label']} -> {top}")
    correct = sum(r["top5"][0][0] == r["label"] for r in results)
    accuracy = correct / len(results)
    print(f"\nmodel-predict test accuracy: {100 * accuracy:.2f}% ({correct}/{len(results)})")
    print(
        f"model-train final test top-1 (log): {100 * log[-1]['test_top1']:.2f}%, "
        f"top-5 {100 * log[-1]['test_top5']:.2f}%"
    )
    print(f"files in {out}; {time.time() - t0:.0f} s in all")
    if accuracy < 0.97:
        print("digits_demo: accuracy below the expected 97%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
