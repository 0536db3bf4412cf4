"""The training loop behind ``model-train``, in one process or under ``torch.distributed``.

One code path for both: when torchrun launched the process (``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` in the environment) the model is wrapped in ``DistributedDataParallel``, the
training set is split by a ``DistributedSampler`` (``--batch-size`` is per process), the test
set by a strided sampler, losses and accuracies are summed over ranks, and only rank 0 prints,
shows the progress bar, writes the log and the checkpoints.

Determinism: the weights are initialised from ``--seed``; epoch ``e`` visits the training set
in an order that depends on (seed, e) only and item ``i`` draws its augmentation from
(seed, e, i) (see ``denet.data``); the DataLoader's own seed comes from a private generator, so
the global torch RNG is used by the model alone (dropout). A checkpoint stores the optimizer,
the schedule and every RNG state, so ``--resume`` from ``P_epochNNN.pt`` replays epochs
NNN+1... exactly as an uninterrupted run with the same seed and thread count on the same
machine does.

Files, for ``--output-prefix P``: ``P_epochNNN.pt`` after epoch NNN (0-based, DeNet's
numbering), ``P_final.pt`` at the end (both carry the training state), and ``P_log.jsonl``:
one JSON object per epoch with ``epoch``, ``lr``, ``train_loss``, ``train_top1``,
``train_samples``, ``test_loss``, ``test_top1``, ``test_top5``, ``test_samples`` (accuracies
are fractions in [0, 1]; test values are null in epochs without a test) and ``seconds``.
"""
from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from ..errors import DataError, DenetError, ModelFileError
from ..eval.topk import topk_correct
from . import checkpoint as ckpt
from .distributed import (DistInfo, all_sum, barrier, env_dist_info, init_distributed,
                          select_device, shutdown)
from .schedule import AnnealSchedule
from .solvers import check_solver_args, make_optimizer

DEFAULT_MODEL_DESC = "C[100,7] P[2] C[150,4] P[2] C[250,4] P[2] C[300,1] R"
LOG_LEVELS = {"debug": 10, "verbose": 15, "info": 20, "warning": 30, "error": 40}
# Kill switch for tests of --resume: "E:B" sends SIGKILL to this process after B optimizer steps
# of epoch E, like a crash (no clean-up, no final files).
KILL_ENV = "DENET_TRAIN_KILL_AT"


@dataclass
class TrainOptions:
    """Everything that defines a run; the defaults are DeNet's ``model-train`` defaults."""

    train: str | None = None
    test: str | None = None
    extension: str = "ppm"
    model_desc: str = DEFAULT_MODEL_DESC
    model: str | None = None
    epochs: int = 30
    batch_size: int = 32
    learn_rate: float = 0.1
    learn_momentum: list = field(default_factory=lambda: [0.0, 0.0])
    learn_anneal: float = 1.0
    learn_anneal_epochs: list = field(default_factory=list)
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
    cost_factors: list = field(default_factory=list)
    device: str | None = None
    log_level: str = "verbose"

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, (list, tuple)) else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainOptions":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def check(self) -> None:
        if not self.train:
            raise DenetError("--train is required (the training set)")
        if self.epochs < 1:
            raise DenetError(f"--epochs must be >= 1, not {self.epochs}")
        if self.batch_size < 1:
            raise DenetError(f"--batch-size must be >= 1, not {self.batch_size}")
        if self.thread_num < 0:
            raise DenetError(f"--thread-num must be >= 0, not {self.thread_num}")
        if self.test_epochs < 1:
            raise DenetError(f"--test-epochs must be >= 1, not {self.test_epochs}")
        if self.max_samples is not None and self.max_samples < 1:
            raise DenetError(f"--max-samples must be >= 1, not {self.max_samples}")
        if self.seed < 0:
            raise DenetError(f"--seed must be >= 0, not {self.seed}")
        check_solver_args(self.solver, self.learn_momentum, self.learn_rate, self.learn_decay)
        AnnealSchedule(self.learn_rate, self.learn_anneal, self.learn_anneal_epochs)
        from ..data.transforms import Distort
        Distort(list(self.distort_mode))
        if not self.model:  # fail on a bad string or option before scanning the data
            from ..dsl import CompileOptions, parse
            try:
                CompileOptions.make(self.border_mode, self.activation, list(self.weight_init))
            except ValueError as err:
                raise DenetError(str(err)) from None
            parse(self.model_desc)
        if len(self.cost_factors) > 1:
            raise DenetError(f"--cost-factors: a classifier has one cost (R), but "
                             f"{len(self.cost_factors)} factors were given")
        if self.skip_train and not self.test:
            raise DenetError("--skip-train only evaluates: it needs --test")
        if self.log_level not in LOG_LEVELS:
            raise DenetError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")


