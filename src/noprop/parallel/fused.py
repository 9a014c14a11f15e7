"""Fused all-blocks step (``--parallel fused``, one process): all T DT blocks on one mini-batch at once.

:class:`FusedStep` is a step function of the ordinary trainer (with the fused interleaved order,
:func:`fused_trainer`). Its loss is NoProp-DT's own per-block loss, :meth:`NoPropDT.block_loss`, evaluated
under ``vmap`` over the T blocks — there is no second copy of Eq. 8 here.

The T blocks' parameters and buffers are stacked along a new leading dimension
(``torch.func.stack_module_state``) and the block is evaluated once under ``torch.func.vmap`` through
``functional_call`` on a parameter-free template: one batched kernel per layer for all T blocks instead
of T launches (the input x is shared, so the first layer becomes one wide matmul/conv). vmap needs
every block to have the same structure, which DT's builder guarantees; the trainer refuses otherwise.

Optimiser: one AdamW over the stacked tensors. Adam(W) is elementwise — each entry's update depends only
on its own gradient and moments, the step count and (lr, betas, eps, weight decay) — so one optimiser
over (T, …) tensors is exactly T per-block optimisers whose step counts agree (they do: every block
steps on every batch). Checkpoints are written in the sequential format (per-block modules, one
optimiser state per unit), so ``noprop eval`` and ``--resume`` (fused or not) read them unchanged.

Semantics: fused = ``--order interleaved`` (every block on the same batch), with the sequential
trainer's noise draws reproduced unit by unit: for dropout-free blocks (``--block mlp``) the block
weights, BN statistics and Adam moments equal the sequential interleaved run's up to float rounding
(tested). The shared head/W_Embed take one step per batch on the mean of the T blocks' shared
gradients (as block-parallel does with T ranks), not T steps, so they differ from the sequential run's;
with one-hot W_Embed no block reads them, so the blocks are unaffected.

BatchNorm under vmap: the stacked running mean/var/count are passed as *batched* buffers, so each
block's BN normalises with its own batch statistics and updates its own slice of the stacked running
statistics in place (functional_call writes in-place buffer updates through to the tensors passed in)
— exactly what T separate BN layers do, and eval-mode inference afterwards uses correct per-block
statistics (``replace_all_batch_norm_modules_`` is not used: it drops running stats, which inference
needs). Dropout under vmap: ``randomness="different"`` gives every block its own mask, as T separate
blocks would draw; the template's :class:`~noprop.models.dropout.FastDropout` (which queries the memory
layout, unsupported under vmap) is replaced by ``nn.Dropout`` with the same p and the same inverted-
dropout semantics. Masks differ from the sequential run's, so runs with dropout (the conv block) match
the sequential trainer in distribution, not bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from ..errors import ConfigError, DivergenceError
from ..methods import METHODS, Method
from ..models.dropout import FastDropout
from ..tasks import Task
from ..training.callbacks import Callback
from ..training.config import TrainConfig
from ..training.order import Interleaved, Step
from ..training.steps import Optimizers, Parts, StepFunction, params_finite
from ..training.trainer import Evaluator, Trainer


def check_fusable(method: Method) -> None:
    """ConfigError unless the method's per-block loss can be vmapped (``Method.fusable``)."""
    if not method.fusable:
        names = ", ".join(n for n, cls in METHODS.items() if cls.fusable)
        raise ConfigError(f"--parallel fused needs --method {names} (not {method.name})")


def vmap_safe(module: nn.Module) -> nn.Module:
    """Replace FastDropout by nn.Dropout (same p) in ``module``, in place; returns it."""
    for name, child in module.named_children():
        if isinstance(child, FastDropout):
            setattr(module, name, nn.Dropout(child.p))
        else:
            vmap_safe(child)
    return module


