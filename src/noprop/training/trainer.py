"""The training loop: a thin loop over a method's units, with per-unit optimisers.

Order (``--order``):
* ``blocks`` (default, Algorithm 1): for each unit (block t), a full pass over the shuffled training set.
  One DT epoch is therefore T passes over the data.
* ``interleaved``: for each mini-batch, one step of every unit in turn.

Optimisers ([I], the paper does not say): one optimiser per unit (θ_t), created once and kept across
epochs, plus one optimiser for the shared parameters (head θ_out, a learned W_Embed), stepped on every
step. Each step therefore updates θ_t, θ_out and W_Embed only — exactly Algorithm 1's update line.

Randomness: before each (epoch, unit) pass the global torch RNG is seeded from (seed, epoch, unit), and
the pass's shuffle uses a generator seeded the same way. A pass is therefore reproducible on its own,
which makes resume exact and lets block-parallel training reproduce sequential training block by block.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config import RunConfig
from ..errors import DivergenceError
from ..methods.base import Method


def derive_seed(seed: int, epoch: int, unit: int) -> int:
    """A distinct, reproducible seed for one (epoch, unit) pass."""
    return (seed * 1_000_003 + epoch * 10_007 + unit * 101 + 17) % (2**62)


def pick_device(name: str) -> torch.device:
    from ..errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but CUDA is not available")
    return device


def make_optimizer(name: str, params: list[Tensor], lr: float, weight_decay: float):
    """AdamW (decoupled decay) or Adam (L2-coupled decay, the literal reading for CT/FM, spec §4)."""
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if params and params[0].device.type == "cpu":
        kwargs["foreach"] = True
    return cls(params, **kwargs)


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Shuffled index batches; a final batch of one example is dropped (BatchNorm needs two)."""
    perm = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        if idx.numel() > 1 or n == 1:
            yield idx


@dataclass
class TrainState:
    """Counters saved in the checkpoint (everything else is derived from them)."""

    epoch: int = 0
    train_seconds: float = 0.0
    data_passes: float = 0.0
    best_val: float = -1.0
    best_epoch: int = 0


