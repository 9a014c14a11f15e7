"""Step functions: one optimiser update of a :class:`~noprop.training.order.Step`'s units.

A step function receives the batch and the step and returns ``[(unit, loss parts), ...]`` for the units
it trained. :class:`LocalStep` is the sequential one (one unit and the shared parameters); the
gradient-synchronised step of parallel ranks and the fused vmap step live in :mod:`noprop.parallel`.
A step function that keeps its own copy of the parameters (fused) writes them back in
:meth:`StepFunction.sync_modules` and converts optimiser states in ``state_dict``/``load_state_dict``.

Optimisers ([I], the paper does not say): one optimiser per unit (θ_t), created once and kept across
epochs, plus one optimiser for the shared parameters (head θ_out, a learned W_Embed), stepped on every
step. Each step therefore updates θ_t, θ_out and W_Embed only — exactly Algorithm 1's update line.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import DivergenceError
from ..methods.base import Method
from .config import TrainConfig
from .order import Step

Parts = dict[str, Tensor]


def make_optimizer(name: str, params: list[Tensor], lr: float, weight_decay: float):
    """AdamW (decoupled decay) or Adam (L2-coupled decay, the literal reading for CT/FM, spec §4)."""
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if params and params[0].device.type == "cpu":
        kwargs["foreach"] = True
    return cls(params, **kwargs)


#: ``--lr-schedule cosine`` ends at this fraction of ``--lr``
FINAL_LR_FRACTION = 0.1


def cosine_factor(done: int, total: int | None) -> float:
    """lr / --lr after ``done`` of ``total`` steps: 1 → FINAL_LR_FRACTION along half a cosine."""
    if not total:
        return 1.0
    progress = min(done / total, 1.0)
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


class Optimizers:
    """One optimiser per unit plus one for the shared parameters (None when there are none).

    ``--lr-schedule cosine`` ([I], not the paper's): before each step the unit's learning rate is set
    from the steps *that unit* has taken (so under Algorithm 1 every block decays over its own phase)
    and the shared optimiser's from all steps taken; the step counts are saved with the optimisers,
    so a resumed run continues the schedule. :meth:`set_horizon` gives the totals (Trainer.fit).
    """

    def __init__(self, method: Method, cfg: TrainConfig) -> None:
        self.name = method.default_optimizer if cfg.optimizer == "auto" else cfg.optimizer
        self.lr, self.weight_decay = cfg.lr, cfg.weight_decay
        self.schedule = cfg.lr_schedule
        self.units = [self.make(method.unit_parameters(u)) for u in range(method.num_units)]
        shared = method.shared_parameters()
        self.shared = self.make(shared) if shared else None
        self.unit_steps = [0] * len(self.units)
        self.shared_steps = 0
        self.unit_horizon: int | None = None
        self.shared_horizon: int | None = None

    def set_horizon(self, unit_steps: int, shared_steps: int) -> None:
        """Total steps of one unit and of the shared optimiser over the whole run."""
        self.unit_horizon, self.shared_horizon = unit_steps, shared_steps

    def _set_lr(self, opt: torch.optim.Optimizer, done: int, total: int | None) -> None:
        lr = self.lr * cosine_factor(done, total)
        for group in opt.param_groups:
            group["lr"] = lr

    def make(self, params: list[Tensor]) -> torch.optim.Optimizer:
        return make_optimizer(self.name, params, self.lr, self.weight_decay)

    def zero_grad(self, unit: int | None) -> None:
        if unit is not None:
            self.units[unit].zero_grad(set_to_none=True)
        if self.shared is not None:
            self.shared.zero_grad(set_to_none=True)

    def step(self, unit: int | None) -> None:
        cosine = self.schedule == "cosine"
        if unit is not None:
            if cosine:
                self._set_lr(self.units[unit], self.unit_steps[unit], self.unit_horizon)
            self.units[unit].step()
            self.unit_steps[unit] += 1
        if self.shared is not None:
            if cosine:
                self._set_lr(self.shared, self.shared_steps, self.shared_horizon)
            self.shared.step()
        self.shared_steps += 1

    def state_dict(self) -> dict[str, Any]:
        sd: dict[str, Any] = {
            "optimizers": [o.state_dict() for o in self.units],
            "shared_optimizer": None if self.shared is None else self.shared.state_dict(),
        }
        if self.schedule != "constant":  # checkpoints of constant-lr runs keep their 0.1 layout
            sd["schedule_steps"] = {"units": list(self.unit_steps), "shared": self.shared_steps}
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        for opt, osd in zip(self.units, sd["optimizers"], strict=True):
            opt.load_state_dict(osd)
        if self.shared is not None and sd.get("shared_optimizer") is not None:
            self.shared.load_state_dict(sd["shared_optimizer"])
        steps = sd.get("schedule_steps")
        if steps is not None:
            self.unit_steps, self.shared_steps = list(steps["units"]), int(steps["shared"])


def grads_finite(method: Method, unit: int) -> bool:
    """Whether every gradient of ``unit`` and of the shared parameters is finite."""
    params = method.unit_parameters(unit) + method.shared_parameters()
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())


def where(unit: int, epoch: int) -> str:
    return f"in unit {unit} (block {unit + 1}) at epoch {epoch + 1}"


class StepFunction:
    """Base of the step functions (see module docstring); subclasses implement ``__call__``."""

    def __init__(self, method: Method, optimizers: Optimizers) -> None:
        self.method, self.optimizers = method, optimizers

    def __call__(self, x: Tensor, y: Tensor, step: Step, epoch: int) -> list[tuple[int, Parts]]:
        raise NotImplementedError

    def sync_modules(self) -> None:
        """Make the method's modules hold the current parameters (no-op unless kept elsewhere)."""

    def state_dict(self) -> dict[str, Any]:
        return self.optimizers.state_dict()

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.optimizers.load_state_dict(sd)


class LocalStep(StepFunction):
    """One optimiser step of one unit (and the shared parameters) on one mini-batch."""

    def __call__(self, x: Tensor, y: Tensor, step: Step, epoch: int) -> list[tuple[int, Parts]]:
        (unit,) = step.units
        self.optimizers.zero_grad(unit)
        loss, parts = self.method.loss(x, y, unit)
        if not torch.isfinite(loss):
            raise DivergenceError(f"loss became {loss.item()} {where(unit, epoch)}")
        loss.backward()
        # a finite loss can still give inf/NaN gradients; name the block before they reach θ
        if not grads_finite(self.method, unit):
            raise DivergenceError(f"gradient became NaN or infinite {where(unit, epoch)}")
        self.optimizers.step(unit)
        return [(unit, parts)]
