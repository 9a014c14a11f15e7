"""Block-parallel (and data-parallel) training: each rank steps only its units.

A rank of a ``--parallel blocks|data`` run is the ordinary :class:`~noprop.training.trainer.Trainer`
composed with three components, all driven by the rank's :class:`~noprop.parallel.placement.BlockPlacement`
(:func:`block_parallel_trainer` puts them together):

1. **Order** (:class:`PlacementOrder`). A rank runs Algorithm 1 over its own blocks with the sequential trainer's per-(epoch,
   block) seeds, so block t's pass draws exactly the shuffle and noise it draws in a one-process run
   (data replicas share the shuffle, take their shard of each batch, and offset the noise seed).
   A rank with fewer blocks than the busiest one adds idle passes (steps with no unit) so that every rank
   joins every per-step collective — no deadlock on uneven splits (T = 10 on 4 ranks: 3, 3, 2, 2).
2. **Step** (:class:`SyncStep`). backward → :class:`~noprop.parallel.ddp.GradSync` (block gradients over the data replicas;
   shared head/W_Embed gradients averaged over the ranks that trained a block; per-block divergence
   flags) → optimiser steps. All ranks apply the same reduced gradient to the same shared parameters
   with the same Adam state, so the head and a learned W_Embed stay bit-identical on every rank
   (checked at the end of every epoch). With one-hot W_Embed a block's loss reads only W (fixed) and
   its own θ_t: blocks exchange nothing, and block weights equal the sequential run's exactly; only
   the head's gradient (m·d + m floats) is averaged, and no block reads the head.
3. **Epoch end** (:class:`GatherToMain`, a callback). Block-group owners send their blocks' weights, BN statistics and optimiser states to
   rank 0 (point-to-point), so rank 0 holds the complete trainer and writes one ordinary checkpoint and
   run directory, which ``noprop eval`` and ``--resume`` read unchanged (on any number of ranks).
4. **Validation** (:func:`main_evaluates`). Rank 0 evaluates and broadcasts the result, so model selection and early stopping
   decide identically everywhere.

Per-epoch traffic to rank 0: for every block not on rank 0, its parameters + buffers + Adam moments
(≈ 3 × P_block floats). Per-step traffic: see :mod:`noprop.parallel.ddp`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import ConfigError, DivergenceError
from ..methods.base import Method
from ..tasks import Task
from ..training.callbacks import Callback, Losses
from ..training.config import TrainConfig
from ..training.order import Step, derive_seed, seeded_batches
from ..training.steps import Optimizers, Parts, StepFunction
from ..training.trainer import Evaluator, Trainer
from .ddp import GradSync, replica_seed, shard
from .distributed import DistContext, collective

IDLE_PASS = -3  # seed key of an idle pass (any value: an idle pass only counts batches)


def _cpu(obj: Any) -> Any:
    """A state dict with every tensor on the CPU (for pickling through object collectives)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu(v) for v in obj)
    return obj


@torch.no_grad()
def broadcast_tensors(
    ctx: DistContext, tensors: list[Tensor], src: int, what: str, group: Any = None
) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (one flat broadcast per dtype)."""
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for ts in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in ts])
        with collective(ctx, what):
            dist.broadcast(flat, src=src, group=group)
        offset = 0
        for t in ts:
            t.copy_(flat[offset : offset + t.numel()].view(t.shape))
            offset += t.numel()


def _checksum(params: list[Tensor]) -> Tensor:
    """Position-weighted sum of the parameters' bit patterns: equal iff (almost surely) bit-identical."""
    bits = torch.cat([p.detach().float().reshape(-1) for p in params]).view(torch.int32).long()
    positions = torch.arange(1, bits.numel() + 1, device=bits.device)
    return torch.stack([bits.sum(), (bits * positions).sum()])


