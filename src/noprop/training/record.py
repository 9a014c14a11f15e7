"""What one epoch of training produced: :class:`EpochRecord`, built by the trainer, read by callbacks.

:meth:`Trainer.fit <noprop.training.trainer.Trainer.fit>` builds one record per epoch and hands it to
every callback's ``on_epoch_end``; the run directory writes it as one line of ``metrics.jsonl``
(:meth:`EpochRecord.to_dict`) and the TensorBoard logger reads its fields. The record is typed: the
per-block loss parts and the validation scores are dicts by name, so no reader parses key names.

On disk (``metrics.jsonl``) the keys are those of noprop 0.1, flat: ``block_loss`` and ``block_<part>``
(per-block loss means, e.g. ``block_l2``), ``val_accuracy``, ``val_accuracy_per_step`` and
``val_<score>`` (e.g. ``val_bits_per_byte``, ``val_bits_per_byte_per_step`` for text), timings, and the
optional ``other_busy_cores`` and ``test_accuracy``. :meth:`EpochRecord.from_dict` is the one place that
reads those names back; keys it does not know are kept in :attr:`EpochRecord.extra` and written again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: metrics.jsonl key prefixes: ``block_<part>`` (per-block loss parts), ``val_<score>``
BLOCK, VAL = "block_", "val_"


@dataclass
class EpochRecord:
    """One epoch: per-block (per-unit) epoch means of the loss and its parts (None for a block this
    process did not train), timings, the load they were measured under and the validation scores."""

    epoch: int
    block_loss: list[float | None]
    epoch_seconds: float
    wall_seconds: float
    data_passes: float
    #: absent (None) without a validation split
    val_accuracy: float | None = None
    val_accuracy_per_step: list[float] | None = None
    #: ``--test-curve``: the test accuracy after this epoch (reporting only, never for selection)
    test_accuracy: float | None = None
    #: cores kept busy by other processes during the epoch's training (the load it was timed under)
    other_busy_cores: float | None = None
    #: ``--precision 16-mixed``: steps skipped per block because their float16 gradients overflowed
    skipped_steps: list[int] | None = None
    #: ``--precision 16-mixed``: steps taken per block, the skipped ones included
    steps: list[int] | None = None
    #: the loss's other parts per block, by part name, e.g. ``{"l2": [...], "ce": [...]}``
    loss_parts: dict[str, list[float | None]] = field(default_factory=dict)
    #: validation scores besides accuracy, by name, e.g. ``{"bits_per_byte": 1.9,
    #: "bits_per_byte_per_step": [...]}`` (text)
    val_scores: dict[str, Any] = field(default_factory=dict)
    #: keys of a metrics.jsonl line this version does not know (kept and written back)
    extra: dict[str, Any] = field(default_factory=dict)

    def val(self, metric: str) -> float | None:
        """The validation value of ``metric`` (``accuracy`` or a :attr:`val_scores` name), or None."""
        return self.val_accuracy if metric == "accuracy" else self.val_scores.get(metric)

    def losses(self) -> dict[str, list[float | None]]:
        """Every loss part per block by name, the total (``loss``) first."""
        return {"loss": self.block_loss, **self.loss_parts}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochRecord:
        """A ``metrics.jsonl`` line (any noprop version's)."""
        plain = {f.name for f in dataclasses.fields(cls)} - {"loss_parts", "val_scores", "extra"}
        own = {k: v for k, v in d.items() if k in plain}
        own.setdefault("block_loss", [])
        rest = {k: v for k, v in d.items() if k not in plain}
        parts = {k.removeprefix(BLOCK): v for k, v in rest.items() if k.startswith(BLOCK)}
        scores = {k.removeprefix(VAL): v for k, v in rest.items() if k.startswith(VAL)}
        extra = {k: v for k, v in rest.items() if not k.startswith((BLOCK, VAL))}
        return cls(**own, loss_parts=parts, val_scores=scores, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The ``metrics.jsonl`` line: noprop 0.1's flat keys (module docstring)."""
        d: dict[str, Any] = {"epoch": self.epoch, "block_loss": self.block_loss}
        d |= {f"{BLOCK}{k}": v for k, v in self.loss_parts.items()}
        d |= {
            "epoch_seconds": self.epoch_seconds,
            "wall_seconds": self.wall_seconds,
            "data_passes": self.data_passes,
        }
        if self.skipped_steps is not None:  # 16-mixed only
            d["skipped_steps"] = self.skipped_steps
        if self.steps is not None:
            d["steps"] = self.steps
        if self.other_busy_cores is not None:  # absent unless measured
            d["other_busy_cores"] = self.other_busy_cores
        if self.val_accuracy is not None:  # no validation split: the keys are absent, as in 0.1
            d["val_accuracy"] = self.val_accuracy
            d["val_accuracy_per_step"] = self.val_accuracy_per_step
        d |= {f"{VAL}{k}": v for k, v in self.val_scores.items()}
        if self.test_accuracy is not None:
            d["test_accuracy"] = self.test_accuracy
        return {**d, **self.extra}
