"""``noprop lm compare``: NoProp-LM against a back-prop transformer at equal size and equal FLOPs.

The question (issue 11): a transformer also works in its output space — every layer adds an update to
the residual stream, and the logit lens reads the stream after each layer as a next-byte guess.
NoProp prescribes such a path (the noising process in label-embedding space) and trains each block to
take one step of it, alone. This command trains both on the same bytes and reports where their paths
differ.

What it does, in order (every step is resumable: rerunning with the same ``--out`` reuses finished
runs and resumes unfinished ones):

1. **Models.** Back-prop: a causal transformer of ``--layers`` pre-LN layers of width ``--width``
   (``--method backprop``). NoProp-LM: ``--layers`` NoProp-DT blocks of one transformer layer each
   (``--method dt --block-layers 1``) whose width is chosen so that the two have the same number of
   *non-embedding* parameters (within 5%). [I] The token/position embedding tables are excluded from
   the match, as in Kaplan et al. (2020): they are lookups that cost no FLOPs, and every NoProp block
   has its own (T tables where the transformer has one), so matching total parameters would make the
   NoProp model computationally smaller by about T × (256 + context) × w parameters' worth of
   matmuls it does not have. Total parameters are reported too.
2. **FLOPs** of one training step of each model (forward + backward of its loss; for NoProp, the sum
   over the T blocks' steps) are counted with ``torch.utils.flop_counter`` (plus the CPU flash-attention
   kernels, which it does not know); per-token FLOPs must agree within 10%, else the report says so.
3. **Budget.** A short timed calibration (a few optimiser steps of each) gives each model's FLOP/s;
   the common FLOP budget F is set so that the two trainings take 2 × ``--minutes`` in all
   (F = 2·M·60 / (1/r_bp + 1/r_np)), i.e. about M minutes each. F becomes a number of training windows
   per model (epochs × a seeded random subset of windows, ``--max-train-samples``).
4. **Training** runs ``noprop train`` in a child process per model into ``OUT/backprop`` and
   ``OUT/noprop`` (ordinary run directories: ``noprop eval``, ``--resume``); the child's peak resident
   memory is read with ``os.wait4``. Model selection: the validation split only.
5. **Evaluation** on the test split (:mod:`noprop.runs.language`): bits per byte and top-1 accuracy
   (NoProp: deterministic chain, one stochastic chain, and the mixture of ``--chains`` chains), the
   unigram baseline, the trajectory in output space (logit lens per layer / read-out per block), and
   ``--sample-bytes`` bytes sampled by each model from the same prompt.
6. **Report**: ``report.json``, ``report.md`` and ``trajectory.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils import flop_counter as fc

from .. import plots
from ..atomic import atomic_write, atomic_write_json
from ..build import build_method
from ..config import RunConfig, make_config
from ..data.text import TEXT_DATASETS
from ..device import pick_device
from ..errors import ConfigError, NoPropError
from ..methods import Method
from ..models import count_parameters as count_trainable
from ..models.config import TEXT_EMBED_DIM
from ..models.transformer import embedding_parameters
from ..precision import PRECISIONS, autocast
from ..rundir import RunDir
from ..runs.evaluate import load_run_with_task
from ..runs.language import (
    fit_temperatures,
    generate,
    mean_pairwise_cosine,
    test_scores,
)
from ..tasks import LanguageTask, task_for, unigram_bits
from ..training.trainer import Trainer

HELP_TEXT = "NoProp-LM vs a back-prop transformer at equal parameters and FLOPs (issue 11)"
NAMES = ("backprop", "noprop")
#: nanoGPT's character model, CPU configuration (README: 4 layers, width 128, context 64, ~3 min):
#: validation loss 1.88 nats per character on tiny-shakespeare (its own 90/10 split)
NANOGPT_ANCHOR = {"nats": 1.88, "bits_per_byte": 1.88 / math.log(2), "layers": 4, "width": 128}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="directory of the two runs and the report")
    p.add_argument("--dataset", default="stdlib", choices=TEXT_DATASETS,
                   help="text corpus (default: stdlib, this Python's standard library source)")  # fmt: skip
    p.add_argument("--data-dir", help="text: the file or directory; tiny-shakespeare: its folder")
    p.add_argument("--minutes", type=float, default=12.0,
                   help="the FLOP budget is sized so that the two trainings take 2 × M minutes in "
                   "all (default 12: the whole command takes about 26 minutes on 2 CPU cores)")  # fmt: skip
    p.add_argument("--layers", type=int, default=6, help="transformer layers = NoProp blocks T")
    p.add_argument("--width", type=int, default=128, help="back-prop transformer width")
    p.add_argument("--heads", type=int, default=4, help="attention heads (both models)")
    p.add_argument("--context", type=int, default=128, help="bytes of context")
    p.add_argument("--batch-size", type=int, default=32, help="windows per training step")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (both models)")
    p.add_argument("--lr-schedule", default="cosine", choices=("constant", "cosine"),
                   help="both models (default cosine: --lr down to 0.1·--lr over the run)")  # fmt: skip
    p.add_argument("--embedding", default="one-hot", choices=("one-hot", "learned"),
                   help="NoProp's W_Embed (default one-hot, 256-d; learned: --embed-dim, default 64)")  # fmt: skip
    p.add_argument("--embed-dim", type=int, default=None, help="dimension of a learned W_Embed")
    p.add_argument("--chains", type=int, default=4, help="stochastic chains in NoProp's mixture")
    p.add_argument("--sample-bytes", type=int, default=200, help="bytes generated per model")
    p.add_argument(
        "--prompt", help="generation prompt (default: the first 64 bytes of the test split)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="32", choices=PRECISIONS,
                   help="both models, training and evaluation (default 32: the paper's)")  # fmt: skip
    p.add_argument("--eval-windows", type=int, default=None,
                   help="evaluate on the first N test windows only (default: all)")  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true", help="replace runs of another config in --out"
    )
    p.add_argument("--no-progress", action="store_true")


# ----------------------------------------------------------------------------------- models
def _configs(ns: argparse.Namespace, noprop_width: int) -> dict[str, RunConfig]:
    common = dict(
        dataset=ns.dataset, data_dir=ns.data_dir, context=ns.context, heads=ns.heads, T=ns.layers,
        batch_size=ns.batch_size, lr=ns.lr, lr_schedule=ns.lr_schedule, seed=ns.seed,
        device=ns.device, precision=getattr(ns, "precision", "32"),
    )  # fmt: skip
    return {
        "backprop": make_config(method="backprop", width=ns.width, **common),
        "noprop": make_config(
            method="dt",
            width=noprop_width,
            block_layers=1,
            embedding=ns.embedding,
            **({"embed_dim": ns.embed_dim} if ns.embed_dim else {}),
            **common,
        ),  # fmt: skip
    }


def count_parameters(method: Method) -> dict[str, int]:
    """Trainable parameters (a one-hot W_Embed is a fixed buffer, not counted), and how many of them
    are token/position embedding tables."""
    total = count_trainable(method)
    emb = embedding_parameters(method)
    return {"total": total, "embedding_tables": emb, "non_embedding": total - emb}


def match_width(ns: argparse.Namespace, task: LanguageTask) -> tuple[int, dict[str, Any]]:
    """The NoProp block width (a multiple of --heads) that best matches the back-prop model: the
    smallest worst violation of the two tolerances, max(|Δparams| / 5%, |ΔFLOPs per token| / 10%),
    with non-embedding parameters and training FLOPs per token (counted on two random windows)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, ns.context), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 256, (2, ns.context), generator=gen)
    bp = build_method(_configs(ns, ns.width)["backprop"], task)
    p_bp, f_bp = count_parameters(bp)["non_embedding"], step_flops(bp, x, y)
    best: tuple[float, int, float, float] | None = None
    for w in range(ns.heads, 2 * ns.width + 1, ns.heads):
        m = build_method(_configs(ns, w)["noprop"], task)
        dp = count_parameters(m)["non_embedding"] / p_bp - 1
        df = step_flops(m, x, y) / f_bp - 1
        score = max(abs(dp) / PARAM_TOLERANCE, abs(df) / FLOP_TOLERANCE)
        if best is None or score < best[0]:
            best = (score, w, dp, df)
        if dp > 0.5 and df > 0.5:
            break
    assert best is not None
    return best[1], {"search_params_delta": best[2], "search_flops_delta": best[3]}


