"""Data sources: what the trainer reads its mini-batches from, by index (issue 20).

The trainer never indexes a tensor itself: it asks a :class:`DataSource` for ``batch(idx, epoch)``,
``idx`` being positions in the training split (the order's shuffled mini-batch), and gets
``(x, y)`` on the device, as the model sees them. Three sources:

* :class:`TensorSource`: in-memory tensors, the default (``Trainer.fit(train=(x, y))`` wraps them).
  They are moved to the device once and a batch is ``x[idx]`` — the same operations as before the
  seam, so results are bit-identical and the speed is the same.
* :class:`ArraySource`: a NumPy array — memory-mapped ``.npy`` (``--dataset npy``: larger than
  memory) or the decoded uint8 images of ``--dataset folder`` — gathered by index and converted to
  a normalised float32 tensor per batch (:func:`noprop.data.datasets.normalise`, so a batch equals
  the same rows of the in-memory data set, bit for bit), then moved to the device.
* :class:`Augmented`: any source with ``--augment`` applied to every training batch on the device
  (:mod:`noprop.data.augment`); the random draws are a function of (seed, epoch, example), so a
  resumed run, a block-parallel rank and a data-parallel shard see the same augmented images.

Validation and test splits stay tensors (:func:`split_tensors` turns a source into one): inference
reads them in order, and the trainer's ``evaluate`` is unchanged. Prototype embeddings need a few
examples per class (:func:`class_examples`), not the whole split.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .augment import augment_batch
from .datasets import normalise

#: how a tensor of the split reaches the device (the task's ``to_device``: device and layout)
Place = Callable[[Tensor], Tensor]


def _stay(t: Tensor) -> Tensor:
    return t


class DataSource(ABC):
    """A training split read by index (module docstring)."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of examples."""

    @property
    @abstractmethod
    def labels(self) -> Tensor:
        """Every label of the split (int64, CPU): class counts, prototypes, ``--max-train-samples``."""

    @abstractmethod
    def gather(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Examples ``idx`` (positions in the split) as the model sees them, placed, untransformed."""

    @abstractmethod
    def placed(self, place: Place) -> DataSource:
        """This source with its batches delivered through ``place`` (device and memory layout)."""

    def batch(self, idx: Tensor, epoch: int) -> tuple[Tensor, Tensor]:
        """The training mini-batch ``idx`` of ``epoch`` (0-based; seeds random transforms)."""
        return self.gather(idx)

    def tensors(self) -> tuple[Tensor, Tensor]:
        """The whole split as tensors (validation and test; small splits)."""
        return self.gather(torch.arange(len(self)))


class TensorSource(DataSource):
    """In-memory tensors ``x`` (N, ...) and ``y`` (N, ...) (the default; module docstring)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def labels(self) -> Tensor:
        return self.y.cpu()

    def gather(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        idx = idx.to(self.x.device)
        return self.x[idx], self.y[idx]

    def placed(self, place: Place) -> TensorSource:
        return TensorSource(place(self.x), place(self.y))  # moved once, as Trainer.fit always did

    def tensors(self) -> tuple[Tensor, Tensor]:
        return self.x, self.y


class ArraySource(DataSource):
    """Rows ``rows`` of a NumPy array ``x`` (N, C, H, W) — memory-mapped or in memory — with labels
    ``y`` (N,); a batch is gathered, normalised as :func:`~noprop.data.datasets.normalise`
    (``(x · scale − mean) / std`` per channel, in float32) and placed."""

    def __init__(
        self,
        x: np.ndarray,
        y: Tensor,
        rows: np.ndarray,
        *,
        scale: float,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        place: Place = _stay,
    ) -> None:
        self.x, self.y, self.rows = x, y, np.asarray(rows, dtype=np.int64)
        self.scale, self.mean, self.std, self.place = scale, mean, std, place

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> Tensor:
        return self.y[torch.from_numpy(self.rows)]

    def gather(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        rows = self.rows[idx.cpu().numpy()]
        x = normalise(self.x[rows], self.scale, self.mean, self.std)  # one gather, one pass
        return self.place(x), self.place(self.y[torch.from_numpy(rows)])

    def placed(self, place: Place) -> ArraySource:
        return ArraySource(self.x, self.y, self.rows, scale=self.scale, mean=self.mean,
                           std=self.std, place=place)  # fmt: skip


class Augmented(DataSource):
    """``source`` with the random transforms ``ops`` (``crop``, ``flip``) applied to every training
    batch on the device, drawn from (``seed``, epoch, example position) (:mod:`~noprop.data.augment`)."""

    def __init__(self, source: DataSource, ops: tuple[str, ...], seed: int) -> None:
        self.source, self.ops, self.seed = source, ops, seed

    def __len__(self) -> int:
        return len(self.source)

    @property
    def labels(self) -> Tensor:
        return self.source.labels

    def gather(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        return self.source.gather(idx)

    def batch(self, idx: Tensor, epoch: int) -> tuple[Tensor, Tensor]:
        x, y = self.source.batch(idx, epoch)
        return augment_batch(x, idx.to(x.device), self.ops, self.seed, epoch), y

    def placed(self, place: Place) -> Augmented:
        return Augmented(self.source.placed(place), self.ops, self.seed)


#: what ``Trainer.fit`` and :class:`~noprop.data.datasets.DataSplits` take as a split
Split = tuple[Tensor, Tensor] | DataSource


def as_source(split: Split) -> DataSource:
    """A source of a split: tensors ``(x, y)`` become a :class:`TensorSource`."""
    return split if isinstance(split, DataSource) else TensorSource(*split)


def split_tensors(split: Split) -> tuple[Tensor, Tensor]:
    """A split as tensors ``(x, y)`` (a source is read whole)."""
    return split.tensors() if isinstance(split, DataSource) else split


def num_examples(split: Split) -> int:
    return len(split) if isinstance(split, DataSource) else int(split[0].shape[0])


def class_examples(
    split: Split, num_classes: int, *, max_per_class: int, seed: int
) -> tuple[Tensor, Tensor]:
    """The examples :func:`~noprop.models.embeddings.prototype_init` reads of a split: every class's
    examples, or a random ``max_per_class`` of a larger class, drawn exactly as it draws them, so the
    prototypes of a source equal those of the same data in memory. Tensors pass unchanged."""
    if not isinstance(split, DataSource):
        return split
    labels = split.labels
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for k in range(num_classes):
        idx = (labels == k).nonzero().flatten()
        if idx.numel() > max_per_class:
            idx = idx[torch.randperm(idx.numel(), generator=gen)[:max_per_class]]
        picked.append(idx)
    rows = torch.cat(picked) if picked else torch.zeros(0, dtype=torch.long)
    return split.gather(rows)
