"""--learn-schedule poly (DeepLab's per-step lr * (1 - it/max)^0.9), --batch-size-factor N
(gradient accumulation: a step of N batches equals a step of one N-times larger batch), the
description string's per-layer lr= multipliers reaching the optimizer, and --resume staying
exact with both."""

import json
import os
import sys

import pytest
import torch

import denet
from denet.cli.train import main
from denet.errors import DenetError
from denet.train.distributed import DistInfo
from denet.train.options import TrainOptions
from denet.train.schedule import PolySchedule
from denet.train.trainer import Console, Trainer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
from data_builders import make_textured_seglist  # noqa: E402

# no batch norm and no dropout: the gradient of a batch is the mean of its images' gradients,
# so accumulating two half batches must give the step of the whole batch
PLAIN = "C[8,3] A P[2] C[16,3] A P.A R.B"


def read_log(prefix):
    with open(f"{prefix}_log.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def args(train, prefix, *more):
    return [
        "--model-desc",
        PLAIN,
        "--border-mode",
        "half",
        "--extension",
        "npy",
        "--train",
        train,
        "--solver",
        "nesterov",
        "--learn-momentum",
        "0.9",
        "--learn-decay",
        "0.0001",
        "--learn-rate",
        "0.05",
        "--thread-num",
        "0",
        "--seed",
        "5",
        "--output-prefix",
        str(prefix),
        *map(str, more),
    ]


# ----------------------------------------------------------------------------- poly
def test_poly_curve_per_step():
    s = PolySchedule(0.01, 200)
    assert s.lr(0) == 0.01
    assert s.lr(100) == pytest.approx(0.01 * 0.5**0.9, rel=1e-12)
    assert s.lr(199) == pytest.approx(0.01 * (1 / 200) ** 0.9, rel=1e-12)
    # DRN evaluates the same curve once per epoch: at an epoch's first step they agree
    steps, epochs = 20, 10
    s = PolySchedule(0.01, steps * epochs)
    for epoch in range(epochs):
        assert s.lr(epoch * steps) == pytest.approx(0.01 * (1 - epoch / epochs) ** 0.9)
    assert PolySchedule.from_state_dict(s.state_dict()).lr(37) == s.lr(37)
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([{"params": [p], "lr": 1.0, "lr_mult": 10.0}], lr=1.0)
    assert s.apply(opt, 50) == s.lr(50) and opt.param_groups[0]["lr"] == 10 * s.lr(50)


def _trainer(opts):
    trainer = Trainer(opts, DistInfo(), torch.device("cpu"), Console("warning", True))
    trainer.setup()
    return trainer


def test_poly_sets_every_step_and_logs_the_epoch_start(digits_npy, tmp_path):
    train, _, _, _ = digits_npy
    opts = TrainOptions(
        train=train,
        extension="npy",
        model_desc=PLAIN,
        border_mode="half",
        epochs=3,
        batch_size=32,
        batch_size_factor=2,
        max_samples=300,  # 10 batches (the last of 12 images), 5 steps an epoch
        learn_rate=0.02,
        learn_schedule="poly",
        thread_num=0,
        output_prefix=str(tmp_path / "poly"),
        log_level="warning",
    )
    trainer = _trainer(opts)
    assert trainer.steps_per_epoch() == 5 and trainer.schedule.max_iterations == 15
    seen = []
    step = trainer.optimizer.step

    def recording_step(*a, **k):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*a, **k)

    trainer.optimizer.step = recording_step
    trainer.fit()
    assert seen == pytest.approx([0.02 * (1 - it / 15) ** 0.9 for it in range(15)], rel=1e-12)
    assert trainer.iteration == 15
    log = read_log(tmp_path / "poly")
    assert [r["lr"] for r in log] == pytest.approx([0.02 * (1 - e / 3) ** 0.9 for e in range(3)])


def test_poly_refuses_anneal_options_and_factor_is_bounded(digits_npy, tmp_path, capsys):
    train, _, _, _ = digits_npy
    with pytest.raises(DenetError, match="poly takes neither"):
        TrainOptions(train=train, learn_schedule="poly", learn_anneal=0.5).check()
    assert main(args(train, tmp_path / "x", "--batch-size-factor", "0")) == 2
    err = capsys.readouterr().err.strip()
    assert "--batch-size-factor must be in [1," in err and "\n" not in err


# ----------------------------------------------------------------------------- accumulation
def test_accumulated_step_equals_a_larger_batch(digits_npy, tmp_path):
    """220 images: batch 32 gives 6 batches of 32 and one of 28; batch 16 with factor 2 gives
    the same steps, the last from a batch of 16 and one of 12 (weighted 16/28 and 12/28). Same
    shuffle (it depends on the seed and the epoch only), same initial weights, same decay."""
    train, _, _, _ = digits_npy
    common = ("--epochs", 2, "--max-samples", 220)
    big, acc, small = tmp_path / "big", tmp_path / "acc", tmp_path / "small"
    assert main(args(train, big, *common, "--batch-size", 32)) == 0
    assert main(args(train, acc, *common, "--batch-size", 16, "--batch-size-factor", 2)) == 0
    assert main(args(train, small, *common, "--batch-size", 16)) == 0
    sb, sa, ss = (denet.load(f"{p}_final.pt").state_dict() for p in (big, acc, small))
    for k in sb:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(ss[k], sb[k], rtol=1e-3) for k in sb)  # not a no-op
    lb, la = read_log(big), read_log(acc)
    for rb, ra in zip(lb, la):
        assert ra["train_samples"] == rb["train_samples"] == 220
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
        assert ra["train_top1"] == pytest.approx(rb["train_top1"])
    iters = [denet.load(f"{p}_final.pt").train_state["iteration"] for p in (big, acc, small)]
    assert iters == [14, 14, 28]  # optimizer steps, not batches


