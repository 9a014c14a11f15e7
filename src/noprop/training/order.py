"""The order of the training steps: which unit trains on which mini-batch, and with what seed.

An order yields :class:`Step` s — (units, batch indices) — for one epoch:

* :class:`Algorithm1` (``--order blocks``, the default): for each unit (block t), a full pass over the
  shuffled training set. One DT epoch is therefore T passes over the data.
* :class:`Interleaved` (``--order interleaved``): for each mini-batch, one step of every unit in turn;
  with ``fused=True`` one step of all units at once (``--parallel fused``).
* :class:`RandomBlock` (``--order random``): for each mini-batch, one step of one unit drawn uniformly
  (DiffusionBlocks' authors' order). One epoch is one pass over the data in all; each unit sees about
  1/U of it, so U epochs of it match one epoch of the other orders in steps per unit.
* Block-parallel ranks use a placement-aware order (:mod:`noprop.parallel.blocks`).

Randomness: before each (epoch, unit) pass the global torch RNG is seeded from (seed, epoch, unit), and
the pass's shuffle uses a generator seeded the same way. A pass is therefore reproducible on its own,
which makes resume exact and lets block-parallel training reproduce sequential training block by block.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def derive_seed(seed: int, epoch: int, unit: int) -> int:
    """A distinct, reproducible seed for one (epoch, unit) pass (unit −1: an interleaved pass)."""
    return (seed * 1_000_003 + epoch * 10_007 + unit * 101 + 17) % (2**62)


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Shuffled index batches; a final batch of one example is dropped (BatchNorm needs two)."""
    perm = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        if idx.numel() > 1 or n == 1:
            yield idx


def seeded_batches(n: int, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Seed torch's global RNG (the noise of the pass) and shuffle with the same seed."""
    torch.manual_seed(seed)
    return batches(n, batch_size, torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class Step:
    """One training step: the units to update on the mini-batch ``idx`` (``()`` = an idle step of a
    parallel rank, which still joins the step's collectives), and this rank's share of the batch."""

    units: tuple[int, ...]
    idx: Tensor
    fraction: float = 1.0


class Algorithm1:
    """Blocks outer, batches inner (Algorithm 1)."""

    def __init__(self, units: Sequence[int], batch_size: int, seed: int) -> None:
        self.units, self.batch_size, self.seed = list(units), batch_size, seed

    def __call__(self, n: int, epoch: int) -> Iterator[Step]:
        for unit in self.units:
            for idx in seeded_batches(n, self.batch_size, derive_seed(self.seed, epoch, unit)):
                yield Step((unit,), idx)

    def num_steps(self, n: int) -> int:
        return math.ceil(n / self.batch_size) * len(self.units)


class Interleaved:
    """Batches outer, units inner: every unit steps on each mini-batch (all at once if ``fused``)."""

    def __init__(
        self, units: Sequence[int], batch_size: int, seed: int, *, fused: bool = False
    ) -> None:
        self.units, self.batch_size, self.seed = list(units), batch_size, seed
        self.fused = fused

    def __call__(self, n: int, epoch: int) -> Iterator[Step]:
        for idx in seeded_batches(n, self.batch_size, derive_seed(self.seed, epoch, -1)):
            if self.fused:
                yield Step(tuple(self.units), idx)
            else:
                for unit in self.units:
                    yield Step((unit,), idx)

    def num_steps(self, n: int) -> int:
        per_batch = 1 if self.fused else len(self.units)
        return math.ceil(n / self.batch_size) * per_batch


class RandomBlock:
    """One unit drawn uniformly per mini-batch (``--order random``).

    The draws come from their own generator, seeded from (seed, epoch) like the shuffle, so an epoch
    is reproducible on its own (exact resume) and the noise draws are the interleaved pass's."""

    #: passes over the training data per epoch, all units together (the other orders: one per unit)
    passes_per_epoch = 1.0

    def __init__(self, units: Sequence[int], batch_size: int, seed: int) -> None:
        self.units, self.batch_size, self.seed = list(units), batch_size, seed

    def __call__(self, n: int, epoch: int) -> Iterator[Step]:
        pick = torch.Generator().manual_seed(derive_seed(self.seed, epoch, -3))
        for idx in seeded_batches(n, self.batch_size, derive_seed(self.seed, epoch, -1)):
            unit = self.units[int(torch.randint(len(self.units), (), generator=pick))]
            yield Step((unit,), idx)

    def num_steps(self, n: int) -> int:
        return math.ceil(n / self.batch_size)
