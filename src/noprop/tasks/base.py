"""The task contract: what a method and the trainer need to know about the data, and nothing else.

A task owns its data spec (input shape, number of classes, class names), loads its splits, builds the
blocks that suit its inputs (the method decides how many and how they are trained), moves batches to
the device in the layout its blocks run fastest in, and scores predictions with its metric. Methods and
the trainer ask the task instead of assuming images; adding a task (e.g. next-token prediction) means
one new file here and one line in :data:`noprop.tasks.TASKS`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from ..data import DataConfig, DataSplits
from ..models.config import IMAGE_EMBED_DIM, ModelConfig

#: the two block families: a DT/back-prop block û_θt(z, x), or a CT/FM block û_θ(z, x, t)
BlockFamily = Literal["discrete", "continuous"]


class Task(ABC):
    """One kind of supervised problem (see module docstring)."""

    name: ClassVar[str]
    #: the validation metric that selects the model and drives ``--patience``: ``accuracy`` (from
    #: :meth:`score`) or a name of :meth:`extra_scores`; records hold it as ``val_<metric>``
    metric: ClassVar[str] = "accuracy"
    #: whether a larger :attr:`metric` is better (accuracy) or a smaller one (bits per byte)
    higher_is_better: ClassVar[bool] = True
    #: label dimensions per example: 0 for one class per input (y (B,)), 1 for one label per
    #: position (y (B, L), next-token prediction); z then has shape (*y.shape, d)
    label_dims: ClassVar[int] = 0
    #: the learned W_Embed's dimension when ``--embed-dim`` is not given
    default_embed_dim: ClassVar[int] = IMAGE_EMBED_DIM
    #: the validation evaluator a run of this task selects its epoch with, as ``"module:function"``
    #: (a :data:`noprop.training.trainer.Evaluator`; None: the trainer's own,
    #: :meth:`~noprop.training.Trainer.local_evaluate`). A reference, not an import: an evaluator
    #: may read a method's internals (a layer above the tasks), and a run of another task never
    #: loads its module (:meth:`load_evaluator`)
    evaluator: ClassVar[str | None] = None

    @classmethod
    def load_evaluator(cls) -> Callable[..., dict] | None:
        """The function :attr:`evaluator` names, imported now (None when it names none)."""
        if cls.evaluator is None:
            return None
        module, _, name = cls.evaluator.partition(":")
        return getattr(importlib.import_module(module), name)

    @property
    @abstractmethod
    def in_shape(self) -> tuple[int, ...]:
        """Shape of one input (without the batch dimension)."""

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """m, the number of labels (the size of the output space)."""

    @abstractmethod
    def load(self, data: DataConfig, seed: int) -> DataSplits:
        """The normalised train/validation/test splits."""

    @abstractmethod
    def build_block(self, family: BlockFamily, model: ModelConfig, d: int) -> nn.Module:
        """One block of ``family`` for label embeddings of dimension ``d`` (``model.block``: ``--block``)."""

    def check_model(self, model: ModelConfig) -> None:
        """Raise a one-line ConfigError for model options this task cannot use (default: none)."""
        return None

    def data_info(self) -> dict | None:
        """Facts about the loaded data a run directory records (default: none)."""
        return None

    def save_data(self, directory: Path) -> None:
        """Write what a run directory keeps of the loaded data into ``directory`` (default: none)."""
        return None

    def eval_batch_size(self, requested: int) -> int:
        """Examples per inference batch for ``--eval-batch-size requested`` (default: as requested)."""
        return requested

    def to_device(self, t: Tensor, device: torch.device, *, fast_layout: bool = True) -> Tensor:
        """A tensor of this task's data on ``device`` (subclasses may choose a faster layout)."""
        return t.to(device)

    def prepare_model(self, model: nn.Module, *, fast_layout: bool = True) -> nn.Module:
        """Put a model into the memory layout matching :meth:`to_device` (default: unchanged)."""
        return model

    def score(self, logits: Tensor, y: Tensor) -> Tensor:
        """Metric numerator per read-out: logits (S, B, m), labels (B,) → (S,) summed over B.

        The default is the number of correct argmax predictions (accuracy = score / B).
        """
        return (logits.argmax(-1) == y).sum(-1)

    def extra_scores(self, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Further metrics, each summed over the batch's labels per read-out, (S,) (default: none).

        :func:`noprop.training.trainer.evaluate` divides them by the number of labels (``y.numel()``)."""
        return {}
