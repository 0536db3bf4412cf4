"""The training loop behind ``model-train``, in one process or under ``torch.distributed``.

The trainer knows no task. A model follows the task contract (docs/language.md, Tasks): in
training mode ``model(images, targets)`` returns a dict of named 0-d tensors; the keys that begin
with ``loss`` are optimised (their sum, each times its ``--cost-factors`` factor), the others
(``top1``) are statistics. Evaluation goes through ``denet.eval.make_evaluator(model.task)``.

Read :class:`Trainer` top to bottom: ``setup`` (data, model, optimizer, resumed state, loaders),
``train_one_epoch``, ``evaluate``, ``save_checkpoint`` and ``fit``, the loop over epochs.

One code path for one process and many: when torchrun launched the process (``RANK``/
``WORLD_SIZE``/``LOCAL_RANK`` in the environment) the model is wrapped in
``DistributedDataParallel``, the training set is split by a ``DistributedSampler``
(``--batch-size`` is per process), the test set by a ``StridedSampler``, the epoch's sums are
added over ranks and the evaluators gathered and merged; only rank 0 prints, shows the progress
bar, writes the log and the checkpoints.

Determinism: the weights are initialised from ``--seed``; epoch ``e`` visits the training set
in an order that depends on (seed, e) only and item ``i`` draws its augmentation from
(seed, e, i) (see ``denet.data``); the DataLoader's own seed comes from a private generator, so
the global torch RNG is used by the model alone (dropout). A checkpoint stores the optimizer,
the schedule and every RNG state, so ``--resume`` from ``P_epochNNN.pt`` replays epochs
NNN+1... exactly as an uninterrupted run with the same seed and thread count on the same
machine does.

Gradient accumulation (``--batch-size-factor N``): an optimizer step takes N consecutive
batches, each loss weighted by its share of the step's images, so the step is that of one batch
N times larger (for losses that are means over images); ``iteration`` counts optimizer steps,
``on_step`` runs after each. Schedules: :mod:`denet.train.schedule` (``anneal`` per epoch,
``poly`` and Detectron's ``steps`` per optimizer step, ``--learn-warmup`` around any of them).
``--aspect-grouping`` batches the training set with ``AspectRatioBatchSampler``. A COCO test set
of one subset is evaluated against its annotation file (box, and segm / keypoints AP where the
model outputs masks / keypoints).

Files, for ``--output-prefix P``: ``P_epochNNN.pt`` after epoch NNN (0-based, DeNet's
numbering), ``P_final.pt`` at the end (both carry the training state), and ``P_log.jsonl``:
one JSON object per epoch with ``epoch``, ``lr`` (the rate of the epoch's first optimizer step,
before layer multipliers), ``train_loss`` (the mean over the epoch's
images of the sum of the losses, without cost factors), ``train_<key>`` for every key the model
returns (``train_loss_cls``, ``train_top1``), ``train_samples``, ``test_<metric>`` for every
metric of the task's evaluator (classification: ``test_top1``, ``test_top5``, ``test_loss``,
``test_samples``; detection ``test_AP``...; segmentation ``test_mIoU``...; null in epochs
without a test and where undefined) and ``seconds``.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time

import numpy as np
import torch

from ..errors import DataError, DenetError, ModelFileError
from . import checkpoint as ckpt
from .distributed import (
    DistInfo,
    ShardedShuffleSampler,
    all_sum,
    barrier,
    convert_sync_batchnorm,
    env_dist_info,
    init_distributed,
    select_device,
    shutdown,
)
from .options import LOG_LEVELS, TrainOptions, loss_factors, resume_options, total_loss
from .schedule import (
    AnnealSchedule,
    LinearWarmup,
    PolySchedule,
    StepSchedule,
    parse_warmup,
    set_rate,
    to_iterations,
)
from .solvers import make_optimizer


# ----------------------------------------------------------------------------- console
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
def _fmt_shape(shape):
    return "x".join(map(str, shape)) if shape else "of mixed sizes"


def open_sets(opts: TrainOptions, console: Console):
    """(train set, its input shape, test set or None, label map test -> train or None). The
    label map is for classification sets whose test classes are a subset of the training
    classes; other tasks need the same classes in both."""
    from ..data import SubsetDataset, open_dataset

    distort = list(opts.distort_mode) or None
    train_set = open_dataset(
        opts.train,
        opts.extension,
        train=True,
        distort=distort,
        mirror=True if opts.augment_mirror else None,
        seed=opts.seed,
    )
    shape = train_set.input_shape
    if shape is None:
        raise DataError(
            f"{opts.train}: images of different sizes; make them one size or add "
            "crop=N (or scale=N,scale_mode=warp) to --extension"
        )
    if not train_set.num_classes:
        raise DataError(f"{opts.train}: the dataset names no classes")
    classification = train_set.task == "classification"
    test_set, label_map = None, None
    if opts.test:
        test_set = open_dataset(opts.test, opts.test_extension or opts.extension, train=False)
        test_shape = test_set.input_shape
        # a classifier takes one input size; other heads take any size of the same channels
        if (
            test_shape != shape
            if classification
            else getattr(test_set, "channels", shape[0]) != shape[0]
        ):
            raise DataError(
                f"{opts.test}: test images are {_fmt_shape(test_shape)}"
                f" but training images are {_fmt_shape(shape)}"
            )
        if list(test_set.classes) != list(train_set.classes):
            index = {str(c): i for i, c in enumerate(train_set.classes)}
            missing = [c for c in test_set.classes if str(c) not in index]
            if missing or not classification:
                what = (
                    f"class {missing[0]!r} does not occur in"
                    if missing
                    else "the classes differ from those of"
                )
                raise DataError(f"{opts.test}: {what} the training set {opts.train}")
            label_map = torch.tensor([index[str(c)] for c in test_set.classes])
    if opts.max_samples is not None and opts.max_samples < len(train_set):
        rng = np.random.default_rng([opts.seed, 0x6D6178])
        keep = np.sort(rng.choice(len(train_set), opts.max_samples, replace=False))
        console.verbose(f"--max-samples: training on {opts.max_samples} of {len(train_set)} images")
        train_set = SubsetDataset(train_set, keep)
    return train_set, tuple(shape), test_set, label_map


def targets_to(targets: list[dict], device) -> list[dict]:
    """Each target dict with its tensors moved to ``device`` (other values as they are)."""
    return [
        {
            k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in t.items()
        }
        for t in targets
    ]


# ----------------------------------------------------------------------------- model
def check_trainable(model) -> None:
    """The model must add losses (a head such as R, SEG or DET)."""
    if not any(n.startswith("loss") for n in model.loss_names):
        raise DenetError(
            f"the network adds no losses, so it cannot be trained: end it with a "
            f"head that has a loss (R, SEG, ...): {model.desc}"
        )


def build_model(opts: TrainOptions, input_shape, num_classes: int, console: Console):
    import denet

    if opts.model:
        model = denet.load(opts.model)
        model.train_state = None
        if tuple(model.input_shape) != tuple(input_shape):
            raise ModelFileError(
                f"{opts.model}: the model takes "
                f"{_fmt_shape(model.input_shape)} inputs but {opts.train} has "
                f"{_fmt_shape(input_shape)} images (model-modify --image-size "
                "changes a model's input size)"
            )
        if model.classes != num_classes:
            raise ModelFileError(
                f"{opts.model}: the model has {model.classes} classes but "
                f"{opts.train} has {num_classes} (model-modify --class-num "
                "changes a model's classifier)"
            )
        console.info(f"starting from the weights of {opts.model}")
    else:
        model = denet.compile(
            opts.model_desc,
            input_shape,
            num_classes,
            border_mode=opts.border_mode,
            activation=opts.activation,
            weight_init=list(opts.weight_init),
        )
    check_trainable(model)
    return model


def check_task(model, dataset, path, training: bool = True) -> None:
    if model.task is not None and model.task != dataset.task:
        raise DataError(
            f"{path}: a {dataset.task} set, but the network is a {model.task} "
            f"network (its head decides: {model.desc})"
        )
    # Images without boxes train (only the background losses); a set without any is a mistake.
    records = getattr(dataset, "records", None)
    if training and dataset.task == "detection" and records is not None:
        if not any(len(r.boxes) for r in records):
            raise DataError(
                f"{path}: no image of this detection set has a box, so a detector has "
                "nothing to learn (check the annotations and the loader keys)"
            )


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
        raise DenetError(
            f"--skip-layer-updates: no layer with parameters at index "
            f"{unknown[0]} (see the index column of the summary)"
        )


def aspect_ratios(dataset, path) -> list[float]:
    """Width / height of every training item's original image, for ``--aspect-grouping`` (a
    ``--max-samples`` subset: those of its items); a DataError for a set that has none."""
    from ..data import SubsetDataset

    indices = None
    if isinstance(dataset, SubsetDataset):
        dataset, indices = dataset.dataset, dataset.indices
    if not hasattr(dataset, "aspect_ratios"):
        raise DataError(
            f"{path}: --aspect-grouping needs the images' sizes, and this data set gives none"
        )
    try:
        ratios = list(dataset.aspect_ratios())
    except (NotImplementedError, ZeroDivisionError, TypeError) as err:
        raise DataError(
            f"{path}: --aspect-grouping needs the images' sizes, and this data set gives none "
            f"({err or type(err).__name__})"
        ) from None
    return ratios if indices is None else [ratios[i] for i in indices]


# ----------------------------------------------------------------------------- evaluation
def detection_metric(dataset) -> str:
    """VOC's mAP for a VOC set (the 11-point form for VOC2007 alone), COCO's AP otherwise."""
    if getattr(dataset, "format", None) == "voc":
        subsets = dataset.extension.subsets
        return "voc07" if subsets and all(s.startswith("2007-") for s in subsets) else "voc12"
    return "coco"


def task_evaluator(task, dataset, label_map=None):
    """``denet.eval``'s evaluator of ``task`` for ``dataset``; a DenetError when there is
    none."""
    try:
        from ..eval import make_evaluator
    except ImportError as err:
        raise DenetError(
            f"cannot evaluate a {task} model: denet.eval is not available ({err})"
        ) from None
    classes = [str(c) for c in dataset.classes]
    try:
        if task == "classification":
            return make_evaluator(task, label_map=label_map)
        if task == "detection":
            metric = detection_metric(dataset)
            kwargs = {}
            if metric == "coco" and len(getattr(dataset, "cocos", ())) == 1:
                # COCO's own annotations: the official box AP, and segm / keypoints AP where
                # the model outputs masks / keypoints and the file has them
                kwargs = {"coco_gt": dataset.cocos[0], "category_ids": list(dataset.cat_ids)}
            return make_evaluator(task, metric=metric, classes=classes, **kwargs)
        return make_evaluator(task, classes=classes)
    except (ValueError, TypeError) as err:
        raise DenetError(f"cannot evaluate a {task} model: {err}") from None


def metrics_record(metrics: dict, prefix: str) -> dict:
    """``{prefix + key: value}`` for the log: nan (undefined) becomes null, counts ints."""
    out = {}
    for key, value in metrics.items():
        value = float(value)
        if math.isnan(value):
            out[prefix + key] = None
        elif key == "samples":
            out[prefix + key] = int(value)
        else:
            out[prefix + key] = value
    return out


@torch.no_grad()
def evaluate(model, loader, device, evaluator):
    """Run ``model`` in evaluation mode over ``loader`` into ``evaluator`` (reset first), then
    fold in the other ranks' evaluators; returns it."""
    from ..eval import merge_across_ranks

    model.eval()
    evaluator.reset()
    for images, targets in loader:
        outputs = model(images.to(device, non_blocking=True))
        evaluator.update(outputs, targets)
    return merge_across_ranks(evaluator)


