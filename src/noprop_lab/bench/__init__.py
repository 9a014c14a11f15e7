"""Benchmarks run from ``noprop bench``: ``efficiency`` (:mod:`.efficiency`), ``reproduce`` (the
paper's Table 1 grid, :mod:`.reproduce`) and ``parallel`` (:mod:`.parallel`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from noprop import atomic_write_json


def report(result: dict[str, Any], out: str | None, format_table: Callable[[dict], str]) -> int:
    """Print a benchmark's table and, with ``--out``, write its JSON atomically."""
    print(format_table(result))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out), result)
    return 0
