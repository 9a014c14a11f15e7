"""``noprop bench reproduce``: a Table-1-style grid of methods × embeddings × seeds (spec §5.1).

Every cell ``(method, embedding, seed)`` is an ordinary run directory, ``DIR/cells/METHOD-EMBEDDING-sSEED``,
trained by :func:`noprop.training.run.train` (model selection on the validation split), then evaluated
with ``runs`` (default 5) stochastic inference runs on the test set and on the training split; the
results go to ``eval5.json`` in the cell (written atomically). ``DIR/table.md`` and ``DIR/table.json``
report, per (method, embedding), train and test accuracy as mean ± standard error over seeds × runs
(the paper's 15 values for 3 seeds), data passes and training time, next to the paper's Table 1 numbers
for MNIST, CIFAR-10 and CIFAR-100 ("n/a" for the other data sets).

Resuming is cell by cell: a cell with ``summary.json`` and ``eval5.json`` is never retrained (its
``eval5.json`` is redone only if ``--runs`` or ``--train-eval-samples`` changed); one with only
``summary.json`` is evaluated; an interrupted one (``config.json`` but no ``summary.json``) resumes
from its last checkpoint with ``train(..., resume=True)``. A cell whose training diverged records
``error.json`` and is reported, not retried (delete the file to retry). Re-running with a different
config for an existing cell is refused rather than mixing two experiments in one table.

Training accuracy is computed on at most ``--train-eval-samples`` (default 10000) examples of the
training split (a fixed random subset), with the same ``runs`` inference seeds as the test set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DivergenceError

EVAL_FILE = "eval5.json"
ERROR_FILE = "error.json"
CELLS = "cells"
# Grid axes: given as lists by --methods/--embeddings/--seeds, never as single train flags.
GRID_FIELDS = ("method", "embedding", "seed")
# Config fields that do not change the experiment (a finished cell is reused whatever they are).
# ``parallel``/``dist_timeout_s``: how a run is parallelised (see RESUMABLE_OVERRIDES in training/run.py).
NEUTRAL_FIELDS = frozenset(
    {"device", "eval_batch_size", "data_dir", "download", "channels_last"}
    | {"parallel", "dist_timeout_s"}
)

# ---------------------------------------------------------------------------------- the paper
METHOD_LABELS = {
    "backprop": "Backprop",
    "dt": "NoProp-DT",
    "adjoint": "Adjoint",
    "ct": "NoProp-CT",
    "fm": "NoProp-FM",
}
PAPER_DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
_T1_COLUMNS = ("mnist", "cifar10", "cifar100")
# Table 1 of arXiv 2503.24322 (identical in v1 and v2): accuracy in %, mean ± standard error over
# 3 seeds × 5 inference runs; per data set (train, test). "learned" is the paper's "dim=20".
_T1_ROWS = {
    ("backprop", "one-hot"): "100.0±0.0 99.46±0.06 99.98±0.01 79.92±0.14 98.63±1.34 45.85±2.07",
    ("backprop", "learned"): "99.99±0.0 99.43±0.03 99.96±0.02 79.3±0.52 94.28±7.43 46.57±0.87",
    ("backprop", "prototype"): "99.99±0.01 99.44±0.05 99.97±0.01 79.58±0.44 99.19±0.71 47.8±0.19",
    ("dt", "one-hot"): "99.92±0.01 99.47±0.05 95.02±0.19 79.25±0.28 84.97±0.67 45.93±0.46",
    ("dt", "learned"): "99.93±0.01 99.49±0.04 94.95±0.09 79.12±0.37 83.25±0.39 45.19±0.22",
    ("dt", "prototype"): "99.97±0.0 99.54±0.04 97.23±0.11 80.54±0.2 90.7±0.14 46.06±0.25",
    ("adjoint", "one-hot"): "98.7±0.13 98.62±0.14 70.64±0.49 66.78±0.76 26.72±0.81 25.03±0.7",
    ("ct", "one-hot"): "97.88±0.61 97.84±0.71 97.31±0.84 73.35±0.55 75.1±3.43 33.66±0.5",
    ("ct", "learned"): "97.7±0.42 97.7±0.51 94.88±3.08 71.77±2.47 74.22±2.33 33.99±1.08",
    ("ct", "prototype"): "97.18±1.02 97.17±0.94 86.2±7.34 66.54±3.63 40.88±10.72 21.31±4.17",
    ("fm", "one-hot"): "99.97±0.0 99.21±0.09 98.46±0.4 73.14±0.9 12.69±10.4 6.38±4.9",
    ("fm", "learned"): "99.99±0.0 99.29±0.05 99.49±0.15 73.5±0.28 83.49±4.62 31.14±0.52",
    ("fm", "prototype"): "99.27±0.09 98.52±0.16 99.8±0.03 75.18±0.57 96.37±1.09 37.57±0.32",
}
PAPER_TABLE1: dict[tuple[str, str], dict[str, dict[str, str]]] = {
    key: {
        ds: {"train": values[2 * i], "test": values[2 * i + 1]} for i, ds in enumerate(_T1_COLUMNS)
    }
    for key, values in ((k, v.split()) for k, v in _T1_ROWS.items())
}


def row_label(method: str, embedding: str, embed_dim: int) -> str:
    emb = f"dim={embed_dim}" if embedding == "learned" else embedding
    return f"{METHOD_LABELS.get(method, method)} ({emb})"


def paper_numbers(
    method: str, embedding: str, dataset: str, embed_dim: int = 20
) -> dict[str, str] | None:
    """The paper's Table 1 {"train", "test"} strings (in %), or None where it has no such entry."""
    if dataset not in PAPER_DATASETS or (embedding == "learned" and embed_dim != 20):
        return None
    return PAPER_TABLE1.get((method, embedding), {}).get(dataset)


