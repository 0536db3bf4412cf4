"""Training: DeNet's solvers and learning-rate schedule, checkpoints that resume exactly, and the
trainer behind ``model-train`` (one process or torch.distributed). See docs/model-train.md."""

from .options import TrainOptions
from .schedule import AnnealSchedule
from .solvers import DenetSGD, make_optimizer
from .trainer import Trainer, run

__all__ = ["AnnealSchedule", "DenetSGD", "TrainOptions", "Trainer", "make_optimizer", "run"]