def check_same_structure(blocks: list[nn.Module]) -> None:
    """vmap over stacked blocks needs identical parameter/buffer names and shapes."""

    def signature(b: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
        return [(k, tuple(v.shape)) for k, v in b.state_dict().items()]

    first = signature(blocks[0])
    for t, b in enumerate(blocks[1:], start=2):
        if signature(b) != first or type(b) is not type(blocks[0]):
            raise ConfigError(
                f"--parallel fused needs identical blocks; block {t} differs from block 1"
            )


class FusedStep(StepFunction):
    """One optimiser step of every block (and one of the shared parameters) on one batch.

    The step template's hooks: the losses are the vmapped per-block losses; one backward of their
    sum gives each block exactly its own gradient (block t's parameters appear only in loss t).
    Under ``16-mixed`` the T blocks share one GradScaler ([I]: they take one joint optimiser step, so
    an overflow in any block skips the step of all; per-block scales would need per-block steps)."""

    def __init__(self, method: Method, optimizers: Optimizers, precision: str = "32") -> None:
        check_fusable(method)
        super().__init__(method, optimizers, precision)
        self.dt: Any = method  # a fusable method: blocks, schedule, block_loss, weight (NoProp-DT)
        blocks = list(method.blocks)
        check_same_structure(blocks)
        self.template = vmap_safe(copy.deepcopy(blocks[0]).to("meta")).train()
        self.params, self.buffers = self._stack()
        self.fused_optimizer = optimizers.make(list(self.params.values()))
        self._logits = vmap(self._block_logits, in_dims=(0, 0, None, 0), randomness="different")
        # --no-head-every-step: a per-block 0/1 mask on the head's CE (1 for the last block only);
        # every block still computes it under vmap, and the head's gradient is then the last block's
        self._loss = vmap(
            method.block_loss, in_dims=(0, None, None, 0, 0, None if method.head_every_step else 0)
        )

    def num_scalers(self) -> int:
        return 1

    def buffers_of(self, unit: int) -> list[Tensor]:
        """Block ``unit``'s slice of the stacked buffers (the forward pass updates those)."""
        return [v[unit] for v in self.buffers.values() if v.is_floating_point()]

    def _stack(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        params, buffers = stack_module_state(list(self.dt.blocks))
        params = {k: v.detach().contiguous().requires_grad_() for k, v in params.items()}
        return params, {k: v.contiguous() for k, v in buffers.items()}

    def _block_logits(
        self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, z_prev: Tensor
    ) -> Tensor:
        return functional_call(self.template, (params, buffers), (x, z_prev))

    def loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Parts]:
        """Eq. 8 for every block t = 1..T on one batch: per-block losses (T,), by vmap of
        :meth:`NoPropDT.block_loss` (the sequential step's loss)."""
        m, s = self.dt, self.dt.schedule
        T = m.T
        u_y = m.embedding(y)  # (B, d)
        # noise in the sequential interleaved order: per block, ε for z_{t-1}, then ε for z_T
        eps = [torch.randn(u_y.shape, device=u_y.device, dtype=u_y.dtype) for _ in range(2 * T)]
        eps_prev, eps_T = torch.stack(eps[0::2]), torch.stack(eps[1::2])  # (T, B, d) each
        ab_prev = s.alpha_bar[:T].view(T, 1, 1)
        z_prev = ab_prev.sqrt() * u_y + (1 - ab_prev).sqrt() * eps_prev  # z_{t−1} ~ q, Eq. 58
        logits = self._logits(self.params, self.buffers, x, z_prev)  # (T, B, m)
        t = torch.arange(1, T + 1, device=y.device)
        head = True if m.head_every_step else (t == T).to(logits.dtype)
        return self._loss(logits, u_y, y, eps_T, m.weight(t), head)

    # ------------------------------------------------------ template hooks
    def units_of(self, step: Step) -> tuple[int, ...]:
        return tuple(range(self.dt.T))

    def losses(self, x: Tensor, y: Tensor, units: tuple[int, ...]) -> tuple[Tensor, list[Parts]]:
        total, parts = self.loss(x, y)
        return total, [{k: v[u] for k, v in parts.items()} for u in units]

    def zero_grad(self, units: tuple[int, ...]) -> None:
        self.fused_optimizer.zero_grad(set_to_none=True)
        if self.optimizers.shared is not None:
            self.optimizers.shared.zero_grad(set_to_none=True)

    def optimizers_of(self, unit: int) -> list[torch.optim.Optimizer]:
        shared = [] if self.optimizers.shared is None else [self.optimizers.shared]
        return [self.fused_optimizer, *shared]

    def scaler_of(self, unit: int) -> torch.amp.GradScaler:
        assert self.scalers is not None
        return self.scalers[0]

    def grads_ok(self, units: tuple[int, ...]) -> Tensor:
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        per_block = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).sum(0)  # (T,)
        shared_ok = params_finite(self.method.shared_parameters())
        return torch.isfinite(per_block).cpu() & shared_ok

    def reduce(
        self, units: tuple[int, ...], bad: Tensor, give_up: Tensor, step: Step, epoch: int
    ) -> Tensor:
        bad = super().reduce(units, bad, give_up, step, epoch)
        return bad.any().expand(len(units)).clone()  # one joint step: all or none

    def apply(self, units: tuple[int, ...], ok: Tensor) -> None:
        if not bool(ok.all()):
            return
        for p in self.method.shared_parameters():  # Σ_t → mean over the T blocks' shared gradients
            if p.grad is not None:
                p.grad /= self.dt.T
        self.fused_optimizer.step()
        if self.optimizers.shared is not None:
            self.optimizers.shared.step()

    def diverged(self, units: list[int], what: str, epoch: int, losses: Tensor | None) -> None:
        blocks = ", ".join(str(u + 1) for u in units)
        raise DivergenceError(
            f"{what} became NaN or infinite in block {blocks} at epoch {epoch + 1}"
        )

    def scaler_states(self) -> list[dict[str, Any]]:
        """The one scaler's state, once per unit (the sequential checkpoint's layout)."""
        assert self.scalers is not None
        return [self.scalers[0].state_dict() for _ in range(self.dt.T)]

    def load_scaler_states(self, states: list[dict[str, Any]]) -> None:
        """From a sequential checkpoint: the smallest of the units' scales (the safe one)."""
        assert self.scalers is not None
        self.scalers[0].load_state_dict(min(states, key=lambda st: float(st["scale"])))

    # ------------------------------------------------- sequential-format state
    @torch.no_grad()
    def sync_modules(self) -> None:
        """Copy the stacked parameters and buffers into the per-block modules."""
        for t, block in enumerate(self.dt.blocks):
            for name, p in block.named_parameters():
                p.copy_(self.params[name][t])
            for name, b in block.named_buffers():
                b.copy_(self.buffers[name][t])

    def _unit_optimizer_states(self) -> list[dict[str, Any]]:
        """The fused AdamW state split into the sequential trainer's per-unit state dicts."""
        fused = self.fused_optimizer.state_dict()["state"]
        out = []
        for u, opt in enumerate(self.optimizers.units):
            sd = opt.state_dict()  # param_groups with this unit's parameter indices, no state
            sd["state"] = {
                i: {
                    k: v[u].clone() if torch.is_tensor(v) and v.dim() > 0 else v.clone()
                    for k, v in st.items()
                }
                for i, st in fused.items()
            }
            out.append(sd)
        return out

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["optimizers"] = self._unit_optimizer_states()
        return sd

    @torch.no_grad()
    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Load a sequential-format optimiser state (fused or not) and restack the blocks."""
        super().load_state_dict(sd)
        params, buffers = self._stack()
        for name, v in params.items():
            self.params[name].copy_(v)
        for name, v in buffers.items():
            self.buffers[name].copy_(v)
        states = [o.state_dict()["state"] for o in self.optimizers.units]
        if any(states) and not all(states):
            raise ConfigError("cannot fuse: some blocks have optimiser state and others none")
        if all(states):
            steps = {float(st[0]["step"]) for st in states}
            if len(steps) != 1:
                raise ConfigError(
                    f"cannot fuse: the blocks' optimisers have taken different numbers of steps "
                    f"{sorted(steps)}; resume this run without --parallel fused"
                )
            fused = {
                i: {
                    k: torch.stack([st[i][k] for st in states]) if v.dim() > 0 else v.clone()
                    for k, v in states[0][i].items()
                }
                for i in states[0]
            }
            opt_sd = self.fused_optimizer.state_dict()
            opt_sd["state"] = fused
            self.fused_optimizer.load_state_dict(opt_sd)
        for opt in self.optimizers.units:  # their state now lives in the fused optimiser
            opt.state.clear()


def fused_trainer(
    method: Method,
    cfg: TrainConfig,
    device: torch.device,
    *,
    task: Task | None = None,
    progress: bool = True,
    callbacks: list[Callback] | None = None,
    evaluator: Evaluator | None = None,
) -> Trainer:
    """The one-process trainer of ``--parallel fused``: every block on every batch, one vmapped step."""
    check_fusable(method)
    trainer = Trainer(
        method,
        cfg,
        device,
        task=task,
        progress=progress,
        order=Interleaved(range(method.num_units), cfg.batch_size, cfg.seed, fused=True),
        step=FusedStep,  # type: ignore[arg-type]
        callbacks=callbacks or [],
        evaluator=evaluator,
    )
    # contiguous inputs: vmap cannot query channels-last layouts (the stacked parameters are made
    # contiguous too, FusedStep._stack)
    trainer.cfg = dataclasses.replace(trainer.cfg, channels_last=False)
    return trainer
