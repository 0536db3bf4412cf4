"""Fixtures for the model-train / model-predict tests: scikit-learn's real handwritten digits
(8x8, 1797 images) written as a Basic Dir PNG tree, a small segmentation set in DRN's list
format, and a runner for the bin/ tools."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def write_digits_tree(root):
    """``root/train/<digit>/NNNN.png`` and ``root/test/<digit>/NNNN.png`` (a stratified 75/25
    split, seed 0); pixels 0..16 scaled to 0..255, greyscale. Returns (train, test) counts."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    index = np.arange(len(d.target))
    train, test = train_test_split(index, test_size=0.25, random_state=0, stratify=d.target)
    pixels = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    for split, ids in (("train", train), ("test", test)):
        for i in ids:
            folder = os.path.join(root, split, str(d.target[i]))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(pixels[i], "L").save(os.path.join(folder, f"{i:04d}.png"))
    return len(train), len(test)


@pytest.fixture(scope="session")
def digits_tree(tmp_path_factory):
    """(train dir, test dir, n_train, n_test) of the digits PNG tree, written once per session."""
    root = tmp_path_factory.mktemp("digits")
    n_train, n_test = write_digits_tree(str(root))
    return str(root / "train"), str(root / "test"), n_train, n_test


def run_tool(tool, *args, env=None, timeout=300):
    """Run ``bin/<tool>`` with the test's python; one intra-op thread (8x8 images gain nothing
    from more, and the test machine is shared)."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", tool), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


@pytest.fixture
def tool():
    return run_tool


SEG_CLASSES = ["background", "red", "green"]
SEG_COLOURS = {1: (220, 40, 40), 2: (40, 200, 60)}


def write_seglist(root, split, n, size=24, seed=0):
    """DRN's lists under ``root`` for ``split``: ``n`` RGB PNGs of ``size`` x ``size``, black
    with one red and one green rectangle at random places (seeded), and their label maps
    (0 background, 1 red, 2 green, the red drawn last; a 2-pixel frame of 255 = ignore).
    ``info.json`` names the classes. Returns the image paths."""
    from PIL import Image

    rng = np.random.default_rng([seed, len(split)])
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "labels"), exist_ok=True)
    images, labels = [], []
    for k in range(n):
        arr = np.zeros((size, size, 3), np.uint8)
        lab = np.zeros((size, size), np.uint8)
        for cls in (2, 1):
            x0, y0 = rng.integers(0, size - 8, 2)
            w, h = rng.integers(5, 12, 2)
            arr[y0 : y0 + h, x0 : x0 + w] = SEG_COLOURS[cls]
            lab[y0 : y0 + h, x0 : x0 + w] = cls
        lab[:2], lab[-2:], lab[:, :2], lab[:, -2:] = 255, 255, 255, 255
        images.append(f"images/{split}{k:03d}.png")
        labels.append(f"labels/{split}{k:03d}.png")
        Image.fromarray(arr).save(os.path.join(root, images[-1]))
        Image.fromarray(lab).save(os.path.join(root, labels[-1]))
    for name, lines in (("images", images), ("labels", labels)):
        with open(os.path.join(root, f"{split}_{name}.txt"), "w") as fh:
            fh.write("\n".join(lines) + "\n")
    with open(os.path.join(root, "info.json"), "w") as fh:
        json.dump({"classes": SEG_CLASSES}, fh)
    return [os.path.join(root, p) for p in images]


@pytest.fixture(scope="session")
def seg_tree(tmp_path_factory):
    """(root, train image paths, val image paths) of a small seglist set."""
    root = str(tmp_path_factory.mktemp("seglist"))
    return root, write_seglist(root, "train", 48), write_seglist(root, "val", 12, seed=1)