class Console:
    """Rank-0 messages at DeNet's log levels (stdout; warnings and errors on stderr)."""

    def __init__(self, level: str, enabled: bool):
        self.level = LOG_LEVELS[level]
        self.enabled = enabled

    def _emit(self, level, msg):
        if self.enabled and LOG_LEVELS[level] >= self.level:
            stream = sys.stderr if LOG_LEVELS[level] >= 30 else sys.stdout
            print(msg, file=stream, flush=True)

    def debug(self, msg):
        self._emit("debug", msg)

    def verbose(self, msg):
        self._emit("verbose", msg)

    def info(self, msg):
        self._emit("info", msg)

    def warning(self, msg):
        self._emit("warning", f"warning: {msg}")


# ----------------------------------------------------------------------------- data
class SubsetDataset(Dataset):
    """``--max-samples``: a fixed subset of a denet dataset that keeps ``set_epoch``/``seed``
    (so augmentation stays a function of (seed, epoch, original index))."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)

    @property
    def seed(self):
        return self.dataset.seed

    @seed.setter
    def seed(self, value):
        self.dataset.seed = value

    @property
    def classes(self):
        return self.dataset.classes


class StridedSampler(Sampler):
    """Rank ``r`` of ``R`` evaluates items r, r + R, ...: every item exactly once overall."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self):
        return len(range(self.rank, self.n, self.world_size))


def open_sets(opts: TrainOptions, console: Console):
    """(train set, test set or None, label map test -> train or None)."""
    from ..data import open_dataset

    distort = list(opts.distort_mode) or None
    train_set = open_dataset(opts.train, opts.extension, train=True, distort=distort,
                             mirror=True if opts.augment_mirror else None, seed=opts.seed)
    if train_set.task != "classification":
        raise DataError(f"{opts.train}: model-train trains classifiers; --extension "
                        f"{opts.extension} gives a {train_set.task} set")
    shape = train_set.input_shape
    if shape is None:
        raise DataError(f"{opts.train}: images of different sizes; make them one size or add "
                        "crop=N (or scale=N,scale_mode=warp) to --extension")
    test_set, label_map = None, None
    if opts.test:
        test_set = open_dataset(opts.test, opts.extension, train=False)
        if test_set.input_shape != shape:
            raise DataError(f"{opts.test}: test images are {_fmt_shape(test_set.input_shape)}"
                            f" but training images are {_fmt_shape(shape)}")
        if list(test_set.classes) != list(train_set.classes):
            index = {str(c): i for i, c in enumerate(train_set.classes)}
            missing = [c for c in test_set.classes if str(c) not in index]
            if missing:
                raise DataError(f"{opts.test}: class {missing[0]!r} does not occur in the "
                                f"training set {opts.train}")
            label_map = torch.tensor([index[str(c)] for c in test_set.classes])
    if opts.max_samples is not None and opts.max_samples < len(train_set):
        rng = np.random.default_rng([opts.seed, 0x6d6178])
        keep = np.sort(rng.choice(len(train_set), opts.max_samples, replace=False))
        console.verbose(f"--max-samples: training on {opts.max_samples} of {len(train_set)} "
                        "images")
        full = train_set
        train_set = SubsetDataset(full, keep)
        train_set.input_shape = shape
        train_set.num_classes = full.num_classes
    return train_set, test_set, label_map


def _fmt_shape(shape):
    return "x".join(map(str, shape)) if shape else "of mixed sizes"