class PlacementOrder:
    """Algorithm 1 (or interleaved) over this rank's units, with the sequential trainer's seeds."""

    def __init__(self, ctx: DistContext, cfg: TrainConfig) -> None:
        self.ctx, self.cfg = ctx, cfg
        placement = ctx.placement
        self.slots: list[int | None] = [*ctx.units]
        self.slots += [None] * (placement.max_units - len(self.slots))

    def _passes(self) -> list[tuple[list[int | None], int]]:
        if self.cfg.order == "blocks":  # Algorithm 1: one pass per block (seed key = the unit)
            return [([s], IDLE_PASS if s is None else s) for s in self.slots]
        return [(self.slots, -1)]  # interleaved: one pass, every slot steps on each batch

    def __call__(self, n: int, epoch: int) -> Iterator[Step]:
        cfg, replica = self.cfg, self.ctx.replica
        num_replicas = self.ctx.placement.data_degree
        for pass_slots, key in self._passes():
            seed = derive_seed(cfg.seed, epoch, key)
            idx_iter = seeded_batches(n, cfg.batch_size, seed)
            torch.manual_seed(replica_seed(seed, replica))  # replicas draw different noise
            for idx in idx_iter:
                if num_replicas > 1 and idx.numel() < 2 * num_replicas:
                    continue  # a shard of < 2 examples breaks BatchNorm; every replica skips it
                part = shard(idx, num_replicas, replica) if num_replicas > 1 else idx
                for unit in pass_slots:
                    units = () if unit is None else (unit,)
                    yield Step(units, part, part.numel() / idx.numel())

    def num_steps(self, n: int) -> int:
        return math.ceil(n / self.cfg.batch_size) * len(self.slots)


class SyncStep(StepFunction):
    """One synchronised step: this rank's unit (none when idle) and the shared parameters.

    The step template's hooks: a failure is not raised where it happens but reported through the
    gradient collective (:class:`GradSync`), so every rank stops — or, under ``16-mixed``, skips the
    unit — at the same step; the shared optimiser steps on every rank iff some rank contributed a
    finite gradient (the same decision everywhere, so the shared parameters stay bit-identical)."""

    def __init__(
        self, method: Method, optimizers: Optimizers, ctx: DistContext, precision: str = "32"
    ) -> None:
        super().__init__(method, optimizers, precision)
        self.sync = GradSync(ctx, method)
        self.shared_ok = True
        self.fraction = 1.0

    def __call__(self, x: Tensor, y: Tensor, step: Step, epoch: int) -> list[tuple[int, Parts]]:
        self.fraction = step.fraction
        return super().__call__(x, y, step, epoch)

    def units_of(self, step: Step) -> tuple[int, ...]:
        return tuple(step.units[:1])

    def diverged(self, units: list[int], what: str, epoch: int, losses: Tensor | None) -> None:
        """Reported to every rank by :meth:`reduce` instead of raised here."""

    def reduce(
        self, units: tuple[int, ...], bad: Tensor, give_up: Tensor, step: Step, epoch: int
    ) -> Tensor:
        unit = units[0] if units else None
        skipped, diverged, self.shared_ok = self.sync(
            unit, self.fraction, bool(bad.any()), give_up=bool(give_up.any())
        )
        if diverged:
            if self.scalers is not None:
                self.give_up(diverged, epoch)
            blocks = ", ".join(str(u + 1) for u in diverged)
            raise DivergenceError(
                f"loss or gradient became NaN or infinite in block {blocks} at epoch "
                f"{epoch + 1} (reported to every rank)"
            )
        return torch.tensor([u in skipped for u in units], dtype=torch.bool)

    def apply(self, units: tuple[int, ...], ok: Tensor) -> None:
        unit = units[0] if units and bool(ok[0]) else None
        self.optimizers.step(unit, shared=self.shared_ok)


