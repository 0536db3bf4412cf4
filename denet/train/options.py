"""The options of a training run: ``TrainOptions`` (DeNet's ``model-train`` options and
defaults), what ``--resume`` accepts again, and ``--cost-factors`` per loss name."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass, field, fields

from ..errors import DenetError
from .schedule import SCHEDULES, AnnealSchedule, parse_iterations, parse_steps, parse_warmup
from .solvers import check_solver_args

DEFAULT_MODEL_DESC = "C[100,7] P[2] C[150,4] P[2] C[250,4] P[2] C[300,1] R"
LOG_LEVELS = {"debug": 10, "verbose": 15, "info": 20, "warning": 30, "error": 40}
# With --resume every other option must equal the saved one; these may change.
# --channels-last changes the memory layout only.
RESUMABLE = ("epochs", "device", "thread_num", "output_prefix", "log_level", "channels_last")
AMP_MODES = ("bf16", "fp16")


def option_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class TrainOptions:
    """Everything that defines a run; the defaults are DeNet's ``model-train`` defaults."""

    train: str | None = None
    test: str | None = None
    extension: str = "ppm"
    test_extension: str | None = None  # None: the same as extension
    model_desc: str = DEFAULT_MODEL_DESC
    model: str | None = None
    epochs: int = 30
    batch_size: int = 32
    batch_size_factor: int = 1  # batches per optimizer step (gradient accumulation)
    learn_rate: float = 0.1
    learn_schedule: str = "anneal"
    learn_momentum: list = field(default_factory=lambda: [0.0, 0.0])
    learn_anneal: float = 1.0
    learn_anneal_epochs: list = field(default_factory=list)
    learn_steps: list = field(default_factory=list)  # "steps": iterations, or epochs as "8e"
    learn_warmup: list = field(default_factory=list)  # [] or [ITERS] or [ITERS, FACTOR]
    learn_decay: float = 0.0
    solver: str = "nesterov"
    border_mode: str = "valid"
    activation: str = "relu"
    weight_init: list = field(default_factory=lambda: ["he-backward"])
    distort_mode: list = field(default_factory=list)
    augment_mirror: bool = False
    seed: int = 23455
    thread_num: int = 1
    output_prefix: str = "./model"
    test_epochs: int = 1
    max_samples: int | None = None
    disable_intermediate: bool = False
    skip_train: bool = False
    skip_layer_updates: list = field(default_factory=list)
    cost_factors: list = field(default_factory=list)  # numbers and NAME=NUMBER strings
    device: str | None = None
    log_level: str = "verbose"
    amp: str | None = None  # mixed precision: None (float32), "bf16" or "fp16"
    sync_bn: bool = False  # batch-norm statistics over every worker (DDP)
    channels_last: bool = False  # NHWC memory layout of the model and the images
    aspect_grouping: bool = False  # Detectron's batches of images of one aspect class

    def as_dict(self) -> dict:
        return {
            k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict) -> TrainOptions:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def check(self) -> None:
        if not self.train:
            raise DenetError("--train is required (the training set)")
        _in_range("--epochs", self.epochs, 1, MAX_EPOCHS)
        _in_range("--batch-size", self.batch_size, 1, MAX_BATCH)
        _in_range("--batch-size-factor", self.batch_size_factor, 1, MAX_BATCH)
        _in_range("--thread-num", self.thread_num, 0, MAX_WORKERS)
        _in_range("--test-epochs", self.test_epochs, 1, MAX_EPOCHS)
        if self.max_samples is not None:
            _in_range("--max-samples", self.max_samples, 1, sys.maxsize)
        _in_range("--seed", self.seed, 0, 2**32 - 1)  # numpy's and Python's seeding range
        for name in ("learn_rate", "learn_anneal", "learn_decay"):
            _finite(f"--{name.replace('_', '-')}", getattr(self, name))
        for m in self.learn_momentum:
            _finite("--learn-momentum", m)
        check_solver_args(self.solver, self.learn_momentum, self.learn_rate, self.learn_decay)
        AnnealSchedule(self.learn_rate, self.learn_anneal, self.learn_anneal_epochs)
        if self.learn_schedule not in SCHEDULES:
            raise DenetError(
                f"--learn-schedule must be one of {', '.join(SCHEDULES)}, not "
                f"{self.learn_schedule!r}"
            )
        if self.learn_schedule == "poly" and (self.learn_anneal != 1.0 or self.learn_anneal_epochs):
            raise DenetError(
                "--learn-anneal and --learn-anneal-epochs set the anneal schedule; "
                "--learn-schedule poly takes neither"
            )
        if self.learn_schedule == "steps":
            if self.learn_anneal_epochs:
                raise DenetError(
                    "--learn-anneal-epochs belongs to --learn-schedule anneal; steps drops the "
                    "rate at --learn-steps"
                )
            parse_steps(self.learn_steps)
        elif self.learn_steps:
            raise DenetError(
                f"--learn-steps needs --learn-schedule steps (the schedule is "
                f"{self.learn_schedule})"
            )
        parse_warmup(self.learn_warmup)
        from ..data.transforms import Distort

        Distort(list(self.distort_mode))
        if not self.model:  # fail on a bad string or option before scanning the data
            from ..dsl import CompileOptions, parse

            try:
                CompileOptions.make(self.border_mode, self.activation, list(self.weight_init))
            except ValueError as err:
                raise DenetError(str(err)) from None
            parse(self.model_desc)
        parse_cost_factors(self.cost_factors)  # the names are checked against the model later
        if self.skip_train and not self.test:
            raise DenetError("--skip-train only evaluates: it needs --test")
        if self.amp is not None and self.amp not in AMP_MODES:
            raise DenetError(f"--amp must be one of {', '.join(AMP_MODES)}, not {self.amp!r}")
        if self.log_level not in LOG_LEVELS:
            raise DenetError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")


