"""Runs: train into a run directory (new or resumed), load it back, evaluate it, sweep its solver."""

from .evaluate import evaluate_chains, evaluate_run, load_run, load_run_with_task
from .model import TrainedModel, export, load
from .sweep import sweep_steps
from .train import RESUMABLE_OVERRIDES, build_for_data, load_data, train

__all__ = [
    "RESUMABLE_OVERRIDES",
    "TrainedModel",
    "build_for_data",
    "evaluate_chains",
    "evaluate_run",
    "export",
    "load",
    "load_data",
    "load_run",
    "load_run_with_task",
    "sweep_steps",
    "train",
]
