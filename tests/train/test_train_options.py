"""The trainer's pieces that need no training: --resume's option check, --cost-factors, the
weighted loss, targets on the device, log entries from metrics, and the data helpers."""

import math

import pytest
import torch

from denet.data import StridedSampler, SubsetDataset
from denet.errors import DenetError
from denet.train.options import TrainOptions, loss_factors, resume_options, total_loss
from denet.train.trainer import metrics_record, targets_to

SAVED = TrainOptions(
    train="data/train",
    model_desc="C[8,3] BN A P.A R",
    learn_rate=0.02,
    learn_momentum=[0.9],
    cost_factors=["loss_cls=2"],
    epochs=4,
)


def test_resume_accepts_the_same_options_written_differently():
    given = {
        "train": "data//train/",
        "model_desc": "C[8,3]  BN A P.A R",
        "learn_rate": 0.020,
        "learn_momentum": [0.9],
        "cost_factors": ["loss_cls=2.0"],
        "epochs": 9,
        "thread_num": 0,
        "output_prefix": "elsewhere/p",
    }
    opts = resume_options(SAVED, given, "p_epoch001.pt")
    assert opts.epochs == 9 and opts.thread_num == 0 and opts.output_prefix == "elsewhere/p"
    assert opts.learn_rate == 0.02 and opts.model_desc == SAVED.model_desc
    assert SAVED.epochs == 4  # the saved options are not changed


@pytest.mark.parametrize(
    "name, value, before, after",
    [
        ("learn_rate", 0.5, "0.02", "0.5"),
        ("model_desc", "C[8,3] BN A P.A R.B", "'C[8,3] BN A P.A R'", "'C[8,3] BN A P.A R.B'"),
        ("learn_momentum", [0.9, 0.99], "0.9", "0.9 0.99"),
        ("cost_factors", ["2"], "loss_cls=2", "2"),
        ("test", "data/test", "None", "data/test"),
        ("augment_mirror", True, "False", "True"),
    ],
)
def test_resume_names_a_changed_option_and_both_values(name, value, before, after):
    with pytest.raises(DenetError) as err:
        resume_options(SAVED, {name: value}, "p_epoch001.pt")
    text = str(err.value)
    assert "\n" not in text and text.startswith(
        "--resume p_epoch001.pt: --" + name.replace("_", "-") + " "
    )
    assert f"was {before} in the saved run, not {after} " in text


def test_loss_factors_by_name_and_by_position():
    names = ("loss_cls", "loss_box", "top1")
    assert loss_factors([], names) == {"loss_cls": 1.0, "loss_box": 1.0}
    assert loss_factors(["2"], names) == {"loss_cls": 2.0, "loss_box": 1.0}
    assert loss_factors([0.5, "3"], names) == {"loss_cls": 0.5, "loss_box": 3.0}
    assert loss_factors(["loss_box=4"], names) == {"loss_cls": 1.0, "loss_box": 4.0}
    assert loss_factors(["2", "loss_box=4"], names) == {"loss_cls": 2.0, "loss_box": 4.0}
    for bad, needle in (
        (["1", "2", "3"], "3 factors"),
        (["top1=2"], "no loss 'top1'"),
        (["loss_cls=1", "loss_cls=2"], "twice"),
        (["2", "loss_cls=1"], "twice"),
        (["loss=x"], "loss=x"),
        (["inf"], "finite"),
    ):
        with pytest.raises(DenetError, match=needle) as err:
            loss_factors(bad, names)
        assert "\n" not in str(err.value)
        if needle in ("3 factors", "no loss 'top1'"):
            assert "loss_cls, loss_box" in str(err.value)


def test_total_loss_weights_the_losses_and_skips_statistics():
    a = torch.tensor(1.5, requires_grad=True)
    b = torch.tensor(2.0, requires_grad=True)
    losses = {"loss_cls": a, "loss_box": b, "top1": torch.tensor(0.25)}
    total = total_loss(losses, {"loss_cls": 1.0, "loss_box": 3.0})
    assert float(total.detach()) == 1.5 + 6.0
    total.backward()
    assert float(a.grad) == 1.0 and float(b.grad) == 3.0
    assert total_loss({"loss_cls": a}, {"loss_cls": 1.0}) is a  # unchanged when the factor is 1


def test_targets_to_moves_tensors_and_keeps_other_values():
    targets = [{"label": 3, "boxes": torch.zeros(2, 4), "name": "x"}]
    moved = targets_to(targets, torch.device("meta"))
    assert moved[0]["label"] == 3 and moved[0]["name"] == "x"
    assert moved[0]["boxes"].device.type == "meta" and targets[0]["boxes"].device.type == "cpu"


def test_metrics_record_nulls_nan_and_counts_samples():
    rec = metrics_record({"top1": 0.5, "loss": math.nan, "samples": 12.0}, "test_")
    assert rec == {"test_top1": 0.5, "test_loss": None, "test_samples": 12}
    assert isinstance(rec["test_samples"], int)


class _Items:
    classes, num_classes, task, input_shape, seed, epoch = (
        ["a", "b"],
        2,
        "classification",
        (1, 2, 2),
        5,
        0,
    )

    def __getitem__(self, i):
        return i * 10

    def __len__(self):
        return 10

    def set_epoch(self, e):
        self.epoch = e


def test_subset_dataset_and_strided_sampler():
    full = _Items()
    sub = SubsetDataset(full, [7, 2])
    assert len(sub) == 2 and [sub[0], sub[1]] == [70, 20]
    assert (sub.classes, sub.num_classes, sub.task, sub.input_shape) == (
        full.classes,
        2,
        "classification",
        (1, 2, 2),
    )
    sub.set_epoch(3)
    sub.seed = 9
    assert full.epoch == 3 and full.seed == 9 and sub.epoch == 3
    ranks = [list(StridedSampler(7, r, 3)) for r in range(3)]
    assert ranks == [[0, 3, 6], [1, 4], [2, 5]] and len(StridedSampler(7, 1, 3)) == 2
    with pytest.raises(ValueError):
        StridedSampler(7, 3, 3)
