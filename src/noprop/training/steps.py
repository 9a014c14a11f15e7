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
from ..precision import autocast, uses_scaler
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

    def step(self, unit: int | None, *, shared: bool = True) -> None:
        """Step ``unit``'s optimiser (None: none) and, unless ``shared`` is False, the shared one."""
        cosine = self.schedule == "cosine"
        if unit is not None:
            if cosine:
                self._set_lr(self.units[unit], self.unit_steps[unit], self.unit_horizon)
            self.units[unit].step()
            self.unit_steps[unit] += 1
        if not shared:
            return
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
    return params_finite(method.unit_parameters(unit) + method.shared_parameters())


def params_finite(params: list[Tensor]) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())


def _which(units: tuple[int, ...], flags: Tensor) -> list[int]:
    return [u for u, f in zip(units, flags.tolist(), strict=True) if f]


def where(unit: int, epoch: int) -> str:
    return f"in unit {unit} (block {unit + 1}) at epoch {epoch + 1}"


#: ``--precision 16-mixed``: this many consecutive overflowing steps of one unit are divergence
#: ([I]: GradScaler halves the scale on every overflow, so after 30 the initial 2^16 is 2^-14 —
#: gradients that overflow float16 at such a scale are not an overflow but a diverged block)
MAX_FAILING_STEPS = 30


