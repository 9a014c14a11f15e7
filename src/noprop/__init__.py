"""noprop: train neural networks the NoProp way (Li, Teh, Pascanu, arXiv 2503.24322)."""

# ruff: noqa: E402 — the OpenMP wait policy must be chosen before the imports below load torch

from .runtime import apply_omp_defaults

apply_omp_defaults()  # from the machine's load at start-up; the user's environment wins (runtime.py)

from .build import build_method
from .config import MethodConfig, RunConfig, make_config
from .data import load_dataset
from .errors import NoPropError
from .methods import METHODS, Backprop, DiffusionBlocks, Method, NoPropCT, NoPropDT, NoPropFM
from .rundir import RunDir
from .runs import TrainedModel, evaluate_run, export, load, load_run, train
from .schedules import CosineSchedule, DiscreteSchedule
from .tasks import TASKS, Task
from .training import Trainer, evaluate
from .version import __version__

__all__ = [
    "METHODS",
    "TASKS",
    "Backprop",
    "CosineSchedule",
    "DiffusionBlocks",
    "DiscreteSchedule",
    "Method",
    "MethodConfig",
    "NoPropCT",
    "NoPropDT",
    "NoPropError",
    "NoPropFM",
    "RunConfig",
    "RunDir",
    "Task",
    "TrainedModel",
    "Trainer",
    "__version__",
    "build_method",
    "evaluate",
    "evaluate_run",
    "export",
    "load",
    "load_dataset",
    "load_run",
    "make_config",
    "train",
]
