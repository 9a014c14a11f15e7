"""Crash safety, exact resume, divergence handling and checkpoint safety (issue 6).

Kill-and-resume: a real ``python -m noprop train`` process is stopped with SIGKILL at chosen points
(``$NOPROP_TEST_PAUSE_AT``, see :mod:`noprop.runs.pause`: the process prints a marker and sleeps
there), then resumed with ``--resume``. The resumed run must finish with a continuous metrics history
and, on CPU with one thread and the same seed, bit-identical weights to an uninterrupted run.

Everything is tiny (digits, 200 training samples, T=2, MLP blocks, 3 epochs) to stay fast on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from noprop.atomic import atomic_write
from noprop.cli import main
from noprop.errors import CheckpointError
from noprop.runlock import LOCK_FILE
from noprop.runs.pause import PAUSE_ENV
from noprop.training.callbacks import FiniteState
from noprop.training.checkpoint import load_checkpoint, save_checkpoint
from noprop.training.record import EpochRecord
from noprop.training.trainer import Trainer

from .problems import tiny_method

SRC = Path(__file__).resolve().parents[1] / "src"
EPOCHS = 3
ARGS = [
    "--dataset", "digits", "--max-train-samples", "200", "--T", "2", "--block", "mlp",
    "--batch-size", "128", "--seed", "3", "--no-progress", "--threads", "1",
]  # fmt: skip
TIMING = {"epoch_seconds", "wall_seconds", "other_busy_cores"}  # timing and its load
MARKER_TIMEOUT_S = 120


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the CLI in-process; return (exit code, stderr)."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors
        rc = int(e.code or 0)
    return rc, capsys.readouterr().err


def assert_one_line_error(rc: int, err: str, *fragments: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("noprop: error: ") and len(lines[0]) > len("noprop: error: ")
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def snapshot(path: Path) -> dict[str, Any] | None:
    """Everything a write would change: names, bytes, inodes (atomic replace), mtimes (of all but
    the lock file, which a refused command may have held: it records its holder)."""
    if not path.exists():
        return None
    if path.is_file():
        st = path.stat()
        return {".": (path.read_bytes(), st.st_ino, st.st_mtime_ns)}
    out: dict[str, Any] = {}
    for p in sorted(path.rglob("*")):
        if p.name == LOCK_FILE:
            continue
        st = p.stat()
        out[str(p.relative_to(path))] = (
            p.read_bytes() if p.is_file() else "<dir>",
            st.st_ino,
            st.st_mtime_ns,
        )
    return out


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    tr = load_checkpoint(run / "checkpoint.pt")["trainer"]
    return {"model": tr["model"], "best_model": tr["best_model"]}


def ckpt_epoch(run: Path) -> int:
    return load_checkpoint(run / "checkpoint.pt")["trainer"]["train_state"]["epoch"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run (in-process, one thread)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", *ARGS, "--epochs", str(EPOCHS), "--out", str(out)]) == 0
    return out


# ------------------------------------------------------------------------- atomic writes


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def boom(f: Any) -> None:
        f.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no temp file left


def test_save_checkpoint_roundtrip_carries_format_version(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"config": {"a": 1}, "trainer": {"model": {"w": torch.ones(2)}}})
    payload = load_checkpoint(path)
    assert payload["format_version"] == 1 and payload["config"] == {"a": 1}
    assert torch.equal(payload["trainer"]["model"]["w"], torch.ones(2))


# ----------------------------------------------------------------------- kill and resume


def _train_until_paused(out: Path, point: str, epoch: int) -> None:
    """Start ``noprop train`` in a subprocess, wait for the pause marker, SIGKILL it."""
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        PAUSE_ENV: f"{point}:{epoch}",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "noprop", "train", *ARGS, "--epochs", str(EPOCHS)]
    proc = subprocess.Popen(
        [*cmd, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(MARKER_TIMEOUT_S, proc.kill)
    watchdog.start()
    try:
        seen = []
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if line.startswith(f"NOPROP_PAUSED {point} {epoch}"):
                break
        else:
            pytest.fail(f"no pause marker; rc={proc.wait()} stderr={''.join(seen)[-2000:]}")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.parametrize(
    ("point", "epoch", "epochs_on_disk"),
    [
        ("step", 1, None),  # killed before the first checkpoint: resume starts over
        ("step", 2, 1),  # mid-epoch (first step of the last block)
        ("metrics", 2, 1),  # epoch 2 logged, its checkpoint not yet written
        ("checkpoint", 2, 1),  # half of the new checkpoint's temp file written
    ],
)
def test_kill_and_resume_is_continuous_and_exact(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    reference: Path,
    point: str,
    epoch: int,
    epochs_on_disk: int | None,
) -> None:
    out = tmp_path / "run"
    _train_until_paused(out, point, epoch)

    # What the crash left: the last completed epoch's checkpoint, intact (or none at all).
    assert (out / "config.json").is_file()
    if epochs_on_disk is None:
        assert not (out / "checkpoint.pt").exists()
    else:
        assert ckpt_epoch(out) == epochs_on_disk
    if point == "checkpoint":
        assert list(out.glob(".checkpoint.pt.tmp-*")), "expected the half-written temp file"
    if point == "metrics":
        assert [r["epoch"] for r in metrics(out)] == [1, 2]  # one record past the checkpoint
    assert not (out / "summary.json").exists()

    rc, err = cli(["train", "--resume", str(out), "--no-progress", "--threads", "1"], capsys)
    assert rc == 0, err

    # Continuous history, no stale temp files, and exactly the uninterrupted run's results.
    assert [r["epoch"] for r in metrics(out)] == list(range(1, EPOCHS + 1))
    assert without_timing(metrics(out)) == without_timing(metrics(reference))
    # no temporary file is left; the lock file stays (it is free: the kernel holds the lock)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]
    assert ckpt_epoch(out) == EPOCHS
    got, want = weights(out), weights(reference)
    for part in ("model", "best_model"):
        assert got[part].keys() == want[part].keys()
        for k in want[part]:
            assert torch.equal(got[part][k], want[part][k]), (part, k)
    summary, ref_summary = (json.loads((r / "summary.json").read_text()) for r in (out, reference))
    for k in ("test_accuracy", "test_accuracy_deterministic", "val_accuracy", "epochs"):
        assert summary[k] == ref_summary[k], k


def test_resume_of_a_finished_run_changes_no_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], reference: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    rc, err = cli(["train", "--resume", str(run), "--no-progress", "--threads", "1"], capsys)
    assert rc == 0, err
    assert [r["epoch"] for r in metrics(run)] == list(range(1, EPOCHS + 1))
    assert (run / "checkpoint.pt").read_bytes() == (reference / "checkpoint.pt").read_bytes()


# --------------------------------------------------------------------------- divergence


def _poison_loss(monkeypatch: pytest.MonkeyPatch, at_call: int, what: str) -> None:
    """Make NoPropDT.loss misbehave on its ``at_call``-th call (1-based).

    With 200 training samples and batch 128 a pass is 2 steps, so an epoch of T=2 is 4 calls.
    ``what``: "nan" returns a NaN loss; "block1" sets a parameter of block 1 to NaN (the loss of
    the block being trained stays finite, so only the end-of-epoch parameter check can see it).
    """
    from noprop.methods.dt import NoPropDT

    real = NoPropDT.loss
    calls = [0]

    def loss(self: NoPropDT, x: torch.Tensor, y: torch.Tensor, unit: int) -> Any:
        calls[0] += 1
        if calls[0] == at_call and what == "block1":
            with torch.no_grad():
                self.unit_parameters(0)[0].view(-1)[0] = math.nan
        value, parts = real(self, x, y, unit)
        if calls[0] == at_call and what == "nan":
            value = value * math.nan
        return value, parts

    monkeypatch.setattr(NoPropDT, "loss", loss)


@pytest.mark.parametrize(
    ("what", "at_call", "fragments"),
    [
        ("nan", 5, ["loss became nan", "block 1", "epoch 2", "checkpoint of epoch 1 is kept"]),
        ("nan", 8, ["loss became nan", "block 2", "epoch 2", "checkpoint of epoch 1 is kept"]),
        (
            "block1",
            8,
            ["model.blocks.0.", "(block 1) became NaN", "epoch 2", "checkpoint of epoch 1 is kept"],
        ),
    ],
)
def test_divergence_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    what: str,
    at_call: int,
    fragments: list[str],
) -> None:
    out = tmp_path / "run"
    _poison_loss(monkeypatch, at_call, what)
    rc, err = cli(["train", *ARGS, "--epochs", str(EPOCHS), "--out", str(out)], capsys)
    assert_one_line_error(rc, err, "diverged", *fragments)
    monkeypatch.undo()
    assert ckpt_epoch(out) == 1
    assert [r["epoch"] for r in metrics(out)] == [1]
    assert not (out / "summary.json").exists()
    for tensor in load_checkpoint(out / "checkpoint.pt")["trainer"]["model"].values():
        assert torch.isfinite(tensor).all()
    rc, err = cli(["eval", str(out), "--threads", "1"], capsys)  # the kept checkpoint is usable
    assert rc == 0, err


def test_divergence_in_the_first_epoch_says_there_is_no_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    rc, err = cli(["train", *ARGS, "--epochs", "2", "--lr", "1e30", "--out", str(out)], capsys)
    assert_one_line_error(rc, err, "diverged", "epoch 1", "no checkpoint", "--lr")
    assert not (out / "checkpoint.pt").exists()


def test_check_finite_names_the_tensor_and_the_block() -> None:
    method, cfg, _ = tiny_method(T=3)
    check, trainer = FiniteState(), Trainer(method, cfg, torch.device("cpu"), progress=False)
    record = EpochRecord(epoch=4, block_loss=[], epoch_seconds=1.0, wall_seconds=1.0, data_passes=3)
    check.on_epoch_end(trainer, record)
    with torch.no_grad():
        method.unit_parameters(2)[0].view(-1)[0] = math.inf
    with pytest.raises(
        Exception, match=r"model\.blocks\.2\..* \(block 3\) became NaN or infinite at epoch 4"
    ):
        check.on_epoch_end(trainer, record)


# -------------------------------------------------------------------- checkpoint safety


class _Evil:
    """Unpickling this runs ``touch MARKER`` (if it were ever unpickled)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _corrupt(run: Path, how: str, marker: Path) -> str:
    """Damage ``run`` in one way; return a fragment the error message must contain."""
    ckpt = run / "checkpoint.pt"
    if how == "evil-torch-save":
        torch.save({"format_version": 1, "trainer": _Evil(marker)}, ckpt)
        return "refusing to load"
    if how == "evil-plain-pickle":  # legacy (non-zip) torch format: a bare pickle
        with open(ckpt, "wb") as f:
            pickle.dump({"format_version": 1, "trainer": _Evil(marker)}, f, protocol=2)
        return "refusing to load"
    if how == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        return "cannot read checkpoint"
    if how == "no-format-version":
        torch.save({"trainer": {"model": {}}}, ckpt)
        return "not a noprop checkpoint"
    if how == "future-format":
        torch.save({"format_version": 99, "trainer": {"model": {}}}, ckpt)
        return "checkpoint format 99"
    if how == "no-trainer":
        torch.save({"format_version": 1, "config": {}}, ckpt)
        return "not a noprop training checkpoint"
    if how == "config-edited-T":
        cfg = json.loads((run / "config.json").read_text())
        cfg["method"]["T"] = 3
        (run / "config.json").write_text(json.dumps(cfg))
        return "was written with --T 2 but"
    if how == "config-edited-embedding":
        cfg = json.loads((run / "config.json").read_text())
        cfg["model"]["embedding"] = "learned"
        (run / "config.json").write_text(json.dumps(cfg))
        return "--embedding 'one-hot'"
    if how == "config-not-json":
        (run / "config.json").write_text("{not json")
        return "cannot read"
    if how == "no-checkpoint":
        ckpt.unlink()
        return "no checkpoint at"
    raise AssertionError(how)


