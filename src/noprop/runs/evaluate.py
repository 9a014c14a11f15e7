"""Read a finished (or interrupted) run back: ``load_run`` and ``evaluate_run``.

Reading a run never creates or downloads into the data directory its config names
(:mod:`noprop.runs.reading`): ``data_dir`` (``noprop eval --data-dir``) says where the data are
instead."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import RunConfig
from ..data import DataSplits
from ..device import pick_device
from ..errors import CheckpointError, ConfigError
from ..methods import Method
from ..precision import check_precision
from ..rundir import RunDir
from ..runtime import load_meter
from ..tasks import Task
from ..training.checkpoint import load_checkpoint
from ..training.trainer import evaluate
from .model import TrainedModel, load_trained
from .reading import ASK_DATA_DIR, read_data
from .train import build_for_data, check_payload, first_detail


def run_precision(cfg: RunConfig, precision: str | None) -> str:
    """``--precision`` of an evaluation: the given one, else the run's training precision."""
    if precision is None:
        return cfg.train.precision
    check_precision(precision)
    return precision


def load_run(
    run_dir: str | Path, device: str = "auto", *, data_dir: str | Path | None = None
) -> tuple[Method, RunConfig, DataSplits, torch.device]:
    """Rebuild a run's model (the validation-selected weights) and its data splits (read from
    ``data_dir`` when given, else where the run's config says; never downloaded)."""
    method, cfg, _task, data, dev = load_run_with_task(run_dir, device, data_dir=data_dir)
    return method, cfg, data, dev


def load_run_with_task(
    run_dir: str | Path, device: str = "auto", *, data_dir: str | Path | None = None
) -> tuple[Method, RunConfig, Task, DataSplits, torch.device]:
    """:func:`load_run` plus the run's task."""
    run = RunDir(run_dir)
    cfg = run.config()
    payload = load_checkpoint(run.checkpoint_path)
    check_payload(run, payload, cfg)
    dev = pick_device(device)
    task, data = read_data(cfg, run, data_dir)
    method = build_for_data(cfg, task, data).to(dev)
    state = payload["trainer"].get("best_model") or payload["trainer"]["model"]
    try:
        method.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{run.checkpoint_path} does not match the run's model: {first_detail(e)}"
        ) from None
    return method, cfg, task, data, dev


def compile_for_inference(method: Method, batch_size: int, log: Any = print) -> float:
    """``--compile``: :meth:`Method.compile_inference` (a one-line ConfigError where it is not
    offered), its compile seconds logged apart from the evaluation's."""
    seconds = method.compile_inference(batch_size)
    log(f"compiled {method.label} inference (torch.compile, inductor) in {seconds:.1f} s")
    return seconds


