"""Optional TensorBoard logging (``--tensorboard``): every epoch's metrics as scalars.

:class:`TensorBoardLogger` writes, at global step = the epoch number (1-based, as in
``metrics.jsonl``), the values of the epoch's :class:`~noprop.training.record.EpochRecord` and a few
the record does not hold:

* ``loss/block_NN`` and ``<part>/block_NN`` (e.g. ``l2/block_03``, ``ce/block_03``): the per-block
  epoch means of the loss and of each of its parts (``block_<part>`` in metrics.jsonl; blocks count
  from 1, a block this process did not train is skipped);
* ``val/accuracy`` and ``val/accuracy_step_NN``: validation accuracy, overall and of the read-out
  ``val_accuracy_per_step[NN]`` (DT: after inference step NN, ``step_00`` being z_0's read-out;
  CT/FM/adjoint: the NN-th of the reported grid points); absent without a validation split;
* ``val/<score>`` and ``val/<score>_step_NN`` for the task's other validation scores (text:
  ``val/bits_per_byte``, the metric its model is selected on);
* ``lr/block_NN`` and ``lr/shared``: the learning rate of every optimiser (``_group_K`` appended for
  an optimiser with several parameter groups);
* ``throughput/samples_per_s``: training samples processed in the epoch / the epoch's seconds;
* ``time/epoch_seconds``, ``time/wall_seconds`` and ``data_passes``.

TensorBoard is an optional dependency (the extra ``[tb]``); it is imported only when a logger is
made, and a missing package is a one-line :class:`~noprop.errors.ConfigError`
(:func:`require_tensorboard`). The event files are created at the first epoch's end, so nothing is
written before training has produced something. A resumed run appends a new event file to the same
directory; its first event purges (hides) the previous session's events at and after the epoch it
resumes from, so epochs logged after the last checkpoint of a killed run are not shown twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .callbacks import Callback
from .record import EpochRecord

if TYPE_CHECKING:  # only for annotations: the trainer imports the callbacks
    from .trainer import Trainer

MISSING = "--tensorboard needs the tensorboard package: pip install 'noprop[tb]'"


def require_tensorboard() -> type:
    """``torch.utils.tensorboard.SummaryWriter``; a one-line ConfigError if tensorboard is missing."""
    try:
        # optional dependency (extra [tb]): imported only when --tensorboard is on
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(MISSING) from None
    return SummaryWriter


class TensorBoardLogger(Callback):
    """Write every epoch's metrics to TensorBoard event files in ``log_dir`` (module docstring).

    Args:
        log_dir: the event files' directory (created at the first epoch's end).
        samples_per_epoch: training samples processed per epoch (for ``throughput/samples_per_s``),
            e.g. the number of training examples × the data passes per epoch (a DT epoch makes one
            pass per block); None: no throughput scalar.
    """

    def __init__(self, log_dir: str | Path, *, samples_per_epoch: float | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.samples_per_epoch = samples_per_epoch
        self._writer_cls = require_tensorboard()
        self.writer: Any = None

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        step = record.epoch
        if self.writer is None:
            # purge_step: hide events of an earlier session at or after this epoch (resume)
            self.writer = self._writer_cls(str(self.log_dir), purge_step=step)
        for tag, value in scalars(trainer, record, self.samples_per_epoch):
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()  # each epoch is on disk, like its metrics.jsonl line

    def on_fit_end(self, trainer: Trainer) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def scalars(
    trainer: Trainer, record: EpochRecord, samples_per_epoch: float | None = None
) -> list[tuple[str, float]]:
    """The (tag, value) pairs of one epoch (module docstring)."""
    out: list[tuple[str, float]] = []
    for part, values in record.losses().items():
        out += [
            (f"{part}/block_{u + 1:02d}", float(v)) for u, v in enumerate(values) if _is_number(v)
        ]
    val = {"accuracy": record.val_accuracy, "accuracy_per_step": record.val_accuracy_per_step}
    for name, value in (val | record.val_scores).items():
        if _is_number(value):
            out.append((f"val/{name}", float(value)))
        elif isinstance(value, list) and name.endswith("_per_step"):
            base = name.removesuffix("_per_step")
            out += [
                (f"val/{base}_step_{i:02d}", float(v)) for i, v in enumerate(value) if _is_number(v)
            ]
    optimizers = [(f"block_{u + 1:02d}", o) for u, o in enumerate(trainer.optimizers)]
    if trainer.shared_optimizer is not None:
        optimizers.append(("shared", trainer.shared_optimizer))
    for name, opt in optimizers:
        groups = opt.param_groups
        for k, group in enumerate(groups):
            suffix = "" if len(groups) == 1 else f"_group_{k}"
            out.append((f"lr/{name}{suffix}", float(group["lr"])))
    seconds = record.epoch_seconds
    out.append(("time/epoch_seconds", float(seconds)))
    if samples_per_epoch is not None and seconds > 0:
        out.append(("throughput/samples_per_s", samples_per_epoch / seconds))
    out.append(("time/wall_seconds", float(record.wall_seconds)))
    out.append(("data_passes", float(record.data_passes)))
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
