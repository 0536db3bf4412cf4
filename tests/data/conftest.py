"""Fixtures for the data tests. Digits are scikit-learn's real 8x8 handwritten digits."""

import numpy as np
import pytest
from data_builders import write_digit_tree


@pytest.fixture(scope="session")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return images, d.target


@pytest.fixture
def digit_tree(tmp_path, digits):
    images, targets = digits
    root = tmp_path / "digits"
    rows = write_digit_tree(str(root), images, targets)
    return str(root), rows