#: the issue's tolerances: parameters within 5%, training FLOPs within 10%
PARAM_TOLERANCE, FLOP_TOLERANCE = 0.05, 0.10


_ATEN = torch.ops.aten
SDPA_CPU_FLOPS = {  # flop_counter knows the CUDA attention kernels, not the CPU flash kernel
    _ATEN._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, out_shape=None, **kw: (
        fc.sdpa_flop_count(q, k, v)
    ),
    _ATEN._scaled_dot_product_flash_attention_for_cpu_backward: lambda g, q, k, v, *a, out_shape=None, **kw: (
        fc.sdpa_backward_flop_count(g, q, k, v)
    ),
}  # fmt: skip


def step_flops(method: Method, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of forward + backward of every unit's loss on one batch (all T blocks for NoProp)."""
    total = 0
    method.train()
    for unit in range(method.num_units):
        with fc.FlopCounterMode(display=False, custom_mapping=SDPA_CPU_FLOPS) as counter:
            loss, _ = method.loss(x, y, unit)
            loss.backward()
        total += counter.get_total_flops()
        method.zero_grad(set_to_none=True)
    return total


def calibrate(method: Method, cfg: RunConfig, task: LanguageTask, x, y, device) -> float:
    """Seconds per window of one training pass of every unit: each unit is stepped once to warm up
    (first steps allocate optimiser state), then rounds over all units are timed; the median round."""
    trainer = Trainer(method, cfg, device, task=task, progress=False)
    xb, yb = trainer.to_device(x), trainer.to_device(y)
    units = method.num_units
    for unit in range(units):
        trainer.step(xb, yb, unit)
    rounds = max(3, math.ceil(6 / units))
    times: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        for unit in range(units):
            trainer.step(xb, yb, unit)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] / x.shape[0]


