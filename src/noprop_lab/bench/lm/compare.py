"""Planning, training and evaluating the runs of ``noprop lm compare`` (see the package docstring).

Every step is resumable: ``plan.json`` is reused while the arguments are the same, ``train_child``
reuses a finished run and resumes an unfinished one, and each run's evaluation is kept in
``evaluation/NAME.json`` until its run or the evaluation options change — so a depth sweep of many
runs can span several invocations.
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

from noprop import (
    ConfigError,
    NoPropError,
    RunConfig,
    RunDir,
    Trainer,
    atomic_write,
    atomic_write_json,
    build_method,
    make_config,
    pick_device,
)
from noprop.runs import load_run_with_task
from noprop.tasks import LanguageTask, task_for, unigram_bits

from ... import plots
from . import figures, readout
from .matching import count_parameters, match_width, ratios, reference_config, step_flops
from .registry import (
    DEFAULT_MODELS,
    RunSpec,
    parse_layers_per_block,
    parse_models,
    run_specs,
)
from .report import render_markdown

#: nanoGPT's character model, CPU configuration (README: 4 layers, width 128, context 64, ~3 min):
#: validation loss 1.88 nats per character on tiny-shakespeare (its own 90/10 split)
NANOGPT_ANCHOR = {"nats": 1.88, "bits_per_byte": 1.88 / math.log(2), "layers": 4, "width": 128}
#: options added after lm compare's first version: left out of ``plan.args`` at their defaults, so
#: a plan written before them is still reused
NEW_ARGS = {"models": DEFAULT_MODELS, "layers_per_block": "1", "inference_steps": 20,
            "precision": "32"}  # fmt: skip
#: the planned config's fields recorded in ``plan.runs[name].config``
PLANNED_FIELDS = ("method", "T", "width", "heads", "block_layers", "embedding", "context")
PLANNED_EXTRA = ("t_samples", "inference_steps", "fm_source")


def check_arguments(ns: argparse.Namespace) -> list[RunSpec]:
    """One-line errors for bad options, before anything is written; the runs to make (each number
    is checked by its flag's type, noprop.arguments: here, what depends on more than one)."""
    out = Path(ns.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    entries = parse_models(ns.models)
    return run_specs(entries, parse_layers_per_block(ns.layers_per_block, ns.layers))


def shared_options(ns: argparse.Namespace) -> dict[str, Any]:
    """The config fields every model shares."""
    return dict(
        dataset=ns.dataset, data_dir=ns.data_dir, context=ns.context, heads=ns.heads,
        batch_size=ns.batch_size, lr=ns.lr, lr_schedule=ns.lr_schedule, seed=ns.seed,
        device=ns.device, precision=getattr(ns, "precision", "32"),
    )  # fmt: skip


# ----------------------------------------------------------------------------------- planning
def args_dict(ns: argparse.Namespace) -> dict[str, Any]:
    skip = {"out", "overwrite", "no_progress", "func", "command", "lm_command", "device"}
    return {
        k: v
        for k, v in sorted(vars(ns).items())
        if k not in skip and not (k in NEW_ARGS and v == NEW_ARGS[k])
    }


def same_args(recorded: dict[str, Any], ns: argparse.Namespace) -> bool:
    """Whether a plan's recorded ``args`` are this invocation's; an option added after the plan was
    written counts as given at its default (plans differ in which of them they record)."""
    return {**NEW_ARGS, **recorded} == {**NEW_ARGS, **args_dict(ns)}


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def calibrate(method, cfg: RunConfig, task: LanguageTask, x, y, device) -> float:
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


def _measure(cfg: RunConfig, task, xb, yb, device, name: str, calibrate_speed: bool):
    method = build_method(cfg, task)
    flat = cfg.flat()
    flops = step_flops(method, xb, yb)
    row: dict[str, Any] = {
        "config": {k: flat.get(k) for k in PLANNED_FIELDS}
        | {"embed_dim": getattr(getattr(method, "embedding", None), "dim", None)}
        | {k: flat[k] for k in PLANNED_EXTRA if k in flat},
        "parameters": count_parameters(method),
        "flops_per_token": flops / yb.numel(),
    }
    if calibrate_speed:
        print(f"[lm compare] calibrating {name} ...", file=sys.stderr)
        sec_per_window = calibrate(build_method(cfg, task), cfg, task, xb, yb, device)
        row["calibration_flops_per_second"] = flops / xb.shape[0] / sec_per_window
    return row


def make_plan(ns, specs: list[RunSpec], shared, task, data, device) -> dict[str, Any]:
    """Per run: its matched width, parameters, FLOPs per token and calibrated speed; the common FLOP
    budget F, sized so that the n trainings take n × ``--minutes`` in all (F = n·M·60 / Σ 1/r_i),
    and each run's schedule (epochs × a seeded random subset of windows) that spends it."""
    x, y = data.train
    gen = torch.Generator().manual_seed(ns.seed)
    idx = torch.randperm(x.shape[0], generator=gen)[: ns.batch_size]
    xb, yb = x[idx], y[idx]
    n_train = x.shape[0]
    reference = _measure(reference_config(shared, ns), task, xb, yb, device, "", False)
    runs: dict[str, Any] = {}
    for spec in specs:
        print(
            f"[lm compare] matching {spec.name} to the back-prop transformer ...", file=sys.stderr
        )
        width, match = match_width(spec, shared, ns, task)
        cfg = spec.entry.config(shared, ns, width, spec.k)
        row = _measure(cfg, task, xb, yb, device, spec.name, True)
        row = {"model": spec.entry.name, "layers_per_block": spec.k, **row}
        if match:
            row["matching"] = {**match, **ratios(row, reference)}
        runs[spec.name] = row
    seconds_per_flop = sum(1 / r["calibration_flops_per_second"] for r in runs.values())
    budget = len(runs) * ns.minutes * 60 / seconds_per_flop
    for row in runs.values():
        flops_per_window = row["flops_per_token"] * ns.context
        windows = max(ns.batch_size, round(budget / flops_per_window))
        epochs = max(1, math.ceil(windows / n_train))
        per_epoch = min(n_train, round(windows / epochs))
        row["schedule"] = {"epochs": epochs, "max_train_samples": per_epoch}
        row["planned_tokens"] = epochs * per_epoch * ns.context
        row["planned_flops"] = epochs * per_epoch * flops_per_window
    plan = {
        "args": args_dict(ns),
        "budget_flops": budget,
        "train_windows_available": n_train,
        "reference": {k: reference[k] for k in ("config", "parameters", "flops_per_token")},
        "runs": runs,
    }
    if "noprop" in runs:  # where lm compare's first version kept its one match
        plan["matching"] = runs["noprop"]["matching"]
    return plan


def planned_config(spec: RunSpec, plan: dict[str, Any], shared, ns) -> RunConfig:
    run = plan["runs"][spec.name]
    cfg = spec.entry.config(shared, ns, run["config"]["width"], spec.k)
    return cfg.replace(**run["schedule"])


# ----------------------------------------------------------------------------------- training
def child_flags(cfg: RunConfig) -> list[str]:
    """``noprop train`` flags that rebuild ``cfg``: every field that differs from the method's
    defaults (``RunConfig().replace(**given)`` of these flags equals ``cfg``)."""
    default = make_config(method=cfg.method.method).flat()
    out: list[str] = []
    for k, v in cfg.flat().items():
        if k != "method" and v == default.get(k):
            continue
        name = k.replace("_", "-")
        if isinstance(v, bool):
            out.append(f"--{name}" if v else f"--no-{name}")
        elif v is None:
            raise NoPropError(f"lm compare cannot pass {k}=None to noprop train")
        else:
            out += [f"--{name}", str(v)]
    return out


def _without_threads(config: dict[str, Any]) -> dict[str, Any]:
    """A config.json without the thread count the child recorded (``--threads``: not given here, so
    each child runs with the cores it finds; runs from before it was recorded lack the key)."""
    train = {k: v for k, v in config.get("train", {}).items() if k != "threads"}
    return {**config, "train": train}


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
        cmd += (
            ["--resume", str(out)]
            if same
            else [*child_flags(cfg), "--out", str(out), "--overwrite"]
        )
    else:
        cmd += [*child_flags(cfg), "--out", str(out)]
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


# --------------------------------------------------------------------------------- evaluation
def _eval_key(ns: argparse.Namespace, summary: dict[str, Any], device) -> dict[str, Any]:
    keys = ("chains", "seed", "eval_windows", "sample_bytes", "prompt", "precision")
    return {"args": {k: getattr(ns, k, None) for k in keys}, "device": str(device),
            "summary": summary}  # fmt: skip


def evaluate_run(ns, out: Path, spec: RunSpec, progress: bool) -> dict[str, Any]:
    """One run's evaluation (kept in ``evaluation/NAME.json`` while its key is the same): the test
    scores and trajectory through :mod:`.readout`, the costs of its training, and a sample."""
    rundir = RunDir(out / spec.name)
    summary_dict = rundir.read_summary()
    assert summary_dict is not None
    # the data where this invocation's --data-dir says (a resumed run's config keeps its first one)
    method, cfg, task, data, dev = load_run_with_task(
        out / spec.name, ns.device, data_dir=ns.data_dir
    )
    key = _eval_key(ns, summary_dict, dev)
    cache_path = out / "evaluation" / f"{spec.name}.json"
    cached = read_json(cache_path)
    if cached is not None and cached.get("key") == key:
        return cached["result"]
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    summary = rundir.summary()
    assert summary is not None
    n = ns.eval_windows or None  # None: every window
    x, y = (t[:n].to(dev) for t in data.test)
    xv, yv = (t[:n].to(dev) for t in data.val)
    corpus = task.corpus
    assert corpus is not None
    tokens = summary.epochs * summary.num_train * cfg.data.context
    result: dict[str, Any] = {
        "corpus": rundir.read_data_info(),
        "test_windows": int(x.shape[0]),
        "unigram_bits_per_byte": unigram_bits(corpus.train, y.flatten().cpu().to(torch.uint8)),
        "run": {
            "label": spec.label,
            "train_seconds": summary.train_seconds,
            "epochs": summary.epochs,
            "train_tokens": tokens,
            "val_accuracy": summary.val_accuracy,
        },
        "trajectory": None,
        "sample": None,
    }
    precision = cfg.train.precision
    try:
        test, trajectory = readout.evaluate(
            method, spec.name, (xv, yv), (x, y), chains=ns.chains, seed=ns.seed,
            progress=progress, precision=precision, device=dev,
            train_x=data.train[0].to(dev),
        )  # fmt: skip
    except readout.ReadoutUnsupported as e:
        print(f"[lm compare] {e}", file=sys.stderr)
        result["run"] |= {
            "test": None,
            "not_evaluated": e.reason,
            # what the training run itself measured on the test split (its own read-out)
            "trainer_test": {"accuracy": summary.test_accuracy, **summary.test_scores},
        }
        atomic_write_json(cache_path, {"key": key, "result": result})
        return result
    result["trajectory"] = trajectory
    result["run"]["test"] = test
    result["run"]["output_vectors_mean_pairwise_cosine"] = readout.output_vectors_cosine(method)
    prompt = ns.prompt.encode() if ns.prompt else bytes(data.test[0].flatten()[:64].tolist())
    result["prompt"] = prompt.decode("utf-8", "replace")
    if ns.sample_bytes:
        result["sample"] = readout.sample(
            method, prompt, ns.sample_bytes, context=cfg.data.context, seed=ns.seed,
            precision=precision, device=dev,
        )  # fmt: skip
    atomic_write_json(cache_path, {"key": key, "result": result})
    return result


# ---------------------------------------------------------------------------------------- run
def run(ns: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = Path(ns.out)
    specs = check_arguments(ns)
    plots.require_matplotlib()
    device = pick_device(ns.device)
    progress = not ns.no_progress
    shared = shared_options(ns)
    probe = reference_config(shared, ns)
    task = task_for(probe.data)
    assert isinstance(task, LanguageTask)
    data = task.load(probe.data, probe.train.seed)
    plan_path = out / "plan.json"
    plan = read_json(plan_path)
    if (
        plan is None
        or not same_args(plan.get("args", {}), ns)
        or set(plan["runs"]) != {s.name for s in specs}
    ):
        plan = make_plan(ns, specs, shared, task, data, device)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(plan_path, plan)
    log_path = out / "training.json"  # each training's cost, kept for reruns that reuse it
    training: dict[str, Any] = read_json(log_path) or {}
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
        "order": [s.name for s in specs],
        "runs": {},
        "trajectory": {},
        "samples": {},
        "anchor_nanogpt": NANOGPT_ANCHOR,
    }
    for spec in specs:  # each run trained, then evaluated: a sweep cut short keeps what it did
        name = spec.name
        cfg = planned_config(spec, plan, shared, ns)
        print(f"[lm compare] training {name}: {plan['runs'][name]['schedule']}", file=sys.stderr)
        result = train_child(cfg, out / name, overwrite=ns.overwrite, progress=progress)
        if result["reused"] and name in training:
            training[name] = {**training[name], "reused": True}
        else:
            training[name] = result
            atomic_write_json(log_path, training)
        ev = evaluate_run(ns, out, spec, progress)
        flops = ev["run"]["train_tokens"] * plan["runs"][name]["flops_per_token"]
        run_row = {**training[name], **ev["run"], "train_flops": flops,
                   "achieved_flops_per_second": flops / ev["run"]["train_seconds"]}  # fmt: skip
        report["runs"][name] = run_row
        for key in ("corpus", "unigram_bits_per_byte", "test_windows"):
            report[key] = ev[key]
        if ev["trajectory"] is not None:
            report["trajectory"][name] = ev["trajectory"]
        if "prompt" in ev:
            report["samples"]["prompt"] = ev["prompt"]
        if ev["sample"] is not None:
            report["samples"][name] = ev["sample"]
    report["seconds_total_this_invocation"] = round(time.perf_counter() - t0, 1)
    previous = read_json(out / "report.json") or {}
    reused = all(training[s.name].get("reused") for s in specs)
    # the whole command's time, from the invocation that trained (a rerun only re-evaluates)
    report["seconds_total_training_invocation"] = (
        previous.get("seconds_total_training_invocation")
        if reused
        else report["seconds_total_this_invocation"]
    )
    atomic_write_json(out / "report.json", report)
    if report["trajectory"]:
        plots.plot_lm_trajectory(report, out / "trajectory.png")
    if figures.has_depth_sweep(report):
        figures.plot_depth(report, out / "depth.png")
    md = render_markdown(report)
    atomic_write(out / "report.md", lambda f: f.write(md.encode()))
    return report


__all__ = ["NANOGPT_ANCHOR", "child_flags", "run", "train_child"]
