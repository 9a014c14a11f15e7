"""Time to accuracy: when a run first reached a validation accuracy, and what it ended at on test.

The paper's Fig. 3 plots accuracy against training time; what a user compares is the time a method
needs to reach a given accuracy. For each run directory (``metrics.jsonl`` and ``summary.json``):

* the cumulative *training* seconds (``wall_seconds``: validation and test inference excluded) and
  the epoch at which the validation accuracy first reached each threshold (None if it never did);
* the test accuracy of the validation-selected model (``summary.json``; the mean of ``eval5.json``'s
  runs when ``noprop bench reproduce`` wrote one) next to the paper's Table 1 figure;
* the load the epochs were timed under: the mean and the largest ``other_busy_cores`` (cores kept
  busy by other processes during an epoch's training, recorded by the trainer; for a block-parallel
  run the other ranks count as other processes, so 1 rank of 2 reads ≈ 1 core busy).

:func:`row` computes a line of the table, :func:`render_markdown` prints it; ``noprop plot`` writes both
next to ``accuracy_vs_time.png`` as ``time_to_accuracy.md`` and ``.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from noprop import EpochRecord, RunConfig, Summary
from noprop.models import IMAGE_EMBED_DIM

from .paper import paper_numbers, row_label

#: the validation accuracies whose first crossing is reported
THRESHOLDS = (0.98, 0.99)


def crossing(records: Sequence[EpochRecord], threshold: float) -> EpochRecord | None:
    """The first epoch whose validation accuracy is at least ``threshold`` (None if none is)."""
    return next(
        (m for m in records if m.val_accuracy is not None and m.val_accuracy >= threshold), None
    )


def variant(cfg: RunConfig, summary: Summary | None) -> str:
    """How the run trained, in words: ``Algorithm 1``/``interleaved``, sequential or parallel."""
    t = cfg.train
    parts = []
    blockwise = cfg.method.cls.local_units  # methods with independently trained blocks (dt, ...)
    if blockwise:
        parts.append({"blocks": "Algorithm 1", "random": "one random block per batch"}.get(
            t.order, t.order))  # fmt: skip
    if t.parallel != "none":
        world = summary.world_size if summary is not None else None
        parts.append(f"{t.parallel}-parallel" + (f", {world} ranks" if world and world > 1 else ""))
    elif blockwise:
        parts.append("sequential")
    return ", ".join(parts)


def row(
    cfg: RunConfig,
    records: Sequence[EpochRecord],
    summary: Summary | None,
    eval5: dict[str, Any] | None = None,
    run: str = "",
) -> dict[str, Any]:
    """One run's line of the table (see the module docstring); ``run`` names its directory."""
    embed_dim = cfg.model.embed_dim or IMAGE_EMBED_DIM
    method, embedding = cfg.method.method, cfg.model.embedding
    out: dict[str, Any] = {
        "run": run,
        "method": row_label(method, embedding, embed_dim),
        "variant": variant(cfg, summary),
        "epochs": records[-1].epoch if records else 0,
        "train_seconds": records[-1].wall_seconds if records else 0.0,
    }
    for th in THRESHOLDS:
        hit = crossing(records, th)
        key = f"val_{round(th * 100)}"
        out[f"{key}_seconds"] = hit.wall_seconds if hit else None
        out[f"{key}_epoch"] = hit.epoch if hit else None
    vals = [m.val_accuracy for m in records if m.val_accuracy is not None]
    out["best_val_accuracy"] = max(vals) if vals else None
    out["best_epoch"] = summary.best_epoch if summary else None
    if eval5 is not None:
        out["test_accuracy"], out["test_runs"] = eval5["test_accuracy"], eval5.get("runs")
    else:
        out["test_accuracy"] = summary.test_accuracy if summary else None
        out["test_runs"] = 1 if summary else None
    paper = paper_numbers(method, embedding, cfg.data.dataset, embed_dim)
    out["paper_test"] = paper["test"] if paper else None
    loads = [m.other_busy_cores for m in records if m.other_busy_cores is not None]
    out["other_busy_cores_mean"] = round(sum(loads) / len(loads), 2) if loads else None
    out["other_busy_cores_max"] = round(max(loads), 2) if loads else None
    out["finished"] = summary is not None
    return out


def _seconds(s: float | None, epoch: int | None) -> str:
    return "not reached" if s is None else f"{s / 60:.1f} min (epoch {epoch})"


def render_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table as Markdown (times in minutes of training; test accuracy in %)."""
    head = (
        "| run | method | variant | epochs | training time | first val ≥ 98% | first val ≥ 99% "
        "| best val (epoch) | test (selected on val) | paper Table 1 test | other busy cores "
        "(mean / max) |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        test = "—" if r["test_accuracy"] is None else f"{100 * r['test_accuracy']:.2f}"
        if r["test_accuracy"] is not None and (r["test_runs"] or 1) > 1:
            test += f" (mean of {r['test_runs']})"
        if not r["finished"]:
            test = "running"
        best = "—" if r["best_val_accuracy"] is None else f"{100 * r['best_val_accuracy']:.2f}"
        if r["best_epoch"]:
            best += f" ({r['best_epoch']})"
        load = (
            "—"
            if r["other_busy_cores_mean"] is None
            else f"{r['other_busy_cores_mean']:.2f} / {r['other_busy_cores_max']:.2f}"
        )
        lines.append(
            f"| {r['run'] or '—'} | {r['method']} | {r['variant'] or '—'} | {r['epochs']} "
            f"| {r['train_seconds'] / 60:.1f} min "
            f"| {_seconds(r['val_98_seconds'], r['val_98_epoch'])} "
            f"| {_seconds(r['val_99_seconds'], r['val_99_epoch'])} | {best} | {test} "
            f"| {r['paper_test'] or 'n/a'} | {load} |"
        )
    return "\n".join(lines) + "\n"
