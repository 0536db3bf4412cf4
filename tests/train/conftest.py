"""Fixtures for the trainer tests: scikit-learn's real handwritten digits as DeNet's npy format
(PREFIX_data.npy float32 [B,1,8,8] in [0, 1], PREFIX_labels.npy int32 [B]) and a runner for
bin/model-train."""

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture(scope="session")
def digits_npy(tmp_path_factory):
    """(train prefix, test prefix, n_train, n_test): a stratified 75/25 split, seed 0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    data = (d.images / 16.0).astype(np.float32)[:, None]
    labels = d.target.astype(np.int32)
    train, test = train_test_split(
        np.arange(len(labels)), test_size=0.25, random_state=0, stratify=labels
    )
    root = tmp_path_factory.mktemp("digits-npy")
    prefixes = []
    for name, ids in (("train", train), ("test", test)):
        prefix = str(root / name)
        np.save(prefix + "_data.npy", data[ids])
        np.save(prefix + "_labels.npy", labels[ids])
        prefixes.append(prefix)
    return prefixes[0], prefixes[1], len(train), len(test)


def model_train(*args, env=None, timeout=300, launcher=None, program=None):
    """Run bin/model-train (or ``launcher + [bin/model-train]``) with one intra-op thread;
    ``program`` (a list: a script and its first arguments) replaces bin/model-train."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1")
    full_env.update(env or {})
    program = [str(p) for p in program] if program else [os.path.join(ROOT, "bin", "model-train")]
    cmd = (launcher or [sys.executable]) + program + [*map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture
def train_tool():
    return model_train