class Trainer:
    """Trains a :class:`Method` on in-memory tensors; I/O is delegated to ``on_epoch``."""

    def __init__(
        self,
        method: Method,
        cfg: RunConfig,
        device: torch.device,
        *,
        progress: bool = True,
        units: Sequence[int] | None = None,
    ) -> None:
        self.method = method.to(device)
        # the units this trainer steps (default all; a block-parallel rank trains its own, parallel/)
        self.units = list(range(method.num_units)) if units is None else list(units)
        if cfg.train.channels_last:
            # NHWC is 1.2-1.4x faster for the Fig. 6 convolutions on CPU and 10x for max-pool
            self.method.to(memory_format=torch.channels_last)
        self.cfg = cfg
        self.device = device
        self.progress = progress
        t = cfg.train
        opt = method.default_optimizer if t.optimizer == "auto" else t.optimizer
        self.optimizers = [
            make_optimizer(opt, method.unit_parameters(u), t.lr, t.weight_decay)
            for u in range(method.num_units)
        ]
        shared = method.shared_parameters()
        self.shared_optimizer = (
            make_optimizer(opt, shared, t.lr, t.weight_decay) if shared else None
        )
        self.state = TrainState()
        self.offloader = None
        if t.offload_blocks:
            from .offload import BlockOffloader

            units_modules = [method.unit_modules(u) for u in range(method.num_units)]
            self.offloader = BlockOffloader(units_modules, self.optimizers, device)
        self.best_model: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ steps
    def step(self, x: Tensor, y: Tensor, unit: int) -> dict[str, Tensor]:
        """One optimiser step of ``unit`` (and the shared parameters) on one mini-batch."""
        opt = self.optimizers[unit]
        opt.zero_grad(set_to_none=True)
        if self.shared_optimizer is not None:
            self.shared_optimizer.zero_grad(set_to_none=True)
        loss, parts = self.method.loss(x, y, unit)
        if not torch.isfinite(loss):
            raise DivergenceError(
                f"loss became {loss.item()} in unit {unit} (block {unit + 1}) at epoch "
                f"{self.state.epoch + 1}"
            )
        loss.backward()
        self._check_gradients(unit)
        opt.step()
        if self.shared_optimizer is not None:
            self.shared_optimizer.step()
        return parts

    def _check_gradients(self, unit: int) -> None:
        """A finite loss can still give inf/NaN gradients; name the block before they reach θ."""
        params = self.method.unit_parameters(unit) + self.method.shared_parameters()
        grads = [p.grad for p in params if p.grad is not None]
        if grads and not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            raise DivergenceError(
                f"gradient became NaN or infinite in unit {unit} (block {unit + 1}) at epoch "
                f"{self.state.epoch + 1}"
            )

    def _units_and_batches(self, n: int, epoch: int) -> Iterator[tuple[int, Tensor]]:
        bs, seed, units = self.cfg.train.batch_size, self.cfg.train.seed, self.units
        if self.cfg.train.order == "blocks":
            for unit in units:
                if self.offloader is not None and unit is not None:
                    self.offloader.activate(unit)
                torch.manual_seed(derive_seed(seed, epoch, unit))
                gen = torch.Generator().manual_seed(derive_seed(seed, epoch, unit))
                for idx in batches(n, bs, gen):
                    yield unit, idx
        else:
            torch.manual_seed(derive_seed(seed, epoch, -1))
            gen = torch.Generator().manual_seed(derive_seed(seed, epoch, -1))
            for idx in batches(n, bs, gen):
                for unit in units:
                    yield unit, idx

    def train_epoch(self, x: Tensor, y: Tensor, epoch: int) -> dict[str, list[float | None]]:
        """One epoch (``epoch`` is 0-based); returns the mean of each loss part per unit (None for
        a unit this trainer does not train). A ``None`` unit from ``_units_and_batches`` is an idle
        step of a parallel rank (parallel/block_trainer.py): stepped, not counted."""
        from tqdm.auto import tqdm

        self.method.train()
        units, n = self.method.num_units, x.shape[0]
        per_pass = math.ceil(n / self.cfg.train.batch_size)
        sums: list[dict[str, Tensor]] = [{} for _ in range(units)]
        counts = [0] * units
        bar = tqdm(
            total=per_pass * len(self.units),
            desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
            disable=not self.progress,
            leave=False,
            mininterval=1.0,
        )
        for i, (unit, idx) in enumerate(self._units_and_batches(n, epoch)):
            idx = idx.to(self.device)
            parts = self.step(x[idx], y[idx], unit)
            if unit is not None:
                for k, v in parts.items():
                    sums[unit][k] = sums[unit].get(k, 0.0) + v
                counts[unit] += 1
            bar.update()
            if self.progress and i % 50 == 0 and unit is not None:
                bar.set_postfix(block=unit + 1, loss=f"{float(parts['loss']):.4f}")
        bar.close()
        keys = sorted({k for s in sums for k in s})
        return {
            k: [float(s[k]) / c if c else None for s, c in zip(sums, counts, strict=True)]
            for k in keys
        }

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(
        self, x: Tensor, y: Tensor, *, deterministic: bool = False, seed: int = 0
    ) -> dict[str, Any]:
        """Accuracy of the final prediction and of the read-out after every inference step."""
        if self.offloader is not None:
            self.offloader.gather()
        result = evaluate(self.method, x, y, self.cfg.train.eval_batch_size, deterministic, seed)
        if self.offloader is not None:
            self.offloader.scatter()
        return result

    def to_device(self, t: Tensor) -> Tensor:
        t = t.to(self.device)
        if self.cfg.train.channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    # ------------------------------------------------------------------- fit
    def fit(
        self,
        train: tuple[Tensor, Tensor],
        val: tuple[Tensor, Tensor],
        on_epoch: Callable[[Trainer, dict[str, Any]], None] | None = None,
    ) -> None:
        """Train from ``state.epoch`` to ``cfg.train.epochs`` with validation-based model selection."""
        x, y = (self.to_device(t) for t in train)
        xv, yv = (self.to_device(t) for t in val)
        cfg = self.cfg.train
        passes_per_epoch = float(self.method.num_units)
        while self.state.epoch < cfg.epochs:
            epoch = self.state.epoch
            start = time.perf_counter()
            losses = self.train_epoch(x, y, epoch)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            self.state.epoch += 1
            self.state.train_seconds += seconds
            self.state.data_passes += passes_per_epoch
            record: dict[str, Any] = {
                "epoch": self.state.epoch,
                "block_loss": losses.get("loss", []),
                **{f"block_{k}": v for k, v in losses.items() if k != "loss"},
                "epoch_seconds": round(seconds, 3),
                "wall_seconds": round(self.state.train_seconds, 3),
                "data_passes": self.state.data_passes,
            }
            if xv.shape[0] > 0:
                ev = self.evaluate(xv, yv, seed=derive_seed(cfg.seed, epoch, -2))
                record["val_accuracy"] = ev["accuracy"]
                record["val_accuracy_per_step"] = ev["accuracy_per_step"]
                improved = ev["accuracy"] > self.state.best_val
            else:
                improved = True  # no validation split: the last epoch is the selected model
            if improved:
                self.state.best_val = record.get("val_accuracy", -1.0)
                self.state.best_epoch = self.state.epoch
                self.best_model = {
                    k: v.detach().cpu().clone() for k, v in self.method.state_dict().items()
                }
            if on_epoch is not None:
                on_epoch(self, record)
            if (
                cfg.patience is not None
                and self.state.epoch - self.state.best_epoch >= cfg.patience
            ):
                break
        if self.offloader is not None:
            self.offloader.gather()  # the caller evaluates and saves the whole model next

    # ------------------------------------------------------------ state dict
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": {k: v.detach().cpu() for k, v in self.method.state_dict().items()},
            "best_model": self.best_model,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "shared_optimizer": None
            if self.shared_optimizer is None
            else self.shared_optimizer.state_dict(),
            "train_state": dict(vars(self.state)),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.method.load_state_dict(sd["model"])
        self.best_model = sd.get("best_model")
        for opt, osd in zip(self.optimizers, sd["optimizers"], strict=True):
            opt.load_state_dict(osd)
        if self.shared_optimizer is not None and sd.get("shared_optimizer") is not None:
            self.shared_optimizer.load_state_dict(sd["shared_optimizer"])
        self.state = TrainState(**sd["train_state"])


@torch.no_grad()
def evaluate(
    method: Method,
    x: Tensor,
    y: Tensor,
    batch_size: int = 1000,
    deterministic: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Run inference on (x, y) in batches; accuracy overall and after each step (readout of z_t)."""
    was_training = method.training
    method.eval()
    devrng = torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else [])
    with devrng:
        torch.manual_seed(seed)
        correct_steps: Tensor | None = None
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            logits = method.predict_steps(xb, deterministic=deterministic)  # (S, B, m)
            hits = (logits.argmax(-1) == yb).sum(-1)
            correct_steps = hits if correct_steps is None else correct_steps + hits
    method.train(was_training)
    assert correct_steps is not None
    per_step = (correct_steps.double() / x.shape[0]).tolist()
    return {"accuracy": per_step[-1], "accuracy_per_step": per_step}
