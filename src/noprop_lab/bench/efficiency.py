"""``noprop bench efficiency``: NoProp vs its back-prop twin (and CT/FM vs adjoint) on one machine.

Each method runs in a fresh subprocess (``python -m noprop_lab.bench.efficiency --worker ...``) so its
memory figures are clean. A worker loads the data, records its baseline memory, builds the method and
trainer, then times ``--max-batches`` training steps and an inference pass, and reports:

* ``train_seconds_per_step`` and from it ``epoch_seconds`` = steps per epoch × seconds per step, where
  a DT epoch is T passes of one-block steps (Algorithm 1) and a back-prop epoch one pass of T-block steps;
* ``train_samples_per_s`` = training examples per epoch / epoch_seconds (comparable across methods) and
  ``block_steps_per_s`` (one block processing one mini-batch forward and backward);
* ``inference_samples_per_s`` (default inference, batches of ``eval_batch_size``);
* ``peak_train_memory_bytes``: CUDA ``max_memory_allocated`` during training; on CPU the peak RSS
  (VmHWM, reset through /proc/self/clear_refs once the data are loaded) minus the RSS at that point;
  with the breakdown parameters / gradients / optimiser state / the rest (activations, workspace);
* ``flops_per_step`` counted with ``torch.utils.flop_counter.FlopCounterMode`` and the achieved FLOP/s;
* continuous-time methods: ``image_cache`` — seconds of the same inference (``CACHE_SAMPLES`` test
  images, ``CACHE_STEPS`` steps) with the image features computed once per input (what noprop does)
  and recomputed at every step (the naive loop), and their ratio ``speedup``.

The parent also measures the machine's fp32 matmul FLOP/s (``machine_matmul_flops_per_s``) in the same
run and writes the DT / back-prop time and memory ratios.

``--background-load K`` measures each method a second time while K single-threaded busy loops, started
and stopped by the bench (and each bounded by ``--background-seconds``), compete for the cores: the
worker's ``loaded`` figures and ``loaded_over_quiet`` (loaded / quiet training samples per second) show
what a busy machine costs, measured rather than guessed. The OpenMP wait policy in force
(``$OMP_WAIT_POLICY``) is recorded with the machine; experiments/omp_wait_study.py compares settings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from noprop import (
    METHODS,
    OMP_STARTUP,
    PRECISIONS,
    NoPropError,
    Trainer,
    build_method,
    evaluate,
    make_config,
    method_fields,
    native_bf16,
    pick_device,
)
from noprop.arguments import BLOCKS, SECONDS, THREADS, count, field_count, int_list
from noprop.data import split_tensors
from noprop.runs import load_data

from . import report

PAIRS = (("dt", "backprop"), ("ct", "adjoint"), ("fm", "adjoint"))
CACHE_SAMPLES, CACHE_STEPS = 200, 100  # image-cache timing: the naive loop is slow, keep it short


@contextlib.contextmanager
def image_branch_every_step(block: torch.nn.Module) -> Iterator[None]:
    """Make a CT block recompute its image branch at every inference step (the naive loop).

    Inference calls ``fuse(encode_x(x), z, t)`` with ``encode_x`` hoisted out of the step loop; inside
    this context ``encode_x`` passes x through and ``fuse`` encodes it on every call, so the same
    code path runs with the cache disabled and gives the same outputs.
    """
    encode, fuse = block.encode_x, block.fuse
    block.encode_x = lambda x: x  # type: ignore[method-assign]
    block.fuse = lambda h, z, t: fuse(encode(h), z, t)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del block.encode_x, block.fuse  # the class's methods again


def time_image_cache(method, x: torch.Tensor) -> dict[str, float]:
    """Seconds of deterministic inference on x with and without the image-feature cache."""
    method.eval()
    seconds = {}
    for name, ctx in (
        ("cached", contextlib.nullcontext()),
        ("uncached", image_branch_every_step(method.block)),
    ):
        with ctx:
            start = time.perf_counter()
            method.predict_steps(x, deterministic=True, steps=CACHE_STEPS)
            seconds[name] = time.perf_counter() - start
    return {
        "samples": x.shape[0],
        "steps": CACHE_STEPS,
        "cached_seconds": seconds["cached"],
        "uncached_seconds": seconds["uncached"],
        "speedup": seconds["uncached"] / seconds["cached"],
    }


def matmul_flops_per_s(n: int = 2048, repeats: int = 10) -> float:
    """Measured fp32 matmul throughput of this process's torch (best of three timings)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeats / best


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _optimizer_bytes(trainer) -> int:
    opts = [*trainer.optimizers, trainer.shared_optimizer]
    return sum(
        _tensor_bytes(v for st in o.state.values() for v in st.values())
        for o in opts
        if o is not None
    )


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one method in this process (see module docstring)."""
    overrides = json.loads(args.overrides)
    cfg = make_config(method=args.method, dataset=args.dataset, data_dir=args.data_dir, **overrides)
    device = pick_device(args.device)
    task, data = load_data(cfg)
    x, y = split_tensors(data.train)  # your own data: read whole
    if (
        cfg.train.channels_last and x.dim() == 4
    ):  # the layout copy belongs to the data, not training
        x = x.contiguous(memory_format=torch.channels_last)
    cuda = device.type == "cuda"
    baseline = _rss_bytes("VmRSS")
    rss_reset = _reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    method = build_method(cfg, task, None, x, y)
    trainer = Trainer(method, cfg, device, task=task, progress=False)
    xd, yd = trainer.to_device(x), y.to(device)
    units, bs = method.num_units, cfg.train.batch_size
    gen = torch.Generator().manual_seed(0)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, x.shape[0], (bs,), generator=gen).to(device)
        return xd[idx], yd[idx]

    method.train()
    for unit in range(units):  # warm-up: every unit once (allocates optimiser state)
        trainer.step(*batch(), unit)
    # an adjoint step integrates the ODE forward and backward (seconds on CPU): a few suffice
    steps = (
        min(args.max_batches, args.adjoint_max_batches)
        if args.method == "adjoint"
        else args.max_batches
    )
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        trainer.step(*batch(), i % units)
    if cuda:
        torch.cuda.synchronize(device)
    sec_per_step = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) if cuda else _rss_bytes("VmHWM")
    try:
        with FlopCounterMode(display=False) as counter:
            trainer.step(*batch(), 0)
        flops_per_step: int | None = counter.get_total_flops()
    except AssertionError:
        # torchdiffeq's adjoint runs its backward ODE inside an autograd.Function, which the
        # counter's tracing does not support; report no count rather than a wrong one
        flops_per_step = None
    n_test = min(args.eval_samples, data.test[0].shape[0])
    xt, yt = trainer.to_device(data.test[0][:n_test]), data.test[1][:n_test].to(device)
    start = time.perf_counter()
    evaluate(method, xt, yt, cfg.train.eval_batch_size, precision=cfg.train.precision)
    infer_s = time.perf_counter() - start
    image_cache = time_image_cache(method, xt[:CACHE_SAMPLES]) if method.continuous_time else None
    blocks_per_step = 1 if units > 1 else getattr(method, "T", 1)
    steps_per_epoch = -(-x.shape[0] // bs) * units
    epoch_seconds = steps_per_epoch * sec_per_step
    params = list(method.parameters())
    param_bytes = _tensor_bytes(params)
    grad_bytes = param_bytes  # every parameter gets a gradient at some step (set_to_none between)
    opt_bytes = _optimizer_bytes(trainer)
    peak_train = peak - baseline
    return {
        "method": args.method,
        "device": str(device),
        "precision": cfg.train.precision,
        "native_bf16": native_bf16(device),
        "num_train": int(x.shape[0]),
        "batch_size": bs,
        "measured_steps": steps,
        "train_seconds_per_step": sec_per_step,
        "epoch_seconds": epoch_seconds,
        "train_samples_per_s": x.shape[0] / epoch_seconds,
        "block_steps_per_s": blocks_per_step / sec_per_step,
        "inference_samples_per_s": n_test / infer_s,
        "flops_per_step": flops_per_step,
        "achieved_flops_per_s": None if flops_per_step is None else flops_per_step / sec_per_step,
        "peak_train_memory_bytes": int(peak_train),
        "peak_rss_reset": rss_reset if not cuda else None,
        "memory_breakdown_bytes": {
            "parameters": param_bytes,
            "gradients_upper_bound": grad_bytes,
            "optimizer_state": opt_bytes,
            "activations_and_other": int(peak_train - param_bytes - opt_bytes),
        },
        "params_per_block": method.params_per_block(),
        "T": getattr(method, "T", None),
        "num_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_startup": dict(OMP_STARTUP),
        "image_cache": image_cache,
    }


def run_worker(method: str, args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "noprop_lab.bench.efficiency", "--worker", "--method", method,
        "--dataset", args.dataset, "--max-batches", str(args.max_batches),
        "--adjoint-max-batches", str(args.adjoint_max_batches),
        "--device", args.device, "--eval-samples", str(args.eval_samples),
        "--overrides", json.dumps(overrides),
    ]  # fmt: skip
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise NoPropError(f"bench worker for {method} failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


LOADED_KEYS = (
    "train_samples_per_s", "block_steps_per_s", "epoch_seconds", "omp_wait_policy", "omp_startup",
)  # fmt: skip


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    out = {}
    ok = {m for m, r in results.items() if "error" not in r}
    for a, b in PAIRS:
        if a in ok and b in ok:
            ra, rb = results[a], results[b]
            out[f"{a}_vs_{b}_time_ratio"] = ra["epoch_seconds"] / rb["epoch_seconds"]
            out[f"{a}_vs_{b}_memory_ratio"] = ra["peak_train_memory_bytes"] / max(
                rb["peak_train_memory_bytes"], 1
            )
    return out


BUSY_LOOP = (
    "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
)


@contextlib.contextmanager
def background_load(k: int, seconds: float) -> Iterator[None]:
    """``k`` single-threaded busy processes for the duration of the block (each ends by itself
    after ``seconds`` at the latest, so a killed bench leaves nothing spinning for long)."""
    procs = [
        subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(seconds=seconds)])
        for _ in range(k)
    ]
    try:
        time.sleep(0.5)  # let them start before the measurement does
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def method_overrides(method: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides that apply to ``method`` (``--T`` means nothing to ct/fm/adjoint)."""
    owners = method_fields()
    return {k: v for k, v in overrides.items() if k not in owners or METHODS[method] in owners[k]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise NoPropError(f"unknown method(s) {unknown}; available: {', '.join(METHODS)}")
    overrides: dict[str, Any] = {}
    if args.T is not None:
        overrides["T"] = args.T
    if args.max_train_samples is not None:
        overrides["max_train_samples"] = args.max_train_samples
    out: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
        "background_load": args.background_load,
        "machine_matmul_flops_per_s": matmul_flops_per_s(),
        "dataset": args.dataset,
        "max_batches": args.max_batches,
        "methods": {},
    }
    for m in methods:
        print(f"bench efficiency: measuring {m} ...", file=sys.stderr, flush=True)
        try:
            out["methods"][m] = r = run_worker(m, args, method_overrides(m, overrides))
            if args.precision != "32":  # the same worker under the mixed policy, right after
                print(f"bench efficiency: measuring {m} in {args.precision} ...", file=sys.stderr,
                      flush=True)  # fmt: skip
                mixed = run_worker(m, args, {**method_overrides(m, overrides),
                                             "precision": args.precision})  # fmt: skip
                r["mixed"] = mixed
                r["mixed_over_32_step_time"] = (
                    mixed["train_seconds_per_step"] / r["train_seconds_per_step"]
                )
                r["mixed_over_32_peak_memory"] = mixed["peak_train_memory_bytes"] / max(
                    r["peak_train_memory_bytes"], 1
                )
                r["mixed_over_32_inference_time"] = (
                    r["inference_samples_per_s"] / mixed["inference_samples_per_s"]
                )
            if args.background_load:
                print(
                    f"bench efficiency: measuring {m} under load ...", file=sys.stderr, flush=True
                )
                with background_load(args.background_load, args.background_seconds):
                    loaded = run_worker(m, args, method_overrides(m, overrides))
                r["loaded"] = {k: loaded[k] for k in LOADED_KEYS}
                r["loaded_over_quiet"] = loaded["train_samples_per_s"] / r["train_samples_per_s"]
        except NoPropError as e:  # keep the other methods' figures; say which one failed
            out["methods"][m] = {"error": str(e)}
            print(f"bench efficiency: {e}", file=sys.stderr, flush=True)
            continue
        achieved = r["achieved_flops_per_s"]
        peak = out["machine_matmul_flops_per_s"]
        r["fraction_of_matmul_peak"] = None if achieved is None else achieved / peak
    out.update(ratios(out["methods"]))
    if args.memory_vs_T:
        out["memory_vs_T"] = memory_vs_T(args, args.memory_vs_T)
    return out