# ----------------------------------------------------------------------------- model
def classifier_check(model) -> None:
    graph = model.graph
    try:
        out = graph.node(graph.output)
    except KeyError:
        out = None
    if out is None or out.type != "R":
        what = "the input" if out is None else out.type
        raise DenetError(f"model-train trains classifiers: the description must end in R "
                         f"(its output is {what}): {model.desc}")


def build_model(opts: TrainOptions, input_shape, num_classes: int, console: Console):
    import denet

    if opts.model:
        model = denet.load(opts.model)
        model.train_state = None
        if tuple(model.input_shape) != tuple(input_shape):
            raise ModelFileError(f"{opts.model}: the model takes "
                                 f"{_fmt_shape(model.input_shape)} inputs but {opts.train} has "
                                 f"{_fmt_shape(input_shape)} images (model-modify --image-size "
                                 "changes a model's input size)")
        if model.classes != num_classes:
            raise ModelFileError(f"{opts.model}: the model has {model.classes} classes but "
                                 f"{opts.train} has {num_classes} (model-modify --class-num "
                                 "changes a model's classifier)")
        console.info(f"starting from the weights of {opts.model}")
    else:
        model = denet.compile(opts.model_desc, input_shape, num_classes,
                              border_mode=opts.border_mode, activation=opts.activation,
                              weight_init=list(opts.weight_init))
    classifier_check(model)
    return model


def freeze_layers(model, indices) -> None:
    """``--skip-layer-updates``: the parameters of these token indices are not trained."""
    wanted = {int(i) for i in indices}
    found = set()
    for node, module in model.layer_modules():
        if node.index in wanted:
            found.add(node.index)
            for p in module.parameters():
                p.requires_grad_(False)
    unknown = sorted(wanted - found)
    if unknown:
        raise DenetError(f"--skip-layer-updates: no layer with parameters at index "
                         f"{unknown[0]} (see the index column of the summary)")


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, loader, device, info: DistInfo, label_map=None):
    """(mean loss, top-1, top-5, samples) over the whole test set (all ranks together)."""
    model.eval()
    loss_sum, top1, top5, n = 0.0, 0, 0, 0
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        labels = targets["label"]
        if label_map is not None:
            labels = label_map[labels]
        labels = labels.to(device)
        probs = model(images)
        loss_sum += float(-torch.log(probs.gather(1, labels[:, None]).clamp_min(1e-30)).sum())
        c1, c5 = topk_correct(probs, labels, (1, 5))
        top1, top5, n = top1 + c1, top5 + c5, n + len(labels)
    loss_sum, top1, top5, n = all_sum([loss_sum, top1, top5, n], device, info)
    if n == 0:
        return None, None, None, 0
    return loss_sum / n, top1 / n, top5 / n, int(n)


