"""End-to-end runs: ``train`` (new or resumed) and ``evaluate_run`` over a run directory.

Bad input is rejected before anything is written: the config is validated, the output directory is
checked (without creating it), the data are loaded and the model is built (and, on resume, the
checkpoint is loaded and checked against the run), and only then is the directory created and
``config.json`` written.

Crash safety: every epoch appends its ``metrics.jsonl`` record and then atomically replaces
``checkpoint.pt``; a process killed at any point resumes (``--resume``) from the last completed epoch,
losing at most the epoch in progress, with a continuous metrics history and, on CPU with the same seed
and thread count, bit-identical weights. A run killed before its first checkpoint resumes from scratch.

Divergence: a non-finite loss (detected by :meth:`Trainer.step`) or non-finite parameters at the end of
an epoch stop the run with a :class:`~noprop.errors.DivergenceError` naming the block and the epoch;
the checkpoint of the last good epoch is kept (nothing of the bad epoch is written).

Test hook: ``$NOPROP_TEST_PAUSE_AT=POINT:EPOCH`` makes ``train`` print ``NOPROP_PAUSED POINT EPOCH``
(followed by ``pid PID rank RANK``) on stderr and sleep (to be killed) at that point: ``step`` (first step of the last block of that
epoch), ``metrics`` (after the epoch's metrics record, before its checkpoint) or ``checkpoint``
(halfway through writing the checkpoint's temporary file). ``POINT:EPOCH:RANK`` pauses only that rank
of a parallel run.

Parallel runs (``--parallel``, see noprop/parallel/): every rank validates, loads the data (local rank
0 first, so a download happens once per machine), builds the model and reads the checkpoint; only rank
0 writes the run directory, the metrics, the checkpoint and the summary.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import RunConfig
from ..data import DataSplits, load_dataset
from ..errors import CheckpointError, ConfigError, DivergenceError, NoPropError
from ..methods import build_method
from ..methods.base import Method
from .checkpoint import load_checkpoint, save_checkpoint
from .rundir import RunDir
from .trainer import Trainer, evaluate, pick_device

# Flags that may differ between the original run and ``--resume`` without changing the experiment.
RESUMABLE_OVERRIDES = frozenset(
    {"epochs", "device", "patience", "eval_batch_size", "data_dir", "download", "channels_last"}
    | {"inference_steps"}
    # how the run is parallelised: the checkpoint format is the same for every mode (a learned
    # W_Embed/head then follows a different, equally valid, update order after the switch)
    | {"parallel", "dist_timeout_s"}
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


PAUSE_ENV = "NOPROP_TEST_PAUSE_AT"
PAUSE_POINTS = ("step", "metrics", "checkpoint")


def _pause_point() -> tuple[str, int] | None:
    """Parse ``$NOPROP_TEST_PAUSE_AT`` (``POINT[:EPOCH[:RANK]]``, EPOCH 1-based, default 1).

    With RANK, only that rank of a parallel run pauses (None is returned on the others)."""
    spec = os.environ.get(PAUSE_ENV, "")
    if not spec:
        return None
    point, _, rest = spec.partition(":")
    epoch, _, rank = rest.partition(":")
    if point not in PAUSE_POINTS or not (epoch or "1").isdigit() or not (rank or "0").isdigit():
        raise ConfigError(f"${PAUSE_ENV} must be POINT[:EPOCH[:RANK]] with POINT in {PAUSE_POINTS}")
    if rank and rank != os.environ.get("RANK", "0"):
        return None
    return point, int(epoch or 1)


def _pause(point: str, epoch: int) -> None:
    """Test hook: announce the point (and this process) and wait to be killed."""
    rank = os.environ.get("RANK", "0")
    print(
        f"NOPROP_PAUSED {point} {epoch} pid {os.getpid()} rank {rank}", file=sys.stderr, flush=True
    )
    while True:
        time.sleep(60)


def _first_detail(e: BaseException) -> str:
    """The most informative line of a (multi-line) torch error, shortened."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if not ln.endswith(":")), lines[0] if lines else "")
    return (detail or type(e).__name__)[:200]


def check_payload(run: RunDir, payload: dict[str, Any], cfg: RunConfig) -> None:
    """A checkpoint must hold a trainer state and the config of ``run``'s ``config.json``.

    Fields that may change on resume (:data:`RESUMABLE_OVERRIDES`) are not compared.
    """
    path = run.checkpoint_path
    state = payload.get("trainer")
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} is not a noprop training checkpoint (no model state)")
    try:
        saved = RunConfig.from_dict(payload.get("config") or {}).flat()
    except (NoPropError, TypeError, AttributeError):
        raise CheckpointError(f"{path} carries no valid run config") from None
    current = cfg.flat()
    for k, v in current.items():
        if k not in RESUMABLE_OVERRIDES and saved.get(k) != v:
            raise CheckpointError(
                f"{path} was written with --{k.replace('_', '-')} {saved.get(k)!r} but "
                f"{run.config_path} says {v!r}; the checkpoint is incompatible with this config"
            )


