"""A run never ends "done" with a broken model, and one process writes a run directory at a time.

* 16-mixed with an absurd learning rate and BatchNorm: the skipped steps' forward passes used to leave
  NaN running statistics in a checkpoint that ``eval``/``predict`` then used; now a skipped step
  restores the buffers, every tensor of the trainer's state is checked before a checkpoint, and the
  run stops in one line keeping the last good checkpoint.
* Skipped steps are counted in the end line, and a block that skips most of its steps stops the run.
* Two ``--resume`` of one run: one proceeds, the other exits 2 naming the holder; a ``kill -9``'d
  holder leaves no lock behind.
* Temporary files of a killed write are removed at every depth on the next start.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from noprop.cli import main
from noprop.errors import DivergenceError
from noprop.runlock import LOCK_FILE, RunBusyError, run_lock
from noprop.runs.pause import PAUSE_ENV, RELEASE_ENV
from noprop.training.callbacks import MAX_SKIPPED_FRACTION, SKIP_WINDOW, SkipBudget
from noprop.training.checkpoint import load_checkpoint
from noprop.training.order import Step
from noprop.training.record import EpochRecord
from noprop.training.steps import LocalStep
from noprop.training.trainer import Trainer

from .problems import tiny_method

TIMEOUT_S = 120
# digits with the default block for 8×8 images: an MLP with BatchNorm
SMALL = ["--dataset", "digits", "--T", "3", "--seed", "0", "--no-progress", "--threads", "1"]


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = int(e.code or 0)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("noprop: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


# ------------------------------------------------------------------ the broken end state


def test_16_mixed_huge_lr_with_batchnorm_stops_and_keeps_a_good_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The silent failure: a learning rate that turns absurd in epoch 2 (the cosine schedule's
    factor patched to 10^7 after epoch 1's steps). Before, the run exited 0 with NaN BatchNorm
    statistics in its checkpoint (the skipped steps' forward passes had written them) and predict
    printed nan; now it stops in one line at epoch 2 and keeps epoch 1's checkpoint."""
    monkeypatch.setattr(  # 3 epochs: the first third of each optimiser's steps is epoch 1
        "noprop.training.steps.cosine_factor", lambda done, total: 1.0 if 3 * done < total else 1e7
    )
    out = tmp_path / "run"
    argv = ["train", *SMALL, "--precision", "16-mixed", "--lr-schedule", "cosine",
            "--max-train-samples", "256", "--batch-size", "128", "--epochs", "3"]  # fmt: skip
    rc, _, err = cli([*argv, "--out", str(out)], capsys)
    monkeypatch.undo()
    assert rc == 2, err
    line = one_error_line(err)
    assert "diverged" in line and "epoch 2" in line and "checkpoint of epoch 1 is kept" in line
    payload = load_checkpoint(out / "checkpoint.pt")
    assert payload["trainer"]["train_state"]["epoch"] == 1
    model = payload["trainer"]["model"]
    assert any("running_var" in k for k in model)  # BatchNorm is there
    assert all_finite(model) and all_finite(payload["trainer"]["best_model"])
    assert not (out / "summary.json").exists()
    # the kept checkpoint is usable: eval and predict give numbers, not nan
    rc, _, err = cli(["eval", str(out), "--threads", "1"], capsys)
    assert rc == 0, err
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), dtype=np.float32))
    rc, stdout, err = cli(["predict", str(out), str(tmp_path / "x.npy"), "--threads", "1"], capsys)
    assert rc == 0, err
    rows = [ln.split("\t") for ln in stdout.splitlines()]
    assert len(rows) == 3 and all(math.isfinite(float(r[-1])) for r in rows), stdout


def test_16_mixed_absurd_lr_from_the_start_writes_no_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["train", *SMALL, "--precision", "16-mixed", "--lr", "1e4", "--epochs", "2"]
    rc, _, err = cli([*argv, "--out", str(out)], capsys)
    assert rc == 2, err
    line = one_error_line(err)
    assert "diverged" in line and "no checkpoint" in line, line
    assert not (out / "checkpoint.pt").exists() and not (out / "summary.json").exists()


