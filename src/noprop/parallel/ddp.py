"""Per-step gradient collectives: data parallelism (what DDP does) plus the shared-parameter reduction.

``--parallel data`` runs every method (DT, back-prop, CT, FM, adjoint) data-parallel: each of the W
ranks holds the whole model and computes the gradient of its shard of every mini-batch (the global
batch is ``--batch-size``, split into W nearly equal shards); the gradients are all-reduced before the
optimiser step, so all replicas apply the same update and stay identical. The same reduction over a
*data group* of D ranks gives the second level of ``--parallel blocks`` on W = T·D ranks.

Why not ``torch.nn.parallel.DistributedDataParallel``: a :class:`~noprop.methods.base.Method` is
trained through ``loss(x, y, unit)``, one unit per step, so DDP would need ``find_unused_parameters``
and a graph walk every step for DT; in the two-level form a block's gradients are reduced over its
data group but the shared head/W_Embed over the whole world, and one DDP instance has one process
group; and the cross-rank divergence check must ride on the same collective, so that a NaN on one
rank stops every rank at the same step instead of leaving the others waiting. The arithmetic is DDP's:
one flat all-reduce (SUM) of the gradients after backward, weighted so that the result is the gradient
of the mean loss over the full batch. (DDP's overlap of communication with backward is not replicated;
buffers here are one flat tensor per step.)

Weights: replica k of a group holds n_k of the batch's n examples and contributes w_k·g_k with
w_k = n_k / n, so Σ_k w_k g_k is the full-batch mean gradient (exact for models without BatchNorm —
BN statistics are per shard, as with DDP without SyncBatchNorm). For the shared parameters every rank
contributes w·g and w (0 on an idle rank); their ratio Σ w g / Σ w is the mean over the block groups
that trained a block at this step of each group's full-batch gradient. Averaging (not summing) keeps
the gradient at the scale of one block's loss — what the sequential trainer's Adam state sees — and
makes a 1-rank run identical to the sequential trainer; summing would change the gradient scale
whenever the number of active ranks changes (the idle tail of an uneven split).

Bytes per step (float32, before the backend's all-reduce algorithm; a ring sends ≈ 2(N−1)/N of the
buffer per rank): world all-reduce of P_shared + 1 + T floats (shared grads, weight, per-block
divergence flags); plus, if D > 1, a data-group all-reduce of the P_block floats of the unit's block.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..methods.base import Method
from .distributed import DistContext, collective


def shard(idx: Tensor, num_replicas: int, replica: int) -> Tensor:
    """Replica ``replica``'s contiguous shard of a batch of indices (sizes differ by at most one)."""
    return idx.tensor_split(num_replicas)[replica]


def replica_seed(seed: int, replica: int) -> int:
    """Noise seed of a data replica: replica 0 keeps the sequential trainer's seed."""
    return seed if replica == 0 else (seed + replica * 0x9E3779B97F4A7C15) % (2**62)


def _flat_grads(params: list[Tensor], scale: float, device: torch.device) -> Tensor:
    """Concatenated gradients (zeros for None), times ``scale``."""
    parts = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) * scale for p in params
    ]
    return torch.cat(parts) if parts else torch.zeros(0, device=device)