CORRUPTIONS = [
    "evil-torch-save",
    "evil-plain-pickle",
    "truncated",
    "no-format-version",
    "future-format",
    "no-trainer",
    "config-edited-T",
    "config-edited-embedding",
    "config-not-json",
]


# (``--resume`` of a run without a checkpoint restarts it: tested by the kill at step 1 above.)
@pytest.mark.parametrize(
    ("how", "command"),
    [(how, cmd) for how in CORRUPTIONS for cmd in ("eval", "resume")] + [("no-checkpoint", "eval")],
)
def test_bad_checkpoint_is_refused_without_side_effects(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    reference: Path,
    how: str,
    command: str,
) -> None:
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    shutil.copytree(reference, run)
    fragment = _corrupt(run, how, marker)
    before = snapshot(run)
    argv = ["eval", str(run)] if command == "eval" else ["train", "--resume", str(run)]
    rc, err = cli([*argv, "--threads", "1"], capsys)
    assert_one_line_error(rc, err, fragment)
    assert not marker.exists(), "the checkpoint's pickle was executed"
    assert snapshot(run) == before


def test_malicious_checkpoint_in_a_real_process(tmp_path: Path, reference: Path) -> None:
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    shutil.copytree(reference, run)
    _corrupt(run, "evil-torch-save", marker)
    before = snapshot(run)
    proc = subprocess.run(
        [sys.executable, "-m", "noprop", "eval", str(run), "--threads", "1"],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(proc.returncode, proc.stderr, "refusing to load")
    assert proc.stdout == ""
    assert not marker.exists()
    assert snapshot(run) == before


def test_load_checkpoint_refuses_pickles_directly(tmp_path: Path) -> None:
    path, marker = tmp_path / "c.pt", tmp_path / "PWNED"
    torch.save({"format_version": 1, "x": _Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing to load") as excinfo:
        load_checkpoint(path)
    assert "\n" not in str(excinfo.value)
    assert not marker.exists()


def test_os_error_mid_run_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full while writing metrics: one line, exit 1 (not a user error), config.json kept."""
    import errno

    from noprop.rundir import RunDir

    def full(self: RunDir, record: dict[str, Any]) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.metrics_path))

    monkeypatch.setattr(RunDir, "append_metrics", full)
    out = tmp_path / "run"
    rc, err = cli(["train", *ARGS, "--epochs", "1", "--out", str(out)], capsys)
    assert rc == 1 and "Traceback" not in err
    assert err.splitlines() == [f"noprop: error: No space left on device ({out}/metrics.jsonl)"]
    assert (out / "config.json").is_file() and not (out / "checkpoint.pt").exists()
