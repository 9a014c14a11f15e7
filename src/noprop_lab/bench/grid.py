"""The reproduce grid: its cells ``(method, embedding, seed)``, their configs and the grid's layout.

A grid directory holds ``cells/METHOD-EMBEDDING-sSEED`` (each an ordinary run directory, read and
written through :class:`~noprop.rundir.RunDir`, plus ``error.json`` for a diverged cell) and the
grid's own ``table.md`` and ``table.json``.

Method options given for the whole grid (``--T 3``, ``--inference-steps 10``) apply to the grid's
methods that have them (:func:`noprop.config.method_fields`); one that no method of the grid has is a
one-line :class:`~noprop.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from noprop import METHODS, ConfigError, RunConfig, atomic_write_json, flag, method_fields

CELLS = "cells"
ERROR_FILE = "error.json"
TABLE_MD, TABLE_JSON = "table.md", "table.json"
# Grid axes: given as lists by --methods/--embeddings/--seeds, never as single train flags.
GRID_FIELDS = ("method", "embedding", "seed")
# Config fields that do not change the experiment (a finished cell is reused whatever they are).
# ``parallel``/``dist_timeout_s``: how a run is parallelised (see noprop.runs.RESUMABLE_OVERRIDES).
NEUTRAL_FIELDS = frozenset(
    {"device", "eval_batch_size", "data_dir", "download", "channels_last", "threads"}
    | {"parallel", "dist_timeout_s"}
    | {"tensorboard", "test_curve"}  # logging only
)


@dataclasses.dataclass(frozen=True)
class Cell:
    method: str
    embedding: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-{self.embedding}-s{self.seed}"


def cell_dir(out: str | Path, cell: Cell) -> Path:
    """The run directory of ``cell`` in the grid directory ``out``."""
    return Path(out) / CELLS / cell.name


def read_error(path: Path) -> str | None:
    """The divergence recorded in the cell directory's ``error.json`` (None if there is none)."""
    file = path / ERROR_FILE
    return json.loads(file.read_text()).get("error") if file.is_file() else None


def write_error(path: Path, error: str) -> None:
    """Record that the cell diverged (it is then reported, not retried, until the file is deleted)."""
    atomic_write_json(path / ERROR_FILE, {"error": error})


def is_failed(path: Path) -> bool:
    return (path / ERROR_FILE).is_file()


def parse_list(flag_name: str, text: str, kind: Callable[[str], Any] = str) -> list[Any]:
    """A comma-separated flag value as a list; a ConfigError if empty, unreadable or repeated."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ConfigError(f"{flag_name} needs at least one value")
    try:
        values = [kind(s) for s in items]
    except ValueError:
        raise ConfigError(f"{flag_name}: cannot read {text!r} as a comma-separated list") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"{flag_name} lists a value twice: {text!r}")
    return values


def split_overrides(
    methods: Sequence[str], overrides: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``overrides`` as (fields for every cell, method name → the method options it has).

    A method option that no method of the grid has is a ConfigError naming the methods that do.
    """
    owners = {k: [c.name for c in classes] for k, classes in method_fields().items()}
    common = {k: v for k, v in overrides.items() if k not in owners}
    per_method: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for k, v in overrides.items():
        if k not in owners:
            continue
        users = [m for m in methods if m in owners[k]]
        if not users:
            raise ConfigError(
                f"{flag(k)} applies to --method {', '.join(owners[k])}, none of which is in "
                f"--methods {','.join(methods)}"
            )
        for m in users:
            per_method[m][k] = v
    return common, per_method


def build_grid(
    methods: Sequence[str],
    embeddings: Sequence[str],
    seeds: Sequence[int],
    overrides: dict[str, Any] | None = None,
) -> list[tuple[Cell, RunConfig]]:
    """Every cell with its validated :class:`RunConfig`; errors (unknown method, bad flag) up front."""
    overrides = dict(overrides or {})
    for f in GRID_FIELDS:
        if f in overrides:
            raise ConfigError(f"--{f} is a grid axis here; use --{f}s")
    missing = [m for m in methods if m not in METHODS]
    if missing:
        raise ConfigError(
            f"method {missing[0]!r} is not available; choose from {', '.join(METHODS)}"
        )
    common, per_method = split_overrides(methods, overrides)
    grid = []
    for m in methods:
        for e in embeddings:
            for s in seeds:
                cfg = RunConfig().replace(**common, **per_method[m], method=m, embedding=e, seed=s)
                grid.append((Cell(m, e, s), cfg))
    return grid
