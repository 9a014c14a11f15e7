"""Callbacks: what happens around the training loop without being written into it.

The :class:`~noprop.training.trainer.Trainer` calls every callback, in order, at these points:

* ``on_step(trainer, step)`` before each step (offloading activates the step's block; the tests'
  pause point waits there);
* ``on_epoch_trained(trainer, losses) -> losses`` after an epoch's steps, before validation
  (block-parallel ranks gather the blocks to rank 0 and merge their losses there);
* ``before_eval(trainer)`` / ``after_eval(trainer)`` around every evaluation (offloading gathers all
  blocks for inference and scatters them again);
* ``on_epoch_end(trainer, record)`` with the epoch's :class:`~noprop.training.record.EpochRecord`
  after validation and model selection (finiteness check, metrics and checkpoint);
* ``on_fit_end(trainer)`` when training stops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..errors import DivergenceError
from .record import EpochRecord

if TYPE_CHECKING:  # only for annotations: the trainer imports this module
    from .order import Step
    from .trainer import Trainer

Losses = dict[str, list[float | None]]


class Callback:
    """No-op base; override the points you need."""

    def on_step(self, trainer: Trainer, step: Step) -> None:
        pass

    def on_epoch_trained(self, trainer: Trainer, losses: Losses) -> Losses:
        return losses

    def before_eval(self, trainer: Trainer) -> None:
        pass

    def after_eval(self, trainer: Trainer) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        pass

    def on_fit_end(self, trainer: Trainer) -> None:
        pass


class FiniteParameters(Callback):
    """Stop with a DivergenceError naming the block if a parameter became NaN/inf during the epoch
    (a finite loss with huge steps), before anything of that epoch is written."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        method = trainer.method
        groups = [(f"block {u + 1}", method.unit_parameters(u)) for u in range(method.num_units)]
        groups.append(("the shared parameters (head, embedding)", method.shared_parameters()))
        for name, params in groups:
            if not all(bool(torch.isfinite(p).all()) for p in params):
                raise DivergenceError(
                    f"parameters of {name} became NaN or infinite at epoch {record.epoch}"
                )