# --------------------------------------------------------------------------------- training
def _flags(cfg: RunConfig) -> list[str]:
    flat = cfg.flat()
    keys = ("dataset", "data_dir", "context", "method", "T", "width", "heads", "block_layers",
            "embedding", "embed_dim", "epochs", "max_train_samples", "batch_size", "lr", "lr_schedule", "seed",
            "device")  # fmt: skip
    out: list[str] = []
    for k in keys:
        v = flat.get(k)
        if v is None or (
            k in ("block_layers", "embedding", "embed_dim") and flat["method"] != "dt"
        ):
            continue
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def train_child(cfg: RunConfig, out: Path, *, overwrite: bool, progress: bool) -> dict[str, Any]:
    """Train (or resume, or reuse) one run in a child process; its peak RSS from ``os.wait4``."""
    run = RunDir(out)
    cmd = [sys.executable, "-m", "noprop", "train"]
    if run.is_run():
        same = _without_threads(run.read_config()) == _without_threads(cfg.to_dict())
        if same and run.read_summary() is not None:
            return {"reused": True, "peak_rss_mib": None, "child_seconds": None}
        if not same and not overwrite:
            raise ConfigError(
                f"{out} holds a run of another config; use another --out or --overwrite"
            )
        cmd += ["--resume", str(out)] if same else [*_flags(cfg), "--out", str(out), "--overwrite"]
    else:
        cmd += [*_flags(cfg), "--out", str(out)]
    if not progress:
        cmd.append("--no-progress")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise NoPropError(f"training {out} failed (exit {proc.returncode}); rerun to resume it")
    # ru_maxrss is in KiB on Linux
    return {
        "reused": False,
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "child_seconds": round(time.perf_counter() - start, 1),
    }


def _without_threads(config: dict[str, Any]) -> dict[str, Any]:
    """A config.json without the thread count the child recorded (``--threads``: not given here, so
    each child runs with the cores it finds; runs from before it was recorded lack the key)."""
    train = {k: v for k, v in config.get("train", {}).items() if k != "threads"}
    return {**config, "train": train}


