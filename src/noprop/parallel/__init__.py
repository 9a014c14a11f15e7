"""Parallel training beside the model, never inside it: blocks, schedules and methods never see a rank.

* ``--parallel blocks`` (torchrun): block-parallel NoProp-DT, each rank trains its own blocks
  (:mod:`.block_trainer`, :mod:`.placement`); with more ranks than blocks, blocks × data.
* ``--parallel data`` (torchrun): data parallelism for every method (:mod:`.ddp`).
* ``--parallel fused`` (one process): all T blocks in one vmapped step (:mod:`.fused`).

See docs/parallel.md for commands and the scaling model.
"""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..methods.base import Method
from ..training.trainer import Trainer
from .distributed import DistContext, DistributedError, parallel_context
from .placement import BlockPlacement


def build_trainer(
    method: Method,
    cfg: RunConfig,
    device: torch.device,
    ctx: DistContext | None,
    *,
    progress: bool = True,
) -> Trainer:
    """The trainer for ``cfg.train.parallel`` on this rank (``ctx`` None: one process)."""
    if ctx is not None:
        from .block_trainer import BlockParallelTrainer

        return BlockParallelTrainer(method, cfg, device, ctx, progress=progress)
    if cfg.train.parallel == "fused":
        from .fused import FusedTrainer

        return FusedTrainer(method, cfg, device, progress=progress)  # type: ignore[arg-type]
    return Trainer(method, cfg, device, progress=progress)


__all__ = [
    "BlockPlacement",
    "DistContext",
    "DistributedError",
    "build_trainer",
    "parallel_context",
]
