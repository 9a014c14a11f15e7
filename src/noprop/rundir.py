"""The run directory schema: every file name of a run, and the typed records in them.

Files: ``config.json`` (the resolved :class:`~noprop.config.RunConfig`), ``metrics.jsonl`` (one
:class:`~noprop.training.record.EpochRecord` per completed epoch), ``checkpoint.pt`` (trainer state, noprop/training/checkpoint.py),
``summary.json`` (:class:`Summary`, written once at the end), and the evaluation outputs
``eval_steps.json`` (``noprop eval --steps``), ``eval_chains.json`` (``noprop eval --chains``) and
``eval5.json`` (``noprop bench reproduce``), ``data.json`` (facts about the data: a text corpus's
SHA-256, your own data's shape, classes and checksums), and the directories ``tensorboard/``
(``--tensorboard``: TensorBoard event files, appended to on ``--resume``) and ``data/``
(``--dataset folder``: the decoded images, :mod:`noprop.data.user`).
Everything that reads a run — ``eval``, ``plot``, ``bench`` — goes through :class:`RunDir`.

``metrics.jsonl`` is appended (and fsynced) *before* the epoch's checkpoint is written; on resume,
lines past the checkpoint's epoch are dropped, so a crash between the two never leaves a duplicated or
missing epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import TMP_MARKER, atomic_write, atomic_write_json
from .config import RunConfig
from .errors import CheckpointError, ConfigError, NoPropError
from .runlock import LOCK_FILE, run_lock
from .training.record import EpochRecord
from .untrusted import read_json

CONFIG, METRICS, CHECKPOINT, SUMMARY = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "summary.json",
)
EVAL_STEPS, EVAL5, EVAL_CHAINS = "eval_steps.json", "eval5.json", "eval_chains.json"
DATA_INFO = "data.json"
FILES = (CONFIG, METRICS, CHECKPOINT, SUMMARY, EVAL_STEPS, EVAL5, EVAL_CHAINS, DATA_INFO)
#: an exported model (``noprop export``): weights without pickle and the input normalisation
EXPORTED_WEIGHTS, NORMALISATION = "model.safetensors", "normalisation.json"
TENSORBOARD = "tensorboard"  # a directory: event files of TensorBoardLogger (--tensorboard)
#: a directory: ``--dataset folder``'s decoded images (uint8 .npy; SHA-256 in data.json)
DATA_CACHE = "data"


@dataclass
class Summary:
    """``summary.json``: the validation-selected model's test accuracy and the run's facts.

    ``val_accuracy`` is the selected epoch's validation accuracy, also when the selection was on
    another metric (``selected_on``); ``num_threads`` the torch threads the run ended with."""

    method: str
    dataset: str
    embedding: str
    val_accuracy: float | None
    best_epoch: int
    test_accuracy: float
    test_accuracy_deterministic: float
    test_accuracy_per_step: list[float]
    train_seconds: float
    epochs: int
    data_passes: float
    params_per_block: int
    num_train: int
    num_val: int
    num_test: int
    device: str
    cpu: str
    num_threads: int
    torch_version: str
    noprop_version: str
    # added in 0.1 after its first runs: older summaries lack them
    parallel: str = "none"
    world_size: int = 1
    # added in 0.2 for text runs: further test metrics, e.g. {"bits_per_byte": ...,
    # "bits_per_byte_deterministic": ...}
    test_scores: dict[str, float] = dataclasses.field(default_factory=dict)
    # added in 0.2: the validation metric the model was selected on (the task's: accuracy, or bits
    # per byte for text; runs that lack the field were selected on accuracy) and the selected
    # epoch's other validation scores, e.g. {"bits_per_byte": ...}
    selected_on: str = "accuracy"
    val_scores: dict[str, float] = dataclasses.field(default_factory=dict)
    # added in 0.3, --precision 16-mixed only: steps skipped for float16 overflow over the whole
    # run, and the steps taken (skipped included), summed over the blocks
    skipped_steps: int | None = None
    steps: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Summary:
        names = {f.name for f in dataclasses.fields(cls)}
        optional = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }
        missing = names - optional - set(d)
        if missing:
            raise NoPropError(f"summary.json lacks {sorted(missing)}")
        return cls(**{k: d[k] for k in names if k in d})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _read_json(path: Path) -> Any:
    """A JSON file, None if absent; a one-line NoPropError if unreadable."""
    if not path.is_file():
        return None
    return read_json(path, NoPropError)


class RunDir:
    """A run directory (module docstring); nothing is created until :meth:`start`."""

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

    @property
    def eval_steps_path(self) -> Path:
        return self.path / EVAL_STEPS

    @property
    def eval5_path(self) -> Path:
        return self.path / EVAL5

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def data_cache_dir(self) -> Path:
        return self.path / DATA_CACHE

    def is_run(self) -> bool:
        return self.config_path.is_file()

    def is_export(self) -> bool:
        """An exported model (``noprop export``), not a training run."""
        return (self.path / EXPORTED_WEIGHTS).is_file() and self.config_path.is_file()

    def read_config(self) -> dict[str, Any]:
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such run directory")
        if not self.is_run():
            raise CheckpointError(f"{self.path} is not a noprop run directory (no {CONFIG})")
        return read_json(self.config_path, CheckpointError, what="run config")

    def config(self) -> RunConfig:
        """The run's config, typed and within noprop/limits.py (noprop 0.1 files are read too, see
        noprop/config.py); an error names the file."""
        d = self.read_config()
        try:
            return RunConfig.from_dict(d)
        except NoPropError as e:
            raise type(e)(f"{self.config_path}: {e}") from None

    def check_writable(self, *, overwrite: bool, config: dict[str, Any]) -> None:
        """Refuse to reuse a directory holding another run (unless ``overwrite``) or an unwritable
        location. Writes nothing: the directory is only created by :meth:`start`."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out {self.path} exists and is not a directory")
        try:
            # the lock file alone (a run that was refused or killed before config.json) is empty
            occupied = self.path.is_dir() and any(p.name != LOCK_FILE for p in self.path.iterdir())
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

    def lock(self, what: str) -> contextlib.AbstractContextManager[None]:
        """Hold the directory's one-writer lock (:mod:`noprop.runlock`); it must exist."""
        return run_lock(self.path, what)

    def create(self, *, overwrite: bool, config: dict[str, Any]) -> None:
        """Create the directory (removing what this method created if it turns out unwritable);
        nothing is written in it but a probe, removed at once."""
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

    def start(self, config: dict[str, Any], *, overwrite: bool) -> None:
        """Create the directory, clear an overwritten run's files and write ``config.json``.

        Call it holding :meth:`lock` (after :meth:`create`): the directory is checked again under
        the lock, so of two new runs started into one directory only one writes it."""
        self.create(overwrite=overwrite, config=config)
        if overwrite:
            for name in (METRICS, CHECKPOINT, SUMMARY, EVAL_STEPS, EVAL5, EVAL_CHAINS, DATA_INFO):
                (self.path / name).unlink(missing_ok=True)
            for directory in (self.tensorboard_dir, self.data_cache_dir):
                if directory.is_dir() and not directory.is_symlink():
                    shutil.rmtree(directory)
                else:
                    directory.unlink(missing_ok=True)
        self.remove_stale_temp_files()
        atomic_write_json(self.config_path, config)

    def remove_stale_temp_files(self) -> None:
        """Delete the temporary files that a killed process left, at every depth of the run.

        They are :func:`atomic_write`'s ``.NAME.tmp-PID`` siblings (the run's files, the decoded-image
        cache under ``data/``, ...) and ``.write-probe-PID``. Call it holding :meth:`lock`: no other
        writer can then be mid-write. Symbolic links are neither followed nor removed."""
        for root, dirs, files in os.walk(self.path, followlinks=False):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
            for name in files:
                if (name.startswith(".") and TMP_MARKER in name) or name.startswith(
                    ".write-probe-"
                ):
                    path = Path(root, name)
                    if not path.is_symlink():
                        path.unlink(missing_ok=True)

    def append_metrics(self, record: EpochRecord | dict[str, Any]) -> None:
        if isinstance(record, EpochRecord):
            record = record.to_dict()
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

    def records(self) -> list[EpochRecord]:
        """``metrics.jsonl`` as typed records."""
        return [EpochRecord.from_dict(r) for r in self.read_metrics()]

    def truncate_metrics(self, last_epoch: int) -> None:
        """Keep only the records of epochs 1..last_epoch (called on resume)."""
        keep = [r for r in self.read_metrics() if r.get("epoch", 0) <= last_epoch]
        data = "".join(json.dumps(r) + "\n" for r in keep).encode()
        atomic_write(self.metrics_path, lambda f: f.write(data))

    def write_summary(self, summary: Summary | dict[str, Any]) -> None:
        if isinstance(summary, Summary):
            summary = summary.to_dict()
        atomic_write_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any] | None:
        """``summary.json`` (None while the run has not finished)."""
        return _read_json(self.summary_path)

    def summary(self) -> Summary | None:
        d = self.read_summary()
        return None if d is None else Summary.from_dict(d)

    def read_eval_steps(self) -> dict[str, Any] | None:
        return _read_json(self.eval_steps_path)

    def write_eval_steps(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.eval_steps_path, result)

    def write_eval_chains(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.path / EVAL_CHAINS, result)

    def read_eval_chains(self) -> dict[str, Any] | None:
        return _read_json(self.path / EVAL_CHAINS)

    def read_eval5(self) -> dict[str, Any] | None:
        return _read_json(self.eval5_path)

    def write_eval5(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.eval5_path, result)

    def write_data_info(self, info: dict[str, Any]) -> None:
        """``data.json``: facts about the data the run read (text: the corpus's SHA-256 and sizes)."""
        atomic_write_json(self.path / DATA_INFO, info)

    def read_data_info(self) -> dict[str, Any] | None:
        return _read_json(self.path / DATA_INFO)
