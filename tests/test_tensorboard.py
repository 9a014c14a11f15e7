"""--tensorboard: the event files hold metrics.jsonl's values; without the package, one-line error."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

from noprop.cli import main
from noprop.rundir import RunDir
from noprop.training.record import EpochRecord

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

TINY = ["train", "--dataset", "digits", "--max-train-samples", "100", "--T", "2"]
TINY += ["--epochs", "2", "--no-progress"]


def scalars(log_dir) -> dict[str, dict[int, float]]:
    """tag → {global step: value} of every scalar in ``log_dir``'s event files."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb") / "run"
    assert main([*TINY, "--tensorboard", "--out", str(out)]) == 0
    return RunDir(out)


def test_scalars_equal_metrics_jsonl(tb_run):
    assert tb_run.tensorboard_dir.is_dir()
    assert list(tb_run.tensorboard_dir.glob("events.out.tfevents.*"))
    got = scalars(tb_run.tensorboard_dir)
    records = tb_run.read_metrics()
    assert [r["epoch"] for r in records] == [1, 2]
    approx = lambda v: pytest.approx(v, rel=1e-6, abs=1e-7)  # noqa: E731 (float32 in the events)
    for r in records:
        step = r["epoch"]
        parts = {k: v for k, v in r.items() if k.startswith("block_")}
        assert {"block_loss", "block_l2", "block_ce"} <= set(parts)  # DT's loss parts
        for key, per_block in parts.items():
            assert len(per_block) == 2  # --T 2
            for u, v in enumerate(per_block):
                tag = f"{key.removeprefix('block_')}/block_{u + 1:02d}"
                assert got[tag][step] == approx(v), tag
        assert got["val/accuracy"][step] == approx(r["val_accuracy"])
        assert len(r["val_accuracy_per_step"]) == 3  # z_0, z_1, z_2
        for i, acc in enumerate(r["val_accuracy_per_step"]):
            assert got[f"val/accuracy_step_{i:02d}"][step] == approx(acc)
        assert got["time/epoch_seconds"][step] == approx(r["epoch_seconds"])
        assert got["data_passes"][step] == approx(r["data_passes"])
        n_train = tb_run.summary().num_train
        expected = n_train * 2 / r["epoch_seconds"]  # one pass per block per DT epoch
        assert got["throughput/samples_per_s"][step] == pytest.approx(expected, rel=1e-5)
        lr = tb_run.config().train.lr
        lr_tags = [t for t in got if t.startswith("lr/")]
        assert {"lr/block_01", "lr/block_02"} <= set(lr_tags)
        assert all(got[t][step] == approx(lr) for t in lr_tags)
    assert all(set(values) == {1, 2} for values in got.values())  # global step = epoch


def test_resume_appends_to_the_same_directory(tb_run, tmp_path):
    assert main(["train", "--resume", str(tb_run.path), "--epochs", "3", "--no-progress"]) == 0
    got = scalars(tb_run.tensorboard_dir)
    assert len(list(tb_run.tensorboard_dir.glob("events.out.tfevents.*"))) == 2
    assert set(got["val/accuracy"]) == {1, 2, 3}
    assert got["val/accuracy"][3] == pytest.approx(tb_run.read_metrics()[2]["val_accuracy"])


def test_a_resumed_session_replaces_the_epochs_logged_after_the_checkpoint(tmp_path):
    """A run killed after epoch 3's events but before its checkpoint resumes at epoch 3: the new
    session's epoch 3 replaces the old one (purge_step)."""
    import time

    import torch

    from noprop.training.tensorboard import TensorBoardLogger

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    trainer = SimpleNamespace(optimizers=[opt], shared_optimizer=None)
    record = {"epoch_seconds": 0.5, "wall_seconds": 1.0, "data_passes": 1.0}
    first = TensorBoardLogger(tmp_path, samples_per_epoch=10)
    for epoch in (1, 2, 3):
        first.on_epoch_end(trainer, EpochRecord(**record, epoch=epoch, block_loss=[float(epoch)]))
    first.on_fit_end(trainer)
    time.sleep(1.1)  # event file names start with the second they were created in
    second = TensorBoardLogger(tmp_path, samples_per_epoch=10)
    for epoch in (3, 4):
        second.on_epoch_end(trainer, EpochRecord(**record, epoch=epoch, block_loss=[10.0 * epoch]))
    second.on_fit_end(trainer)
    got = scalars(tmp_path)
    assert got["loss/block_01"] == {1: 1.0, 2: 2.0, 3: 30.0, 4: 40.0}
    assert got["lr/block_01"] == {1: 0.5, 2: 0.5, 3: 0.5, 4: 0.5}
    assert got["throughput/samples_per_s"][4] == pytest.approx(20.0)
    assert "val/accuracy" not in got  # no validation split: no accuracy scalars


def test_no_tensorboard_dir_without_the_flag(tmp_path):
    run = RunDir(tmp_path / "run")
    assert main([*TINY[:-3], "--epochs", "1", "--no-progress", "--out", str(run.path)]) == 0
    assert run.summary_path.is_file()
    assert not run.tensorboard_dir.exists()


def test_overwrite_removes_the_old_event_files(tmp_path):
    run = RunDir(tmp_path / "run")
    run.tensorboard_dir.mkdir(parents=True)
    (run.tensorboard_dir / "events.out.tfevents.old").write_bytes(b"stale")
    (run.path / "config.json").write_text(json.dumps({}))
    argv = [*TINY[:-3], "--epochs", "1", "--no-progress", "--out", str(run.path), "--overwrite"]
    assert main(argv) == 0
    assert not run.tensorboard_dir.exists()


def test_missing_package_is_a_one_line_error_and_writes_nothing(tmp_path, monkeypatch, capsys):
    # an import of a module whose sys.modules entry is None raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    out = tmp_path / "run"
    assert main([*TINY, "--tensorboard", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "noprop: error: --tensorboard needs the tensorboard package: pip install 'noprop[tb]'\n"
    )
    assert not out.exists()
