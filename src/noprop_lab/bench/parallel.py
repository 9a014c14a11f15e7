"""``noprop bench parallel``: NoProp-DT training throughput, sequential vs block-parallel vs fused.

One run measures, on the same data, model and core budget (default 2 cores):

* ``single``: one process with ``--cores`` threads, the sequential trainer (one block per step);
* ``blocks``: ``--cores`` processes × 1 thread launched with ``torch.distributed.run --standalone``,
  each training its own blocks with the per-step shared-gradient all-reduce (``--parallel blocks``);
* ``fused``: one process with ``--cores`` threads, all T blocks per step under vmap (``--parallel fused``).

Throughput is in **block-steps/s**: one block's forward, backward and optimiser step on one mini-batch
of ``--batch-size`` (a DT epoch is T·⌈N/B⌉ block-steps in every mode). Each mode runs in a fresh
subprocess (``python -m noprop_lab.bench.parallel --worker MODE``), takes a warm-up step per block, then
times ``--steps`` block-steps (block-parallel: ``--steps``/ranks per rank between two barriers; fused:
``--steps``/T fused steps). The JSON holds the three rates, their ratios, the per-step all-reduce
bytes, the machine (CPU, cores, load average before/after: the machine may be shared) and the measured
fp32 matmul FLOP/s with ``--cores`` threads as a named peak. Workers run with
``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it (see :data:`OMP_WAIT_POLICY`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from noprop import NoPropError, make_config
from noprop.arguments import BLOCKS, SECONDS, THREADS, count, field_count
from noprop.data import split_tensors
from noprop.parallel import build_trainer, parallel_context
from noprop.runs import build_for_data, load_data
from noprop.training import Step

from . import report
from .efficiency import matmul_flops_per_s

MODES = ("single", "blocks", "fused")
# Spinning OpenMP threads collapse (measured 10x-100x slower) whenever another process holds one of
# the cores, which on a shared machine would inflate the block-parallel speed-up: the multi-threaded
# baselines run with passive waiting unless $OMP_WAIT_POLICY says otherwise (1-thread ranks do not care).
OMP_WAIT_POLICY = "PASSIVE"


def _config(args: argparse.Namespace, mode: str):
    return make_config(
        method="dt",
        dataset=args.dataset,
        data_dir=args.data_dir,
        T=args.T,
        block=args.block,
        batch_size=args.batch_size,
        embedding=args.embedding,
        device="cpu",
        parallel={"single": "none", "blocks": "blocks", "fused": "fused"}[mode],
        order="interleaved" if mode == "fused" else "blocks",
        download=False,
    )


def worker(args: argparse.Namespace) -> dict[str, Any] | None:
    """Time one mode in this process (all ranks of it under torchrun); rank 0 returns the result."""
    mode = args.worker
    torch.set_num_threads(1 if mode == "blocks" else args.cores)
    cfg = _config(args, mode)
    with parallel_context(cfg) as ctx:
        task, data = load_data(cfg)
        method = build_for_data(cfg, task, data)
        device = torch.device("cpu")
        trainer = build_trainer(method, cfg, device, ctx, task=task, progress=False)
        x, y = split_tensors(data.train)  # your own data: read whole
        x = trainer.to_device(x)  # channels-last for the sequential/parallel trainers
        rank, world = (0, 1) if ctx is None else (ctx.rank, ctx.world_size)
        gen = torch.Generator().manual_seed(rank)

        def batch() -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.randint(0, x.shape[0], (cfg.train.batch_size,), generator=gen)
            return x[idx], y[idx]

        method.train()
        T = method.num_units
        if mode == "fused":
            step_blocks = T
            calls = max(1, args.steps // T)

            def one(i: int) -> None:
                trainer.step_fn(*batch(), Step(tuple(range(T)), torch.arange(0)), 0)
        else:
            units = list(range(T)) if ctx is None else ctx.units
            step_blocks = world
            calls = max(1, -(-args.steps // world))

            def one(i: int) -> None:
                trainer.step(*batch(), units[i % len(units)])

        for i in range(1 if mode == "fused" else len(units)):  # warm-up: optimiser state
            one(i)
        if ctx is not None:
            ctx.barrier("bench start")
        start = time.perf_counter()
        for i in range(calls):
            one(i)
        if ctx is not None:
            ctx.barrier("bench end")
        seconds = time.perf_counter() - start
        if rank != 0:
            return None
        result = {
            "mode": mode,
            "processes": world,
            "threads_per_process": torch.get_num_threads(),
            "block_steps": calls * step_blocks,
            "seconds": seconds,
            "steps_per_s": calls * step_blocks / seconds,
            "params_per_block": method.params_per_block(),
        }
        if ctx is not None:
            result["allreduce_bytes_per_step"] = trainer.step_fn.sync.bytes_per_step()  # type: ignore[attr-defined]
            result["placement"] = ctx.placement.describe()
        return result


def _worker_args(args: argparse.Namespace) -> list[str]:
    out = ["--dataset", args.dataset, "--T", str(args.T), "--block", args.block]
    out += ["--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    out += ["--embedding", args.embedding, "--cores", str(args.cores)]
    return out + (["--data-dir", args.data_dir] if args.data_dir else [])


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one mode's worker in a subprocess (torchrun for ``blocks``) and parse its JSON line."""
    src = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1" if mode == "blocks" else str(args.cores)
    env.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    module = ["-m", "noprop_lab.bench.parallel", "--worker", mode, *_worker_args(args)]
    if mode == "blocks":
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.cores}"]
        cmd = [sys.executable, *launcher, *module]
    else:
        cmd = [sys.executable, *module]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise NoPropError(
            f"bench worker {mode} failed (exit {proc.returncode}): {' | '.join(tail)}"
        )
    return json.loads(lines[-1])