class StepFunction:
    """One optimiser step of a :class:`Step`'s units: the template every layout shares.

    ``__call__`` is the whole step, written once: zero the gradients → the units' losses (the networks
    under the precision's autocast, :mod:`noprop.precision`) → the finiteness check of the losses →
    backward (scaled under ``16-mixed``) → unscale and check the gradients → :meth:`reduce` (the
    parallel layouts' gradient collective) → the optimiser steps. A layout customises only its hooks:
    :meth:`losses` (one float32 loss per unit), :meth:`reduce`, the optimisers it steps
    (:meth:`optimizers_of`, :meth:`apply`) and how a failure is reported (:meth:`diverged`).

    Finiteness policy. Under ``32`` and ``bf16-mixed`` a non-finite loss or gradient is divergence
    (DivergenceError naming the block). Under ``16-mixed`` it is what loss scaling produces on purpose:
    the unit's step is skipped, its scaler halves the scale, the skip is counted (``skipped_steps`` in
    metrics.jsonl), and only :data:`MAX_FAILING_STEPS` consecutive skips of one unit are divergence.
    """

    def __init__(self, method: Method, optimizers: Optimizers, precision: str = "32") -> None:
        self.method, self.optimizers = method, optimizers
        self.precision = precision
        p = next(method.parameters(), None)
        self.device = p.device if p is not None else torch.device("cpu")
        n = method.num_units
        # one scaler per unit (blocks are independent: one block's overflow keeps the others' scale)
        self.scalers = (
            [torch.amp.GradScaler(self.device.type) for _ in range(self.num_scalers())]
            if uses_scaler(precision)
            else None
        )
        self.skipped = [0] * n  # skipped steps per unit since the last take_skipped()
        self.taken = [0] * n  # steps per unit (skipped included) since the last take_skipped()
        self.failing = [0] * n  # consecutive skipped steps per unit
        self._unit_buffers: dict[int, list[Tensor]] = {}

    def num_scalers(self) -> int:
        return self.method.num_units

    # ------------------------------------------------------------ hooks
    def units_of(self, step: Step) -> tuple[int, ...]:
        """The units this process trains at ``step``."""
        return tuple(step.units)

    def losses(self, x: Tensor, y: Tensor, units: tuple[int, ...]) -> tuple[Tensor, list[Parts]]:
        """One loss per unit (k,) and each unit's loss parts; runs under autocast."""
        (unit,) = units
        loss, parts = self.method.loss(x, y, unit)
        return loss.reshape(1), [parts]

    def optimizers_of(self, unit: int) -> list[torch.optim.Optimizer]:
        """The optimisers whose gradients ``unit``'s backward writes (unscaled by its scaler)."""
        shared = [] if self.optimizers.shared is None else [self.optimizers.shared]
        return [self.optimizers.units[unit], *shared]

    def scaler_of(self, unit: int) -> torch.amp.GradScaler:
        assert self.scalers is not None
        return self.scalers[unit]

    def grads_ok(self, units: tuple[int, ...]) -> Tensor:
        """Per unit: its gradients (and the shared ones) are finite, after unscaling."""
        return torch.tensor([grads_finite(self.method, u) for u in units], dtype=torch.bool)

    def reduce(
        self, units: tuple[int, ...], bad: Tensor, give_up: Tensor, step: Step, epoch: int
    ) -> Tensor:
        """Combine the step across processes; returns the units' ``bad`` flags every process agrees
        on (default: one process, nothing to combine). Raises DivergenceError on a give-up."""
        if give_up.any():
            self.give_up([u for u, g in zip(units, give_up.tolist(), strict=True) if g], epoch)
        return bad

    def apply(self, units: tuple[int, ...], ok: Tensor) -> None:
        """The optimiser steps of the units that may step (and the shared parameters)."""
        for unit, good in zip(units, ok.tolist(), strict=True):
            if good:
                self.optimizers.step(unit)

    def diverged(self, units: list[int], what: str, epoch: int, losses: Tensor | None) -> None:
        """Raise the layout's DivergenceError for ``units`` (``what``: loss or gradient)."""
        unit = units[0]
        if what == "loss" and losses is not None:
            raise DivergenceError(f"loss became {losses[0].item()} {where(unit, epoch)}")
        raise DivergenceError(f"{what} became NaN or infinite {where(unit, epoch)}")

    # ---------------------------------------------------------- template
    def zero_grad(self, units: tuple[int, ...]) -> None:
        if units:
            for unit in units:
                self.optimizers.units[unit].zero_grad(set_to_none=True)
        if self.optimizers.shared is not None:
            self.optimizers.shared.zero_grad(set_to_none=True)

    def __call__(self, x: Tensor, y: Tensor, step: Step, epoch: int) -> list[tuple[int, Parts]]:
        units = self.units_of(step)
        self.zero_grad(units)
        tolerant = self.scalers is not None
        losses: Tensor | None = None
        parts: list[Parts] = []
        bad = torch.zeros(len(units), dtype=torch.bool)
        # 16-mixed: a skipped step must leave the model as it was, but its forward pass has already
        # moved BatchNorm's running statistics (possibly to inf): keep them to put back
        kept = self.keep_buffers(units) if tolerant and units else None
        if units:
            with autocast(self.precision, self.device):
                losses, parts = self.losses(x, y, units)
            losses = losses.float()  # the cast boundary's exit: checks and backward in float32
            bad = ~torch.isfinite(losses).cpu()
            if bad.any():
                if not tolerant:
                    self.diverged(_which(units, bad), "loss", epoch, losses)
            else:
                self.backward(losses, units)
                bad = ~self.grads_ok(units)
                if bad.any() and not tolerant:
                    self.diverged(_which(units, bad), "gradient", epoch, None)
        # a failure that ends the run: any, unless 16-mixed; there, too many in a row
        give_up = (
            torch.tensor([b and self.failing[u] + 1 >= MAX_FAILING_STEPS for u, b in
                          zip(units, bad.tolist(), strict=True)], dtype=torch.bool)
            if tolerant
            else bad.clone()
        )  # fmt: skip
        bad = self.reduce(units, bad, give_up, step, epoch)
        ok = ~bad
        if kept is not None and bool(bad.any()):
            self.restore_buffers(kept, _which(units, bad))
        self.apply(units, ok)
        self._account(units, ok)
        return [(u, p) for u, p, good in zip(units, parts, ok.tolist(), strict=True) if good]

    def buffers_of(self, unit: int) -> list[Tensor]:
        """The buffers ``unit``'s forward pass may change (its modules' floating-point ones, e.g.
        BatchNorm's running statistics; the shared modules' are not: [I] a skipped step restores a
        unit's own state, and the shared head/embedding hold no running statistics in noprop)."""
        if unit not in self._unit_buffers:
            seen: dict[int, Tensor] = {}
            for module in self.method.unit_modules(unit):
                for b in module.buffers():
                    if b.is_floating_point():
                        seen.setdefault(id(b), b)
            self._unit_buffers[unit] = list(seen.values())
        return self._unit_buffers[unit]

    def keep_buffers(self, units: tuple[int, ...]) -> dict[int, list[Tensor]]:
        """Copies of the units' :meth:`buffers_of`, taken before the forward pass."""
        return {u: [b.detach().clone() for b in self.buffers_of(u)] for u in units}

    @torch.no_grad()
    def restore_buffers(self, kept: dict[int, list[Tensor]], units: list[int]) -> None:
        """Put the skipped units' buffers back as :meth:`keep_buffers` found them."""
        for u in units:
            for b, old in zip(self.buffers_of(u), kept[u], strict=True):
                b.copy_(old)

    def backward(self, losses: Tensor, units: tuple[int, ...]) -> None:
        """Backward of the units' losses; under 16-mixed each scaled by its unit's scaler and the
        gradients unscaled in place afterwards (before any check, collective or step reads them)."""
        if self.scalers is None:
            (losses[0] if losses.numel() == 1 else losses.sum()).backward()
            return
        scaled = [self.scaler_of(u).scale(losses[i]) for i, u in enumerate(units)]
        (scaled[0] if len(scaled) == 1 else torch.stack(scaled).sum()).backward()
        done: set[tuple[int, int]] = set()  # fused: one scaler and one optimiser for every unit
        for u in units:
            scaler = self.scaler_of(u)
            for opt in self.optimizers_of(u):
                if (id(scaler), id(opt)) not in done:
                    done.add((id(scaler), id(opt)))
                    scaler.unscale_(opt)

    def _account(self, units: tuple[int, ...], ok: Tensor) -> None:
        """16-mixed: count skips, and update each unit's scaler (halved after an overflow)."""
        if self.scalers is None:
            return
        done: set[int] = set()
        for unit, good in zip(units, ok.tolist(), strict=True):
            self.taken[unit] += 1
            if good:
                self.failing[unit] = 0
            else:
                self.skipped[unit] += 1
                self.failing[unit] += 1
            scaler = self.scaler_of(unit)
            if id(scaler) in done:
                continue
            done.add(id(scaler))
            if scaler._per_optimizer_states:  # unscale_ ran: update from the infs it found
                scaler.update()
            else:  # the loss itself overflowed, backward never ran: halve the scale directly
                scaler.scale(torch.zeros((), device=self.device))  # (creates it on a first step)
                scaler.update(scaler.get_scale() * scaler.get_backoff_factor())

    def give_up(self, units: list[int], epoch: int) -> None:
        blocks = ", ".join(str(u + 1) for u in units)
        raise DivergenceError(
            f"loss or gradient overflowed float16 in {MAX_FAILING_STEPS} consecutive steps of "
            f"block {blocks} at epoch {epoch + 1} (--precision 16-mixed; try bf16-mixed or a "
            "smaller --lr)"
        )

    def take_skipped(self) -> tuple[list[int], list[int]] | tuple[None, None]:
        """Steps skipped and steps taken per unit since the last call (None, None unless 16-mixed)."""
        if self.scalers is None:
            return None, None
        out = self.skipped, self.taken
        self.skipped, self.taken = [0] * len(self.skipped), [0] * len(self.taken)
        return out

    def sync_modules(self) -> None:
        """Make the method's modules hold the current parameters (no-op unless kept elsewhere)."""

    def state_dict(self) -> dict[str, Any]:
        sd = self.optimizers.state_dict()
        if self.scalers is not None:  # float32/bf16 checkpoints keep their layout
            sd["scalers"] = self.scaler_states()
            sd["failing_steps"] = list(self.failing)
        return sd

    def scaler_states(self) -> list[dict[str, Any]]:
        """One GradScaler state per unit (the sequential checkpoint's layout)."""
        assert self.scalers is not None
        return [s.state_dict() for s in self.scalers]

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.optimizers.load_state_dict(sd)
        if self.scalers is not None and sd.get("scalers") is not None:
            self.load_scaler_states(sd["scalers"])
            self.failing = list(sd.get("failing_steps", self.failing))

    def load_scaler_states(self, states: list[dict[str, Any]]) -> None:
        assert self.scalers is not None
        for scaler, st in zip(self.scalers, states, strict=True):
            scaler.load_state_dict(st)


class LocalStep(StepFunction):
    """One optimiser step of one unit (and the shared parameters) on one mini-batch: the template's
    defaults (a finite loss can still give inf/NaN gradients: the template names the block before
    they reach θ)."""