# ------------------------------------------------------------------------------------ main
def run(ns: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = Path(ns.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    for name in ("minutes",):
        if getattr(ns, name) <= 0:
            raise ConfigError(f"--{name} must be > 0")
    for name in ("layers", "width", "heads", "context", "batch_size", "chains"):
        if getattr(ns, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if ns.sample_bytes < 0:
        raise ConfigError("--sample-bytes must be >= 0")
    plots.require_matplotlib()
    device = pick_device(ns.device)
    progress = not ns.no_progress
    probe = _configs(ns, ns.width)["backprop"]
    task = task_for(probe.data)
    assert isinstance(task, LanguageTask)
    data = task.load(probe.data, probe.train.seed)
    width, match = match_width(ns, task)
    cfgs = _configs(ns, width)
    plan_path = out / "plan.json"
    plan = _read_json(plan_path)
    if plan is None or plan.get("args") != _args_dict(ns):
        plan = _plan(ns, cfgs, task, data, device, match)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(plan_path, plan)
    log_path = out / "training.json"  # each training's cost, kept for reruns that reuse it
    training: dict[str, Any] = _read_json(log_path) or {}
    for name in NAMES:
        cfg = cfgs[name].replace(**plan["runs"][name]["schedule"])
        print(f"[lm compare] training {name}: {plan['runs'][name]['schedule']}", file=sys.stderr)
        result = train_child(cfg, out / name, overwrite=ns.overwrite, progress=progress)
        if result["reused"] and name in training:
            training[name] = {**training[name], "reused": True}
        else:
            training[name] = result
            atomic_write_json(log_path, training)
    report = _evaluate(ns, out, plan, training, device, progress)
    report["seconds_total_this_invocation"] = round(time.perf_counter() - t0, 1)
    previous = _read_json(out / "report.json") or {}
    reused = all(training[n].get("reused") for n in NAMES)
    # the whole command's time, from the invocation that trained (a rerun only re-evaluates)
    report["seconds_total_training_invocation"] = (
        previous.get("seconds_total_training_invocation")
        if reused
        else report["seconds_total_this_invocation"]
    )
    atomic_write_json(out / "report.json", report)
    plots.plot_lm_trajectory(report, out / "trajectory.png")
    md = render_markdown(report)
    atomic_write(out / "report.md", lambda f: f.write(md.encode()))
    return report


def _args_dict(ns: argparse.Namespace) -> dict[str, Any]:
    skip = {"out", "overwrite", "no_progress", "func", "command", "lm_command", "device"}
    return {k: v for k, v in sorted(vars(ns).items()) if k not in skip}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _plan(ns, cfgs, task, data, device, match) -> dict[str, Any]:
    """Parameters, FLOPs per token, calibrated speed and the common FLOP budget of the two models."""
    x, y = data.train
    gen = torch.Generator().manual_seed(ns.seed)
    idx = torch.randperm(x.shape[0], generator=gen)[: ns.batch_size]
    xb, yb = x[idx], y[idx]
    tokens = yb.numel()
    n_train = x.shape[0]
    runs: dict[str, Any] = {}
    for name, cfg in cfgs.items():
        method = build_method(cfg, task)
        params = count_parameters(method)
        flops = step_flops(method, xb, yb)
        print(f"[lm compare] calibrating {name} ...", file=sys.stderr)
        sec_per_window = calibrate(build_method(cfg, task), cfg, task, xb, yb, device)
        runs[name] = {
            "config": {
                k: cfg.flat()[k]
                for k in (
                    "method",
                    "T",
                    "width",
                    "heads",
                    "block_layers",
                    "embedding",
                    "context",
                )
            }
            | {"embed_dim": getattr(getattr(method, "embedding", None), "dim", None)},
            "parameters": params,
            "flops_per_token": flops / tokens,
            "calibration_flops_per_second": flops / ns.batch_size / sec_per_window,
        }
    rates = [runs[n]["calibration_flops_per_second"] for n in NAMES]
    budget = 2 * ns.minutes * 60 / sum(1 / r for r in rates)
    for name in NAMES:
        flops_per_window = runs[name]["flops_per_token"] * ns.context
        windows = max(ns.batch_size, round(budget / flops_per_window))
        epochs = max(1, math.ceil(windows / n_train))
        per_epoch = min(n_train, round(windows / epochs))
        runs[name]["schedule"] = {"epochs": epochs, "max_train_samples": per_epoch}
        runs[name]["planned_tokens"] = epochs * per_epoch * ns.context
        runs[name]["planned_flops"] = epochs * per_epoch * flops_per_window
    bp, np_ = runs["backprop"], runs["noprop"]
    return {
        "args": _args_dict(ns),
        "budget_flops": budget,
        "train_windows_available": n_train,
        "runs": runs,
        "matching": {
            **match,
            "non_embedding_ratio": np_["parameters"]["non_embedding"]
            / bp["parameters"]["non_embedding"],
            "total_ratio": np_["parameters"]["total"] / bp["parameters"]["total"],
            "flops_per_token_ratio": np_["flops_per_token"] / bp["flops_per_token"],
        },
    }


def _evaluate(ns, out: Path, plan, training, device, progress) -> dict[str, Any]:
    report: dict[str, Any] = {
        "dataset": ns.dataset,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": str(device),
        },
        "plan": plan,
        "runs": {},
        "trajectory": {},
        "samples": {},
        "anchor_nanogpt": NANOGPT_ANCHOR,
    }
    test_windows = None
    for name in NAMES:
        method, cfg, task, data, dev = load_run_with_task(out / name, ns.device)
        summary = RunDir(out / name).summary()
        assert summary is not None
        x, y = (t.to(dev) for t in data.test)
        if ns.eval_windows:
            x, y = x[: ns.eval_windows], y[: ns.eval_windows]
        test_windows = int(x.shape[0])
        corpus = task.corpus
        assert corpus is not None
        report["corpus"] = RunDir(out / name).read_data_info()
        report["unigram_bits_per_byte"] = unigram_bits(
            corpus.train, y.flatten().cpu().to(torch.uint8)
        )
        tokens = summary.epochs * summary.num_train * cfg.data.context
        flops = tokens * plan["runs"][name]["flops_per_token"]
        report["runs"][name] = {
            **training[name],
            "label": "Back-prop transformer" if name == "backprop" else "NoProp-LM (DT)",
            "train_seconds": summary.train_seconds,
            "epochs": summary.epochs,
            "train_tokens": tokens,
            "train_flops": flops,
            "achieved_flops_per_second": flops / summary.train_seconds,
            "val_accuracy": summary.val_accuracy,
        }
        xv, yv = (t.to(dev) for t in data.val)
        if ns.eval_windows:
            xv, yv = xv[: ns.eval_windows], yv[: ns.eval_windows]
        kw = {"chains": ns.chains, "seed": ns.seed, "progress": progress}
        with autocast(cfg.train.precision, dev):
            temps = fit_temperatures(method, xv, yv, **kw)  # validation only
            test = test_scores(method, x, y, temperatures=temps, with_trajectory=True, **kw)
        report["trajectory"][name] = test.pop("trajectory")  # same pass: one deterministic chain
        report["runs"][name]["test"] = test
        vectors = method.lm.unembedding if name == "backprop" else method.embedding.weight  # type: ignore[union-attr]
        report["runs"][name]["output_vectors_mean_pairwise_cosine"] = mean_pairwise_cosine(vectors)
        if name == "noprop":
            ab = method.schedule.alpha_bar  # type: ignore[union-attr]
            for row, a in zip(report["trajectory"][name], ab.tolist(), strict=True):
                row["alpha_bar"] = a
        prompt = ns.prompt.encode() if ns.prompt else bytes(data.test[0].flatten()[:64].tolist())
        report["samples"]["prompt"] = prompt.decode("utf-8", "replace")
        if ns.sample_bytes:
            with autocast(cfg.train.precision, dev):
                text = generate(
                    method, prompt, ns.sample_bytes, context=cfg.data.context, seed=ns.seed
                )
            report["samples"][name] = text.decode("utf-8", "replace")
    report["test_windows"] = test_windows
    return report


# ---------------------------------------------------------------------------------- report
def _f(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def render_markdown(r: dict[str, Any]) -> str:
    """report.md from report.json's content."""
    plan, runs, traj = r["plan"], r["runs"], r["trajectory"]
    bp, np_ = runs["backprop"], runs["noprop"]
    m = plan["matching"]
    corpus = r.get("corpus") or {}
    lines = [
        "# NoProp-LM vs a back-prop transformer",
        "",
        f"Data: `{r['dataset']}` — {corpus.get('source', '')}; SHA-256 `{corpus.get('sha256', '')}`; "
        f"bytes train/val/test {corpus.get('bytes', {})}; test windows evaluated: {r['test_windows']} "
        f"× {plan['runs']['backprop']['config']['context']} bytes.",
        f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, torch "
        f"{r['machine']['torch']} ({r['machine']['torch_threads']} threads), device "
        f"{r['machine']['device']}.",
        "",
        "## Test results",
        "",
        "Bits per byte from each model's probabilities as they are, and after one temperature τ per "
        "model and inference mode fitted on the validation split (p̂ ∝ exp(logits / τ); accuracy "
        "unchanged). Top-1 accuracy over every position of the test windows.",
        "",
        "| model | bits per byte | calibrated (τ) | top-1 accuracy |",
        "|---|---|---|---|",
        f"| unigram baseline (train counts) | {_f(r['unigram_bits_per_byte'])} | – | – |",
        _score_row("back-prop transformer", bp["test"]),
        _score_row("NoProp-LM, deterministic chain", np_["test"]["deterministic"]),
        _score_row(
            "NoProp-LM, one stochastic chain (the paper's inference)", np_["test"]["one_chain"]
        ),
        _score_row(f"NoProp-LM, mixture of {np_['test']['chains']} stochastic chains", np_["test"]),
    ]
    if r["dataset"] == "tiny-shakespeare":
        a = r["anchor_nanogpt"]
        lines.append(
            f"| anchor: nanoGPT char model, CPU config ({a['layers']} layers, width {a['width']}, "
            f"context 64, ~3 min; its own val split) | {_f(a['bits_per_byte'], 2)} | – | – |"
        )
    lines += [
        "",
        "## Size, budget and cost",
        "",
        "| | back-prop | NoProp-LM |",
        "|---|---|---|",
        f"| architecture | {bp_arch(plan['runs']['backprop'])} | {np_arch(plan['runs']['noprop'])} |",
        f"| parameters, non-embedding | {plan['runs']['backprop']['parameters']['non_embedding']:,} | "
        f"{plan['runs']['noprop']['parameters']['non_embedding']:,} (×{m['non_embedding_ratio']:.3f}) |",
        f"| parameters, total | {plan['runs']['backprop']['parameters']['total']:,} | "
        f"{plan['runs']['noprop']['parameters']['total']:,} (×{m['total_ratio']:.3f}) |",
        f"| training FLOPs per token | {plan['runs']['backprop']['flops_per_token'] / 1e6:.2f} M | "
        f"{plan['runs']['noprop']['flops_per_token'] / 1e6:.2f} M (×{m['flops_per_token_ratio']:.3f}) |",
        f"| training tokens | {bp['train_tokens']:,} | {np_['train_tokens']:,} |",
        f"| training FLOPs | {bp['train_flops'] / 1e12:.2f} T | {np_['train_flops'] / 1e12:.2f} T |",
        f"| training wall time | {bp['train_seconds'] / 60:.1f} min | {np_['train_seconds'] / 60:.1f} min |",
        f"| achieved FLOP/s | {bp['achieved_flops_per_second'] / 1e9:.1f} G | "
        f"{np_['achieved_flops_per_second'] / 1e9:.1f} G |",
        f"| peak RSS of the training process | {_f(bp['peak_rss_mib'], 0)} MiB | "
        f"{_f(np_['peak_rss_mib'], 0)} MiB |",
        "",
        f"Budget: {plan['budget_flops'] / 1e12:.2f} TFLOPs each (sized by a timed calibration for "
        f"{plan['args']['minutes']} minutes per model). Parameters matched within 5%: "
        f"{'yes' if abs(m['non_embedding_ratio'] - 1) <= PARAM_TOLERANCE else 'NO'}; FLOPs per token "
        f"within 10%: {'yes' if abs(m['flops_per_token_ratio'] - 1) <= FLOP_TOLERANCE else 'NO'}.",
        "",
        "## The trajectory in output space",
        "",
        "![trajectory](trajectory.png)",
        "",
        "Back-prop: the logit lens (final LayerNorm + tied unembedding) of the residual stream h_l; "
        "cosine of h_l with the true next byte's unembedding row, raw and centered (both minus the "
        "mean of the 256 output vectors). NoProp-LM: the head p̂(y | z_t) on the deterministic chain "
        "after block t; cosine of z_t with W_Embed[y], raw and centered; ᾱ_t is the schedule's "
        "signal level of q(z_t | y). Mean cosine between distinct output vectors: back-prop "
        f"{_f(bp.get('output_vectors_mean_pairwise_cosine'))}, NoProp "
        f"{_f(np_.get('output_vectors_mean_pairwise_cosine'))}.",
        "",
        "| layer l | bits per byte | accuracy | cos(h_l, W_U[y]) | centered |",
        "|---|---|---|---|---|",
        *[_traj_row(t) for t in traj["backprop"]],
        "",
        "| block t | bits per byte | accuracy | cos(z_t, u_y) | centered | ᾱ_t |",
        "|---|---|---|---|---|---|",
        *[_traj_row(t) + f" {_f(t.get('alpha_bar'), 4)} |" for t in traj["noprop"]],
        "",
        "## Samples (temperature 1, same prompt)",
        "",
        "Prompt:",
        "",
        "```",
        r["samples"].get("prompt", ""),
        "```",
    ]
    for name in NAMES:
        if name in r["samples"]:
            lines += ["", f"{runs[name]['label']}:", "", "```", r["samples"][name], "```"]
    lines += ["", "## Discussion", "", *discussion(r)]
    return "\n".join(lines) + "\n"


def _score_row(label: str, t: dict[str, Any]) -> str:
    cal = t.get("bits_per_byte_calibrated")
    tau = f" (τ = {t['temperature']:.2f})" if "temperature" in t else ""
    return f"| {label} | {_f(t['bits_per_byte'])} | {_f(cal)}{tau} | {_f(t['accuracy'])} |"


def _traj_row(t: dict[str, Any]) -> str:
    return (
        f"| {t['depth']} | {_f(t['bits_per_byte'])} | {_f(t['accuracy'])} | {_f(t['cosine'])} | "
        f"{_f(t.get('cosine_centered'))} |"
    )


def bp_arch(run: dict[str, Any]) -> str:
    c = run["config"]
    return f"{c['T']} layers × width {c['width']}, {c['heads']} heads"


def np_arch(run: dict[str, Any]) -> str:
    c = run["config"]
    dim = c["embed_dim"] or TEXT_EMBED_DIM  # None: the text default
    emb = "one-hot W_Embed" if c["embedding"] == "one-hot" else f"learned W_Embed d={dim}"
    return f"T={c['T']} blocks × {c['block_layers']} layer × width {c['width']}, {emb}"


def discussion(r: dict[str, Any]) -> list[str]:
    """What the numbers of this report say, and what they cannot say (templated on the numbers)."""
    bp, np_ = r["trajectory"]["backprop"], r["trajectory"]["noprop"]
    runs = r["runs"]
    uni = r["unigram_bits_per_byte"]
    L, T = len(bp) - 1, len(np_) - 1
    bp_bits = [t["bits_per_byte"] for t in bp]
    np_bits = [t["bits_per_byte"] for t in np_]
    np_acc = [t["accuracy"] for t in np_]
    # the lens is not trained on h_0 (it can read worse than uniform there): measure from layer 1
    gain = bp_bits[1] - bp_bits[-1]
    late = (bp_bits[L // 2] - bp_bits[-1]) / gain if gain > 0 and L >= 2 else float("nan")
    where = (
        "does most of its approach to the output in its last layers"
        if late > 0.5
        else ("approaches the output steadily with depth")
    )
    best_t = min(range(1, T + 1), key=lambda t: np_bits[t])
    np_test = runs["noprop"]["test"]
    bp_test = runs["backprop"]["test"]["bits_per_byte"]
    best_np = min(np_test["deterministic"]["bits_per_byte"], np_test["bits_per_byte"])
    bp_cal = runs["backprop"]["test"].get("bits_per_byte_calibrated", bp_test)
    best_np_cal = min(
        np_test["deterministic"].get("bits_per_byte_calibrated", best_np),
        np_test.get("bits_per_byte_calibrated", best_np),
    )
    chain = ", ".join(f"{b:.2f}" for b in np_bits)
    out = [
        f"- **Back-prop's stream {where}.** Through the logit lens: "
        + ", ".join(f"{b:.2f}" for b in bp_bits)
        + f" bits per byte after the embedding and layers 1..{L} ({100 * late:.0f}% of the "
        f"improvement after layer 1 comes after layer {L // 2}); the centered cosine of h_l to the "
        f"true byte's unembedding goes {bp[1]['cosine_centered']:.2f} → {bp[-1]['cosine_centered']:.2f}. "
        "The lens reads h_0 worse than chance because the final norm and unembedding are fitted to "
        "the last layer's stream, not to the embeddings.",
        f"- **NoProp's chain decides early and then sharpens at its schedule's pace.** Top-1 "
        f"accuracy of the head on z_1..z_{T} of the deterministic chain: "
        + ", ".join(f"{a:.3f}" for a in np_acc[1:])
        + f" — block 1 alone reaches {np_acc[1] / max(np_acc[1:]):.0%} of the best; bits per byte "
        f"on z_0..z_{T}: {chain}, best at block {best_t} ({np_bits[best_t]:.2f})"
        + (
            f" and {np_bits[T] - np_bits[best_t]:.2f} bits worse at the end"
            + (
                f" while accuracy moves by {np_acc[T] - np_acc[best_t]:+.3f}: later blocks move z "
                "towards one embedding faster than they make the guess more right — confidence, not "
                "ranking (the head is trained on z_T ~ q(z_T | y) at SNR 999)"
                if abs(np_acc[T] - np_acc[best_t]) < 0.03
                else f", with accuracy {np_acc[T] - np_acc[best_t]:+.3f}"
            )
            if best_t < T
            else ""
        )
        + f". The centered cosine of z_t to u_y goes {np_[1]['cosine_centered']:.2f} → "
        f"{np_[-1]['cosine_centered']:.2f} (raw {np_[1]['cosine']:.2f} → {np_[-1]['cosine']:.2f}; "
        f"mean pairwise cosine of W_Embed's rows "
        f"{runs['noprop'].get('output_vectors_mean_pairwise_cosine', float('nan')):.2f}). Every "
        "block is trained to predict the *clean* next-byte embedding from its own noise level and no "
        "block reads another block's features: each re-reads the context with its own single layer.",
        f"- **At equal FLOPs** the back-prop transformer scores {bp_test:.2f} bits per byte "
        f"({bp_cal:.2f} calibrated) and NoProp-LM {best_np:.2f} ({best_np_cal:.2f} calibrated; "
        f"mixture of {np_test['chains']} chains {np_test['bits_per_byte']:.2f}, deterministic chain "
        f"{np_test['deterministic']['bits_per_byte']:.2f}, one chain "
        f"{np_test['one_chain']['bits_per_byte']:.2f}), against {uni:.2f} for the unigram "
        f"baseline; top-1 accuracy {runs['backprop']['test']['accuracy']:.3f} vs "
        f"{max(np_test['accuracy'], np_test['deterministic']['accuracy']):.3f}. "
        f"{'Back-prop' if bp_cal < best_np_cal else 'NoProp'} is ahead by "
        f"{abs(bp_cal - best_np_cal):.2f} calibrated bits. NoProp's temperatures (τ = "
        f"{np_test['deterministic'].get('temperature', float('nan')):.2f} deterministic, "
        f"{np_test.get('temperature', float('nan')):.2f} mixture) show how overconfident its head "
        "is: it is trained on z_T ~ q(z_T | y) at SNR 999, where the label is almost noise-free. "
        "The transformer's depth composes features (layer l reads what layers < l wrote); NoProp's "
        "does not — its context features are those of one-layer models, and its depth adds "
        "denoising steps in output space instead.",
        "- **What this does not show.** One seed, one size, a budget of minutes on a CPU, no "
        "hyper-parameter search for either model (both use AdamW at the same learning rate and "
        "batch), and one corpus. The trajectories average over positions; the logit lens is a "
        "biased read-out of early layers (a tuned lens reads them better), so the back-prop curve "
        "understates what its early layers know. Nothing here says how the gap scales with "
        "compute, wider blocks or blocks of several layers (`--block-layers`).",
    ]
    return out


def main_lm(ns: argparse.Namespace) -> int:
    r = run(ns)
    bp, np_ = r["runs"]["backprop"]["test"], r["runs"]["noprop"]["test"]
    det = np_["deterministic"]
    print(
        f"test bits per byte (calibrated on validation): unigram {r['unigram_bits_per_byte']:.3f} · "
        f"back-prop {bp['bits_per_byte']:.3f} ({bp['bits_per_byte_calibrated']:.3f}) · NoProp "
        f"deterministic {det['bits_per_byte']:.3f} ({det['bits_per_byte_calibrated']:.3f}) · NoProp "
        f"mixture of {np_['chains']} {np_['bits_per_byte']:.3f} ({np_['bits_per_byte_calibrated']:.3f})"
        f" · report in {Path(ns.out) / 'report.md'}"
    )
    return 0


__all__ = ["HELP_TEXT", "add_arguments", "main_lm", "render_markdown", "run", "step_flops"]
