"""Image (or vector) classification: the paper's task (MNIST, CIFAR-10, CIFAR-100; spec §4).

Blocks: Figure 6's conv block for images of at least 16×16, else the MLP block (``--block auto``).
Layout: 4-D image batches and the model go channels-last (NHWC) when ``fast_layout`` — 1.2-1.4× faster
for the Fig. 6 convolutions on CPU and 10× for max-pool (BENCHMARKS.md). Metric: accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..data import DataConfig, DataSplits, load_dataset
from ..data.datasets import SPECS, USER_DATASETS, DatasetSpec
from ..data.user import UserData, load_user_dataset, spec_from_record
from ..errors import ConfigError, DataError
from ..models import build_dt_block
from ..models.config import ModelConfig
from ..models.ct_blocks import build_ct_block
from .base import BlockFamily, Task


class ClassificationTask(Task):
    """Classification of a data set of :data:`noprop.data.datasets.SPECS`."""

    name: ClassVar[str] = "classification"

    def __init__(
        self,
        dataset: str,
        *,
        recorded: dict[str, Any] | None = None,
        cache: Path | None = None,
    ) -> None:
        self.dataset = dataset
        self.user: UserData | None = None
        self.recorded, self.cache = recorded, cache
        if dataset in USER_DATASETS:  # your own data: the spec is the data's (noprop.data.user)
            self._spec = None if recorded is None else spec_from_record(recorded, "data.json")
        else:
            self._spec = SPECS[dataset]

    @property
    def spec(self) -> DatasetSpec:
        if self._spec is None:
            raise DataError(
                f"--dataset {self.dataset}: the input shape and classes are known once the data "
                "are read (or from the run's data.json, which is missing)"
            )
        return self._spec

    @spec.setter
    def spec(self, spec: DatasetSpec) -> None:
        self._spec = spec

    @classmethod
    def from_shape(cls, in_shape: tuple[int, ...], num_classes: int) -> ClassificationTask:
        """A task for in-memory tensors of any shape (no data set behind it; :meth:`load` refuses)."""
        task = cls.__new__(cls)
        task.dataset, task.user, task.recorded, task.cache = "", None, None, None
        task.spec = DatasetSpec(num_classes, tuple(in_shape), 1.0)  # type: ignore[arg-type]
        return task

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.spec.in_shape)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def class_name(self, k: int) -> str:
        return self.spec.class_name(k)

    def load(self, data: DataConfig, seed: int) -> DataSplits:
        if self.dataset in USER_DATASETS:
            self.user = load_user_dataset(data, seed, recorded=self.recorded, cache=self.cache)
            self.spec = self.user.spec
            return self.user.splits
        return load_dataset(
            data.dataset,
            data.data_dir,
            val_fraction=data.val_fraction,
            seed=seed,
            max_train_samples=data.max_train_samples,
            download=data.download,
        )

    def data_info(self) -> dict | None:
        """Your own data: shape, classes, normalisation and checksums (``data.json``)."""
        return None if self.user is None else self.user.info

    def save_data(self, directory: Path) -> None:
        """Your own images: the decoded cache (``RUN/data``; :mod:`noprop.data.user`)."""
        if self.user is not None:
            self.user.save_cache(directory)

    def build_block(self, family: BlockFamily, model: ModelConfig, d: int) -> nn.Module:
        if model.block == "transformer":
            raise ConfigError("--block transformer is the text block; images use conv or mlp")
        build = build_dt_block if family == "discrete" else build_ct_block
        return build(model.block, self.in_shape, d, self.num_classes)

    def to_device(self, t: Tensor, device: torch.device, *, fast_layout: bool = True) -> Tensor:
        t = t.to(device)
        if fast_layout and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def prepare_model(self, model: nn.Module, *, fast_layout: bool = True) -> nn.Module:
        return model.to(memory_format=torch.channels_last) if fast_layout else model
