"""The run directory: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, ``summary.json``.

``metrics.jsonl`` has one JSON object per completed epoch. It is appended (and fsynced) *before* the
epoch's checkpoint is written; on resume, lines past the checkpoint's epoch are dropped, so a crash
between the two never leaves a duplicated or missing epoch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from .checkpoint import TMP_MARKER, atomic_write, atomic_write_json

CONFIG, METRICS, CHECKPOINT, SUMMARY = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "summary.json",
)


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    def is_run(self) -> bool:
        return self.config_path.is_file()

    def read_config(self) -> dict[str, Any]:
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such run directory")
        if not self.is_run():
            raise CheckpointError(f"{self.path} is not a noprop run directory (no {CONFIG})")
        try:
            return json.loads(self.config_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read {self.config_path}: {e}") from None

    def check_writable(self, *, overwrite: bool, config: dict[str, Any]) -> None:
        """Refuse to reuse a directory holding another run (unless ``overwrite``) or an unwritable
        location. Writes nothing: the directory is only created by :meth:`start`."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out {self.path} exists and is not a directory")
        try:
            occupied = self.path.is_dir() and any(self.path.iterdir())
        except OSError as e:
            raise ConfigError(f"cannot read --out {self.path}: {e.strerror or e}") from None
        if occupied and not overwrite:
            if not self.is_run():
                raise ConfigError(
                    f"--out {self.path} already holds files that are not a noprop run; choose "
                    "another --out or use --overwrite to write the run there anyway"
                )
            try:
                same = self.read_config() == config
            except CheckpointError:
                same = False
            what = "a run with the same config" if same else "a different run"
            raise ConfigError(
                f"--out {self.path} already holds {what}; use --resume {self.path} to continue it "
                "or --overwrite to replace it"
            )
        # The nearest existing ancestor must be a directory we may write into.
        parent = self.path
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(f"cannot write to --out {self.path}: {parent} is not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot write to --out {self.path}: permission denied on {parent}")

    def start(self, config: dict[str, Any], *, overwrite: bool) -> None:
        """Create the directory (removing what this method created if it turns out unwritable),
        clear an overwritten run's files and write ``config.json``."""
        self.check_writable(overwrite=overwrite, config=config)
        created = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            for p in created:  # deepest first
                try:
                    p.rmdir()
                except OSError:
                    break
            raise ConfigError(f"cannot write to --out {self.path}: {e.strerror or e}") from None
        if overwrite:
            for name in (METRICS, CHECKPOINT, SUMMARY):
                (self.path / name).unlink(missing_ok=True)
        self.remove_stale_temp_files()
        atomic_write_json(self.config_path, config)

    def remove_stale_temp_files(self) -> None:
        """Delete ``.NAME.tmp-PID`` files left by a process killed inside :func:`atomic_write`."""
        for name in (CONFIG, METRICS, CHECKPOINT, SUMMARY):
            for stale in self.path.glob(f".{name}{TMP_MARKER}*"):
                stale.unlink(missing_ok=True)
        for stale in self.path.glob(".write-probe-*"):
            stale.unlink(missing_ok=True)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a crash mid-append
        return out

    def truncate_metrics(self, last_epoch: int) -> None:
        """Keep only the records of epochs 1..last_epoch (called on resume)."""
        keep = [r for r in self.read_metrics() if r.get("epoch", 0) <= last_epoch]
        data = "".join(json.dumps(r) + "\n" for r in keep).encode()
        atomic_write(self.metrics_path, lambda f: f.write(data))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.summary_path, summary)