def _check_finite(method: Method, epoch: int) -> None:
    """Raise DivergenceError if a parameter became NaN/inf (e.g. a finite loss with huge steps)."""
    groups = [(f"block {u + 1}", method.unit_parameters(u)) for u in range(method.num_units)]
    groups.append(("the shared parameters (head, embedding)", method.shared_parameters()))
    for name, params in groups:
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise DivergenceError(f"parameters of {name} became NaN or infinite at epoch {epoch}")


def train(
    cfg: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a run into ``out`` (or continue it with ``resume``) and return ``summary.json``'s content.

    Under torchrun with ``--parallel blocks|data`` every rank calls this; rank 0 writes and returns
    the summary, the other ranks return an empty dict."""
    from ..parallel import parallel_context

    run = RunDir(out)
    if resume:
        cfg = resume_config(run, overrides or {})
    with parallel_context(cfg) as ctx:
        return _train(cfg, run, ctx, resume=resume, overwrite=overwrite, progress=progress)


def _train(
    cfg: RunConfig, run: RunDir, ctx: Any, *, resume: bool, overwrite: bool, progress: bool
) -> dict[str, Any]:
    from ..parallel import build_trainer

    pause = _pause_point()
    is_main = ctx is None or ctx.is_main
    payload = None
    if resume:
        if run.checkpoint_path.exists():  # else: killed before the first epoch ended; start over
            payload = load_checkpoint(run.checkpoint_path)
            check_payload(run, payload, RunConfig.from_dict(run.read_config()))
    else:
        run.check_writable(overwrite=overwrite, config=cfg.to_dict())
    device = pick_device(cfg.train.device) if ctx is None else ctx.device
    if ctx is None:
        data = load_data(cfg)
    else:
        data = ctx.local_main_first(lambda: load_data(cfg), "to load the data")
    method = build_for_data(cfg, data)
    trainer = build_trainer(method, cfg, device, ctx, progress=progress)
    if payload is not None:
        try:
            trainer.load_state_dict(_to_device(payload["trainer"], device))
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise CheckpointError(
                f"{run.checkpoint_path} does not match the run's model: {_first_detail(e)}"
            ) from None
    if ctx is not None:  # every rank has checked --out before rank 0 creates it
        ctx.barrier("waiting for every rank to load the data and model")
    if is_main and resume:
        run.truncate_metrics(trainer.state.epoch)
        run.remove_stale_temp_files()
    elif is_main:
        run.start(cfg.to_dict(), overwrite=overwrite)
    saved_config = RunConfig.from_dict(run.read_config()).to_dict() if is_main else {}
    saved_epoch = [trainer.state.epoch]  # the epoch checkpoint.pt holds

    if pause is not None and pause[0] == "step":
        inner_step = trainer.step

        def step(x: torch.Tensor, y: torch.Tensor, unit: int) -> dict[str, torch.Tensor]:
            if trainer.state.epoch + 1 == pause[1] and unit == trainer.method.num_units - 1:
                _pause("step", pause[1])
            return inner_step(x, y, unit)

        trainer.step = step  # type: ignore[method-assign]

    def on_epoch(tr: Trainer, record: dict[str, Any]) -> None:
        _check_finite(tr.method, record["epoch"])
        if not is_main:
            return
        run.append_metrics(record)
        if pause == ("metrics", record["epoch"]):
            _pause("metrics", record["epoch"])
        mid_write = None
        if pause == ("checkpoint", record["epoch"]):
            mid_write = functools.partial(_pause, "checkpoint", record["epoch"])
        save_checkpoint(
            run.checkpoint_path,
            {"config": saved_config, "noprop_version": __version__, "trainer": tr.state_dict()},
            mid_write=mid_write,
        )
        saved_epoch[0] = record["epoch"]

    try:
        trainer.fit(data.train, data.val, on_epoch)
    except DivergenceError as e:
        last = saved_epoch[0]
        kept = (
            f"the checkpoint of epoch {last} is kept in {run.checkpoint_path}"
            if last
            else "no epoch completed, so there is no checkpoint"
        )
        message = str(e).removesuffix("; the last good checkpoint is kept")
        raise DivergenceError(f"training diverged: {message}; {kept}; try a smaller --lr") from None
    if not is_main:
        return {}
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
        "parallel": cfg.train.parallel,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
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
    check_payload(run, payload, cfg)
    dev = pick_device(device)
    data = load_data(cfg)
    method = build_for_data(cfg, data).to(dev)
    state = payload["trainer"].get("best_model") or payload["trainer"]["model"]
    try:
        method.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{run.checkpoint_path} does not match the run's model: {_first_detail(e)}"
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
