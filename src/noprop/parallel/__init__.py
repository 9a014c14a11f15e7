"""Parallel training beside the model, never inside it: blocks, schedules and methods never see a rank.

* ``--parallel blocks`` (torchrun): block-parallel NoProp-DT, each rank trains its own blocks
  (:mod:`.blocks`, :mod:`.placement`); with more ranks than blocks, blocks × data.
* ``--parallel data`` (torchrun): data parallelism for every method (:mod:`.ddp`, same components).
* ``--parallel fused`` (one process): all T blocks in one vmapped step (:mod:`.fused`).

Each layout is the one :class:`~noprop.training.trainer.Trainer` with its own order, step function and
callbacks; :func:`build_trainer` is the single place that picks them. See docs/parallel.md.
"""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..methods.base import Method
from ..tasks import Task
from ..training.callbacks import Callback
from ..training.offload import BlockOffloader
from ..training.trainer import Evaluator, Trainer
from .blocks import block_parallel_trainer
from .distributed import DistContext, DistributedError, parallel_context
from .fused import fused_trainer
from .placement import BlockPlacement


def build_trainer(
    method: Method,
    cfg: RunConfig,
    device: torch.device,
    ctx: DistContext | None,
    *,
    task: Task | None = None,
    progress: bool = True,
    callbacks: list[Callback] | None = None,
    evaluator: Evaluator | None = None,
) -> Trainer:
    """The trainer for ``cfg.train.parallel`` on this rank (``ctx`` None: one process); ``evaluator``
    the local validation evaluator (default :meth:`Trainer.local_evaluate`; block-parallel: rank 0's)."""
    callbacks = list(callbacks or [])
    kw = {"task": task, "progress": progress, "callbacks": callbacks, "evaluator": evaluator}
    if ctx is not None:
        trainer = block_parallel_trainer(method, cfg.train, device, ctx, **kw)  # type: ignore[arg-type]
    elif cfg.train.parallel == "fused":
        trainer = fused_trainer(method, cfg.train, device, **kw)  # type: ignore[arg-type]
    else:
        trainer = Trainer(method, cfg.train, device, **kw)  # type: ignore[arg-type]
    if cfg.train.offload_blocks:  # --order blocks (checked by RunConfig): one block per step
        units = [trainer.method.unit_modules(u) for u in range(trainer.method.num_units)]
        trainer.callbacks.insert(0, BlockOffloader(units, trainer.optimizers, device))
    return trainer


__all__ = [
    "BlockPlacement",
    "DistContext",
    "DistributedError",
    "build_trainer",
    "parallel_context",
]