def deterministic_cuda() -> None:
    """Deterministic GPU kernels (cuDNN without autotuning, cuBLAS with a fixed workspace), so a
    resumed GPU run replays an uninterrupted one; ops that have no deterministic CUDA kernel
    warn instead of failing."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def _kill_point():
    text = os.environ.get(KILL_ENV)
    if not text:
        return None
    try:
        e, b = text.split(":")
        return int(e), int(b)
    except ValueError:
        raise DenetError(f"{KILL_ENV}={text!r}: expected EPOCH:BATCH") from None


# ----------------------------------------------------------------------------- the run
def checkpoint_path(prefix: str, epoch: int) -> str:
    return f"{prefix}_epoch{epoch:03d}.pt"


def run(opts: TrainOptions, resume: str | None = None, overrides: dict | None = None) -> dict:
    """Train as ``model-train`` does. With ``resume`` (a checkpoint path) the run's options come
    from the checkpoint, updated by ``overrides`` (only ``epochs``, ``device``, ``thread_num``,
    ``output_prefix`` and ``log_level`` may change). Returns the last log record."""
    import denet

    info = env_dist_info()
    state = None
    if resume:
        model = denet.load(resume)
        state = ckpt.check_train_state(model.train_state, resume)
        saved = TrainOptions.from_dict(state["args"])
        for key, value in (overrides or {}).items():
            setattr(saved, key, value)
        opts = saved
    opts.check()
    console = Console(opts.log_level, info.is_main)
    device = select_device(opts.device, info, warn=console.warning)
    if device.type == "cuda":
        deterministic_cuda()
    init_distributed(device, info)
    try:
        return _run(opts, info, device, console, resume, state,
                    model if resume else None)
    finally:
        shutdown(info)


def _run(opts, info, device, console, resume, state, resumed_model):
    import denet
    from ..data import make_loader

    random.seed(opts.seed)
    np.random.seed(opts.seed)
    torch.manual_seed(opts.seed)

    train_set, test_set, label_map = open_sets(opts, console)
    shape = tuple(train_set.input_shape)
    classes = list(train_set.classes)

    if resumed_model is not None:
        model = resumed_model
        if tuple(model.input_shape) != shape or model.classes != len(classes):
            raise ModelFileError(f"{resume}: the checkpoint's model does not fit {opts.train} "
                                 "any more (input size or classes changed)")
        start_epoch = int(state["epoch"]) + 1
        if start_epoch >= opts.epochs:
            raise DenetError(f"{resume}: the run already finished epoch {start_epoch - 1} of "
                             f"{opts.epochs}; give --epochs N with N > {start_epoch} to train "
                             "further")
    else:
        model = build_model(opts, shape, len(classes), console)
        start_epoch = 0
    model.class_names = [str(c) for c in classes]
    if opts.skip_layer_updates:
        freeze_layers(model, opts.skip_layer_updates)
    model.to(device)

    schedule = AnnealSchedule(opts.learn_rate, opts.learn_anneal, opts.learn_anneal_epochs)
    optimizer = make_optimizer(opts.solver, model.param_groups(opts.learn_rate, opts.learn_decay),
                               opts.learn_rate, opts.learn_momentum, opts.learn_decay)
    iteration = 0
    log_path = f"{opts.output_prefix}_log.jsonl"
    records = []
    if state is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as err:
            raise ModelFileError(f"{resume}: the optimizer state does not fit the model "
                                 f"({err})") from None
        iteration = int(state["iteration"])
        records = [dict(r) for r in state["log"]["records"]]

    out_dir = os.path.dirname(os.path.abspath(log_path))
    if info.is_main:
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as err:
            raise DenetError(f"--output-prefix: cannot create {out_dir} ({err})") from None
        if not opts.skip_train:
            ckpt.rewrite_log(log_path, records)  # a fresh run starts an empty log

    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data.distributed import DistributedSampler
        train_sampler = DistributedSampler(train_set, num_replicas=info.world_size,
                                           rank=info.rank, shuffle=True, seed=opts.seed)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                      else None)
    else:
        train_sampler = None
        net = model
    train_loader = make_loader(train_set, opts.batch_size, shuffle=True,
                               workers=opts.thread_num, seed=opts.seed, sampler=train_sampler)
    test_loader = None
    if test_set is not None:
        test_sampler = StridedSampler(len(test_set), info.rank, info.world_size)
        test_loader = make_loader(test_set, opts.batch_size, shuffle=False,
                                  workers=opts.thread_num, seed=opts.seed, sampler=test_sampler)
    if label_map is not None:
        label_map = label_map.to(device)

    nparams = sum(p.numel() for p in model.parameters())
    console.info(f"model: {model.desc}  ({nparams:,} parameters, input "
                 f"{_fmt_shape(shape)}, {len(classes)} classes)")
    console.info(f"train: {opts.train} ({len(train_set)} images)" +
                 (f"; test: {opts.test} ({len(test_set)} images)" if test_set is not None else ""))
    console.verbose(f"solver {opts.solver}, learning rate {opts.learn_rate}, momentum "
                    f"{list(opts.learn_momentum)}, decay {opts.learn_decay}, batch "
                    f"{opts.batch_size}" + (f" x {info.world_size} processes"
                                            if info.distributed else "") +
                    f", device {device}, {opts.thread_num} loader worker(s)")
    if resume:
        console.info(f"resuming {resume} at epoch {start_epoch} of {opts.epochs}")

    if opts.skip_train:
        loss, top1, top5, n = evaluate(model, test_loader, device, info, label_map)
        console.info(f"test: loss {loss:.4f}  top-1 {100 * top1:.2f}%  top-5 {100 * top5:.2f}%  "
                     f"({n} images)")
        return {"epoch": start_epoch - 1, "test_loss": loss, "test_top1": top1,
                "test_top5": top5, "test_samples": n}

    cost_factor = float(opts.cost_factors[0]) if opts.cost_factors else 1.0
    kill_at = _kill_point()
    show_bar = info.is_main and sys.stderr.isatty()
    if state is not None:
        ckpt.restore_rng_state(state["rng"])  # last: nothing below draws from them before training

    from tqdm import tqdm

    record = {}
    for epoch in range(start_epoch, opts.epochs):
        t0 = time.perf_counter()
        lr = schedule.apply(optimizer, epoch)
        train_loader.set_epoch(epoch)
        net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        bar = tqdm(total=len(train_loader), desc=f"epoch {epoch}/{opts.epochs}", unit="batch",
                   disable=not show_bar, leave=False, dynamic_ncols=True, file=sys.stderr)
        for step, (images, targets) in enumerate(train_loader):
            images = images.to(device, non_blocking=True)
            labels = targets["label"].to(device, non_blocking=True)
            logp = net(images)
            nll = F.nll_loss(logp, labels)
            loss = nll * cost_factor if cost_factor != 1.0 else nll
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            iteration += 1
            n = labels.shape[0]
            seen += n
            loss_sum += nll.detach().double() * n
            correct += (logp.detach().argmax(1) == labels).sum()
            if show_bar:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
            if LOG_LEVELS[opts.log_level] <= LOG_LEVELS["debug"]:
                console.debug(f"batch {epoch}.{step}: iteration {iteration}, cost "
                              f"{float(nll):.5f}")
            if kill_at is not None and kill_at == (epoch, step + 1):
                os.kill(os.getpid(), signal.SIGKILL)
        bar.close()
        loss_total, correct_total, seen_total = all_sum(
            [float(loss_sum), float(correct), float(seen)], device, info)
        train_loss = loss_total / seen_total
        if not math.isfinite(train_loss):
            raise DenetError(f"training diverged: the loss is {train_loss} in epoch {epoch}; "
                             "lower --learn-rate")
        test = (None, None, None, 0)
        if test_loader is not None and (epoch % opts.test_epochs == 0
                                        or epoch == opts.epochs - 1):
            test = evaluate(model, test_loader, device, info, label_map)
        record = {"epoch": epoch, "lr": lr, "train_loss": train_loss,
                  "train_top1": correct_total / seen_total, "train_samples": int(seen_total),
                  "test_loss": test[0], "test_top1": test[1], "test_top5": test[2],
                  "test_samples": test[3], "seconds": round(time.perf_counter() - t0, 3)}
        records.append(record)
        msg = (f"epoch {epoch}/{opts.epochs}  lr {lr:.6g}  train loss {train_loss:.4f}  "
               f"top-1 {100 * record['train_top1']:.2f}%")
        if test[0] is not None:
            msg += (f"  |  test loss {test[0]:.4f}  top-1 {100 * test[1]:.2f}%  "
                    f"top-5 {100 * test[2]:.2f}%")
        console.info(msg + f"  ({record['seconds']:.1f} s)")
        if info.is_main:
            ckpt.append_log(log_path, record)
            last = epoch == opts.epochs - 1
            if not opts.disable_intermediate or last:
                train_state = ckpt.make_train_state(
                    epoch=epoch, iteration=iteration, args=opts.as_dict(), optimizer=optimizer,
                    schedule=schedule, log_path=log_path, log_records=records,
                    cuda=device.type == "cuda")
                if not opts.disable_intermediate:
                    denet.save(model, checkpoint_path(opts.output_prefix, epoch), train_state)
                if last:
                    denet.save(model, f"{opts.output_prefix}_final.pt", train_state)
        barrier(info)
    console.info(f"wrote {opts.output_prefix}_final.pt and {log_path}")
    return record