def machine_info(cores: int) -> dict[str, Any]:

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    threads = torch.get_num_threads()
    torch.set_num_threads(cores)
    flops = matmul_flops_per_s(1024, 5)
    torch.set_num_threads(threads)
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "matmul_flops_per_s": flops,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    results = {mode: run_mode(mode, args) for mode in MODES}
    single, blocks, fused = (results[m]["steps_per_s"] for m in MODES)
    return {
        "single_steps_per_s": single,
        "block_parallel_steps_per_s": blocks,
        "fused_steps_per_s": fused,
        "block_parallel_speedup": blocks / single,
        "fused_speedup": fused / single,
        "config": {
            "dataset": args.dataset,
            "T": args.T,
            "block": args.block,
            "batch_size": args.batch_size,
            "embedding": args.embedding,
            "steps": args.steps,
            "cores": args.cores,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", OMP_WAIT_POLICY),
        },
        "modes": results,
        "machine": {
            **machine_info(args.cores),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def format_table(r: dict[str, Any]) -> str:
    m = r["modes"]
    rows = [
        f"single  1 proc x {m['single']['threads_per_process']} threads: "
        f"{r['single_steps_per_s']:.2f} block-steps/s",
        f"blocks  {m['blocks']['processes']} procs x 1 thread:   "
        f"{r['block_parallel_steps_per_s']:.2f} block-steps/s  ({r['block_parallel_speedup']:.2f}x)",
        f"fused   1 proc x {m['fused']['threads_per_process']} threads: "
        f"{r['fused_steps_per_s']:.2f} block-steps/s  ({r['fused_speedup']:.2f}x)",
        f"load average before/after: {r['machine']['load_average_before'][0]:.2f} / "
        f"{r['machine']['load_average_after'][0]:.2f} on {r['machine']['cpu_count']} cores",
    ]
    return "\n".join(rows)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir")
    p.add_argument("--T", type=BLOCKS, default=10, help="number of DT blocks")
    p.add_argument("--block", default="auto", help="auto (conv for MNIST), conv, mlp")
    p.add_argument("--batch-size", type=field_count("batch_size"), default=128)
    p.add_argument("--embedding", default="one-hot")
    p.add_argument("--steps", type=count(), default=200, help="timed block-steps per mode")
    p.add_argument(
        "--cores", type=THREADS, default=2, help="threads (single, fused) = processes (blocks)"
    )
    p.add_argument("--timeout", type=SECONDS, default=1800, help="seconds allowed per mode")
    p.add_argument("--out", help="write the JSON result here")


def main_bench(args: argparse.Namespace) -> int:
    """``noprop bench parallel`` (every flag is checked by its type: noprop.arguments)."""
    return report(run(args), args.out, format_table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parser.add_argument("--worker", choices=MODES)
    ns = parser.parse_args()
    if ns.worker:
        out = worker(ns)
        if out is not None:
            print(json.dumps(out), flush=True)
    else:
        sys.exit(main_bench(ns))
