"""One cell of the reproduce grid: refuse a conflicting run, train or resume it, evaluate it.

Every file of a cell goes through :class:`~noprop.RunDir` (``config.json``, ``summary.json``,
``eval5.json``); only ``error.json`` (a diverged cell, :data:`~noprop.bench.grid.ERROR_FILE`) is the
grid's own. A cell with ``summary.json`` and ``eval5.json`` is never retrained (its ``eval5.json`` is
redone only if ``runs`` or ``train_eval_samples`` changed); one with only ``summary.json`` is
evaluated; an interrupted one (``config.json`` but no ``summary.json``) resumes from its checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from noprop import ConfigError, DivergenceError, RunConfig, RunDir, evaluate
from noprop.data import as_source, num_examples
from noprop.runs import RESUMABLE_OVERRIDES, evaluate_run, load_run_with_task, train

from .grid import NEUTRAL_FIELDS, is_failed, read_error, write_error


def evaluate_train_accuracy(
    run_dir: str | Path,
    *,
    runs: int = 5,
    max_samples: int = 10000,
    device: str = "auto",
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Accuracy of a run's validation-selected model on (a fixed subset of) its training split.

    Uses the same inference seeds as :func:`~noprop.runs.evaluate_run` (``seed + r``) and at most
    ``max_samples`` training examples (a random subset drawn with a fixed seed) for speed.
    ``data_dir``: where the data are (default: where the run's config says; read only).
    Returns ``{"accuracies": [...], "num_samples": n}``.
    """
    if runs < 1 or max_samples < 1:
        raise ConfigError("runs and max_samples must be >= 1")
    method, cfg, task, data, dev = load_run_with_task(run_dir, device, data_dir=data_dir)
    n = num_examples(data.train)  # your own data: a source, read by index
    idx = torch.arange(n)
    if n > max_samples:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_samples]
    x, y = (t.to(dev) for t in as_source(data.train).gather(idx))
    bs = cfg.train.eval_batch_size
    accs = [
        evaluate(
            method,
            x,
            y,
            bs,
            False,
            seed=cfg.train.seed + r,
            task=task,
            precision=cfg.train.precision,
        )["accuracy"]  # fmt: skip
        for r in range(runs)
    ]
    return {"accuracies": accs, "num_samples": int(x.shape[0])}


def _differences(saved: dict[str, Any], wanted: dict[str, Any], ignore: frozenset[str]) -> str:
    if saved.get("method") != wanted.get("method"):  # other options: not comparable
        return f"--method {saved.get('method')!r} (now {wanted.get('method')!r})"
    diffs = [
        f"--{k.replace('_', '-')} {saved.get(k)!r} (now {v!r})"
        for k, v in wanted.items()
        if k not in ignore and saved.get(k) != v
    ]
    return ", ".join(diffs)


def check_cell(cell_dir: Path, cfg: RunConfig) -> None:
    """Refuse a cell directory holding a run of another config (so one table is one experiment).

    A finished cell must match in everything but :data:`~noprop.bench.grid.NEUTRAL_FIELDS`; an
    interrupted one in everything ``--resume`` may not change (its epochs, patience, device, ...
    follow the new flags). Both flat configs hold only the cell's method's options.
    """
    rd = RunDir(cell_dir)
    if not rd.is_run():
        return
    saved = rd.config().flat()
    finished = rd.summary_path.is_file()
    ignore = NEUTRAL_FIELDS if finished else RESUMABLE_OVERRIDES
    diff = _differences(saved, cfg.flat(), ignore)
    if diff:
        raise ConfigError(
            f"{cell_dir} was {'trained' if finished else 'started'} with {diff}; "
            "use another --out or delete that cell"
        )


def run_cell(
    cell_dir: Path,
    cfg: RunConfig,
    *,
    runs: int = 5,
    train_eval_samples: int = 10000,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Train (or resume) and evaluate one cell unless already done; returns what was done.

    ``{"status": "cached" | "evaluated" | "resumed" | "trained" | "failed", "error": str | None}``.
    """
    check_cell(cell_dir, cfg)
    rd = RunDir(cell_dir)
    if is_failed(cell_dir):
        return {"status": "failed", "error": read_error(cell_dir)}
    wanted = cfg.flat()
    status = "cached"
    if not rd.summary_path.is_file():
        try:
            if rd.is_run():
                resumable = {k: wanted[k] for k in RESUMABLE_OVERRIDES if k in wanted}
                train(cfg, cell_dir, resume=True, progress=progress, overrides=resumable)
                status = "resumed"
            else:  # new, or killed before config.json was written (at most stray temp files)
                train(cfg, cell_dir, overwrite=cell_dir.exists(), progress=progress)
                status = "trained"
        except DivergenceError as e:
            write_error(cell_dir, str(e))
            return {"status": "failed", "error": str(e)}
        rd.eval5_path.unlink(missing_ok=True)  # the model may have changed: evaluate again
    old = rd.read_eval5()
    if old is not None:  # evaluated with other --runs / --train-eval-samples: evaluate again
        if (old.get("runs"), old.get("train_eval_max_samples")) != (runs, train_eval_samples):
            rd.eval5_path.unlink()
            old = None
    if old is None:
        start = time.perf_counter()
        # the data where this invocation's --data-dir says: a cached or resumed cell's config
        # keeps the directory it was first trained with, and reading a run never downloads
        where = cfg.data.data_dir
        test = evaluate_run(cell_dir, runs=runs, device=device, data_dir=where)
        train_acc = evaluate_train_accuracy(
            cell_dir, runs=runs, max_samples=train_eval_samples, device=device, data_dir=where
        )
        with rd.lock("bench reproduce"):  # one writer of the cell's run directory
            rd.write_eval5(
                {
                    "runs": runs,
                    "deterministic": False,
                    "test_accuracies": test["accuracies"],
                    "test_accuracy": test["test_accuracy"],
                    "test_accuracy_stderr": test["test_accuracy_stderr"],
                    "test_accuracy_per_step": test["accuracy_per_step"],
                    "train_accuracies": train_acc["accuracies"],
                    "train_accuracy_samples": train_acc["num_samples"],
                    "train_eval_max_samples": train_eval_samples,
                    "eval_seconds": round(time.perf_counter() - start, 3),
                }
            )
        status = "evaluated" if status == "cached" else status
    return {"status": status, "error": None}
