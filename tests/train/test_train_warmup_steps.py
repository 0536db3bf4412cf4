"""Detectron's schedule in model-train: --learn-warmup ITERS [FACTOR] (linear warm-up, with every
schedule), --learn-schedule steps with --learn-steps (iterations, or epochs as 8e) and
--learn-anneal as gamma; the rates at given optimizer steps against hand computations,
--resume staying exact, the option errors, and --aspect-grouping's batches."""

import json
import os
import sys

import pytest
import torch

import denet
from denet.cli.train import main
from denet.errors import DataError, DenetError
from denet.train.distributed import DistInfo
from denet.train.options import TrainOptions
from denet.train.schedule import AnnealSchedule, LinearWarmup, PolySchedule, StepSchedule
from denet.train.trainer import Console, Trainer, aspect_ratios

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
from data_builders import make_coco  # noqa: E402

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


# ----------------------------------------------------------------------------- the formulas
def test_step_schedule_at_given_iterations():
    # Detectron's e2e_faster_rcnn_R-50-FPN_1x: BASE_LR 0.02, STEPS [0, 60000, 80000], GAMMA 0.1
    s = StepSchedule(0.02, [60000, 80000], 0.1)
    assert s.lr(0) == 0.02 and s.lr(59999) == 0.02
    assert s.lr(60000) == pytest.approx(0.002, rel=1e-15) and s.lr(79999) == s.lr(60000)
    assert s.lr(80000) == pytest.approx(0.0002, rel=1e-15) and s.lr(89999) == s.lr(80000)
    assert StepSchedule.from_state_dict(s.state_dict()).lr(70000) == s.lr(70000)


def test_linear_warmup_at_given_iterations():
    # Detectron's defaults: 500 iterations from 1/3; a = it / 500
    s = LinearWarmup(StepSchedule(0.02, [60000, 80000], 0.1), 500)
    assert s.rate(0, 0) == pytest.approx(0.02 / 3, rel=1e-15)
    assert s.rate(0, 250) == pytest.approx(0.02 * (1 / 3 * 0.5 + 0.5), rel=1e-15)  # 0.0133...
    assert s.rate(0, 250) == pytest.approx(0.02 * 2 / 3, rel=1e-15)
    assert s.rate(0, 499) == pytest.approx(0.02 * (1 / 3 * 1 / 500 + 499 / 500), rel=1e-15)
    assert s.rate(0, 500) == 0.02 and s.rate(0, 60000) == pytest.approx(0.002)
    # FACTOR 0.1 over 4 steps: 0.1, 0.325, 0.55, 0.775, then 1
    w = LinearWarmup(AnnealSchedule(1.0, 0.5, [1]), 4, 0.1)
    assert [w.rate(0, it) for it in range(6)] == pytest.approx([0.1, 0.325, 0.55, 0.775, 1, 1])
    # it composes: anneal is per epoch, poly per step
    assert w.rate(1, 2) == pytest.approx(0.5 * 0.55)
    p = LinearWarmup(PolySchedule(0.01, 100), 10, 0.0)
    assert p.rate(0, 5) == pytest.approx(0.01 * (1 - 5 / 100) ** 0.9 * 0.5)


def _trainer(opts):
    trainer = Trainer(opts, DistInfo(), torch.device("cpu"), Console("warning", True))
    trainer.setup()
    return trainer


def _record_rates(trainer):
    seen = []
    step = trainer.optimizer.step

    def recording_step(*a, **k):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*a, **k)

    trainer.optimizer.step = recording_step
    return seen


def _opts(train, tmp_path, **kw):
    base = dict(
        train=train,
        extension="npy",
        model_desc=PLAIN,
        border_mode="half",
        epochs=3,
        batch_size=32,
        max_samples=160,  # 5 steps an epoch
        learn_rate=0.1,
        thread_num=0,
        output_prefix=str(tmp_path / "m"),
        log_level="warning",
    )
    base.update(kw)
    return TrainOptions(**base)


