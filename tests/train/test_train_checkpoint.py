"""Checkpoints: RNG states, optimizer state and the log survive a model file round trip."""

import random

import numpy as np
import pytest
import torch

import denet
from denet.errors import ModelFileError
from denet.train import checkpoint as ckpt
from denet.train.schedule import AnnealSchedule
from denet.train.solvers import make_optimizer


def draws():
    return (
        random.random(),
        random.gauss(0, 1),
        float(np.random.rand()),
        float(np.random.randn()),
        torch.rand(3).tolist(),
    )


def test_rng_states_round_trip_through_a_model_file(tmp_path):
    model = denet.compile("C[4,3] BN A P.A R", (1, 8, 8), 3)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.randn()
    state = ckpt.capture_rng_state()
    path = tmp_path / "m.pt"
    denet.save(model, path, {"rng": state})
    expected = draws()
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.restore_rng_state(denet.load(path).train_state["rng"])
    assert draws() == expected


def test_train_state_round_trip_restores_the_optimizer(tmp_path):
    torch.manual_seed(0)
    model = denet.compile("C[4,3] BN A P.A R.B", (1, 8, 8), 3)
    opt = make_optimizer("sgd", model.param_groups(0.1, 1e-4), 0.1, [0.9], 1e-4)
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    for _ in range(2):
        model.train()
        torch.nn.functional.nll_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    records = [{"epoch": 0, "train_loss": 1.5}, {"epoch": 1, "train_loss": 1.25}]
    state = ckpt.make_train_state(
        epoch=1,
        iteration=2,
        args={"seed": 5},
        optimizer=opt,
        schedule=AnnealSchedule(0.1, 0.5),
        log_path="p_log.jsonl",
        log_records=records,
    )
    path = tmp_path / "p_epoch001.pt"
    denet.save(model, path, state)
    loaded = denet.load(path)
    ts = ckpt.check_train_state(loaded.train_state, path)
    assert ts["epoch"] == 1 and ts["iteration"] == 2 and ts["args"] == {"seed": 5}
    assert ts["log"]["records"] == records
    assert ts["log"]["offset"] == len(ckpt.render_log(records))
    opt2 = make_optimizer("sgd", loaded.param_groups(0.1, 1e-4), 0.1, [0.9], 1e-4)
    opt2.load_state_dict(ts["optimizer"])
    bufs = [opt.state[p]["momentum_buffer"] for g in opt.param_groups for p in g["params"]]
    bufs2 = [opt2.state[p]["momentum_buffer"] for g in opt2.param_groups for p in g["params"]]
    assert len(bufs) == len(bufs2) > 0
    assert all(torch.equal(a, b) for a, b in zip(bufs, bufs2))
    assert AnnealSchedule.from_state_dict(ts["schedule"]).lr(3) == pytest.approx(0.0125)


def test_log_rewrite_truncates(tmp_path):
    path = tmp_path / "p_log.jsonl"
    recs = [{"epoch": 0, "train_loss": 0.5}, {"epoch": 1, "train_loss": 0.25}]
    for r in recs + [{"epoch": 2, "train_loss": 0.125}]:
        ckpt.append_log(path, r)
    ckpt.rewrite_log(path, recs)
    assert path.read_bytes() == (
        b'{"epoch": 0, "train_loss": 0.5}\n{"epoch": 1, "train_loss": 0.25}\n'
    )


def test_a_model_without_train_state_cannot_be_resumed(tmp_path):
    with pytest.raises(ModelFileError, match="no training state"):
        ckpt.check_train_state(None, "final.pt")
    with pytest.raises(ModelFileError, match="missing"):
        ckpt.check_train_state({"version": 1, "epoch": 0}, "x.pt")
