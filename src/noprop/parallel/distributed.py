"""torch.distributed set-up and teardown for ``--parallel blocks|data`` under torchrun.

The launcher (``torchrun`` / ``python -m torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`parallel_context`
reads them, picks the backend (gloo on CPU, NCCL on CUDA, one GPU per local rank), joins the process
group with a finite timeout (``--dist-timeout-s``), builds the data-parallel groups of the placement,
and always calls ``destroy_process_group`` on the way out.

Failure policy: every collective of the parallel trainers goes through :func:`collective`, which turns
the backend's error (a peer's socket closed because it died, or no answer within the timeout because
it hangs) into a one-line :class:`DistributedError` naming the rank and the operation; the CLI prints it
and exits non-zero, and torchrun then stops the remaining ranks. So a dead or stuck rank fails the job
within ``--dist-timeout-s`` instead of hanging it. On CUDA the NCCL watchdog enforces the same timeout.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..config import RunConfig
from ..device import pick_device
from ..errors import ConfigError, NoPropError
from .placement import BlockPlacement

R = TypeVar("R")
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


class DistributedError(NoPropError):
    """Another rank died, hung past ``--dist-timeout-s``, or could not be reached."""


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launch_env() -> LaunchEnv | None:
    """The torchrun environment, or None when not launched by torchrun (no ``$WORLD_SIZE``)."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        values = {
            k: int(os.environ.get(k, "0" if k != "LOCAL_WORLD_SIZE" else "1")) for k in ENV_KEYS
        }
    except ValueError:
        raise ConfigError(f"bad torchrun environment: {ENV_KEYS} must be integers") from None
    env = LaunchEnv(
        values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"]
    )
    if not 0 <= env.rank < env.world_size:
        raise ConfigError(f"bad torchrun environment: RANK={env.rank}, WORLD_SIZE={env.world_size}")
    return env


@dataclass
class DistContext:
    """This rank's view of a parallel run (passed to the parallel trainers; never to models)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    placement: BlockPlacement
    timeout_s: float
    data_group: Any = None  # the ProcessGroup of this rank's D replicas (None: D = 1)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def units(self) -> list[int]:
        return self.placement.units_of(self.rank)

    @property
    def replica(self) -> int:
        return self.placement.replica_of(self.rank)

    def barrier(self, what: str) -> None:
        with collective(self, what):
            dist.barrier()

    def local_main_first(self, fn: Callable[[], R], what: str) -> R:
        """Run ``fn`` on local rank 0 first (e.g. a download), then on the other ranks."""
        if self.local_rank != 0:
            self.barrier(f"waiting for local rank 0 {what}")
        result = fn()
        if self.local_rank == 0:
            self.barrier(f"waiting for local rank 0 {what}")
        return result


@contextmanager
def collective(ctx: DistContext | None, what: str) -> Iterator[None]:
    """Turn a backend failure inside the block into a one-line :class:`DistributedError`."""
    try:
        yield
    except RuntimeError as e:  # gloo/NCCL errors (DistBackendError is a RuntimeError)
        rank = "?" if ctx is None else ctx.rank
        timeout = "" if ctx is None else f" (--dist-timeout-s {ctx.timeout_s:g})"
        detail = " ".join(str(e).split())[:240]
        raise DistributedError(
            f"rank {rank}: {what} failed: another rank died, hung past the timeout{timeout} or "
            f"is unreachable; check the other ranks' output. Backend said: {detail}"
        ) from None


def backend_for(name: str, device: torch.device, env: LaunchEnv) -> str:
    """gloo on CPU; NCCL with one GPU per local rank; gloo again when local ranks share a GPU
    (``--device cuda:N``): NCCL refuses two ranks on one device, gloo stages CUDA tensors through
    host memory — slower, but it runs block-parallel on a one-GPU machine. [I] Unverified on CUDA
    in this repository's CI (no GPU): scripts/gpu-check.sh runs it."""
    if device.type != "cuda":
        return "gloo"
    return "gloo" if name.startswith("cuda:") and env.local_world_size > 1 else "nccl"


def rank_device(name: str, env: LaunchEnv) -> torch.device:
    """One device per rank: CPU, or ``cuda:LOCAL_RANK`` for ``auto``/``cuda``; ``cuda:N`` puts every
    local rank on GPU N (time-sharing one GPU: checks and small runs; see :func:`backend_for`)."""
    device = pick_device(name)
    if device.type != "cuda":
        return device
    if name.startswith("cuda:"):
        return device
    if env.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"local rank {env.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
            "use --nproc-per-node <= the number of GPUs or --device cpu"
        )
    return torch.device("cuda", env.local_rank)


def _num_units(cfg: RunConfig) -> int:
    """Units to place: the method's (one for methods whose units do not train alone)."""
    cls = cfg.method.cls
    return cls.units_for(cfg.options) if cls.local_units else 1


def _data_group(placement: BlockPlacement, rank: int) -> Any:
    """Create every block group's replica group (all ranks must call new_group in the same order)."""
    if placement.data_degree == 1:
        return None
    if placement.block_degree == 1:
        return dist.group.WORLD
    mine = None
    for g in range(placement.block_degree):
        group = dist.new_group(placement.group_ranks(g))
        if rank in placement.group_ranks(g):
            mine = group
    return mine


@contextmanager
def parallel_context(cfg: RunConfig) -> Iterator[DistContext | None]:
    """Join the process group for a torchrun launch of ``--parallel blocks|data``; else yield None.

    ``--parallel blocks|data`` without torchrun (or with one rank) trains in one process, which is
    exactly the sequential trainer. ``--parallel none|fused`` under torchrun with several ranks is an
    error: every rank would train the whole model and write the same run directory.
    """
    mode, env = cfg.train.parallel, launch_env()
    if env is None or env.world_size == 1:
        if mode in ("blocks", "data") and env is None:
            print(
                f"noprop: note: --parallel {mode} without torchrun trains in this one process "
                "(the sequential trainer); launch with torchrun --nproc-per-node N to parallelise",
                file=sys.stderr,
            )
        yield None
        return
    if mode not in ("blocks", "data"):
        raise ConfigError(
            f"launched on {env.world_size} ranks (WORLD_SIZE) but --parallel {mode} runs in one "
            "process; use --parallel blocks (NoProp-DT) or --parallel data"
        )
    placement = BlockPlacement.for_mode(mode, _num_units(cfg), env.world_size)
    device = rank_device(cfg.train.device, env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout_s = cfg.train.dist_timeout_s
    ctx = DistContext(env.rank, env.world_size, env.local_rank, device, placement, timeout_s)
    with collective(ctx, "joining the process group"):
        dist.init_process_group(
            backend_for(cfg.train.device, device, env),
            rank=env.rank,
            world_size=env.world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    try:
        with collective(ctx, "creating the data-parallel groups"):
            ctx.data_group = _data_group(placement, env.rank)
        yield ctx
    finally:
        dist.destroy_process_group()
