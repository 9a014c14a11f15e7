"""Training loop, run directories and checkpoints."""

from .run import evaluate_run, load_run, train
from .trainer import Trainer, evaluate

__all__ = ["Trainer", "evaluate", "evaluate_run", "load_run", "train"]
