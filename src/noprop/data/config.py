"""Which data set a run reads, and how it is split."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..options import at_least
from .augment import parse_augment
from .datasets import USER_DATASETS
from .registry import is_text, task_kind


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: str = "digits"
    """images: digits (bundled, offline), mnist, fashion-mnist, kmnist, cifar10, cifar100; your own
    images: folder (--data-dir DIR with one sub-directory of PNG/JPEG files per class), npy (--data-dir
    DIR with x_train.npy, y_train.npy [, x_test.npy, y_test.npy], memory-mapped); text (next-byte
    prediction): stdlib (bundled: this Python's standard library source), text (--data-dir FILE or
    directory of .txt files), tiny-shakespeare"""
    data_dir: str | None = None
    """directory holding the data set files (train downloads them there when missing and online;
    reading a run, e.g. eval, never creates or downloads into it)"""
    val_fraction: float = 0.1
    """fraction of the training set held out for model selection"""
    max_train_samples: int | None = None
    """use at most N training examples (after the validation split)"""
    download: bool = True
    """download missing data files (default on; --no-download to forbid)"""
    context: int = 128
    """text: bytes of context per window (every position is a next-byte target)"""
    augment: str = "none"
    """images: random augmentation of every training batch, on the device: none, crop (shift by up
    to 4 pixels, zero padding), flip (horizontal) or crop,flip; seeded by --seed, epoch and example"""

    def __post_init__(self) -> None:
        task_kind(self.dataset)  # a known data set
        if self.dataset in USER_DATASETS and not self.data_dir:
            raise ConfigError(f"--dataset {self.dataset} reads your own data: give --data-dir DIR")
        ops = parse_augment(self.augment)
        if ops and is_text(self.dataset):
            raise ConfigError(
                f"--augment {self.augment} transforms images; --dataset {self.dataset} is text"
            )
        object.__setattr__(self, "augment", ",".join(ops) or "none")  # canonical: crop,flip
        at_least("context", self.context)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be in [0, 1) (got {self.val_fraction})")
        if self.max_train_samples is not None:
            at_least("max_train_samples", self.max_train_samples)
