"""Which rank trains which units: :class:`BlockPlacement` (rank → blocks).

World of W ranks = B block groups × D data replicas (W = B·D). Block group g owns a contiguous range of
units (DT blocks); its D replicas train those units on disjoint shards of every mini-batch. The modes
of ``--parallel`` map to degrees as follows:

* ``blocks`` with W ≤ T: B = W, D = 1 — every rank owns ⌈T/W⌉ or ⌊T/W⌋ blocks.
* ``blocks`` with W > T: B = T, D = W / T (W must be a multiple of T) — the two-level blocks × data form.
* ``data``: B = 1, D = W — every rank trains every unit on 1/W of each batch (any method).

Balanced contiguous split (not round-robin): group g gets units [g·q + min(g, r), (g+1)·q + min(g+1, r))
with q, r = divmod(T, B). All DT blocks cost the same (same architecture, same data), so any split with
⌈T/B⌉ / ⌊T/B⌋ units per group is equally balanced; contiguity is chosen because it keeps a rank's blocks
adjacent in the inference chain z_0 → … → z_T (a pipelined inference across ranks would hand z over
B − 1 times instead of T − 1) and makes per-rank logs easy to read. Ranks of one block group are
contiguous too (rank = g·D + k): with torchrun's rank order that puts a group's D replicas on the same
node when D divides the processes per node, so the large per-step data-parallel all-reduce of the block
gradients stays inside a node and only the small shared-parameter all-reduce crosses nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

MODES = ("blocks", "data")


@dataclass(frozen=True)
class BlockPlacement:
    """Degrees of a parallel run and the rank → units map; validated on construction."""

    num_units: int
    world_size: int
    data_degree: int = 1

    def __post_init__(self) -> None:
        if self.num_units < 1:
            raise ConfigError(f"need at least one unit to place (got {self.num_units})")
        if self.world_size < 1:
            raise ConfigError(f"world size must be >= 1 (got {self.world_size})")
        if self.data_degree < 1 or self.world_size % self.data_degree:
            raise ConfigError(
                f"data-parallel degree {self.data_degree} must divide the world size {self.world_size}"
            )
        if self.block_degree > self.num_units:
            raise ConfigError(
                f"{self.block_degree} block groups for {self.num_units} blocks: a group would own "
                "no block; use fewer ranks or more data replicas"
            )

    @classmethod
    def for_mode(cls, mode: str, num_units: int, world_size: int) -> BlockPlacement:
        """The placement ``--parallel mode`` uses on ``world_size`` ranks (module docstring)."""
        if mode == "data":
            return cls(num_units, world_size, world_size)
        if mode != "blocks":
            raise ConfigError(f"no rank placement for --parallel {mode}; use one of {MODES}")
        if world_size <= num_units:
            return cls(num_units, world_size, 1)
        if world_size % num_units:
            raise ConfigError(
                f"--parallel blocks on {world_size} ranks with --T {num_units}: the world size "
                f"(--nnodes × --nproc-per-node) must be <= T or a multiple of T (blocks × data)"
            )
        return cls(num_units, world_size, world_size // num_units)

    @property
    def block_degree(self) -> int:
        """B: number of block groups."""
        return self.world_size // self.data_degree

    def group_of(self, rank: int) -> int:
        """Block group g of ``rank``."""
        self._check_rank(rank)
        return rank // self.data_degree

    def replica_of(self, rank: int) -> int:
        """Index k of ``rank`` among its group's D data replicas."""
        self._check_rank(rank)
        return rank % self.data_degree

    def group_ranks(self, group: int) -> list[int]:
        """The D ranks of block group ``group``."""
        return list(range(group * self.data_degree, (group + 1) * self.data_degree))

    def group_units(self, group: int) -> list[int]:
        """The contiguous units owned by block group ``group`` (balanced split)."""
        q, r = divmod(self.num_units, self.block_degree)
        start = group * q + min(group, r)
        return list(range(start, start + q + (group < r)))

    def units_of(self, rank: int) -> list[int]:
        """The units ``rank`` trains."""
        return self.group_units(self.group_of(rank))

    def owner(self, unit: int) -> int:
        """The first rank (replica 0) of the group that owns ``unit``: it reports the unit's state."""
        if not 0 <= unit < self.num_units:
            raise ValueError(f"unit {unit} out of range 0..{self.num_units - 1}")
        group = next(g for g in range(self.block_degree) if unit in self.group_units(g))
        return group * self.data_degree

    @property
    def max_units(self) -> int:
        """Units of the busiest rank: every rank takes this many passes (or interleaved steps) per
        epoch, idling with zero gradients where it has fewer, so all collectives pair up."""
        return -(-self.num_units // self.block_degree)

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} out of range 0..{self.world_size - 1}")

    def describe(self) -> str:
        groups = ", ".join(
            f"ranks {self.group_ranks(g)} → blocks {[u + 1 for u in self.group_units(g)]}"
            for g in range(self.block_degree)
        )
        return f"{self.block_degree} block group(s) × {self.data_degree} data replica(s): {groups}"
