"""Block-parallel (and data-parallel) training: each rank steps only its units.

:class:`BlockParallelTrainer` is the sequential :class:`~noprop.training.trainer.Trainer` with four
changes, all driven by the rank's :class:`~noprop.parallel.placement.BlockPlacement`:

1. **Schedule.** A rank runs Algorithm 1 over its own blocks with the sequential trainer's per-(epoch,
   block) seeds, so block t's pass draws exactly the shuffle and noise it draws in a one-process run
   (data replicas share the shuffle, take their shard of each batch, and offset the noise seed).
   A rank with fewer blocks than the busiest one adds idle passes (``unit=None``) so that every rank
   joins every per-step collective — no deadlock on uneven splits (T = 10 on 4 ranks: 3, 3, 2, 2).
2. **Step.** backward → :class:`~noprop.parallel.ddp.GradSync` (block gradients over the data replicas;
   shared head/W_Embed gradients averaged over the ranks that trained a block; per-block divergence
   flags) → optimiser steps. All ranks apply the same reduced gradient to the same shared parameters
   with the same Adam state, so the head and a learned W_Embed stay bit-identical on every rank
   (checked at the end of every epoch). With one-hot W_Embed a block's loss reads only W (fixed) and
   its own θ_t: blocks exchange nothing, and block weights equal the sequential run's exactly; only
   the head's gradient (m·d + m floats) is averaged, and no block reads the head.
3. **Epoch end.** Block-group owners send their blocks' weights, BN statistics and optimiser states to
   rank 0 (point-to-point), so rank 0 holds the complete trainer and writes one ordinary checkpoint and
   run directory, which ``noprop eval`` and ``--resume`` read unchanged (on any number of ranks).
4. **Validation.** Rank 0 evaluates and broadcasts the result, so model selection and early stopping
   decide identically everywhere.

Per-epoch traffic to rank 0: for every block not on rank 0, its parameters + buffers + Adam moments
(≈ 3 × P_block floats). Per-step traffic: see :mod:`noprop.parallel.ddp`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..config import RunConfig
from ..errors import ConfigError, DivergenceError
from ..methods.base import Method
from ..training.trainer import Trainer, batches, derive_seed
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


class BlockParallelTrainer(Trainer):
    """Trains this rank's units of a ``--parallel blocks|data`` run (module docstring)."""

    def __init__(
        self,
        method: Method,
        cfg: RunConfig,
        device: torch.device,
        ctx: DistContext,
        *,
        progress: bool = True,
    ) -> None:
        if method.num_units != ctx.placement.num_units:
            raise ConfigError(
                f"placement is for {ctx.placement.num_units} units, the method has {method.num_units}"
            )
        super().__init__(method, cfg, device, progress=progress and ctx.is_main, units=ctx.units)
        self.ctx = ctx
        self.sync = GradSync(ctx, self.method)
        self._fraction = 1.0  # this rank's share of the current mini-batch
        state = [*self.method.parameters(), *self.method.buffers()]
        broadcast_tensors(ctx, state, 0, "broadcasting the initial model")

    # ------------------------------------------------------------- schedule
    def _units_and_batches(self, n: int, epoch: int) -> Iterator[tuple[int | None, Tensor]]:
        t, placement, replica = self.cfg.train, self.ctx.placement, self.ctx.replica
        num_replicas = placement.data_degree
        slots: list[int | None] = [*self.units]
        slots += [None] * (placement.max_units - len(slots))
        if t.order == "blocks":  # Algorithm 1: one pass per block (seed key = the unit)
            passes = [([s], IDLE_PASS if s is None else s) for s in slots]
        else:  # interleaved: one pass, every slot steps on each batch (seed key -1)
            passes = [(slots, -1)]
        for pass_slots, key in passes:
            torch.manual_seed(replica_seed(derive_seed(t.seed, epoch, key), replica))
            gen = torch.Generator().manual_seed(derive_seed(t.seed, epoch, key))
            for idx in batches(n, t.batch_size, gen):
                if num_replicas > 1 and idx.numel() < 2 * num_replicas:
                    continue  # a shard of < 2 examples breaks BatchNorm; every replica skips it
                part = shard(idx, num_replicas, replica) if num_replicas > 1 else idx
                self._fraction = part.numel() / idx.numel()
                for unit in pass_slots:
                    yield unit, part

    # ----------------------------------------------------------------- step
    def step(self, x: Tensor, y: Tensor, unit: int | None) -> dict[str, Tensor]:
        """One synchronised step: ``unit`` (None = idle) and the shared parameters on every rank."""
        if unit is not None:
            self.optimizers[unit].zero_grad(set_to_none=True)
        if self.shared_optimizer is not None:
            self.shared_optimizer.zero_grad(set_to_none=True)
        parts: dict[str, Tensor] = {}
        bad = False
        if unit is not None:
            loss, parts = self.method.loss(x, y, unit)
            bad = not bool(torch.isfinite(loss))
            if not bad:
                loss.backward()
                bad = not self._grads_finite(unit)
        diverged = self.sync(unit, self._fraction, bad)
        if diverged:
            blocks = ", ".join(str(u + 1) for u in diverged)
            raise DivergenceError(
                f"loss or gradient became NaN or infinite in block {blocks} at epoch "
                f"{self.state.epoch + 1} (reported to every rank)"
            )
        if unit is not None:
            self.optimizers[unit].step()
        if self.shared_optimizer is not None:
            self.shared_optimizer.step()
        return parts

    def _grads_finite(self, unit: int) -> bool:
        params = self.method.unit_parameters(unit) + self.method.shared_parameters()
        grads = [p.grad for p in params if p.grad is not None]
        return not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())

    # ------------------------------------------------------------ epoch end
    def train_epoch(self, x: Tensor, y: Tensor, epoch: int) -> dict[str, list[float | None]]:
        losses = super().train_epoch(x, y, epoch)
        self._average_replica_buffers()
        self._gather_to_main()
        self._check_shared_identical()
        return self._merge_losses(losses)

    @torch.no_grad()
    def _average_replica_buffers(self) -> None:
        """Data replicas saw different shards: average their BatchNorm running statistics."""
        d = self.ctx.placement.data_degree
        if d == 1:
            return
        buffers = [
            b
            for u in self.units
            for m in self.method.unit_modules(u)
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

    def _gather_to_main(self) -> None:
        """Owners send their units' modules and optimiser states to rank 0 (in unit order)."""
        placement, rank = self.ctx.placement, self.ctx.rank
        for unit in range(self.method.num_units):
            owner = placement.owner(unit)
            if owner == 0 or rank not in (0, owner):
                continue
            what = f"sending block {unit + 1} from rank {owner} to rank 0"
            modules = self.method.unit_modules(unit)
            with collective(self.ctx, what):
                if rank == owner:
                    payload = {
                        "modules": [_cpu(m.state_dict()) for m in modules],
                        "optimizer": _cpu(self.optimizers[unit].state_dict()),
                    }
                    dist.send_object_list([payload], dst=0)
                else:
                    box: list[Any] = [None]
                    dist.recv_object_list(box, src=owner)
                    payload = box[0]
            if rank == 0:
                for m, sd in zip(modules, payload["modules"], strict=True):
                    m.load_state_dict(sd)
                self.optimizers[unit].load_state_dict(payload["optimizer"])

    def _check_shared_identical(self) -> None:
        """Internal invariant: the shared parameters are bit-identical on every rank."""
        shared = self.method.shared_parameters()
        if not shared:
            return
        mine = _checksum(shared)
        every = [torch.empty_like(mine) for _ in range(self.ctx.world_size)]
        with collective(self.ctx, "comparing the shared parameters across ranks"):
            dist.all_gather(every, mine)
        if not all(torch.equal(c, every[0]) for c in every):
            raise RuntimeError(
                f"bug: the shared parameters (head, W_Embed) differ across ranks after epoch "
                f"{self.state.epoch + 1}"
            )

    def _merge_losses(self, losses: dict[str, list[float | None]]) -> dict[str, list[float | None]]:
        """Every rank's per-unit means → one list per key (replicas of a unit averaged)."""
        gathered: list[Any] = [None] * self.ctx.world_size
        with collective(self.ctx, "gathering the epoch's losses"):
            dist.all_gather_object(gathered, losses)
        merged: dict[str, list[float | None]] = {}
        for k in sorted({k for g in gathered for k in g}):
            merged[k] = []
            for u in range(self.method.num_units):
                vals = [g[k][u] for g in gathered if k in g and g[k][u] is not None]
                merged[k].append(sum(vals) / len(vals) if vals else None)
        return merged

    # ----------------------------------------------------------- validation
    def evaluate(
        self, x: Tensor, y: Tensor, *, deterministic: bool = False, seed: int = 0
    ) -> dict[str, Any]:
        """Rank 0 (which holds every block after the epoch's gather) evaluates; all ranks get it."""
        result = (
            super().evaluate(x, y, deterministic=deterministic, seed=seed)
            if self.ctx.is_main
            else None
        )
        box = [result]
        with collective(self.ctx, "broadcasting the validation result"):
            dist.broadcast_object_list(box, src=0)
        return box[0]
