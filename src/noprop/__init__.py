"""noprop: train neural networks the NoProp way (Li, Teh, Pascanu, arXiv 2503.24322).

The public API is the names in ``__all__`` below, plus the ``__all__`` of the documented subpackages
:mod:`noprop.methods`, :mod:`noprop.tasks`, :mod:`noprop.training`, :mod:`noprop.parallel`,
:mod:`noprop.models`, :mod:`noprop.data`, :mod:`noprop.runs`, :mod:`noprop.runs.readouts` (a text
model's read-outs) and :mod:`noprop.arguments` (the CLI's argument types, for command plugins).
Extension points: a task names the validation evaluator its runs select with
(:attr:`noprop.tasks.Task.evaluator`), and a distribution adds ``noprop`` subcommands through the
``noprop.commands`` entry-point group (:func:`noprop.cli.plugin_commands`). Code built on the library —
the lab, ``noprop_lab`` — uses these names only (``tests/test_imports.py`` checks it).
"""

# ruff: noqa: E402 — the OpenMP wait policy must be chosen before the imports below load torch

from .runtime import apply_omp_defaults

apply_omp_defaults()  # from the machine's load at start-up; the user's environment wins (runtime.py)

from .atomic import atomic_write, atomic_write_json, atomic_write_text
from .build import build_method
from .config import MethodConfig, RunConfig, make_config, method_fields
from .data import load_dataset
from .device import check_device, pick_device
from .errors import ConfigError, DataNotFound, DivergenceError, NoPropError
from .flags import add_config_flags, given_flags
from .methods import METHODS, Backprop, DiffusionBlocks, Method, NoPropCT, NoPropDT, NoPropFM
from .options import flag
from .precision import PRECISIONS, autocast, float32, native_bf16
from .rundir import CONFIG, EpochRecord, RunDir, Summary
from .runs import TrainedModel, evaluate_run, export, load, load_run, train
from .runtime import STARTUP as OMP_STARTUP
from .schedules import CosineSchedule, DiscreteSchedule, posterior_coefficients
from .solvers import record_indices
from .tasks import TASKS, Task
from .training import Trainer, evaluate
from .version import __version__

__all__ = [
    "posterior_coefficients",
    "Backprop",
    "CONFIG",
    "ConfigError",
    "CosineSchedule",
    "DataNotFound",
    "DiffusionBlocks",
    "DiscreteSchedule",
    "DivergenceError",
    "EpochRecord",
    "METHODS",
    "Method",
    "MethodConfig",
    "NoPropCT",
    "NoPropDT",
    "NoPropError",
    "NoPropFM",
    "OMP_STARTUP",
    "PRECISIONS",
    "RunConfig",
    "RunDir",
    "Summary",
    "TASKS",
    "Task",
    "TrainedModel",
    "Trainer",
    "__version__",
    "add_config_flags",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "autocast",
    "build_method",
    "check_device",
    "evaluate",
    "evaluate_run",
    "export",
    "flag",
    "float32",
    "given_flags",
    "load",
    "load_dataset",
    "load_run",
    "make_config",
    "method_fields",
    "native_bf16",
    "pick_device",
    "record_indices",
    "train",
]
