"""Typed run configuration.

One frozen dataclass per component (data, model, method, training) nested into :class:`RunConfig`.
The CLI flags are generated from these fields (``--max-train-samples`` ↔ ``max_train_samples``), and the
resolved config is written to ``config.json`` in the run directory. Cross-field checks raise
:class:`~noprop.errors.ConfigError` naming the flag to change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

METHOD_NAMES = ("dt", "backprop", "ct", "fm", "adjoint")
ORDERS = ("blocks", "interleaved")
OPTIMIZERS = ("auto", "adamw", "adam")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: str = "digits"
    data_dir: str | None = None
    val_fraction: float = 0.1
    max_train_samples: int | None = None
    download: bool = True

    def __post_init__(self) -> None:
        from .data import DATASETS

        if self.dataset not in DATASETS:
            raise ConfigError(
                f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be in [0, 1) (got {self.val_fraction})")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ConfigError(f"--max-train-samples must be >= 1 (got {self.max_train_samples})")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    embedding: str = "one-hot"
    embed_dim: int = 20
    block: str = "auto"
    head: str = "softmax"
    posterior_sigma: float = 0.1

    def __post_init__(self) -> None:
        from .models import BLOCKS, EMBEDDINGS, HEADS

        for name, value, allowed in (
            ("embedding", self.embedding, EMBEDDINGS),
            ("block", self.block, BLOCKS),
            ("head", self.head, HEADS),
        ):
            if value not in allowed:
                raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.embed_dim < 1:
            raise ConfigError(f"--embed-dim must be >= 1 (got {self.embed_dim})")
        if self.posterior_sigma <= 0:
            raise ConfigError(f"--posterior-sigma must be > 0 (got {self.posterior_sigma})")


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    method: str = "dt"
    T: int = 10
    eta: float = 0.1
    cosine_s: float = 0.008
    alpha_bar_min: float = 1e-4
    alpha_bar_max: float = 0.999

    def __post_init__(self) -> None:
        if self.method not in METHOD_NAMES:
            raise ConfigError(
                f"unknown method {self.method!r}; choose one of {', '.join(METHOD_NAMES)}"
            )
        if self.T < 1:
            raise ConfigError(f"--T must be >= 1 (got {self.T})")
        if self.eta <= 0:
            raise ConfigError(f"--eta must be > 0 (got {self.eta})")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-3
    optimizer: str = "auto"
    order: str = "blocks"
    seed: int = 0
    device: str = "auto"
    patience: int | None = None
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1 (got {self.batch_size})")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0 (got {self.lr})")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0 (got {self.weight_decay})")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        if self.order not in ORDERS:
            raise ConfigError(f"unknown order {self.order!r}; choose one of {', '.join(ORDERS)}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"--patience must be >= 1 (got {self.patience})")
        if self.eval_batch_size < 1:
            raise ConfigError(f"--eval-batch-size must be >= 1 (got {self.eval_batch_size})")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        kwargs = {}
        for name, section_cls in zip(SECTION_NAMES, SECTIONS, strict=True):
            values = dict(d.get(name, {}))
            known = {f.name for f in dataclasses.fields(section_cls)}
            unknown = set(values) - known
            if unknown:
                raise ConfigError(f"config section {name!r} has unknown keys {sorted(unknown)}")
            kwargs[name] = section_cls(**values)
        return cls(**kwargs)

    def replace(self, **flat: Any) -> RunConfig:
        """Copy with leaf fields replaced by flat name (e.g. ``epochs=3``)."""
        parts = {}
        for name, section_cls in zip(SECTION_NAMES, SECTIONS, strict=True):
            section = getattr(self, name)
            own = {
                k: v
                for k, v in flat.items()
                if k in {f.name for f in dataclasses.fields(section_cls)}
            }
            parts[name] = dataclasses.replace(section, **own)
        leftover = set(flat) - {f.name for s in SECTIONS for f in dataclasses.fields(s)}
        if leftover:
            raise ConfigError(f"unknown config fields {sorted(leftover)}")
        return RunConfig(**parts)

    def flat(self) -> dict[str, Any]:
        return {k: v for section in self.to_dict().values() for k, v in section.items()}


SECTIONS = (DataConfig, ModelConfig, MethodConfig, TrainConfig)
SECTION_NAMES = ("data", "model", "method", "train")


def make_config(**flat: Any) -> RunConfig:
    """Build a :class:`RunConfig` from flat field names, e.g. ``make_config(dataset="mnist", T=10)``."""
    return RunConfig().replace(**flat)


def paper_mnist_dt(**overrides: Any) -> RunConfig:
    """The paper's MNIST NoProp-DT setting (Table 3): T=10, η=0.1, AdamW 1e-3, wd 1e-3, batch 128, 100 epochs."""
    return make_config(dataset="mnist", method="dt", epochs=100, **overrides)