def test_warmup_and_steps_in_epochs_set_every_step(digits_npy, tmp_path):
    """5 steps an epoch; warm-up over 7 steps from 0.2, x 0.1 after 1 and 2 epochs (steps 5
    and 10): the rate of each of the 15 steps, by hand."""
    train, _, _, _ = digits_npy
    opts = _opts(
        train,
        tmp_path,
        learn_schedule="steps",
        learn_steps=["1e", "2e"],
        learn_anneal=0.1,
        learn_warmup=["7", "0.2"],
    )
    trainer = _trainer(opts)
    assert trainer.schedule.schedule.steps == [5, 10] and trainer.schedule.iterations == 7
    seen = _record_rates(trainer)
    trainer.fit()
    warm = [0.2 * (1 - it / 7) + it / 7 for it in range(7)]
    want = [0.1 * w for w in warm[:5]]  # epoch 0: warm-up only
    want += [0.01 * warm[5], 0.01 * warm[6], 0.01, 0.01, 0.01]  # x 0.1 from step 5
    want += [0.001] * 5  # x 0.01 from step 10
    assert seen == pytest.approx(want, rel=1e-12)
    assert [r["lr"] for r in read_log(tmp_path / "m")] == pytest.approx(
        [0.02, 0.01 * warm[5], 0.001]
    )


def test_warmup_with_denet_anneal_and_iteration_steps(digits_npy, tmp_path):
    train, _, _, _ = digits_npy
    opts = _opts(train, tmp_path, epochs=2, learn_anneal=0.5, learn_warmup=["1e"])
    trainer = _trainer(opts)
    seen = _record_rates(trainer)
    trainer.fit()
    third = 1 / 3
    assert seen == pytest.approx(
        [0.1 * (third * (1 - it / 5) + it / 5) for it in range(5)] + [0.05] * 5, rel=1e-12
    )
    opts = _opts(
        train, tmp_path, epochs=2, learn_schedule="steps", learn_steps=[3, 4], learn_anneal=0.5
    )
    trainer = _trainer(opts)
    seen = _record_rates(trainer)
    trainer.fit()
    assert seen == pytest.approx([0.1] * 3 + [0.05] + [0.025] * 6, rel=1e-12)


def test_steps_without_a_gamma_warn(digits_npy, tmp_path, capsys):
    train, _, _, _ = digits_npy
    _trainer(_opts(train, tmp_path, learn_schedule="steps", learn_steps=["1e"]))
    assert "--learn-anneal 1 keeps the rate" in capsys.readouterr().err
    _trainer(_opts(train, tmp_path, learn_schedule="steps", learn_steps=["1e"], learn_anneal=0.1))
    assert "keeps the rate" not in capsys.readouterr().err


class Stop(KeyboardInterrupt):
    pass


def test_resume_is_exact_with_steps_and_warmup(digits_npy, tmp_path):
    """13 steps an epoch; the warm-up lasts 30 steps (into epoch 2) and the rate drops at
    iterations 20 and 26 (26 is epoch 2's first step). A run stopped in epoch 2 and resumed from
    P_epoch001.pt (inside the warm-up, at a drop) logs and ends as the uninterrupted run."""
    train, _, _, _ = digits_npy
    more = ("--epochs", 3, "--max-samples", 200, "--batch-size", 16, "--augment-mirror")
    more += ("--learn-schedule", "steps", "--learn-steps", 20, 26, "--learn-anneal", 0.3)
    more += ("--learn-warmup", 30, 0.25)
    whole, part = tmp_path / "whole" / "m", tmp_path / "part" / "m"
    assert main(args(train, whole, *more)) == 0

    def stop(epoch, step):
        if (epoch, step) == (2, 2):
            raise Stop

    assert main(args(train, part, *more), on_step=stop) == 130
    assert len(read_log(part)) == 2 and not os.path.exists(f"{part}_final.pt")
    state = denet.load(f"{part}_epoch001.pt").train_state
    assert state["iteration"] == 26
    assert state["args"]["learn_steps"] == ["20", "26"]
    assert state["args"]["learn_warmup"] == ["30", "0.25"]
    assert main(args(train, part, *more, "--resume", f"{part}_epoch001.pt")) == 0

    def drop(log):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in log]

    log = read_log(part)
    assert drop(log) == drop(read_log(whole))
    warm = [0.25 * (1 - it / 30) + it / 30 for it in (0, 13, 26)]
    assert [r["lr"] for r in log] == pytest.approx(
        [0.05 * warm[0], 0.05 * warm[1], 0.05 * 0.09 * warm[2]], rel=1e-12
    )
    sw = denet.load(f"{whole}_final.pt").state_dict()
    sp = denet.load(f"{part}_final.pt").state_dict()
    assert all(torch.equal(sw[k], sp[k]) for k in sw)
    # other steps or another warm-up are refused on resume
    for changed in (
        ("--learn-steps", 20, 27),
        ("--learn-warmup", 30),
        ("--learn-warmup", 30, 0.5),
    ):
        again = [*more, *changed, "--epochs", 4, "--resume", f"{part}_final.pt"]
        assert main(args(train, part, *again)) == 2