def test_a_skipped_step_leaves_batchnorm_statistics_untouched() -> None:
    method, cfg, (x, y) = tiny_method(T=2, precision="16-mixed")
    trainer = Trainer(method, cfg, torch.device("cpu"), progress=False)
    step = trainer.step_fn
    assert isinstance(step, LocalStep) and step.scalers is not None
    buffers = step.buffers_of(0)
    assert buffers, "the tiny MLP block has BatchNorm running statistics"
    before = [b.clone() for b in buffers]
    real = method.loss

    def overflowing(x, y, unit):  # the forward runs (and moves the statistics), the loss is inf
        loss, parts = real(x, y, unit)
        return loss * math.inf, parts

    method.loss = overflowing  # type: ignore[method-assign]
    assert step(x, y, Step((0,), torch.arange(x.shape[0])), 0) == []  # skipped: no parts
    assert all(torch.equal(a, b) for a, b in zip(before, buffers, strict=True))
    assert step.skipped[0] == 1 and step.taken[0] == 1
    method.loss = real  # type: ignore[method-assign]
    trainer.step(x, y, 0)  # a step that is not skipped moves them, as BatchNorm does
    assert not all(torch.equal(a, b) for a, b in zip(before, buffers, strict=True))


def _record(epoch: int, skipped: list[int], steps: list[int]) -> EpochRecord:
    return EpochRecord(epoch=epoch, block_loss=[], epoch_seconds=1.0, wall_seconds=1.0,
                       data_passes=1.0, skipped_steps=skipped, steps=steps)  # fmt: skip


def test_skip_budget_stops_a_block_that_skips_most_of_its_steps() -> None:
    budget, trainer = SkipBudget(), None
    half = int(MAX_SKIPPED_FRACTION * SKIP_WINDOW)
    # the warm-up's few skips and a tiny epoch of nothing but skips: not judged yet (< window)
    budget.on_epoch_end(trainer, _record(1, [5, 0], [10, 10]))  # type: ignore[arg-type]
    budget.on_epoch_end(trainer, _record(2, [10, 0], [10, 10]))  # type: ignore[arg-type]
    # block 1 reaches the window with exactly half skipped: allowed (more than half stops)
    budget.on_epoch_end(trainer, _record(3, [half - 15, 0], [30, 30]))  # type: ignore[arg-type]
    with pytest.raises(DivergenceError, match=r"block 2 skipped 26 of its last 50 steps"):
        budget.on_epoch_end(trainer, _record(4, [0, 26], [0, 50]))  # type: ignore[arg-type]


def test_skipped_steps_are_in_the_end_line_and_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["train", *SMALL, "--precision", "16-mixed", "--epochs", "1", "--out", str(out)]
    rc, stdout, err = cli(argv, capsys)
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["skipped_steps"] == sum(records[0]["skipped_steps"])
    assert summary["steps"] == sum(records[0]["steps"]) > 0
    assert f"{summary['skipped_steps']} of {summary['steps']} steps skipped" in stdout
    if summary["skipped_steps"]:  # GradScaler's first steps usually overflow: said per epoch
        assert "epoch 1:" in err and "steps skipped for float16 overflow" in err


