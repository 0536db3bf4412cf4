"""model-train: train a network written as a description string (a classifier, a detector or a
segmentation network: the head decides, see docs/language.md, Tasks).

    GPU=0 model-train --border-mode half --model-desc "C[128,3] BN A P[2] C[256,3] BN A P.A R" \\
        --learn-rate 0.1 --solver sgd --epochs 30 --train TRAIN --test TEST --extension png

Options keep DeNet's names and defaults (see docs/model-train.md). Writes ``P_epochNNN.pt`` after
each epoch, ``P_final.pt`` and ``P_log.jsonl`` for ``--output-prefix P``. ``--resume
P_epochNNN.pt`` appended to the original command line (or alone) continues that run exactly;
``--model FILE`` starts a new run from a model's weights. Under torchrun every process runs this
same program (``--batch-size`` per process).

``main(argv, on_step=f)`` calls ``f(epoch, step)`` after every optimizer step (a hook for tests).
"""

from __future__ import annotations

import argparse

from ..errors import DenetError
from ..train.options import AMP_MODES, DEFAULT_MODEL_DESC, LOG_LEVELS, TrainOptions, option_flag
from ..train.schedule import SCHEDULES
from ..train.solvers import SOLVERS
from ..train.trainer import run
from ._common import ArgumentParser, tool_main

