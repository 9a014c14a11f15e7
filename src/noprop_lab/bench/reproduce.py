"""``noprop bench reproduce``: a Table-1-style grid of methods × embeddings × seeds (spec §5.1).

Every cell ``(method, embedding, seed)`` is an ordinary run directory, ``DIR/cells/METHOD-EMBEDDING-sSEED``,
trained by :func:`noprop.runs.train` (model selection on the validation split), then evaluated with
``runs`` (default 5) stochastic inference runs on the test set and on the training split; the results
go to the cell's ``eval5.json`` (:meth:`~noprop.rundir.RunDir.write_eval5`). ``DIR/table.md`` and
``DIR/table.json`` report, per (method, embedding), train and test accuracy as mean ± standard error
over seeds × runs (the paper's 15 values for 3 seeds), data passes and training time, next to the
paper's Table 1 numbers for MNIST, CIFAR-10 and CIFAR-100 ("n/a" for the other data sets).

Resuming is cell by cell: a cell with ``summary.json`` and ``eval5.json`` is never retrained (its
``eval5.json`` is redone only if ``--runs`` or ``--train-eval-samples`` changed); one with only
``summary.json`` is evaluated; an interrupted one (``config.json`` but no ``summary.json``) resumes
from its last checkpoint with ``train(..., resume=True)``. A cell whose training diverged records
``error.json`` and is reported, not retried (delete the file to retry). Re-running with a different
config for an existing cell is refused rather than mixing two experiments in one table.

Method options (``--T``, ``--inference-steps``, ...) apply to the grid's methods that have them; one
that none of ``--methods`` has is an error.

Training accuracy is computed on at most ``--train-eval-samples`` (default 10000) examples of the
training split (a fixed random subset), with the same ``runs`` inference seeds as the test set.

The pieces: :mod:`.paper` (Table 1, row labels), :mod:`.grid` (cells, their configs, the directory
layout), :mod:`.cell` (one cell: conflict check, train/resume, evaluation), :mod:`.table` (statistics,
table.json and table.md); this module runs the grid and is the CLI entry.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from noprop import (
    ConfigError,
    RunConfig,
    add_config_flags,
    atomic_write_json,
    atomic_write_text,
    given_flags,
)
from noprop.arguments import PATH, RUNS, SEED, count, int_list

from .cell import check_cell, run_cell
from .grid import (
    CELLS,
    GRID_FIELDS,
    TABLE_JSON,
    TABLE_MD,
    Cell,
    build_grid,
    cell_dir,
    parse_list,
)
from .table import collect_table, render_markdown


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
    grid = check_grid(
        out, methods, embeddings, seeds, overrides, runs=runs, train_eval_samples=train_eval_samples
    )
    return run_grid(out, grid, methods, embeddings, runs=runs,
                    train_eval_samples=train_eval_samples, progress=progress, log=log)  # fmt: skip


def check_grid(
    out: str | Path,
    methods: Sequence[str],
    embeddings: Sequence[str],
    seeds: Sequence[int],
    overrides: dict[str, Any] | None = None,
    *,
    runs: int = 5,
    train_eval_samples: int = 10000,
) -> list[tuple[Cell, RunConfig]]:
    """The grid's cells and configs, or the first one-line error of its arguments: every config is
    checked as ``noprop train`` checks its flags, and every conflict with a cell already in ``out``
    is found, before anything is set (``--threads``), trained or written."""
    RUNS.check("--runs", runs)
    count().check("--train-eval-samples", train_eval_samples)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    grid = build_grid(methods, embeddings, seeds, overrides)
    for cell, cfg in grid:
        check_cell(cell_dir(out, cell), cfg)
    return grid


def run_grid(
    out: str | Path,
    grid: list[tuple[Cell, RunConfig]],
    methods: Sequence[str],
    embeddings: Sequence[str],
    *,
    runs: int,
    train_eval_samples: int,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate the cells of a checked grid (:func:`check_grid`), then write the table."""
    out = Path(out)
    device = grid[0][1].train.device
    (out / CELLS).mkdir(parents=True, exist_ok=True)
    for i, (cell, cfg) in enumerate(grid, 1):
        start = time.perf_counter()
        result = run_cell(
            cell_dir(out, cell),
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
    atomic_write_json(out / TABLE_JSON, table)
    atomic_write_text(out / TABLE_MD, render_markdown(table))
    return table


HELP_TEXT = "Table-1-style grid: methods × embeddings × seeds, train + 5 inference runs each"
DESCRIPTION = (
    "Train every (method, embedding, seed) cell into OUT/cells/, evaluate each selected model with "
    "--runs inference runs on the test and training splits, and write OUT/table.md and "
    "OUT/table.json. Re-running finishes what is missing only. Method options apply to the "
    "methods of --methods that have them."
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
    p.add_argument(
        "--seeds",
        type=int_list(SEED, unique=True),
        default="0,1,2",
        help="comma-separated (default 0,1,2)",
    )
    p.add_argument(
        "--out", required=True, type=PATH, help="output directory (cells/, table.md, table.json)"
    )
    p.add_argument(
        "--runs", type=RUNS, default=5, help="inference runs per seed (default 5, as the paper)"
    )
    p.add_argument(
        "--train-eval-samples",
        type=count(),
        default=10000,
        help="training examples used for the train accuracy (default 10000)",
    )
    p.add_argument("--no-progress", action="store_true", help="no per-epoch progress bars")
    # every train flag except the grid axes (--threads among them: training and evaluation)
    add_config_flags(p, skip=frozenset(GRID_FIELDS))
    return p


def cmd_reproduce(ns: argparse.Namespace) -> int:
    overrides = {k: v for k, v in given_flags(ns).items() if k not in GRID_FIELDS}
    methods = parse_list("--methods", ns.methods)
    embeddings = parse_list("--embeddings", ns.embeddings)
    grid = check_grid(ns.out, methods, embeddings, ns.seeds, overrides, runs=ns.runs,
                      train_eval_samples=ns.train_eval_samples)  # fmt: skip
    threads = overrides.get("threads")  # checked with the grid's configs
    if threads is not None:  # the evaluations too, not only the trainings (which record it)
        torch.set_num_threads(threads)
    table = run_grid(
        ns.out,
        grid,
        methods,
        embeddings,
        runs=ns.runs,
        train_eval_samples=ns.train_eval_samples,
        progress=not ns.no_progress,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(render_markdown(table), end="")
    print(f"wrote {Path(ns.out) / TABLE_MD} and {Path(ns.out) / TABLE_JSON}")
    return 0
