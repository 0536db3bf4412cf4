"""Fixtures for the model-train / model-predict tests: scikit-learn's real handwritten digits
(8x8, 1797 images) written as a Basic Dir PNG tree, and a runner for the bin/ tools."""
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
    return subprocess.run([sys.executable, os.path.join(ROOT, "bin", tool), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture
def tool():
    return run_tool