# With --model the model file fixes the network; these would be silently ignored.
MODEL_FIXES = ("model_desc", "border_mode", "activation", "weight_init")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="model-train",
        formatter_class=_Formatter,
        description="Train a convolutional network written as a DeNet description string on "
        "labelled images (classification, detection or segmentation: the network's "
        "head decides). Writes P_epochNNN.pt after every epoch (0-based), "
        "P_final.pt and the JSON-lines log P_log.jsonl for --output-prefix P.",
        epilog="Devices: --device, else GPU=N from the environment (as in DeNet), else the "
        "first GPU, else the CPU. Under torchrun (torchrun --nproc-per-node K "
        "bin/model-train ...) the K processes train one model with "
        "DistributedDataParallel. See docs/model-train.md.",
    )
    a = p.add_argument
    a(
        "--model-desc",
        nargs="+",
        default=DEFAULT_MODEL_DESC,
        metavar="TOKEN",
        help="network description string (one argument, or one token per argument)",
    )
    a(
        "--model",
        default=None,
        metavar="FILE",
        help="start from this model file's network and weights (fine-tune; new optimizer and "
        "schedule)",
    )
    a(
        "--resume",
        default=None,
        metavar="FILE",
        help="continue the run saved in this checkpoint (P_epochNNN.pt) exactly: its options, "
        "epoch, optimizer, random state and log. Append it to the original command line "
        "or give it alone; of the other options only --epochs, --device, --thread-num, "
        "--output-prefix, --log-level and --channels-last may differ from the saved run",
    )
    a("--train", default=None, metavar="PATH", help="training set (required)")
    a("--test", default=None, metavar="PATH", help="test set, evaluated every --test-epochs")
    a(
        "--extension",
        default="ppm",
        help="dataset format: an image extension (Basic Dir PATH/<class>/*.EXT), npy "
        "(PATH_data.npy + PATH_labels.npy), imagenet, mscoco, voc or seglist, with "
        ",key=value loader options (docs/datasets.md)",
    )
    a(
        "--test-extension",
        default=None,
        metavar="EXTENSION",
        help="dataset format of --test when it differs from --extension (another subset: "
        "mscoco,2017-val; other loader keys)",
    )
    a("--epochs", type=int, default=30, help="training epochs")
    a("--batch-size", type=int, default=32, help="images per batch (per process under torchrun)")
    a(
        "--batch-size-factor",
        type=int,
        default=1,
        metavar="N",
        help="gradient accumulation: N batches per optimizer step, each loss weighted by its "
        "share of the step's images, so a step equals one of a batch N times larger "
        "(DeepLab's iter_size)",
    )
    a(
        "--learn-rate",
        type=float,
        default=0.1,
        help="learning rate (times each layer's lr= multiplier)",
    )
    a(
        "--learn-schedule",
        default="anneal",
        choices=SCHEDULES,
        help="anneal: DeNet's, --learn-anneal after epochs; poly: DeepLab's "
        "lr*(1-step/steps)^0.9, set before every optimizer step; steps: Detectron's, "
        "--learn-anneal at each of --learn-steps",
    )
    a(
        "--learn-steps",
        nargs="+",
        default=[],
        metavar="S",
        help="steps schedule: multiply the rate by --learn-anneal from these optimizer steps "
        "on (iterations counted from 0 over the run, e.g. 60000 80000), or after these many "
        "epochs when written with an e (8e 11e); increasing",
    )
    a(
        "--learn-warmup",
        nargs="+",
        default=[],
        metavar=("ITERS", "FACTOR"),
        help="Detectron's linear warm-up, with any schedule: for the first ITERS optimizer "
        "steps (or epochs, as 1e) the rate is multiplied by FACTOR*(1-a)+a, a=step/ITERS; "
        "FACTOR in [0, 1], default 1/3",
    )
    a(
        "--learn-momentum",
        type=float,
        nargs="+",
        default=[0.0, 0.0],
        metavar="M",
        help="momentum (sgd, nesterov: the first value; adam: beta1 beta2)",
    )
    a(
        "--learn-anneal",
        type=float,
        default=1.0,
        help="anneal schedule: factor the learning rate is multiplied by after an annealing "
        "epoch; steps schedule: at each step (Detectron's gamma, e.g. 0.1)",
    )
    a(
        "--learn-anneal-epochs",
        type=int,
        nargs="+",
        default=[],
        metavar="E",
        help="anneal after these many epochs (empty: after every epoch)",
    )
    a(
        "--learn-decay",
        type=float,
        default=0.0,
        help="L2 weight decay (conv and classifier weights only, not biases or BN)",
    )
    a(
        "--solver",
        default="nesterov",
        choices=SOLVERS,
        help="sgd: m=rho*m+(1-rho)*g, p-=lr*m; nesterov (= torch): m=mu*m+g, "
        "p-=lr*(g+mu*m); adam: betas from --learn-momentum, eps 1e-8",
    )
    a(
        "--border-mode",
        default="valid",
        help="convolution padding: valid, half, same, full, or a number of pixels",
    )
    a("--activation", default="relu", help="activation of A and of residual blocks")
    a(
        "--weight-init",
        nargs="+",
        default=["he-backward"],
        metavar="INIT",
        help="weight initialisation, one per token (the last repeats)",
    )
    a(
        "--distort-mode",
        nargs="+",
        default=[],
        metavar="MODE",
        help="training augmentation: oX random offset up to X px, sX scale +-X%%, rX rotation "
        "+-X degrees, mX mirror with X%% probability",
    )
    a(
        "--augment-mirror",
        action="store_true",
        help="flip training images horizontally with probability 0.5",
    )
    a("--seed", type=int, default=23455, help="random seed (weights, order, augmentation)")
    a(
        "--thread-num",
        type=int,
        default=1,
        help="background data-loading worker processes (0: load in the training process)",
    )
    a("--output-prefix", default="./model", metavar="P", help="prefix of the output files")
    a(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: GPU=N, else cuda:0 if present, else cpu)",
    )
    a(
        "--test-epochs",
        type=int,
        default=1,
        help="evaluate the test set every this many epochs (and after the last)",
    )
    a(
        "--test-mode",
        default="default",
        choices=["default"],
        help="DeNet's test mode (it had only the default)",
    )
    a(
        "--max-samples",
        type=int,
        default=None,
        help="train on a random subset of this many images (fixed by --seed)",
    )
    a(
        "--disable-intermediate",
        action="store_true",
        help="write no P_epochNNN.pt checkpoints (only P_final.pt)",
    )
    a(
        "--skip-train",
        action="store_true",
        help="only evaluate the model (--model, or the new network) on --test",
    )
    a(
        "--skip-layer-updates",
        type=int,
        nargs="+",
        default=[],
        metavar="INDEX",
        help="freeze the parameters of the layers at these token indices",
    )
    a(
        "--cost-factors",
        nargs="+",
        default=[],
        metavar="F|LOSS=F",
        help="multiply losses by factors: LOSS=F by name (loss_cls=1 loss_box=2), or bare "
        "numbers for the model's losses in order (DeNet's way)",
    )
    a(
        "--amp",
        default=None,
        choices=AMP_MODES,
        help="mixed precision: autocast the training forward pass to bfloat16 or float16 "
        "(fp16 with a gradient scaler); weights, optimizer and evaluation stay float32",
    )
    a(
        "--sync-bn",
        action="store_true",
        help="under several processes, batch norm computes its statistics over the batches of "
        "every process (SyncBatchNorm); no effect in one process",
    )
    a(
        "--channels-last",
        action="store_true",
        help="keep the model and the images in channels-last (NHWC) memory layout",
    )
    a(
        "--aspect-grouping",
        action="store_true",
        help="Detectron's aspect-ratio grouping: each training batch holds images of similar "
        "width/height (of the original images)",
    )
    a("--log-level", default="verbose", choices=list(LOG_LEVELS), help="how much to print")
    return p


def _given(argv) -> set:
    """The options the user wrote on the command line (whatever their value)."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    ns, _ = probe.parse_known_args(argv)
    return set(vars(ns))


def options_from_args(ns) -> TrainOptions:
    values = vars(ns).copy()
    desc = values["model_desc"]
    values["model_desc"] = " ".join(desc) if isinstance(desc, (list, tuple)) else desc
    for key in ("resume", "test_mode"):
        values.pop(key)
    return TrainOptions.from_dict(values)


@tool_main
def main(argv=None, on_step=None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    given = _given(argv)
    opts = options_from_args(ns)
    if ns.resume:
        # the saved options apply; options given again must agree with them (the trainer checks)
        names = {f for f in opts.as_dict() if f in given}
        run(
            resume=ns.resume,
            overrides={k: getattr(opts, k) for k in sorted(names)},
            on_step=on_step,
        )
        return 0
    if ns.model:
        clash = sorted(given & set(MODEL_FIXES))
        if clash:
            names = ", ".join(option_flag(k) for k in clash)
            raise DenetError(
                f"--model {ns.model} fixes the network; {names} cannot be given "
                "with it (model-modify changes a model file)"
            )
    if not ns.train:
        parser.error("--train is required")
    run(opts, on_step=on_step)
    return 0