def deterministic_cuda() -> None:
    """Deterministic GPU kernels (cuDNN without autotuning, cuBLAS with a fixed workspace), so a
    resumed GPU run replays an uninterrupted one; ops that have no deterministic CUDA kernel
    warn instead of failing."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def checkpoint_path(prefix: str, epoch: int) -> str:
    return f"{prefix}_epoch{epoch:03d}.pt"


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """One training run. ``setup`` builds everything, ``fit`` runs the epochs::

        trainer = Trainer(opts, info, device, console)
        trainer.setup()                      # or setup(resume=path, model=m, state=s)
        last_record = trainer.fit(on_step=lambda epoch, step: ...)

    ``on_step(epoch, step)`` is called after each optimizer step (``step`` counts from 1 in
    each epoch); tests use it to kill a run at a chosen point.
    """

    def __init__(self, opts: TrainOptions, info: DistInfo, device, console: Console):
        self.opts, self.info, self.device, self.console = opts, info, device, console
        self.log_path = f"{opts.output_prefix}_log.jsonl"
        self.records: list[dict] = []
        self.iteration = 0
        self.start_epoch = 0
        self.resume = None
        self.rng_state = None
        self.finish_state: dict | None = None  # resumed after a kill while P_final.pt was written

    # ------------------------------------------------------------------ set-up
    def setup(self, resume: str | None = None, model=None, state: dict | None = None) -> None:
        """Data, model, optimizer and (with ``resume``) the saved state, then the loaders.
        Nothing after this draws from the global random generators before training."""
        opts = self.opts
        random.seed(opts.seed)
        np.random.seed(opts.seed)
        torch.manual_seed(opts.seed)
        self.train_set, shape, self.test_set, label_map = open_sets(opts, self.console)
        classes = list(self.train_set.classes)
        if model is None:
            model = build_model(opts, shape, len(classes), self.console)
        elif tuple(model.input_shape) != shape or model.classes != len(classes):
            raise ModelFileError(
                f"{resume}: the checkpoint's model does not fit {opts.train} "
                "any more (input size or classes changed)"
            )
        check_task(model, self.train_set, opts.train, training=not opts.skip_train)
        self.task = model.task or self.train_set.task
        self.factors = loss_factors(opts.cost_factors, model.loss_names)
        model.class_names = [str(c) for c in classes]
        if opts.skip_layer_updates:
            freeze_layers(model, opts.skip_layer_updates)
        self.model = model.to(self.device)
        if opts.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(opts.amp)
        # fp16 needs loss scaling (its range underflows small gradients); bf16 does not
        self.scaler = torch.amp.GradScaler(self.device.type) if opts.amp == "fp16" else None
        self.optimizer = make_optimizer(
            opts.solver,
            model.param_groups(opts.learn_rate, opts.learn_decay),
            opts.learn_rate,
            opts.learn_momentum,
            opts.learn_decay,
        )
        if state is not None:
            self._restore(resume, state)
        self._prepare_output()
        self._make_loaders(label_map)
        self.schedule = self._make_schedule()
        self._describe(shape, classes)

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch: the loader's batches in groups of
        ``--batch-size-factor`` (a shorter last group is a step too)."""
        return -(-len(self.train_loader) // self.opts.batch_size_factor)

    def _make_schedule(self):
        """``--learn-schedule`` (``steps`` written in epochs become iterations here), wrapped in
        ``--learn-warmup``'s linear warm-up when given."""
        opts = self.opts
        spe = self.steps_per_epoch()
        if opts.learn_schedule == "poly":
            schedule = PolySchedule(opts.learn_rate, opts.epochs * spe)
        elif opts.learn_schedule == "steps":
            steps = [to_iterations(t, spe, "--learn-steps") for t in opts.learn_steps]
            schedule = StepSchedule(opts.learn_rate, steps, opts.learn_anneal)
        else:
            schedule = AnnealSchedule(opts.learn_rate, opts.learn_anneal, opts.learn_anneal_epochs)
        warmup = parse_warmup(opts.learn_warmup)
        if warmup is not None:
            amount, unit, factor = warmup
            schedule = LinearWarmup(schedule, amount * spe if unit == "epochs" else amount, factor)
        return schedule

    def set_lr(self, epoch: int) -> float:
        """The schedule's rate for the next optimizer step (a function of the epoch and the
        optimizer steps taken), set in every parameter group (times the group's ``lr_mult``);
        returns it."""
        return set_rate(self.optimizer, self.schedule.rate(epoch, self.iteration))

    def _restore(self, resume, state) -> None:
        self.start_epoch = int(state["epoch"]) + 1
        final = f"{self.opts.output_prefix}_final.pt"
        if self.start_epoch == self.opts.epochs and not os.path.exists(final):
            # the run was killed while it wrote P_final.pt: finishing is writing it
            self.finish_state = state
        elif self.start_epoch >= self.opts.epochs:
            raise DenetError(
                f"{resume}: the run already finished epoch {self.start_epoch - 1} "
                f"of {self.opts.epochs}; give --epochs N with N > "
                f"{self.start_epoch} to train further"
            )
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as err:
            raise ModelFileError(
                f"{resume}: the optimizer state does not fit the model ({err})"
            ) from None
        self.iteration = int(state["iteration"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.records = [dict(r) for r in state["log"]["records"]]
        self.resume = resume
        self.rng_state = state["rng"]  # restored by fit, after everything else is set up

    def _prepare_output(self) -> None:
        out_dir = os.path.dirname(os.path.abspath(self.log_path))
        if not self.info.is_main:
            return
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as err:
            raise DenetError(f"--output-prefix: cannot create {out_dir} ({err})") from None
        if not self.opts.skip_train:
            from ..model_file import stale_temporaries

            for tmp in stale_temporaries(self.opts.output_prefix):  # left by a killed save
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            ckpt.rewrite_log(self.log_path, self.records)  # a fresh run starts an empty log

    def _make_loaders(self, label_map) -> None:
        from ..data import StridedSampler, make_loader

        opts, info = self.opts, self.info
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # one process's order, split between the ranks (see ShardedShuffleSampler)
            sampler = ShardedShuffleSampler(
                len(self.train_set), opts.seed, info.rank, info.world_size
            )
            if opts.sync_bn:
                _, count = convert_sync_batchnorm(self.model, cpu=self.device.type == "cpu")
                if not count:
                    self.console.warning("--sync-bn: the network has no batch norm to synchronise")
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        else:
            sampler = None
            self.net = self.model
        if opts.aspect_grouping:
            from ..data import AspectRatioBatchSampler

            # Detectron's grouping; its batches replace the shuffle (and the sharded order)
            sampler = AspectRatioBatchSampler(
                aspect_ratios(self.train_set, opts.train),
                opts.batch_size,
                shuffle=True,
                seed=opts.seed,
                num_replicas=info.world_size,
                rank=info.rank,
            )
        self.train_loader = make_loader(
            self.train_set,
            opts.batch_size,
            shuffle=True,
            workers=opts.thread_num,
            seed=opts.seed,
            sampler=sampler,
        )
        self.test_loader = self.evaluator = None
        if self.test_set is not None:
            self.test_loader = make_loader(
                self.test_set,
                opts.batch_size,
                shuffle=False,
                workers=opts.thread_num,
                seed=opts.seed,
                sampler=StridedSampler(len(self.test_set), info.rank, info.world_size),
            )
            self.evaluator = task_evaluator(self.task, self.test_set, label_map)

    def _describe(self, shape, classes) -> None:
        opts, console = self.opts, self.console
        nparams = sum(p.numel() for p in self.model.parameters())
        console.info(
            f"model: {self.model.desc}  ({nparams:,} parameters, input "
            f"{_fmt_shape(shape)}, {len(classes)} classes)"
        )
        console.info(
            f"train: {opts.train} ({len(self.train_set)} images)"
            + (
                f"; test: {opts.test} ({len(self.test_set)} images)"
                if self.test_set is not None
                else ""
            )
        )
        procs = f" x {self.info.world_size} processes" if self.info.distributed else ""
        if opts.sync_bn and self.info.distributed:
            procs += " (synchronised batch norm)"
        if opts.amp:
            procs += f", mixed precision {opts.amp}"
        factor = opts.batch_size_factor
        accumulate = (
            f" x {factor} accumulated per step ({self.steps_per_epoch()} steps per epoch)"
            if factor > 1
            else ""
        )
        schedule = self._schedule_text()
        console.verbose(
            f"solver {opts.solver}, learning rate {opts.learn_rate}{schedule}, momentum "
            f"{list(opts.learn_momentum)}, decay {opts.learn_decay}, batch "
            f"{opts.batch_size}{procs}{accumulate}, device {self.device}, {opts.thread_num} "
            "loader worker(s)"
        )
        if opts.learn_schedule == "steps" and opts.learn_anneal == 1.0:
            console.warning(
                "--learn-schedule steps with --learn-anneal 1 keeps the rate at every step "
                "(Detectron's gamma is 0.1)"
            )
        mults = sorted({g.get("lr_mult", 1.0) for g in self.optimizer.param_groups} - {1.0})
        if mults:
            console.verbose(
                "layer learning-rate multipliers: " + ", ".join(f"x {m:g}" for m in mults)
            )
        factors = {k: f for k, f in self.factors.items() if f != 1.0}
        if factors:
            console.verbose(
                "cost factors: " + ", ".join(f"{k} x {f:g}" for k, f in factors.items())
            )
        if self.resume:
            console.info(f"resuming {self.resume} at epoch {self.start_epoch} of {opts.epochs}")

    def _schedule_text(self) -> str:
        """The start-up line's words on a poly or steps schedule and a warm-up."""
        s, text = self.schedule, ""
        if isinstance(s, LinearWarmup):
            text = f", linear warm-up over {s.iterations} steps from x {s.factor:.4g}"
            s = s.schedule
        if isinstance(s, PolySchedule):
            text = f", poly schedule over {s.max_iterations} steps" + text
        elif isinstance(s, StepSchedule):
            at = ", ".join(map(str, s.steps))
            text = f", x {s.gamma:g} after optimizer steps {at}" + text
        return text

    # ------------------------------------------------------------------ one epoch
    def _groups(self):
        """The epoch's batches, ``--batch-size-factor`` at a time (lists of (images,
        targets)); the last group of an epoch may be shorter. Groups never span epochs, so a
        checkpoint (at an epoch's end) never splits one."""
        factor = self.opts.batch_size_factor
        group = []
        for batch in self.train_loader:
            group.append(batch)
            if len(group) == factor:
                yield group
                group = []
        if group:
            yield group

    def _backward(self, group) -> tuple[list, torch.Tensor]:
        """Forward and backward of one optimizer step's batches; returns ``[(n, losses)]`` per
        batch and the step's optimised loss. With one batch the loss is the model's; with
        several, batch b's loss is weighted by ``n_b / n`` (n the images of the group), so the
        gradient is the gradient of one batch of all n images for losses that are means over
        images (DeepLab's ``iter_size``, which divides by the number of batches: the same for
        equal batches). Under DDP only the last backward all-reduces."""
        device = self.device
        total = sum(int(images.shape[0]) for images, _ in group)
        out = []
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        for k, (images, targets) in enumerate(group):
            images = self._to_device(images)
            n = int(images.shape[0])
            sync = k == len(group) - 1 or not self.info.distributed
            with contextlib.nullcontext() if sync else self.net.no_sync():
                with self._autocast():
                    losses = self.net(images, targets_to(targets, device))
                    loss = total_loss(losses, self.factors)
                if len(group) > 1:
                    loss = loss * (n / total)
                (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            step_loss += loss.detach().double()
            out.append((n, losses))
        return out, step_loss

    def _to_device(self, images):
        images = images.to(self.device, non_blocking=True)
        if self.opts.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _autocast(self):
        """``--amp``: the forward pass and the losses in bfloat16 / float16 where autocast
        deems it safe (convolutions, matrix products; reductions and losses stay float32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _step(self) -> None:
        """The optimizer step; with fp16 through the scaler, which unscales the gradients,
        skips a step whose gradients overflowed and adapts the scale."""
        if self.scaler is None:
            self.optimizer.step()
            return
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def train_one_epoch(self, epoch: int, on_step=None) -> dict:
        """One pass over the training set; returns the epoch's ``train_*`` log entries: the
        batch-size weighted mean of every key the model returns, and ``train_loss``, the mean
        of the sum of the losses without cost factors. Each optimizer step takes
        ``--batch-size-factor`` batches (:meth:`_backward`); the rate of a per-step schedule is
        set before each step."""
        from tqdm import tqdm

        opts, device = self.opts, self.device
        self.train_loader.set_epoch(epoch)
        self.net.train()
        sums: dict[str, torch.Tensor] = {}
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        show_bar = self.info.is_main and sys.stderr.isatty()
        bar = tqdm(
            total=len(self.train_loader),
            desc=f"epoch {epoch}/{opts.epochs}",
            unit="batch",
            disable=not show_bar,
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        debug = LOG_LEVELS[opts.log_level] <= LOG_LEVELS["debug"]
        for step, group in enumerate(self._groups()):
            if self.schedule.per_step:
                self.set_lr(epoch)
            self.optimizer.zero_grad(set_to_none=True)
            batches, loss = self._backward(group)
            self._step()
            self.iteration += 1
            for n, losses in batches:
                seen += n
                for name, value in losses.items():
                    value = value.detach().double() * n
                    sums[name] = sums[name] + value if name in sums else value
                loss_sum += (
                    sum(v.detach().double() for k, v in losses.items() if k.startswith("loss")) * n
                )
            if show_bar:
                bar.update(len(batches))
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
            if debug:
                what = "step" if opts.batch_size_factor > 1 else "batch"
                self.console.debug(
                    f"{what} {epoch}.{step}: iteration {self.iteration}, cost {float(loss):.5f}"
                    + (f" ({len(batches)} batches)" if len(batches) > 1 else "")
                )
            if on_step is not None:
                on_step(epoch, step + 1)
        bar.close()
        names = list(sums)
        totals = all_sum(
            [float(loss_sum), *(float(sums[k]) for k in names), float(seen)], device, self.info
        )
        samples = totals[-1]
        if samples == 0:
            raise DataError(f"{opts.train}: no training images in epoch {epoch}")
        train_loss = totals[0] / samples
        if not math.isfinite(train_loss):
            raise DenetError(
                f"training diverged: the loss is {train_loss} in epoch {epoch}; lower --learn-rate"
            )
        record = {"train_loss": train_loss}
        record.update({f"train_{k}": v / samples for k, v in zip(names, totals[1:-1])})
        record["train_samples"] = int(samples)
        return record

    def evaluate(self) -> dict:
        """The test set through the task's evaluator: ``test_*`` log entries."""
        evaluate(self.model, self.test_loader, self.device, self.evaluator)
        return metrics_record(self.evaluator.compute(), "test_")

    def untested(self) -> dict:
        """The ``test_*`` entries of an epoch without a test (null, 0 samples), with every key
        an earlier test logged (COCO's ``segm_``/``kp_`` columns exist only after outputs with
        masks / keypoints were seen)."""
        if self.evaluator is None:
            return {}
        self.evaluator.reset()
        record = metrics_record(self.evaluator.compute(), "test_")
        for r in self.records:
            for key in r:
                if key.startswith("test_"):
                    record.setdefault(key, None)
        return record

    def test_summary(self) -> str:
        """One line for the epoch message (the evaluator's, or its headline metric)."""
        text = self.evaluator.summary()
        if "\n" in text:
            metrics = self.evaluator.compute()
            # COCO: box AP, and the mask / keypoint AP where they were evaluated
            keys = [self.evaluator.primary] + [k for k in ("segm_AP", "kp_AP") if k in metrics]
            text = ", ".join(f"{k} {metrics[k]:.4f}" for k in keys)
        return text

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, epoch: int) -> None:
        """Rank 0: ``P_epochNNN.pt`` (unless ``--disable-intermediate``) and, after the last
        epoch, ``P_final.pt``; each carries the state ``--resume`` needs."""
        import denet

        opts = self.opts
        last = epoch == opts.epochs - 1
        if not self.info.is_main or (opts.disable_intermediate and not last):
            return
        state = ckpt.make_train_state(
            epoch=epoch,
            iteration=self.iteration,
            args=opts.as_dict(),
            optimizer=self.optimizer,
            schedule=self.schedule,
            log_path=self.log_path,
            log_records=self.records,
            cuda=self.device.type == "cuda",
        )
        if self.scaler is not None:  # fp16's loss scale, so --resume continues it exactly
            state["scaler"] = self.scaler.state_dict()
        if not opts.disable_intermediate:
            denet.save(self.model, checkpoint_path(opts.output_prefix, epoch), state)
        if last:
            denet.save(self.model, f"{opts.output_prefix}_final.pt", state)

    # ------------------------------------------------------------------ the loop
    def fit(self, on_step=None) -> dict:
        """Train from the start (or resumed) epoch to ``--epochs``; returns the last record.
        With ``--skip-train`` only evaluates."""
        opts = self.opts
        if opts.skip_train:
            result = self.evaluate()
            self.console.info(f"test: {self.test_summary()}")
            return {"epoch": self.start_epoch - 1, **result}
        if self.finish_state is not None:
            import denet

            denet.save(self.model, f"{opts.output_prefix}_final.pt", self.finish_state)
            self.console.info(f"finished: wrote {opts.output_prefix}_final.pt")
            return dict(self.records[-1]) if self.records else {}
        if self.rng_state is not None:
            ckpt.restore_rng_state(self.rng_state)  # last: nothing before training draws
        record: dict = {}
        for epoch in range(self.start_epoch, opts.epochs):
            t0 = time.perf_counter()
            lr = self.set_lr(epoch)
            train = self.train_one_epoch(epoch, on_step)
            tested = self.test_loader is not None and (
                epoch % opts.test_epochs == 0 or epoch == opts.epochs - 1
            )
            test = self.evaluate() if tested else self.untested()
            record = {
                "epoch": epoch,
                "lr": lr,
                **train,
                **test,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            self.records.append(record)
            self._report(record, tested)
            if self.info.is_main:
                ckpt.append_log(self.log_path, record)
            self.save_checkpoint(epoch)
            barrier(self.info)
        self.console.info(f"wrote {opts.output_prefix}_final.pt and {self.log_path}")
        return record

    def _report(self, record: dict, tested: bool) -> None:
        stats = [
            f"{k[len('train_') :]} {v:.4g}"
            for k, v in record.items()
            if k.startswith("train_") and k not in ("train_loss", "train_samples")
        ]
        msg = (
            f"epoch {record['epoch']}/{self.opts.epochs}  lr {record['lr']:.6g}  "
            f"train loss {record['train_loss']:.4f}"
        )
        if stats:
            msg += f" ({', '.join(stats)})"
        if tested:
            msg += f"  |  test {self.test_summary()}"
        self.console.info(msg + f"  ({record['seconds']:.1f} s)")


# ----------------------------------------------------------------------------- the run
def load_checkpoint(path, given: dict | None):
    """(model, train_state, options) of the checkpoint at ``path``; see
    :func:`resume_options` for ``given``."""
    import denet

    model = denet.load(path)
    state = ckpt.check_train_state(model.train_state, path)
    saved = TrainOptions.from_dict(state["args"])
    return model, state, resume_options(saved, dict(given or {}), path)


def run(
    opts: TrainOptions | None = None,
    resume: str | None = None,
    overrides: dict | None = None,
    on_step=None,
) -> dict:
    """Train as ``model-train`` does; returns the last log record.

    With ``resume`` (a checkpoint path) the options come from the checkpoint and ``opts`` is
    not used; ``overrides`` are the options the user gave again (name -> value): ``epochs``,
    ``device``, ``thread_num``, ``output_prefix`` and ``log_level`` replace the saved values,
    any other must equal its saved value. ``on_step(epoch, step)`` runs after every optimizer
    step."""
    info = env_dist_info()
    model = state = None
    if resume:
        model, state, opts = load_checkpoint(resume, overrides)
    if opts is None:
        raise DenetError("run() needs options or a checkpoint to resume")
    opts.check()
    console = Console(opts.log_level, info.is_main)
    device = select_device(opts.device, info, warn=console.warning)
    if device.type == "cuda":
        deterministic_cuda()
    init_distributed(device, info)
    try:
        trainer = Trainer(opts, info, device, console)
        trainer.setup(resume, model, state)
        return trainer.fit(on_step)
    finally:
        shutdown(info)