@pytest.mark.parametrize(
    "more, words",
    [
        (("--learn-schedule", "steps"), "needs --learn-steps"),
        (("--learn-schedule", "steps", "--learn-steps", 10, 5), "must increase: 5 comes after 10"),
        (("--learn-schedule", "steps", "--learn-steps", 5, 5), "must increase"),
        (("--learn-schedule", "steps", "--learn-steps", -3), "'-3' is neither"),
        (("--learn-schedule", "steps", "--learn-steps", 0, 5), "count from 1"),
        (("--learn-schedule", "steps", "--learn-steps", "2e", 500), "all in epochs"),
        (("--learn-schedule", "steps", "--learn-steps", "x"), "'x' is neither"),
        (("--learn-steps", 100), "--learn-steps needs --learn-schedule steps"),
        (("--learn-schedule", "poly", "--learn-steps", 100), "needs --learn-schedule steps"),
        (
            ("--learn-schedule", "steps", "--learn-steps", 9, "--learn-anneal-epochs", 2),
            "belongs to --learn-schedule anneal",
        ),
        (("--learn-schedule", "steps", "--learn-steps", 9, "--learn-anneal", -1), ">= 0"),
        (("--learn-warmup", -5), "'-5' is neither"),
        (("--learn-warmup", 0), "at least 1 iteration"),
        (("--learn-warmup", 5, 1.5), "FACTOR must be in [0, 1]"),
        (("--learn-warmup", 5, -0.1), "FACTOR must be in [0, 1]"),
        (("--learn-warmup", 5, "third"), "is not a number"),
        (("--learn-warmup", 5, 0.1, 2), "takes ITERS [FACTOR], not 3 values"),
    ],
)
def test_bad_schedule_options_are_one_line_errors(digits_npy, tmp_path, capsys, more, words):
    train, _, _, _ = digits_npy
    assert main(args(train, tmp_path / "x", *more)) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err, err
    assert not os.path.exists(f"{tmp_path / 'x'}_log.jsonl")


def test_bad_values_in_the_python_api():
    with pytest.raises(DenetError, match="increasing"):
        StepSchedule(0.1, [5, 3], 0.1)
    with pytest.raises(DenetError, match="at least 1"):
        LinearWarmup(StepSchedule(0.1, [5], 0.1), 0)
    with pytest.raises(DenetError, match="needs --learn-steps"):
        TrainOptions(train="t", learn_schedule="steps").check()


# ----------------------------------------------------------------------------- aspect grouping
def _scenes():
    """24 images in three aspect classes (wide 48x24, square 32x32, tall 24x48), interleaved."""
    shapes = [(48, 24), (32, 32), (24, 48)]
    return [(*shapes[k % 3], [(2, 2, 14, 14, k % 3, False)]) for k in range(24)]


