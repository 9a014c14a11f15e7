"""Callbacks: what happens around the training loop without being written into it.

The :class:`~noprop.training.trainer.Trainer` calls every callback, in order, at these points:

* ``on_step(trainer, step)`` before each step (offloading activates the step's block; the tests'
  pause point waits there);
* ``on_epoch_trained(trainer, losses) -> losses`` after an epoch's steps, before validation
  (block-parallel ranks gather the blocks to rank 0 and merge their losses there);
* ``before_eval(trainer)`` / ``after_eval(trainer)`` around every evaluation (offloading gathers all
  blocks for inference and scatters them again);
* ``on_epoch_end(trainer, record)`` with the epoch's :class:`~noprop.training.record.EpochRecord`
  after validation and model selection (the finiteness and skipped-step checks, which the trainer
  puts first, then metrics and checkpoint);
* ``on_fit_end(trainer)`` when training stops.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

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


def first_non_finite(obj: Any, path: str = "") -> str | None:
    """The dotted name of the first NaN/inf in ``obj`` (a tensor, a float, or dicts/lists of them),
    or None when everything in it is finite; integer tensors (step counts) are skipped."""
    if isinstance(obj, torch.Tensor):
        ok = not obj.is_floating_point() or bool(torch.isfinite(obj).all())
        return None if ok else path
    if isinstance(obj, float):
        return None if math.isfinite(obj) else path
    if isinstance(obj, dict):
        items: Any = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        found = first_non_finite(v, f"{path}.{k}" if path else str(k))
        if found is not None:
            return found
    return None


class FiniteState(Callback):
    """Stop with a DivergenceError naming the tensor if anything the checkpoint would hold is NaN/inf:
    parameters *and* buffers (BatchNorm's running statistics) of every block, the head and the
    embedding, the selected model, the optimiser states and the loss scalers. It runs before the
    checkpoint of the epoch is written, so the last good checkpoint is kept. The trainer always
    runs it (:class:`~noprop.training.trainer.Trainer`)."""

    def on_epoch_trained(self, trainer: Trainer, losses: Losses) -> Losses:
        # before validation too: a NaN weight is named here, not reported as a NaN read-out
        self.check(trainer, trainer.state.epoch + 1)
        return losses

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        self.check(trainer, record.epoch)

    @staticmethod
    def check(trainer: Trainer, epoch: int) -> None:
        state = trainer.state_dict()
        state.pop("train_state", None)  # counters and validation scores, not the model
        bad = first_non_finite(state)
        if bad is not None:
            block = _block_of(trainer, bad.partition(".")[2]) if bad.startswith("model") else None
            where = f" (block {block})" if block is not None else ""
            raise DivergenceError(f"{bad}{where} became NaN or infinite at epoch {epoch}")


def _block_of(trainer: Trainer, name: str) -> int | None:
    """The 1-based block whose modules hold the state-dict entry ``name``, if any."""
    method = trainer.method
    owner = {id(m): u for u in range(method.num_units) for m in method.unit_modules(u)}
    for prefix, module in method.named_modules():
        if id(module) in owner and name.startswith(f"{prefix}."):
            return owner[id(module)] + 1
    return None


#: ``--precision 16-mixed``: a block that skipped more than this fraction of its steps stops the run
MAX_SKIPPED_FRACTION = 0.5
#: ... judged over at least this many of its steps (the first epochs' scale search skips a few:
#: GradScaler starts at 2^16 and halves per overflow, ~5 skips on the bundled digits)
SKIP_WINDOW = 50


class SkipBudget(Callback):
    """``--precision 16-mixed``: stop when a block skips most of its steps.

    A skipped step changes nothing (the step restores even BatchNorm's statistics), so a block that
    skips most of its steps is not training while the run looks normal. At the end of each epoch,
    once a block has taken at least :data:`SKIP_WINDOW` steps since it was last judged, more than
    :data:`MAX_SKIPPED_FRACTION` of them skipped is a DivergenceError (before that epoch's
    checkpoint). The 30-in-a-row rule of the step (``MAX_FAILING_STEPS``) catches the rest sooner."""

    def __init__(self) -> None:
        self.skipped: dict[int, int] = {}
        self.taken: dict[int, int] = {}

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if record.skipped_steps is None or record.steps is None:
            return
        for unit, (skipped, taken) in enumerate(
            zip(record.skipped_steps, record.steps, strict=True)
        ):
            self.skipped[unit] = self.skipped.get(unit, 0) + skipped
            self.taken[unit] = self.taken.get(unit, 0) + taken
            if self.taken[unit] < SKIP_WINDOW:
                continue
            s, n = self.skipped.pop(unit), self.taken.pop(unit)
            if s > MAX_SKIPPED_FRACTION * n:
                raise DivergenceError(
                    f"block {unit + 1} skipped {s} of its last {n} steps for float16 overflow "
                    f"(more than {MAX_SKIPPED_FRACTION:.0%}) at epoch {record.epoch} under "
                    "--precision 16-mixed; try bf16-mixed or a smaller --lr"
                )


class ReportSkippedSteps(Callback):
    """``--precision 16-mixed``: one line on stderr after each epoch that skipped any step."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        skipped, taken = record.skipped_steps, record.steps
        if not skipped or not taken or not sum(skipped):
            return
        blocks = ", ".join(str(u + 1) for u, s in enumerate(skipped) if s)
        print(
            f"noprop: epoch {record.epoch}: {sum(skipped)} of {sum(taken)} steps skipped for "
            f"float16 overflow (--precision 16-mixed; block {blocks})",
            file=sys.stderr,
            flush=True,
        )
