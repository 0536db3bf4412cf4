"""Top-k accuracy against hand-computed cases."""

import pytest
import torch

from denet.eval.topk import topk_accuracy, topk_correct


def test_hand_computed_case():
    scores = torch.tensor(
        [
            [0.10, 0.50, 0.20, 0.15, 0.05, 0.00],  # label 1: top-1 hit
            [0.30, 0.25, 0.20, 0.15, 0.06, 0.04],  # label 4: rank 5 -> top-5 hit only
            [0.30, 0.25, 0.20, 0.15, 0.06, 0.04],  # label 5: rank 6 -> miss
            [0.05, 0.05, 0.60, 0.12, 0.10, 0.08],  # label 3: rank 2 -> top-2 hit
        ]
    )
    labels = torch.tensor([1, 4, 5, 3])
    assert topk_correct(scores, labels, (1, 2, 5)) == [1, 2, 3]
    assert topk_accuracy(scores, labels, (1, 5)) == [0.25, 0.75]


def test_k_beyond_classes_counts_everything():
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])
    labels = torch.tensor([2, 2])
    assert topk_correct(scores, labels, (1, 3, 5)) == [1, 2, 2]


def test_errors_and_empty():
    assert topk_accuracy(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) == [0.0, 0.0]
    with pytest.raises(ValueError):
        topk_correct(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        topk_correct(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