# Upper bounds that keep every later step (samplers, seeding, worker start-up) in range; far
# beyond any real run.
MAX_EPOCHS = 1_000_000
MAX_BATCH = 1 << 20
MAX_WORKERS = 1024


def _in_range(option: str, value, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise DenetError(f"{option} must be in [{lo}, {hi}], not {value}")


def _finite(option: str, value) -> None:
    if not math.isfinite(value):
        raise DenetError(f"{option} must be a finite number, not {value}")


# ----------------------------------------------------------------------------- --resume
def _normal(name: str, value):
    """An option's value in a form that compares equal however it was written."""
    if value is None or isinstance(value, bool):
        return value
    if name == "model_desc":
        text = " ".join(value) if isinstance(value, (list, tuple)) else str(value)
        return " ".join(text.split())
    if name == "cost_factors":
        positional, named = parse_cost_factors(value)
        return positional, sorted(named.items())
    if name in ("train", "test", "model"):
        return os.path.normpath(str(value))
    if name == "learn_steps":
        return [parse_iterations(v, "--learn-steps") for v in value]
    if name == "learn_warmup":
        return parse_warmup(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_normal(name, v) for v in value]
    return str(value).strip()


def _shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "(none)"
    return repr(value) if isinstance(value, str) and " " in value else str(value)


def resume_options(saved: TrainOptions, given: dict, path) -> TrainOptions:
    """The options of a resumed run: the saved ones, with the ``RESUMABLE`` ones of ``given``
    (option name -> value, what the user wrote on the command line) applied. Any other given
    option must equal the saved value (after normalisation), so the original command line can
    be repeated with ``--resume`` appended."""
    opts = TrainOptions.from_dict(saved.as_dict())
    for name, value in given.items():
        if name in RESUMABLE:
            setattr(opts, name, value)
            continue
        before = getattr(saved, name)
        if _normal(name, before) != _normal(name, value):
            raise DenetError(
                f"--resume {path}: {option_flag(name)} was {_shown(before)} in the "
                f"saved run, not {_shown(value)} (only "
                f"{', '.join(option_flag(n) for n in RESUMABLE)} may change)"
            )
    return opts


# ----------------------------------------------------------------------------- cost factors
def parse_cost_factors(tokens) -> tuple[list[float], dict[str, float]]:
    """``--cost-factors`` tokens -> (bare numbers in order, {loss name: number})."""
    positional: list[float] = []
    named: dict[str, float] = {}
    for token in tokens:
        text = str(token).strip()
        name, sep, value = text.partition("=")
        try:
            factor = float(value if sep else text)
        except ValueError:
            raise DenetError(
                f"--cost-factors: {text!r} is neither a number nor LOSS_NAME=NUMBER"
            ) from None
        if not math.isfinite(factor):
            raise DenetError(f"--cost-factors: {text!r} is not a finite number")
        if not sep:
            positional.append(factor)
            continue
        name = name.strip()
        if name in named:
            raise DenetError(f"--cost-factors: {name} is given twice")
        named[name] = factor
    return positional, named


def loss_factors(tokens, loss_names) -> dict[str, float]:
    """The factor of every loss the model adds (1 where ``--cost-factors`` says nothing). Bare
    numbers apply to the names that begin with ``loss`` in ``model.loss_names`` order, DeNet's
    way; ``NAME=NUMBER`` sets one by name."""
    losses = [n for n in loss_names if n.startswith("loss")]
    positional, named = parse_cost_factors(tokens)
    has = f"the model's losses are {', '.join(losses)}"
    if len(positional) > len(losses):
        raise DenetError(
            f"--cost-factors: {len(positional)} factors for {len(losses)} loss(es); {has}"
        )
    factors = {n: 1.0 for n in losses}
    factors.update(zip(losses, positional))
    for name, factor in named.items():
        if name not in factors:
            raise DenetError(f"--cost-factors: the model has no loss {name!r}; {has}")
        if name in losses[: len(positional)]:
            raise DenetError(f"--cost-factors: {name} is given twice (by position and by name)")
        factors[name] = factor
    return factors


def total_loss(losses: dict, factors: dict):
    """What is optimised: the sum of the ``loss*`` entries, each times its factor."""
    terms = [
        v if factors.get(k, 1.0) == 1.0 else factors[k] * v
        for k, v in losses.items()
        if k.startswith("loss")
    ]
    return sum(terms[1:], terms[0])
