"""Typed run configuration.

One frozen dataclass per component (data, model, method, training) nested into :class:`RunConfig`.
The CLI flags are generated from these fields (``--max-train-samples`` ↔ ``max_train_samples``), and the
resolved config is written to ``config.json`` in the run directory. Cross-field checks raise
:class:`~noprop.errors.ConfigError` naming the flag to change.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

HEAD_INITS = ("readout", "default")
METHOD_NAMES = ("dt", "backprop", "ct", "fm", "adjoint")
ORDERS = ("blocks", "interleaved")
OPTIMIZERS = ("auto", "adamw", "adam")
# --parallel (parallel/): none, block-parallel DT under torchrun, the fused vmap step of DT (one
# process), data parallelism under torchrun (every method)
PARALLEL_MODES = ("none", "blocks", "fused", "data")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(name: str) -> None:
    """``--device`` must be auto, cpu, cuda or cuda:N (other torch devices are not supported)."""
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name):
        raise ConfigError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N")


def _positive(flag: str, value: float) -> None:
    """A finite number > 0 (NaN and inf are refused)."""
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"--{flag} must be a finite number > 0 (got {value})")


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
    head_init: str = "readout"

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
        _positive("posterior-sigma", self.posterior_sigma)
        if self.head_init not in HEAD_INITS:
            raise ConfigError(
                f"unknown head_init {self.head_init!r}; choose one of {', '.join(HEAD_INITS)}"
            )


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    method: str = "dt"
    T: int = 10
    # η of Eqs. 8/9; None = the method's Table 3 value (DT 0.1, CT 1). FM/backprop/adjoint have no η.
    eta: float | None = None
    cosine_s: float = 0.008
    alpha_bar_min: float = 1e-4
    alpha_bar_max: float = 0.999
    # Continuous-time methods (ct, fm, adjoint): inference grid and scheme (solvers.py; "ancestral"
    # is CT's stochastic a/b/c sampler), CT's learned schedule (schedules_ct.py: initial γ(1), γ(0),
    # hidden width of γ̃), FM's path noise σ, and the adjoint baseline's training grid.
    inference_steps: int = 1000
    solver: str | None = None  # None: ancestral for ct, euler for fm/adjoint
    gamma_min: float = -3.0
    gamma_max: float = 3.0
    gamma_width: int = 64
    fm_sigma: float = 0.0
    # ct/fm: independent (t, z_t) draws per image in each training step, sharing its image features
    # (ContinuousTimeMethod.sample_times); 8 chosen on MNIST validation accuracy (BENCHMARKS.md)
    t_samples: int = 8
    adjoint_steps: int = 1000

    def __post_init__(self) -> None:
        if self.method not in METHOD_NAMES:
            raise ConfigError(
                f"unknown method {self.method!r}; choose one of {', '.join(METHOD_NAMES)}"
            )
        if self.T < 1:
            raise ConfigError(f"--T must be >= 1 (got {self.T})")
        if self.eta is not None:
            _positive("eta", self.eta)
        self._check_continuous_time()
        if not (self.cosine_s >= 0 and math.isfinite(self.cosine_s)):
            raise ConfigError(f"--cosine-s must be a finite number >= 0 (got {self.cosine_s})")
        if not 0.0 < self.alpha_bar_min < self.alpha_bar_max < 1.0:
            raise ConfigError(
                "need 0 < --alpha-bar-min < --alpha-bar-max < 1 "
                f"(got {self.alpha_bar_min}, {self.alpha_bar_max})"
            )

    def _check_continuous_time(self) -> None:
        from .solvers import SOLVER_NAMES, STOCHASTIC

        if self.inference_steps < 1:
            raise ConfigError(f"--inference-steps must be >= 1 (got {self.inference_steps})")
        if self.adjoint_steps < 1:
            raise ConfigError(f"--adjoint-steps must be >= 1 (got {self.adjoint_steps})")
        if self.solver is None:
            pass
        elif self.solver not in SOLVER_NAMES:
            raise ConfigError(
                f"unknown --solver {self.solver!r}; choose one of {', '.join(SOLVER_NAMES)}"
            )
        if self.solver in STOCHASTIC and self.method != "ct":
            raise ConfigError(
                f"--solver {self.solver} is NoProp-CT's sampler; use it with --method ct"
            )
        if not (math.isfinite(self.gamma_min) and math.isfinite(self.gamma_max)):
            raise ConfigError("--gamma-min and --gamma-max must be finite")
        if not self.gamma_min < self.gamma_max:
            raise ConfigError(
                f"need --gamma-min < --gamma-max (got {self.gamma_min}, {self.gamma_max})"
            )
        if self.gamma_width < 1:
            raise ConfigError(f"--gamma-width must be >= 1 (got {self.gamma_width})")
        if self.t_samples < 1:
            raise ConfigError(f"--t-samples must be >= 1 (got {self.t_samples})")
        if not (self.fm_sigma >= 0 and math.isfinite(self.fm_sigma)):
            raise ConfigError(f"--fm-sigma must be a finite number >= 0 (got {self.fm_sigma})")


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
    channels_last: bool = True
    offload_blocks: bool = False
    parallel: str = "none"
    dist_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1 (got {self.batch_size})")
        _positive("lr", self.lr)
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(
                f"--weight-decay must be a finite number >= 0 (got {self.weight_decay})"
            )
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0 (got {self.seed})")
        check_device(self.device)
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
        if self.parallel not in PARALLEL_MODES:
            raise ConfigError(
                f"unknown --parallel {self.parallel!r}; choose one of {', '.join(PARALLEL_MODES)}"
            )
        _positive("dist-timeout-s", self.dist_timeout_s)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        parallel, method = self.train.parallel, self.method.method
        if parallel in ("blocks", "fused") and method != "dt":
            raise ConfigError(
                f"--parallel {parallel} splits NoProp-DT's T blocks, but --method {method} trains "
                "one network; use --parallel data (or none)"
            )
        if self.train.offload_blocks and (self.train.order != "blocks" or method != "dt"):
            raise ConfigError(
                "--offload-blocks keeps one NoProp-DT block on the accelerator at a time; it needs "
                "--method dt and --order blocks"
            )
        if parallel == "fused" and self.train.order != "interleaved":
            raise ConfigError(
                "--parallel fused trains every block on the same mini-batch, which is "
                "--order interleaved; add --order interleaved"
            )

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