# ------------------------------------------------------------------------ one writer


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "noprop.cli", *argv], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_paused(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:  # the pause hook announces itself on stderr
        if "NOPROP_PAUSED" in line:
            return
    raise AssertionError(f"the run never paused (exit {proc.wait()})")


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("guards") / "run"
    argv = ["train", *SMALL, "--max-train-samples", "400", "--epochs", "1", "--out", str(out)]
    assert main(argv) == 0
    return out


def test_two_resumes_of_one_run_one_proceeds(tmp_path: Path, one_epoch: Path) -> None:
    run, release = tmp_path / "run", tmp_path / "go"
    subprocess.run(["cp", "-r", str(one_epoch), str(run)], check=True)
    resume = ["train", "--resume", str(run), "--epochs", "3", "--threads", "1", "--no-progress"]
    first = _spawn(resume, {PAUSE_ENV: "step:2", RELEASE_ENV: str(release)})
    try:
        _wait_paused(first)  # mid-epoch 2, holding the lock
        second = subprocess.run([sys.executable, "-m", "noprop.cli", *resume], text=True,
                                capture_output=True, timeout=TIMEOUT_S)  # fmt: skip
        assert second.returncode == 2, second.stderr
        line = one_error_line(second.stderr)
        assert f"in use by process {first.pid} (train --resume)" in line, line
        release.touch()
        _, err = first.communicate(timeout=TIMEOUT_S)
        assert first.returncode == 0, err
    finally:
        first.kill()
    epochs = [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_a_killed_holder_leaves_no_lock(tmp_path: Path, one_epoch: Path) -> None:
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(one_epoch), str(run)], check=True)
    resume = ["train", "--resume", str(run), "--epochs", "2", "--threads", "1", "--no-progress"]
    holder = _spawn(resume, {PAUSE_ENV: "step:2"})
    try:
        _wait_paused(holder)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=TIMEOUT_S)
    finally:
        holder.kill()
    assert (run / LOCK_FILE).exists()  # the file stays; the kernel dropped the lock
    done = subprocess.run([sys.executable, "-m", "noprop.cli", *resume], text=True,
                          capture_output=True, timeout=TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_run_lock_refuses_a_second_holder_in_process(tmp_path: Path) -> None:
    with run_lock(tmp_path, "train"):
        with pytest.raises(RunBusyError, match=rf"in use by process {os.getpid()} \(train\)"):
            with run_lock(tmp_path, "eval"):
                pass
    with run_lock(tmp_path, "eval"):  # released
        pass


def test_new_run_into_a_directory_being_written_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with run_lock(out, "train"):  # another process's new run, before its config.json
        rc, _, err = cli(["train", *SMALL, "--epochs", "1", "--out", str(out)], capsys)
    assert rc == 2 and "in use by process" in one_error_line(err)
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing written


# ------------------------------------------------------------------ temporary files


def test_temporary_files_are_removed_at_every_depth_on_resume(
    tmp_path: Path, one_epoch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(one_epoch), str(run)], check=True)
    (run / "data" / "deep").mkdir(parents=True)
    stale = [
        run / ".checkpoint.pt.tmp-123",
        run / "data" / ".train_x.npy.tmp-456",  # a killed cache write
        run / "data" / "deep" / ".x.npy.tmp-7",
        run / ".write-probe-99",
    ]
    for p in stale:
        p.write_bytes(b"partial")
    keep = run / "data" / "deep" / "notes.txt"
    keep.write_text("mine")
    rc, _, err = cli(["train", "--resume", str(run), "--epochs", "1", "--threads", "1"], capsys)
    assert rc == 0, err
    assert not [p for p in stale if p.exists()]
    assert keep.read_text() == "mine"


def test_eval_that_writes_and_export_overwrite_wait_for_no_one(
    tmp_path: Path, one_epoch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While another process writes the run, ``eval --chains`` (which writes eval_chains.json) and
    ``export --overwrite`` onto a locked export are refused; a plain ``eval`` only reads: it runs."""
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(one_epoch), str(run)], check=True)
    with run_lock(run, "train --resume"):
        rc, _, err = cli(["eval", str(run), "--chains", "1", "--threads", "1"], capsys)
        assert rc == 2 and "(train --resume)" in one_error_line(err)
        assert not (run / "eval_chains.json").exists()
        rc, _, err = cli(["eval", str(run), "--threads", "1"], capsys)
        assert rc == 0, err
    rc, _, err = cli(["eval", str(run), "--chains", "1", "--threads", "1"], capsys)
    assert rc == 0 and (run / "eval_chains.json").exists(), err
    export = tmp_path / "export"
    assert cli(["export", str(run), "--out", str(export)], capsys)[0] == 0
    before = (export / "model.safetensors").stat().st_ino
    with run_lock(export, "export --overwrite"):
        rc, _, err = cli(["export", str(run), "--out", str(export), "--overwrite"], capsys)
        assert rc == 2 and "in use by process" in one_error_line(err)
    assert (export / "model.safetensors").stat().st_ino == before  # untouched
    rc, _, err = cli(["export", str(run), "--out", str(export), "--overwrite"], capsys)
    assert rc == 0, err


def test_predict_refuses_to_print_nan(tmp_path: Path, one_epoch: Path) -> None:
    """A model whose outputs overflow (e.g. a run made before these checks) is an error in predict,
    not a column of nan."""
    from noprop.runs.model import load

    model = load(one_epoch, "cpu")
    with torch.no_grad():
        for p in model.method.head.parameters():
            p.fill_(math.inf)
    with pytest.raises(DivergenceError, match="NaN or infinite probabilities"):
        model.predict_proba(torch.zeros(2, 8, 8))


def test_two_runs_started_in_one_second_get_two_default_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default --out carries the start second; a second run in the same second must not be
    refused as "a different run" (it was, when a script trained twice in a row)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt, *a: "20261207-120000")
    args = ["train", "--dataset", "digits", "--epochs", "1", "--T", "2", "--max-train-samples",
            "64", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert main([*args, "--seed", "1"]) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["dt-digits-20261207-120000", "dt-digits-20261207-120000-2"]
    assert all((tmp_path / "runs" / r / "summary.json").is_file() for r in runs)