def evaluate_run(
    run_dir: str | Path,
    *,
    deterministic: bool = False,
    runs: int = 1,
    device: str = "auto",
    compile: bool = False,
    precision: str | None = None,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Test accuracy over ``runs`` inference runs (mean ± standard error) and per-step accuracy.

    ``compile``: compile the method's inference first (ct only; ``compile_seconds`` in the result).
    ``precision``: of the networks (default: the run's training precision).
    ``data_dir``: where the run's data are (``--data-dir``; default: where its config says)."""
    if runs < 1:
        raise ConfigError(f"--runs must be >= 1 (got {runs})")
    method, cfg, task, data, dev = load_run_with_task(run_dir, device, data_dir=data_dir)
    precision = run_precision(cfg, precision)
    x, y = (t.to(dev) for t in data.test)
    bs = cfg.train.eval_batch_size
    compile_seconds = compile_for_inference(method, bs) if compile else None
    start = time.perf_counter()
    results = [
        evaluate(
            method,
            x,
            y,
            bs,
            deterministic,
            seed=cfg.train.seed + r,
            task=task,
            progress=True,
            desc=f"test run {r + 1}/{runs}",
            precision=precision,
        )  # fmt: skip
        for r in range(runs)
    ]
    accs = [r["accuracy"] for r in results]
    mean = sum(accs) / runs
    var = sum((a - mean) ** 2 for a in accs) / (runs - 1) if runs > 1 else 0.0
    steps = [
        sum(r["accuracy_per_step"][i] for r in results) / runs
        for i in range(len(results[0]["accuracy_per_step"]))
    ]
    out: dict[str, Any] = {
        "test_accuracy": mean,
        "test_accuracy_stderr": math.sqrt(var / runs),
        "runs": runs,
        "deterministic": deterministic,
        "accuracy_per_step": steps,
        "accuracies": accs,
        "seconds": round(time.perf_counter() - start, 3),
        "compile_seconds": compile_seconds,
        "precision": precision,
    }
    for k in results[0].keys() - {"accuracy", "accuracy_per_step"}:  # e.g. bits per byte (text)
        if not k.endswith("_per_step"):
            out[f"test_{k}"] = sum(r[k] for r in results) / runs
            out[f"{k}_per_step"] = [
                sum(r[f"{k}_per_step"][i] for r in results) / runs
                for i in range(len(results[0][f"{k}_per_step"]))
            ]
    return out


def _gflop_per_chain(method: Method, x: torch.Tensor, images: int = 8) -> float:
    """GFLOP of one stochastic chain per image (``torch.utils.flop_counter``, the method's default
    inference on a few test images), stored with the result so the figure needs no checkpoint."""
    sample = x[:images].to(next(method.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        method.predict_steps(sample, deterministic=False)
    return round(counter.get_total_flops() / sample.shape[0] / 1e9, 6)


def _rounded(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def evaluate_chains(
    run_dir: str | Path,
    chains: list[int],
    *,
    device: str = "auto",
    seed: int | None = None,
    compile: bool = False,
    precision: str | None = None,
    data_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Test accuracy and seconds of averaging the head's probabilities over N stochastic chains
    (``TrainedModel.predict_proba``, one N·B batch per pass) for every N in ``chains``; also the
    deterministic chain (``chains = 0`` in the rows) for comparison. Writes ``eval_chains.json``.

    ``data_dir``: where the run's data are (``--data-dir``; default: where its config says)."""
    if not chains or any(n < 1 for n in chains):
        raise ConfigError(f"--chains takes positive integers (got {chains})")
    model = load_trained(run_dir, device, precision, data_dir=data_dir, ask=ASK_DATA_DIR)
    with RunDir(run_dir).lock("eval --chains"):  # it writes eval_chains.json: one writer
        return _evaluate_chains(model, run_dir, chains, seed, compile, data_dir)


def _evaluate_chains(
    model: TrainedModel,
    run_dir: str | Path,
    chains: list[int],
    seed: int | None,
    compile: bool,
    data_dir: str | Path | None,
) -> list[dict[str, Any]]:
    _, data = read_data(model.config, RunDir(run_dir), data_dir)
    if compile:
        compile_for_inference(model.method, model.config.train.eval_batch_size)
    x, y = data.test
    gflop = _gflop_per_chain(model.method, x)
    rows, other_busy = [], load_meter()
    for n in [0, *chains]:
        start = time.perf_counter()
        probs = model.predict_proba(x, chains=max(n, 1), deterministic=n == 0, seed=seed)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        seconds = time.perf_counter() - start
        acc = float((probs.argmax(-1) == y).double().mean())
        rows.append({"chains": n, "test_accuracy": acc, "seconds": round(seconds, 4)})
    RunDir(run_dir).write_eval_chains(
        {
            "device": str(model.device),
            "gflop_per_chain_per_image": gflop,
            "num_test": int(x.shape[0]),
            "other_busy_cores": _rounded(other_busy()),
            "precision": model.precision,
            "rows": rows,
            "seed": model.config.train.seed if seed is None else seed,
        }  # fmt: skip
    )
    return rows
