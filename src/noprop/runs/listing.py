"""``noprop runs [DIR]``: the run directories under DIR with their method, data, accuracy and status.

Status: ``exported`` (a ``noprop export`` directory), ``finished`` (summary.json), ``resumable`` (a checkpoint of a completed epoch, no summary:
``noprop train --resume DIR``), ``failed`` (config.json only: stopped before its first epoch ended).

``val`` is the validation accuracy of the selected epoch: summary.json's for a finished run; for an
unfinished one, that of the best epoch so far on the task's metric (accuracy; bits per byte for text).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.registry import DATASET_TASKS
from ..errors import NoPropError
from ..rundir import RunDir
from ..tasks import LanguageTask, Task
from ..training.record import VAL


def find_runs(root: str | Path, max_depth: int = 3) -> list[Path]:
    """Run directories (holding config.json) under ``root``, sorted, at most ``max_depth`` deep."""
    root = Path(root)
    if not root.is_dir():
        raise NoPropError(f"{root}: no such directory")
    found: list[Path] = []

    def walk(d: Path, depth: int) -> None:
        if RunDir(d).is_run():
            found.append(d)
            return
        if depth < max_depth:
            for child in sorted(p for p in d.iterdir() if p.is_dir()):
                walk(child, depth + 1)

    walk(root, 0)
    return found


def describe(path: Path) -> dict[str, Any]:
    """One row of the listing; an unreadable run is listed with its error, not skipped."""
    run = RunDir(path)
    row: dict[str, Any] = {"run": str(path)}
    try:
        cfg = run.read_config()
        summary = run.read_summary()
        records = run.read_metrics()
    except NoPropError as e:
        return {**row, "status": f"unreadable ({e})"}
    row["method"] = cfg.get("method", {}).get("method", "?")
    row["dataset"] = cfg.get("data", {}).get("dataset", "?")
    if run.is_export():
        row.update(status="exported", epochs=None, val=None, test=None)
    elif summary is not None:
        row.update(status="finished", epochs=summary.get("epochs"),
                   val=summary.get("val_accuracy"), test=summary.get("test_accuracy"))  # fmt: skip
    else:
        status = "resumable" if run.checkpoint_path.is_file() else "failed"
        text = DATASET_TASKS.get(row["dataset"]) == "language"
        val = best_val_accuracy(records, LanguageTask if text else Task)
        row.update(status=status, epochs=len(records), val=val, test=None)
    return row


def best_val_accuracy(records: list[dict[str, Any]], task: type[Task]) -> float | None:
    """The validation accuracy of the best epoch on ``task``'s metric (the first of equal ones)."""
    key = f"{VAL}{task.metric}"  # metrics.jsonl's flat key (read raw: a torn file still lists)
    scored = [(r[key], r.get("val_accuracy")) for r in records if _is_number(r.get(key))]
    if not scored:
        return None
    sign = 1.0 if task.higher_is_better else -1.0
    return max(scored, key=lambda s: sign * s[0])[1]  # max keeps the first of equal values


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def format_rows(rows: list[dict[str, Any]]) -> str:
    def num(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else "-"

    lines = [
        f"{'status':<10} {'method':<9} {'dataset':<14} {'epochs':>6} {'val':>7} {'test':>7}  run"
    ]
    for r in rows:
        lines.append(
            f"{r['status']:<10} {r.get('method', '?'):<9} {r.get('dataset', '?'):<14} "
            f"{r.get('epochs') if r.get('epochs') is not None else '-':>6} {num(r.get('val')):>7} "
            f"{num(r.get('test')):>7}  {r['run']}"
        )
    return "\n".join(lines)