class Stop(KeyboardInterrupt):
    pass


def test_resume_is_exact_with_poly_and_accumulation(digits_npy, tmp_path):
    """A run stopped in the middle of epoch 2 and resumed from P_epoch001.pt (the same command
    line with --resume appended) logs and ends as the uninterrupted run."""
    train, _, _, _ = digits_npy
    base = ("--epochs", 3, "--max-samples", 200, "--batch-size", 16, "--learn-schedule", "poly")
    base += ("--solver", "sgd", "--augment-mirror")
    more = (*base, "--batch-size-factor", 3)
    whole, part = tmp_path / "whole" / "m", tmp_path / "part" / "m"
    assert main(args(train, whole, *more)) == 0

    def stop(epoch, step):
        if (epoch, step) == (2, 3):
            raise Stop

    assert main(args(train, part, *more), on_step=stop) == 130
    assert len(read_log(part)) == 2 and not os.path.exists(f"{part}_final.pt")
    assert main(args(train, part, *more, "--resume", f"{part}_epoch001.pt")) == 0

    def drop(log):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in log]

    assert drop(read_log(part)) == drop(read_log(whole))
    sw = denet.load(f"{whole}_final.pt").state_dict()
    sp = denet.load(f"{part}_final.pt").state_dict()
    assert all(torch.equal(sw[k], sp[k]) for k in sw)
    # the saved run refuses another factor on resume
    again = args(train, part, *base, "--batch-size-factor", 2, "--resume", f"{part}_epoch001.pt")
    assert main(again) == 2


# ----------------------------------------------------------------------------- lr= multipliers
def test_layer_lr_multiplier_reaches_the_step(tmp_path):
    """DeepLab's 10x head: with plain SGD (no momentum, no decay) one step on the whole set moves
    the head's weights by -10 * lr * gradient and the body's by -lr * gradient, the gradient
    computed here with the initial weights."""
    from denet.data import collate, open_dataset

    root = str(tmp_path / "seg")
    make_textured_seglist(root, "train", 12, seed=3, size=16)
    desc = "C[8,3] BNA C[3,1,lr=10] SEG"
    opts = TrainOptions(
        train=root,
        extension="seglist,train,mirror=0",
        model_desc=desc,
        border_mode="half",
        epochs=1,
        batch_size=12,
        learn_rate=0.05,
        learn_momentum=[0.0],
        solver="nesterov",
        thread_num=0,
        output_prefix=str(tmp_path / "out" / "m"),
        log_level="warning",
    )
    trainer = _trainer(opts)
    groups = {g["lr_mult"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert groups == {1.0: 0.05, 10.0: pytest.approx(0.5)}
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()

    model = denet.compile(desc, (3, 16, 16), 3, border_mode="half")
    model.load_state_dict(before)
    model.train()
    ds = open_dataset(root, "seglist,train,mirror=0", train=True)
    images, targets = collate([ds[i] for i in range(len(ds))])
    model(images, targets)["loss_seg"].backward()
    params = dict(model.named_parameters())
    assert set(params) == {"l0_C.weight", "l1_BNA.weight", "l1_BNA.bias", "l2_C.weight"}
    for name, p in params.items():
        mult = 10.0 if name == "l2_C.weight" else 1.0  # C[3,1,lr=10]
        torch.testing.assert_close(after[name], before[name] - 0.05 * mult * p.grad)
        assert not torch.equal(after[name], before[name])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_accumulation_under_torchrun_equals_the_larger_batch(train_tool, digits_npy, tmp_path):
    """Two processes (Gloo): batch 8 with factor 2 (the first backward of a step under DDP's
    no_sync, the second all-reducing the sum) ends with the weights of batch 16 per process."""
    train, _, _, _ = digits_npy
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    runs = {"acc": (8, 2), "big": (16, 1)}
    for name, (batch, factor) in runs.items():
        more = ("--epochs", 2, "--max-samples", 200, "--device", "cpu", "--batch-size", batch)
        res = train_tool(
            *args(train, tmp_path / name, *more, "--batch-size-factor", factor),
            launcher=[*launch, "2"],
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-3000:]
    sa, sb = (denet.load(tmp_path / f"{n}_final.pt").state_dict() for n in runs)
    for k in sb:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-6)
    la, lb = read_log(tmp_path / "acc"), read_log(tmp_path / "big")
    assert [r["train_samples"] for r in la] == [r["train_samples"] for r in lb] == [200, 200]
    assert la[-1]["train_loss"] == pytest.approx(lb[-1]["train_loss"], rel=1e-4)