@pytest.fixture(scope="module")
def mixed_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco-aspect")
    make_coco(str(root), "train", 2017, _scenes(), ext="png")
    return str(root)


def _coco_opts(root, tmp_path, **kw):
    return TrainOptions(
        train=root,
        extension="mscoco,2017-train,scale=32,scale_mode=warp,mirror=0",
        model_desc="C[8,3] A @f BOXES[8] @r $f RA[4,rois=r] C[16,4] A DET[rois=r]",
        border_mode="half",
        epochs=1,
        batch_size=4,
        thread_num=0,
        output_prefix=str(tmp_path / "a"),
        log_level="warning",
        **kw,
    )


def _aspects(loader, epoch):
    loader.set_epoch(epoch)
    out = []
    for _, targets in loader:
        out.append({round(float(t["orig_size"][1]) / float(t["orig_size"][0]), 3) for t in targets})
    return out


def test_aspect_grouping_gives_batches_of_one_aspect_class(mixed_coco, tmp_path):
    """Batch 4 of 8 images per class: with grouping every batch holds one class (and all of a
    class's images), without it the batches mix them."""
    grouped = _trainer(_coco_opts(mixed_coco, tmp_path, aspect_grouping=True))
    from denet.data import AspectRatioBatchSampler

    assert isinstance(grouped.train_loader.batch_sampler, AspectRatioBatchSampler)
    for epoch in (0, 1):
        batches = _aspects(grouped.train_loader, epoch)
        assert len(batches) == 6 and all(len(b) == 1 for b in batches), batches
        assert sorted(next(iter(b)) for b in batches) == [0.5] * 2 + [1.0] * 2 + [2.0] * 2
    plain = _trainer(_coco_opts(mixed_coco, tmp_path))
    assert any(len(b) > 1 for b in _aspects(plain.train_loader, 0))
    # the flag reaches the options (model-train and model-train-multi share the parser)
    from denet.cli.train import build_parser, options_from_args

    ns = build_parser().parse_args(["--train", mixed_coco, "--aspect-grouping"])
    assert options_from_args(ns).aspect_grouping
    assert not options_from_args(build_parser().parse_args(["--train", "t"])).aspect_grouping


def test_aspect_grouping_with_max_samples_and_ranks(mixed_coco, tmp_path, monkeypatch):
    """A --max-samples subset groups by its own items' ratios; rank r of R takes the grouped
    batches r, r + R, ... (the sampler gets the run's world size and rank)."""
    import torch.nn.parallel

    sub = _trainer(_coco_opts(mixed_coco, tmp_path, aspect_grouping=True, max_samples=12))
    full = aspect_ratios(sub.train_set.dataset, mixed_coco)
    assert aspect_ratios(sub.train_set, mixed_coco) == [full[i] for i in sub.train_set.indices]
    assert all(len(b) == 1 for b in _aspects(sub.train_loader, 0))
    # a rank of two: DDP is not needed to look at the sampler
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda m, **k: m)
    one = _trainer(_coco_opts(mixed_coco, tmp_path, aspect_grouping=True))
    rank1 = Trainer(
        _coco_opts(mixed_coco, tmp_path, aspect_grouping=True),
        DistInfo(rank=1, world_size=2),
        torch.device("cpu"),
        Console("warning", False),
    )
    rank1.setup()
    sampler = rank1.train_loader.batch_sampler
    assert (sampler.num_replicas, sampler.rank) == (2, 1)
    everything = list(one.train_loader.batch_sampler)
    assert list(sampler) == everything[1::2]


def test_aspect_grouping_needs_image_sizes():
    class NoSizes:
        pass

    with pytest.raises(DataError, match="--aspect-grouping needs the images' sizes"):
        aspect_ratios(NoSizes(), "SET")

    class ZeroHeight:
        def aspect_ratios(self):
            return [1 / 0]

    with pytest.raises(DataError, match="--aspect-grouping needs the images' sizes"):
        aspect_ratios(ZeroHeight(), "SET")