# --------------------------------------------------------------------------------- statistics
def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); 0 for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def evaluate_train_accuracy(
    run_dir: str | Path, *, runs: int = 5, max_samples: int = 10000, device: str = "auto"
) -> dict[str, Any]:
    """Accuracy of a run's validation-selected model on (a fixed subset of) its training split.

    Uses the same inference seeds as :func:`~noprop.training.run.evaluate_run` (``seed + r``) and at
    most ``max_samples`` training examples (a random subset drawn with a fixed seed) for speed.
    Returns ``{"accuracies": [...], "num_samples": n}``.
    """
    import torch

    from ..runs import load_run
    from ..training.trainer import evaluate

    if runs < 1 or max_samples < 1:
        raise ConfigError("runs and max_samples must be >= 1")
    method, cfg, data, dev = load_run(run_dir, device)
    x, y = data.train
    if x.shape[0] > max_samples:
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:max_samples]
        x, y = x[idx], y[idx]
    x, y = x.to(dev), y.to(dev)
    accs = [
        evaluate(method, x, y, cfg.train.eval_batch_size, False, seed=cfg.train.seed + r)[
            "accuracy"
        ]
        for r in range(runs)
    ]
    return {"accuracies": accs, "num_samples": int(x.shape[0])}


# ------------------------------------------------------------------------------------ the grid
@dataclasses.dataclass(frozen=True)
class Cell:
    method: str
    embedding: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-{self.embedding}-s{self.seed}"


def parse_list(flag: str, text: str, kind: Callable[[str], Any] = str) -> list[Any]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ConfigError(f"{flag} needs at least one value")
    try:
        values = [kind(s) for s in items]
    except ValueError:
        raise ConfigError(f"{flag}: cannot read {text!r} as a comma-separated list") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"{flag} lists a value twice: {text!r}")
    return values


def build_grid(
    methods: Sequence[str],
    embeddings: Sequence[str],
    seeds: Sequence[int],
    overrides: dict[str, Any] | None = None,
) -> list[tuple[Cell, Any]]:
    """Every cell with its validated :class:`RunConfig`; errors (unknown method, bad flag) up front."""
    from ..config import RunConfig
    from ..methods import METHODS

    overrides = dict(overrides or {})
    for f in GRID_FIELDS:
        if f in overrides:
            raise ConfigError(f"--{f} is a grid axis here; use --{f}s")
    missing = [m for m in methods if m not in METHODS]
    if missing:
        raise ConfigError(
            f"method {missing[0]!r} is not available; choose from {', '.join(METHODS)}"
        )
    grid = []
    for m in methods:
        for e in embeddings:
            for s in seeds:
                cfg = RunConfig().replace(**overrides, method=m, embedding=e, seed=s)
                grid.append((Cell(m, e, s), cfg))
    return grid


