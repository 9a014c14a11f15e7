"""End-to-end runs: ``train`` (new or resumed) and ``evaluate_run`` over a run directory.

Bad input is rejected before anything is written: the config is validated, the output directory is
checked, the data are loaded and the model is built, and only then is ``config.json`` written.
"""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import RunConfig
from ..data import DataSplits, load_dataset
from ..errors import CheckpointError, ConfigError
from ..methods import build_method
from ..methods.base import Method
from .checkpoint import load_checkpoint, save_checkpoint
from .rundir import RunDir
from .trainer import Trainer, evaluate, pick_device

# Flags that may differ between the original run and ``--resume`` without changing the experiment.
RESUMABLE_OVERRIDES = frozenset(
    {"epochs", "device", "patience", "eval_batch_size", "data_dir", "download"}
)


def load_data(cfg: RunConfig) -> DataSplits:
    d = cfg.data
    return load_dataset(
        d.dataset,
        d.data_dir,
        val_fraction=d.val_fraction,
        seed=cfg.train.seed,
        max_train_samples=d.max_train_samples,
        download=d.download,
    )


def build_for_data(cfg: RunConfig, data: DataSplits) -> Method:
    return build_method(cfg, data.in_shape, data.num_classes, *data.train)


def resume_config(run: RunDir, overrides: dict[str, Any]) -> RunConfig:
    """The saved config with the allowed overrides applied; other differing flags are an error."""
    saved = RunConfig.from_dict(run.read_config())
    flat = saved.flat()
    conflicts = {
        k: v for k, v in overrides.items() if k not in RESUMABLE_OVERRIDES and flat.get(k) != v
    }
    if conflicts:
        k, v = next(iter(conflicts.items()))
        raise ConfigError(
            f"--resume {run.path}: --{k.replace('_', '-')} {v} conflicts with the run's {flat[k]!r}"
        )
    allowed = {k: v for k, v in overrides.items() if k in RESUMABLE_OVERRIDES}
    return saved.replace(**allowed)


def train(
    cfg: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a run into ``out`` (or continue it with ``resume``) and return ``summary.json``'s content."""
    run = RunDir(out)
    payload = None
    if resume:
        cfg = resume_config(run, overrides or {})
        if not run.checkpoint_path.is_file():
            raise CheckpointError(
                f"--resume {run.path}: no completed epoch to resume from (no checkpoint)"
            )
        payload = load_checkpoint(run.checkpoint_path)
        if payload.get("config") != RunConfig.from_dict(run.read_config()).to_dict():
            raise CheckpointError(
                f"{run.checkpoint_path} was written by a different config than config.json"
            )
    else:
        run.check_writable(overwrite=overwrite, config=cfg.to_dict())
    device = pick_device(cfg.train.device)
    data = load_data(cfg)
    method = build_for_data(cfg, data)
    trainer = Trainer(method, cfg, device, progress=progress)
    if payload is not None:
        try:
            trainer.load_state_dict(_to_device(payload["trainer"], device))
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint does not match the run's model: {str(e).splitlines()[0]}"
            ) from None
        run.truncate_metrics(trainer.state.epoch)
    else:
        run.start(cfg.to_dict(), overwrite=overwrite)
    saved_config = (RunConfig.from_dict(run.read_config())).to_dict()

    def on_epoch(tr: Trainer, record: dict[str, Any]) -> None:
        run.append_metrics(record)
        save_checkpoint(
            run.checkpoint_path,
            {"config": saved_config, "noprop_version": __version__, "trainer": tr.state_dict()},
        )

    trainer.fit(data.train, data.val, on_epoch)
    summary = final_summary(trainer, data, cfg, device)
    run.write_summary(summary)
    return summary


def _to_device(obj: Any, device: torch.device) -> Any:
    """Optimiser states must live where their parameters are; model tensors are copied by load."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device) if obj.is_floating_point() and obj.dim() > 0 else obj
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    return obj


def final_summary(
    trainer: Trainer, data: DataSplits, cfg: RunConfig, device: torch.device
) -> dict[str, Any]:
    """Load the model selected on validation and evaluate the test set once (both inference modes)."""
    method = trainer.method
    if trainer.best_model is not None:
        method.load_state_dict(trainer.best_model)
    x, y = (t.to(device) for t in data.test)
    bs = cfg.train.eval_batch_size
    stochastic = evaluate(method, x, y, bs, deterministic=False, seed=cfg.train.seed)
    deterministic = evaluate(method, x, y, bs, deterministic=True, seed=cfg.train.seed)
    st = trainer.state
    return {
        "method": cfg.method.method,
        "dataset": cfg.data.dataset,
        "embedding": cfg.model.embedding,
        "val_accuracy": st.best_val if st.best_val >= 0 else None,
        "best_epoch": st.best_epoch,
        "test_accuracy": stochastic["accuracy"],
        "test_accuracy_deterministic": deterministic["accuracy"],
        "test_accuracy_per_step": stochastic["accuracy_per_step"],
        "train_seconds": round(st.train_seconds, 3),
        "epochs": st.epoch,
        "data_passes": st.data_passes,
        "params_per_block": method.params_per_block(),
        "num_train": int(data.train[0].shape[0]),
        "num_val": int(data.val[0].shape[0]),
        "num_test": int(x.shape[0]),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "num_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "noprop_version": __version__,
    }


def load_run(
    run_dir: str | Path, device: str = "auto"
) -> tuple[Method, RunConfig, DataSplits, torch.device]:
    """Rebuild a run's model (the validation-selected weights) and its data splits."""
    run = RunDir(run_dir)
    cfg = RunConfig.from_dict(run.read_config())
    payload = load_checkpoint(run.checkpoint_path)
    dev = pick_device(device)
    data = load_data(cfg)
    method = build_for_data(cfg, data).to(dev)
    state = payload["trainer"].get("best_model") or payload["trainer"]["model"]
    try:
        method.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint does not match the run's model: {str(e).splitlines()[0]}"
        ) from None
    return method, cfg, data, dev


def evaluate_run(
    run_dir: str | Path, *, deterministic: bool = False, runs: int = 1, device: str = "auto"
) -> dict[str, Any]:
    """Test accuracy over ``runs`` inference runs (mean ± standard error) and per-step accuracy."""
    if runs < 1:
        raise ConfigError(f"--runs must be >= 1 (got {runs})")
    method, cfg, data, dev = load_run(run_dir, device)
    x, y = (t.to(dev) for t in data.test)
    results = [
        evaluate(method, x, y, cfg.train.eval_batch_size, deterministic, seed=cfg.train.seed + r)
        for r in range(runs)
    ]
    accs = [r["accuracy"] for r in results]
    mean = sum(accs) / runs
    var = sum((a - mean) ** 2 for a in accs) / (runs - 1) if runs > 1 else 0.0
    steps = [
        sum(r["accuracy_per_step"][i] for r in results) / runs
        for i in range(len(results[0]["accuracy_per_step"]))
    ]
    return {
        "test_accuracy": mean,
        "test_accuracy_stderr": math.sqrt(var / runs),
        "runs": runs,
        "deterministic": deterministic,
        "accuracy_per_step": steps,
        "accuracies": accs,
    }