def _set_grads(params: list[Tensor], flat: Tensor) -> None:
    """Write ``flat`` back as the parameters' gradients (in each parameter's memory layout)."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = torch.empty_like(p).copy_(flat[offset : offset + n].view(p.shape))
        offset += n


#: a unit's flag value that ends the run (1 = skipped; a sum over ranks never reaches it)
GIVE_UP = 1e6


class GradSync:
    """All-reduces one step's gradients across ranks and agrees on divergence (module docstring).

    Call it after ``backward`` and before the optimiser steps, on every rank, every step — with
    ``unit=None`` on a rank that has no block to train at this step, so collectives always pair up.
    """

    def __init__(self, ctx: DistContext, method: Method) -> None:
        self.ctx = ctx
        self.method = method
        self.shared = method.shared_parameters()
        self.num_units = method.num_units
        self.data_degree = ctx.placement.data_degree
        # --parallel data (one block group): unit and shared grads travel in one world all-reduce
        self.single_buffer = ctx.placement.block_degree == 1 and self.data_degree > 1
        self.device = ctx.device

    def bytes_per_step(self, unit: int | None = 0) -> dict[str, int]:
        """Float32 bytes each collective carries per step (the buffer, not the wire traffic)."""
        shared = sum(p.numel() for p in self.shared) + 1 + self.num_units + len(self.shared)
        unit_n = (
            sum(p.numel() for p in self.method.unit_parameters(unit or 0))
            if self.data_degree > 1
            else 0
        )
        if self.single_buffer:
            return {"world": 4 * (shared + unit_n), "data_group": 0}
        return {"world": 4 * shared, "data_group": 4 * unit_n}

    def __call__(
        self, unit: int | None, weight: float, bad: bool, *, give_up: bool = True
    ) -> tuple[list[int], list[int], bool]:
        """Reduce gradients in place; return what every rank agrees on: the units (0-based) some
        rank reported non-finite (skipped), those whose failure ends the run (diverged), and whether
        the shared parameters received a finite gradient from some rank.

        Args:
            unit: the unit this rank trained at this step, or None (idle: contributes zeros).
            weight: this rank's fraction of its group's mini-batch (1 without data replicas).
            bad: this rank's loss or gradients were NaN/inf (its gradients are then not sent).
            give_up: a bad step ends the run (always, except under ``--precision 16-mixed``, where
                it is skipped until it keeps failing: ``training/steps.py``).
        """
        w = 0.0 if unit is None or bad else weight
        flags = torch.zeros(self.num_units, device=self.device)
        if bad and unit is not None:
            flags[unit] = GIVE_UP if give_up else 1.0
        unit_params = [] if unit is None else self.method.unit_parameters(unit)
        # one weight per shared tensor: a rank whose loss did not reach it (e.g. the head under
        # DT's --no-head-every-step) sends zeros that must not count in its average, and a tensor no
        # rank reached keeps no gradient, so its optimiser skips it as a sequential step would
        reached = [w if p.grad is not None else 0.0 for p in self.shared]
        tail = torch.cat([torch.tensor([w, *reached], device=self.device), flags])
        shared_grads = _flat_grads(self.shared, w, self.device)
        what = "the per-step gradient all-reduce" + ("" if unit is None else f" (block {unit + 1})")
        with collective(self.ctx, what):
            if self.single_buffer:
                buf = torch.cat([_flat_grads(unit_params, w, self.device), shared_grads, tail])
                torch.distributed.all_reduce(buf)
                n_unit = buf.numel() - tail.numel() - sum(p.numel() for p in self.shared)
                _set_grads(unit_params, buf[:n_unit])
                shared_flat, reduced_tail = buf[n_unit : -tail.numel()], buf[-tail.numel() :]
            else:
                if self.data_degree > 1 and unit is not None:
                    unit_buf = _flat_grads(unit_params, w, self.device)
                    torch.distributed.all_reduce(unit_buf, group=self.ctx.data_group)
                    _set_grads(unit_params, unit_buf)
                buf = torch.cat([shared_grads, tail])
                torch.distributed.all_reduce(buf)
                shared_flat, reduced_tail = buf[: -tail.numel()], buf[-tail.numel() :]
        values = reduced_tail.tolist()
        total_weight, totals = values[0], values[1 : 1 + len(self.shared)]
        unit_flags = values[1 + len(self.shared) :]
        skipped = [u for u, flag in enumerate(unit_flags) if flag > 0]
        diverged = [u for u, flag in enumerate(unit_flags) if flag >= GIVE_UP]
        offset = 0
        for p, total in zip(self.shared, totals, strict=True):
            n = p.numel()
            if total > 0:
                _set_grads([p], shared_flat[offset : offset + n] / total)
            else:
                p.grad = None
            offset += n
        return skipped, diverged, total_weight > 0 and (not totals or any(t > 0 for t in totals))
