"""The reproduce grid's table: mean ± standard error per (method, embedding), as JSON and Markdown.

:func:`collect_table` reads every cell's ``summary.json`` and ``eval5.json`` through
:class:`~noprop.rundir.RunDir`; :func:`render_markdown` prints it next to the paper's Table 1
(:mod:`noprop_lab.bench.paper`; "n/a" for the data sets the paper does not report).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from noprop import RunConfig, RunDir
from noprop.models import IMAGE_EMBED_DIM

from .grid import GRID_FIELDS, Cell, cell_dir, is_failed
from .paper import method_label, paper_column, paper_numbers, paper_titles, row_label

# Method options shown in table.md's settings line: (option, how it is printed).
SHOWN_OPTIONS = (("T", "T"), ("inference_steps", "inference steps"))


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


def _stat(values: Sequence[float], scale: float = 1.0) -> dict[str, Any]:
    mean, se = mean_stderr([v * scale for v in values])
    return {"mean": mean, "stderr": se, "n": len(values)}


def _config(grid: Sequence[tuple[Cell, RunConfig]], methods: Sequence[str]) -> dict[str, Any]:
    """The grid's common settings (data, model, train; no grid axis) and each method's options."""
    first = grid[0][1].to_dict()
    common = {
        k: v
        for section in ("data", "model", "train")
        for k, v in first[section].items()
        if k not in GRID_FIELDS
    }
    options = {
        m: dataclasses.asdict(next(cfg for c, cfg in grid if c.method == m).options)
        for m in methods
    }
    return {**common, "method_options": options}


def collect_table(
    out: Path,
    grid: Sequence[tuple[Cell, RunConfig]],
    methods: Sequence[str],
    embeddings: Sequence[str],
    *,
    train_eval_samples: int,
    runs: int,
) -> dict[str, Any]:
    """Aggregate the cells' summary.json and eval5.json into the table's JSON (accuracy in %)."""
    dataset = grid[0][1].data.dataset
    rows = []
    for m in methods:
        for e in embeddings:
            cells = [(c, cfg) for c, cfg in grid if c.method == m and c.embedding == e]
            train_v, test_v, det, val, passes, secs, epochs = [], [], [], [], [], [], []
            done, failed, pending = [], [], []
            for c, _ in cells:
                rd = RunDir(cell_dir(out, c))
                if is_failed(rd.path):
                    failed.append(c.seed)
                    continue
                s = rd.summary()
                ev = rd.read_eval5() if s is not None else None
                if s is None or ev is None:
                    pending.append(c.seed)
                    continue
                done.append(c.seed)
                test_v += ev["test_accuracies"]
                train_v += ev["train_accuracies"]
                det.append(s.test_accuracy_deterministic)
                if s.val_accuracy is not None:
                    val.append(s.val_accuracy)
                passes.append(s.data_passes)
                secs.append(s.train_seconds)
                epochs.append(s.epochs)
            embed_dim = cells[0][1].model.embed_dim or IMAGE_EMBED_DIM
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
    return {
        "dataset": dataset,
        "paper_column": paper_column(dataset),
        "accuracy_unit": "percent",
        "statistic": f"mean ± standard error over seeds × {runs} stochastic inference runs",
        "runs_per_seed": runs,
        "train_accuracy_max_samples": train_eval_samples,
        "config": _config(grid, methods),
        "rows": rows,
    }


def _pm(stat: dict[str, Any], digits: int = 2) -> str:
    if stat["n"] == 0 or math.isnan(stat["mean"]):
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['stderr']:.{digits}f}"


def _option_text(options: dict[str, dict[str, Any]], name: str, shown: str) -> str | None:
    """``T 2 (NoProp-DT, Backprop)`` for the methods having ``name`` (grouped by value), or None."""
    by_value: dict[str, list[str]] = {}
    for m, opts in options.items():
        if name in opts:  # None: the method's default (DiffusionBlocks: one step per block)
            value = "default" if opts[name] is None else repr(opts[name])
            by_value.setdefault(value, []).append(method_label(m))
    if not by_value:
        return None
    return "; ".join(f"{shown} {v} ({', '.join(labels)})" for v, labels in by_value.items())


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def render_markdown(table: dict[str, Any]) -> str:
    ds = table["dataset"]
    paper_col = table["paper_column"]
    cfg = table["config"]
    options = [
        text
        for name, shown in SHOWN_OPTIONS
        if (text := _option_text(cfg.get("method_options", {}), name, shown)) is not None
    ]
    settings = [
        f"epochs {cfg.get('epochs')}",
        *options,
        f"batch {cfg.get('batch_size')}",
        f"lr {cfg.get('lr')}",
        f"max train samples {cfg.get('max_train_samples')}",
    ]
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
        else f"Paper columns: n/a (the paper reports no {ds} results; Table 1 has "
        f"{_and(paper_titles())}).",
        "",
        f"Settings: {', '.join(settings)}.",
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
