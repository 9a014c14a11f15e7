"""The training loop (orders, step functions, callbacks), its options and checkpoints."""

from .callbacks import Callback, FiniteState, SkipBudget
from .config import TrainConfig
from .order import Algorithm1, Interleaved, Step, derive_seed
from .record import EpochRecord
from .steps import LocalStep, Optimizers, StepFunction, make_optimizer
from .trainer import Trainer, TrainState, evaluate

__all__ = [
    "Algorithm1",
    "Callback",
    "EpochRecord",
    "FiniteState",
    "Interleaved",
    "LocalStep",
    "Optimizers",
    "Step",
    "SkipBudget",
    "StepFunction",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "derive_seed",
    "evaluate",
    "make_optimizer",
]