def _differences(saved: dict[str, Any], wanted: dict[str, Any], ignore: frozenset[str]) -> str:
    diffs = [
        f"--{k.replace('_', '-')} {saved.get(k)!r} (now {v!r})"
        for k, v in wanted.items()
        if k not in ignore and saved.get(k) != v
    ]
    return ", ".join(diffs)


def check_cell(cell_dir: Path, cfg: Any) -> None:
    """Refuse a cell directory holding a run of another config (so one table is one experiment).

    A finished cell must match in everything but :data:`NEUTRAL_FIELDS`; an interrupted one in
    everything ``--resume`` may not change (its epochs, patience, device, ... follow the new flags).
    """
    from ..config import RunConfig
    from ..runs import RESUMABLE_OVERRIDES
    from ..rundir import RunDir

    rd = RunDir(cell_dir)
    if not rd.is_run():
        return
    saved = RunConfig.from_dict(rd.read_config()).flat()
    finished = (cell_dir / "summary.json").is_file()
    diff = _differences(saved, cfg.flat(), NEUTRAL_FIELDS if finished else RESUMABLE_OVERRIDES)
    if diff:
        raise ConfigError(
            f"{cell_dir} was {'trained' if finished else 'started'} with {diff}; "
            "use another --out or delete that cell"
        )