def memory_vs_T(args: argparse.Namespace, Ts: list[int]) -> list[dict[str, Any]]:
    """Peak training memory of DT and back-prop as the number of blocks grows."""
    rows = []
    short = argparse.Namespace(**{**vars(args), "max_batches": max(4, args.max_batches // 5)})
    for T in Ts:
        row: dict[str, Any] = {"T": T}
        for m in ("dt", "backprop"):
            r = run_worker(m, short, {"T": T})
            row[f"{m}_peak_train_memory_bytes"] = r["peak_train_memory_bytes"]
            row[f"{m}_parameter_bytes"] = r["memory_breakdown_bytes"]["parameters"]
            row[f"{m}_activations_and_other_bytes"] = r["memory_breakdown_bytes"][
                "activations_and_other"
            ]
        rows.append(row)
    return rows


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"machine fp32 matmul: {result['machine_matmul_flops_per_s'] / 1e9:.1f} GFLOP/s",
        f"{'method':<10}{'epoch s':>10}{'samples/s':>11}{'blk-steps/s':>13}{'infer/s':>10}"
        f"{'peak MiB':>10}{'GFLOP/s':>9}{'of peak':>9}",
    ]
    for m, r in result["methods"].items():
        if "error" in r:
            lines.append(f"{m:<10}failed: {r['error']}")
            continue
        gflops = (
            "n/a" if r["achieved_flops_per_s"] is None else f"{r['achieved_flops_per_s'] / 1e9:.1f}"
        )
        frac = (
            "n/a" if r["fraction_of_matmul_peak"] is None else f"{r['fraction_of_matmul_peak']:.0%}"
        )
        lines.append(
            f"{m:<10}{r['epoch_seconds']:>10.1f}{r['train_samples_per_s']:>11.1f}"
            f"{r['block_steps_per_s']:>13.2f}{r['inference_samples_per_s']:>10.1f}"
            f"{r['peak_train_memory_bytes'] / 2**20:>10.1f}{gflops:>9}{frac:>9}"
        )
    for m, r in result["methods"].items():
        if "mixed" in r:
            mx = r["mixed"]
            lines.append(
                f"{m} {mx['precision']} / 32: step time {r['mixed_over_32_step_time']:.3f} "
                f"({mx['train_seconds_per_step'] * 1e3:.1f} vs {r['train_seconds_per_step'] * 1e3:.1f}"
                f" ms), peak memory {r['mixed_over_32_peak_memory']:.3f}, inference time "
                f"{r['mixed_over_32_inference_time']:.3f}"
                + (
                    " [no native bf16 on this device]"
                    if mx["precision"] == "bf16-mixed" and not mx["native_bf16"]
                    else ""
                )
            )
    for m, r in result["methods"].items():
        c = r.get("image_cache")
        if c:
            lines.append(
                f"{m} inference, {c['samples']} images × {c['steps']} steps: image features cached "
                f"{c['cached_seconds']:.2f} s, recomputed every step {c['uncached_seconds']:.2f} s "
                f"→ {c['speedup']:.1f}× faster"
            )
    for k, v in result.items():
        if k.endswith("_ratio"):
            lines.append(f"{k}: {v:.3f}")
    for m, r in result["methods"].items():
        if "loaded" in r:
            lines.append(
                f"{m} with {result['background_load']} busy process(es): "
                f"{r['loaded']['train_samples_per_s']:.1f} samples/s vs {r['train_samples_per_s']:.1f} "
                f"quiet → loaded/quiet {r['loaded_over_quiet']:.2f} (OMP_WAIT_POLICY quiet: "
                f"{r.get('omp_wait_policy')}, loaded: {r['loaded'].get('omp_wait_policy')})"
            )
    for row in result.get("memory_vs_T", []):
        lines.append(
            f"T={row['T']:<4} peak MiB: dt {row['dt_peak_train_memory_bytes'] / 2**20:.1f}, "
            f"backprop {row['backprop_peak_train_memory_bytes'] / 2**20:.1f}"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--methods", default="dt,backprop,ct,fm,adjoint", help="comma-separated methods to measure"
    )
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir")
    p.add_argument(
        "--max-batches", type=count(), default=50, help="timed training steps per method"
    )
    p.add_argument(
        "--adjoint-max-batches",
        type=count(),
        default=5,
        help="timed steps for adjoint (seconds each)",
    )
    p.add_argument("--max-train-samples", type=field_count("max_train_samples"))
    p.add_argument("--T", type=BLOCKS, help="number of blocks (default: the method's default)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--eval-samples", type=count(), default=1000, help="test examples for the inference timing"
    )
    p.add_argument(
        "--memory-vs-T",
        type=int_list(BLOCKS),
        help="also measure peak memory at these T, e.g. 10,20,40",
    )
    p.add_argument(
        "--background-load",
        type=count(0, THREADS.high),
        default=0,
        metavar="K",
        help="also measure each method while K single-threaded busy processes run (default 0)",
    )
    p.add_argument(
        "--background-seconds",
        type=SECONDS,
        default=1800.0,
        help="upper bound on each busy process's life in seconds (default 1800)",
    )
    p.add_argument("--precision", default="32", choices=PRECISIONS,
                   help="also measure every method under this --precision, right after its float32 "
                   "measurement, and report mixed / 32 ratios (default 32: float32 only)")  # fmt: skip
    p.add_argument("--out", help="write the JSON result here")


def main_bench(args: argparse.Namespace) -> int:
    """``noprop bench efficiency`` (every flag is checked by its type: noprop.arguments)."""
    return report(run(args), args.out, format_table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--method", default="dt")
    parser.add_argument("--overrides", default="{}")
    ns = parser.parse_args()
    if ns.worker:
        print(json.dumps(worker(ns)))
    else:
        sys.exit(main_bench(ns))