class GatherToMain(Callback):
    """Epoch end of a parallel rank: replica BN statistics averaged, every block sent to rank 0,
    the shared parameters checked bit-identical, the per-unit losses merged over the ranks."""

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx

    def on_epoch_trained(self, trainer: Trainer, losses: Losses) -> Losses:
        self._average_replica_buffers(trainer)
        self._gather_to_main(trainer)
        self._check_shared_identical(trainer)
        return self._merge_losses(trainer, losses)

    @torch.no_grad()
    def _average_replica_buffers(self, trainer: Trainer) -> None:
        """Data replicas saw different shards: average their BatchNorm running statistics."""
        d = self.ctx.placement.data_degree
        if d == 1:
            return
        buffers = [
            b
            for u in self.ctx.units
            for m in trainer.method.unit_modules(u)
            for b in m.buffers()
            if b.is_floating_point()
        ]
        if not buffers:
            return
        flat = torch.cat([b.reshape(-1) for b in buffers])
        with collective(self.ctx, "averaging BatchNorm statistics over data replicas"):
            dist.all_reduce(flat, group=self.ctx.data_group)
        flat /= d
        offset = 0
        for b in buffers:
            b.copy_(flat[offset : offset + b.numel()].view(b.shape))
            offset += b.numel()

    def _gather_to_main(self, trainer: Trainer) -> None:
        """Owners send their units' modules and optimiser states to rank 0 (in unit order)."""
        placement, rank = self.ctx.placement, self.ctx.rank
        for unit in range(trainer.method.num_units):
            owner = placement.owner(unit)
            if owner == 0 or rank not in (0, owner):
                continue
            what = f"sending block {unit + 1} from rank {owner} to rank 0"
            modules = trainer.method.unit_modules(unit)
            with collective(self.ctx, what):
                if rank == owner:
                    payload = {
                        "modules": [_cpu(m.state_dict()) for m in modules],
                        "optimizer": _cpu(trainer.optimizers[unit].state_dict()),
                    }
                    dist.send_object_list([payload], dst=0)
                else:
                    box: list[Any] = [None]
                    dist.recv_object_list(box, src=owner)
                    payload = box[0]
            if rank == 0:
                for m, sd in zip(modules, payload["modules"], strict=True):
                    m.load_state_dict(sd)
                trainer.optimizers[unit].load_state_dict(payload["optimizer"])

    def _check_shared_identical(self, trainer: Trainer) -> None:
        """Internal invariant: the shared parameters are bit-identical on every rank."""
        shared = trainer.method.shared_parameters()
        if not shared:
            return
        mine = _checksum(shared)
        every = [torch.empty_like(mine) for _ in range(self.ctx.world_size)]
        with collective(self.ctx, "comparing the shared parameters across ranks"):
            dist.all_gather(every, mine)
        if not all(torch.equal(c, every[0]) for c in every):
            raise RuntimeError(
                f"bug: the shared parameters (head, W_Embed) differ across ranks after epoch "
                f"{trainer.state.epoch + 1}"
            )

    def _merge_losses(self, trainer: Trainer, losses: Losses) -> Losses:
        """Every rank's per-unit means → one list per key (replicas of a unit averaged)."""
        gathered: list[Any] = [None] * self.ctx.world_size
        with collective(self.ctx, "gathering the epoch's losses"):
            dist.all_gather_object(gathered, losses)
        merged: Losses = {}
        for k in sorted({k for g in gathered for k in g}):
            merged[k] = []
            for u in range(trainer.method.num_units):
                vals = [g[k][u] for g in gathered if k in g and g[k][u] is not None]
                merged[k].append(sum(vals) / len(vals) if vals else None)
        return merged


def main_evaluates(ctx: DistContext, local: Evaluator | None = None):
    """An evaluator: rank 0 (which holds every block after the epoch's gather) evaluates with
    ``local`` (default :meth:`Trainer.local_evaluate`) and broadcasts the result, so model selection
    and early stopping decide identically everywhere."""
    local = local or Trainer.local_evaluate

    def evaluator(trainer: Trainer, x: Tensor, y: Tensor, **kw: Any) -> dict[str, Any]:
        result = local(trainer, x, y, **kw) if ctx.is_main else None
        box = [result]
        with collective(ctx, "broadcasting the validation result"):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    return evaluator


def block_parallel_trainer(
    method: Method,
    cfg: TrainConfig,
    device: torch.device,
    ctx: DistContext,
    *,
    task: Task | None = None,
    progress: bool = True,
    callbacks: list[Callback] | None = None,
    evaluator: Evaluator | None = None,
) -> Trainer:
    """The trainer of this rank of a ``--parallel blocks|data`` run (module docstring); ``evaluator``
    is rank 0's local one."""
    if method.num_units != ctx.placement.num_units:
        raise ConfigError(
            f"placement is for {ctx.placement.num_units} units, the method has {method.num_units}"
        )
    trainer = Trainer(
        method,
        cfg,
        device,
        task=task,
        progress=progress and ctx.is_main,
        order=PlacementOrder(ctx, cfg),
        step=lambda m, opt, precision: SyncStep(m, opt, ctx, precision),
        callbacks=[GatherToMain(ctx), *(callbacks or [])],
        evaluator=main_evaluates(ctx, evaluator),
    )
    state = [*trainer.method.parameters(), *trainer.method.buffers()]
    broadcast_tensors(ctx, state, 0, "broadcasting the initial model")
    return trainer