def run_cell(
    cell_dir: Path,
    cfg: Any,
    *,
    runs: int = 5,
    train_eval_samples: int = 10000,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Train (or resume) and evaluate one cell unless already done; returns what was done.

    ``{"status": "cached" | "evaluated" | "resumed" | "trained" | "failed", "error": str | None}``.
    """
    from .. import runs as run_mod
    from ..atomic import atomic_write_json
    from ..rundir import RunDir

    check_cell(cell_dir, cfg)
    rd = RunDir(cell_dir)
    summary_path, eval_path = cell_dir / "summary.json", cell_dir / EVAL_FILE
    error_path = cell_dir / ERROR_FILE
    wanted = cfg.flat()
    if error_path.is_file():
        return {"status": "failed", "error": json.loads(error_path.read_text()).get("error")}
    status = "cached"
    if not summary_path.is_file():
        try:
            if rd.is_run():
                resumable = {k: wanted[k] for k in run_mod.RESUMABLE_OVERRIDES if k in wanted}
                run_mod.train(cfg, cell_dir, resume=True, progress=progress, overrides=resumable)
                status = "resumed"
            else:  # new, or killed before config.json was written (at most stray temp files)
                run_mod.train(cfg, cell_dir, overwrite=cell_dir.exists(), progress=progress)
                status = "trained"
        except DivergenceError as e:
            atomic_write_json(error_path, {"error": str(e)})
            return {"status": "failed", "error": str(e)}
        eval_path.unlink(missing_ok=True)  # the model may have changed: evaluate again
    if eval_path.is_file():  # evaluated with other --runs / --train-eval-samples: evaluate again
        old = json.loads(eval_path.read_text())
        if (old.get("runs"), old.get("train_eval_max_samples")) != (runs, train_eval_samples):
            eval_path.unlink()
    if not eval_path.is_file():
        start = time.perf_counter()
        test = run_mod.evaluate_run(cell_dir, runs=runs, device=device)
        train_acc = evaluate_train_accuracy(
            cell_dir, runs=runs, max_samples=train_eval_samples, device=device
        )
        atomic_write_json(
            eval_path,
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
            },
        )
        status = "evaluated" if status == "cached" else status
    return {"status": status, "error": None}


# ----------------------------------------------------------------------------------- the table
def _stat(values: Sequence[float], scale: float = 1.0) -> dict[str, Any]:
    mean, se = mean_stderr([v * scale for v in values])
    return {"mean": mean, "stderr": se, "n": len(values)}


def collect_table(
    out: Path,
    grid: Sequence[tuple[Cell, Any]],
    methods: Sequence[str],
    embeddings: Sequence[str],
    *,
    train_eval_samples: int,
    runs: int,
) -> dict[str, Any]:
    """Aggregate the cells' summary.json and eval5.json into the table's JSON (accuracy in %)."""
    first = grid[0][1]
    dataset = first.data.dataset
    rows = []
    for m in methods:
        for e in embeddings:
            cells = [(c, cfg) for c, cfg in grid if c.method == m and c.embedding == e]
            train_v, test_v, det, val, passes, secs, epochs = [], [], [], [], [], [], []
            done, failed, pending = [], [], []
            for c, _ in cells:
                d = out / CELLS / c.name
                if (d / ERROR_FILE).is_file():
                    failed.append(c.seed)
                    continue
                if not ((d / "summary.json").is_file() and (d / EVAL_FILE).is_file()):
                    pending.append(c.seed)
                    continue
                s = json.loads((d / "summary.json").read_text())
                ev = json.loads((d / EVAL_FILE).read_text())
                done.append(c.seed)
                test_v += ev["test_accuracies"]
                train_v += ev["train_accuracies"]
                det.append(s["test_accuracy_deterministic"])
                if s.get("val_accuracy") is not None:
                    val.append(s["val_accuracy"])
                passes.append(s["data_passes"])
                secs.append(s["train_seconds"])
                epochs.append(s["epochs"])
            embed_dim = cells[0][1].model.embed_dim
            rows.append(
                {
                    "method": m,
                    "embedding": e,
                    "label": row_label(m, e, embed_dim),
                    "seeds": done,
                    "failed_seeds": failed,
                    "pending_seeds": pending,
                    "train_accuracy": _stat(train_v, 100.0),
                    "test_accuracy": _stat(test_v, 100.0),
                    "test_accuracy_deterministic": _stat(det, 100.0),
                    "val_accuracy": _stat(val, 100.0),
                    "data_passes": _stat(passes),
                    "train_seconds": _stat(secs),
                    "epochs": _stat(epochs),
                    "paper": paper_numbers(m, e, dataset, embed_dim),
                }
            )
    flat = first.flat()
    return {
        "dataset": dataset,
        "paper_column": PAPER_DATASETS.get(dataset),
        "accuracy_unit": "percent",
        "statistic": f"mean ± standard error over seeds × {runs} stochastic inference runs",
        "runs_per_seed": runs,
        "train_accuracy_max_samples": train_eval_samples,
        "config": {k: v for k, v in flat.items() if k not in GRID_FIELDS},
        "rows": rows,
    }


def _pm(stat: dict[str, Any], digits: int = 2) -> str:
    if stat["n"] == 0 or math.isnan(stat["mean"]):
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['stderr']:.{digits}f}"


def render_markdown(table: dict[str, Any]) -> str:
    ds = table["dataset"]
    paper_col = table["paper_column"]
    cfg = table["config"]
    lines = [
        f"# NoProp Table 1 reproduction — {ds}",
        "",
        f"Accuracy in %, {table['statistic']} (the paper: 3 seeds × 5 runs = 15 values). "
        "Model selected on the validation split. Train accuracy on at most "
        f"{table['train_accuracy_max_samples']} training examples. Data passes and train time "
        "are per seed (mean ± standard error over seeds); train time excludes evaluation.",
        "",
        f"Paper columns: Table 1, {paper_col}."
        if paper_col
        else f"Paper columns: n/a (the paper reports no {ds} results; Table 1 has MNIST, "
        "CIFAR-10 and CIFAR-100).",
        "",
        f"Settings: epochs {cfg.get('epochs')}, T {cfg.get('T')}, inference steps (ct/fm/adjoint) "
        f"{cfg.get('inference_steps')}, batch {cfg.get('batch_size')}, lr {cfg.get('lr')}, "
        f"max train samples {cfg.get('max_train_samples')}.",
        "",
        "| Method | Seeds | Train acc | Test acc | Paper train | Paper test "
        "| Test acc (deterministic) | Data passes | Train time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table["rows"]:
        paper = r["paper"]
        if paper_col is None:
            p_train = p_test = "n/a"
        elif paper is None:
            p_train = p_test = "– (not in paper)"
        else:
            p_train, p_test = paper["train"], paper["test"]
        seeds = ",".join(map(str, r["seeds"])) or "–"
        if r["failed_seeds"]:
            seeds += f" (diverged: {','.join(map(str, r['failed_seeds']))})"
        if r["pending_seeds"]:
            seeds += f" (missing: {','.join(map(str, r['pending_seeds']))})"
        lines.append(
            f"| {r['label']} | {seeds} | {_pm(r['train_accuracy'])} | {_pm(r['test_accuracy'])} "
            f"| {p_train} | {p_test} | {_pm(r['test_accuracy_deterministic'])} "
            f"| {_pm(r['data_passes'], 1)} | {_pm(r['train_seconds'], 2)} |"
        )
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------- entry points
def reproduce(
    out: str | Path,
    methods: Sequence[str],
    embeddings: Sequence[str],
    seeds: Sequence[int],
    overrides: dict[str, Any] | None = None,
    *,
    runs: int = 5,
    train_eval_samples: int = 10000,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or finish) the grid in ``out`` and write ``table.md`` and ``table.json``; return the table."""
    from ..atomic import atomic_write, atomic_write_json

    if runs < 1:
        raise ConfigError(f"--runs must be >= 1 (got {runs})")
    if train_eval_samples < 1:
        raise ConfigError(f"--train-eval-samples must be >= 1 (got {train_eval_samples})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    grid = build_grid(methods, embeddings, seeds, overrides)
    device = grid[0][1].train.device
    for cell, cfg in grid:  # every conflict is reported before anything is trained
        check_cell(out / CELLS / cell.name, cfg)
    (out / CELLS).mkdir(parents=True, exist_ok=True)
    for i, (cell, cfg) in enumerate(grid, 1):
        start = time.perf_counter()
        result = run_cell(
            out / CELLS / cell.name,
            cfg,
            runs=runs,
            train_eval_samples=train_eval_samples,
            device=device,
            progress=progress,
        )
        if log is not None:
            took = time.perf_counter() - start
            extra = f": {result['error']}" if result["error"] else ""
            log(f"[{i}/{len(grid)}] {cell.name}: {result['status']} ({took:.1f} s){extra}")
    table = collect_table(
        out, grid, methods, embeddings, train_eval_samples=train_eval_samples, runs=runs
    )
    atomic_write_json(out / "table.json", table)
    text = render_markdown(table).encode()
    atomic_write(out / "table.md", lambda f: f.write(text))
    return table


HELP_TEXT = "Table-1-style grid: methods × embeddings × seeds, train + 5 inference runs each"
DESCRIPTION = (
    "Train every (method, embedding, seed) cell into OUT/cells/, evaluate each selected model with "
    "--runs inference runs on the test and training splits, and write OUT/table.md and "
    "OUT/table.json. Re-running finishes what is missing only."
)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``noprop bench reproduce`` (every train flag except --method/--embedding/--seed)."""

    p.description = DESCRIPTION
    p.add_argument("--methods", default="dt,backprop", help="comma-separated (default dt,backprop)")
    p.add_argument(
        "--embeddings",
        default="one-hot,learned,prototype",
        help="comma-separated (default one-hot,learned,prototype)",
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated (default 0,1,2)")
    p.add_argument("--out", required=True, help="output directory (cells/, table.md, table.json)")
    p.add_argument(
        "--runs", type=int, default=5, help="inference runs per seed (default 5, as the paper)"
    )
    p.add_argument(
        "--train-eval-samples",
        type=int,
        default=10000,
        help="training examples used for the train accuracy (default 10000)",
    )
    p.add_argument("--no-progress", action="store_true", help="no per-epoch progress bars")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    from ..flags import add_config_flags

    add_config_flags(p, skip=frozenset(GRID_FIELDS))  # every train flag except the grid axes
    return p


def cmd_reproduce(ns: argparse.Namespace) -> int:
    import sys

    from ..flags import given_flags

    overrides = {k: v for k, v in given_flags(ns).items() if k not in GRID_FIELDS}
    if ns.threads is not None:
        import torch

        if ns.threads < 1:
            raise ConfigError(f"--threads must be >= 1 (got {ns.threads})")
        torch.set_num_threads(ns.threads)
    table = reproduce(
        ns.out,
        parse_list("--methods", ns.methods),
        parse_list("--embeddings", ns.embeddings),
        parse_list("--seeds", ns.seeds, int),
        overrides,
        runs=ns.runs,
        train_eval_samples=ns.train_eval_samples,
        progress=not ns.no_progress,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(render_markdown(table), end="")
    print(f"wrote {Path(ns.out) / 'table.md'} and {Path(ns.out) / 'table.json'}")
    return 0
