"""DeNet's learning-rate schedule: after epoch e, lr *= anneal if e+1 is listed (or always)."""

import pytest
import torch

from denet.errors import DenetError
from denet.train.schedule import AnnealSchedule


def test_every_epoch_when_the_list_is_empty():
    s = AnnealSchedule(0.1, 0.5)
    assert [s.lr(e) for e in range(4)] == [0.1, 0.05, 0.025, 0.0125]


def test_listed_epochs_only():
    # --learn-anneal-epochs 2 4: the drop happens after the 2nd and the 4th epoch
    s = AnnealSchedule(1.0, 0.1, [4, 2])
    assert [s.lr(e) for e in range(6)] == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_matches_denet_loop():
    """DeNet's train.py: lr starts at learn_rate; after each epoch the condition is checked."""
    for anneal_epochs in ([], [1, 3], [5]):
        s = AnnealSchedule(0.3, 0.7, anneal_epochs)
        lr = 0.3
        for epoch in range(7):
            assert s.lr(epoch) == lr
            if len(anneal_epochs) == 0 or (epoch + 1) in anneal_epochs:
                lr *= 0.7


def test_apply_keeps_layer_multipliers_and_round_trips():
    p, q = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD(
        [{"params": [p], "lr": 0.2, "lr_mult": 1.0}, {"params": [q], "lr": 0.02, "lr_mult": 0.1}],
        lr=0.2,
    )
    s = AnnealSchedule(0.2, 0.5, [1])
    assert s.apply(opt, 3) == 0.1
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.01])
    assert AnnealSchedule.from_state_dict(s.state_dict()).lr(3) == s.lr(3)


def test_bad_values():
    with pytest.raises(DenetError):
        AnnealSchedule(-0.1)
    with pytest.raises(DenetError, match="counted from 1"):
        AnnealSchedule(0.1, 0.5, [0])
