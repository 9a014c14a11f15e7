"""``--test-curve``, the per-epoch load record and the time-to-accuracy table of ``noprop plot``."""

from __future__ import annotations

import json

import pytest
import torch

from noprop import RunDir, make_config
from noprop.cli import main
from noprop.rundir import EpochRecord
from noprop.runs import train
from noprop.runtime import load_meter
from noprop_lab.bench import time_to_accuracy as tta


@pytest.fixture(scope="module")
def ct_runs(tmp_path_factory):
    """The same CT run with and without --test-curve; validation with fewer steps than the test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tta")
    common = dict(method="ct", epochs=3, max_train_samples=300, inference_steps=6,
                  val_inference_steps=2)  # fmt: skip
    with_curve, without = root / "curve", root / "plain"
    train(make_config(test_curve=True, **common), with_curve, progress=False)
    train(make_config(**common), without, progress=False)
    yield with_curve, without
    torch.set_num_threads(n)


def test_test_curve_is_the_final_tests_inference_at_every_epoch(ct_runs):
    curve, _ = ct_runs
    rd = RunDir(curve)
    records, summary = rd.records(), rd.summary()
    assert [m.epoch for m in records] == [1, 2, 3]
    assert all(m.test_accuracy is not None for m in records)
    best = next(m for m in records if m.epoch == summary.best_epoch)
    # same weights, seed and (default, 6-step) inference as the final test: the same number. With
    # validation's 2 steps it would differ (checked below), so this fails if the curve used them.
    assert best.test_accuracy == summary.test_accuracy
    assert best.val_accuracy == summary.val_accuracy


def test_test_curve_changes_nothing_else(ct_runs):
    curve, plain = ct_runs
    a, b = RunDir(curve), RunDir(plain)
    assert a.summary().test_accuracy == b.summary().test_accuracy
    assert [m.val_accuracy for m in a.records()] == [m.val_accuracy for m in b.records()]
    assert a.summary().best_epoch == b.summary().best_epoch
    assert all(m.test_accuracy is None for m in b.records())
    line = json.loads(b.metrics_path.read_text().splitlines()[0])
    assert "test_accuracy" not in line  # absent, not null, when not measured
    sa = torch.load(a.checkpoint_path, weights_only=False)["trainer"]["model"]
    sb = torch.load(b.checkpoint_path, weights_only=False)["trainer"]["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_curve_uses_the_default_inference_not_validations(ct_runs, monkeypatch):
    """Control for the equality above: the validation setting gives a different test figure."""
    curve, _ = ct_runs
    from noprop import load
    from noprop.runs import load_data
    from noprop.training.trainer import evaluate

    model = load(curve, device="cpu")
    _, data = load_data(model.config)
    m = model.method
    m.inference_steps = 2
    x, y = data.test
    two = evaluate(m, x, y, seed=model.config.train.seed)["accuracy"]
    assert two != RunDir(curve).summary().test_accuracy


def test_every_epoch_records_its_load(ct_runs, monkeypatch, tmp_path):
    records = RunDir(ct_runs[0]).records()
    assert all(m.other_busy_cores is not None for m in records)
    # the trainer records what the meter reads: a fake meter reading 0.75 cores shows up as 0.75
    import noprop.training.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "load_meter", lambda: lambda: 0.75)
    train(make_config(method="dt", T=2, epochs=1, max_train_samples=60), tmp_path / "r",
          progress=False)  # fmt: skip
    (rec,) = RunDir(tmp_path / "r").records()
    assert rec.other_busy_cores == 0.75


def test_load_meter_counts_other_processes_only():
    ticks = iter([1000, 1000 + 300])  # 3 s of busy CPU time at 100 Hz
    own = iter([5.0, 6.0])  # 1 s of it was this process
    clock = iter([0.0, 2.0])  # over 2 s of wall time
    read = load_meter(ticks=lambda: next(ticks), own=lambda: next(own), clock=lambda: next(clock))
    assert read() == pytest.approx((300 / _hz() - 1.0) / 2.0)
    unreadable = load_meter(ticks=lambda: None)
    assert unreadable() is None


def _hz() -> int:
    import os

    return os.sysconf("SC_CLK_TCK")


def _rec(epoch, val, wall, load=0.0):
    return EpochRecord(epoch=epoch, block_loss=[0.1], epoch_seconds=wall / epoch,
                       wall_seconds=wall, data_passes=epoch, val_accuracy=val,
                       other_busy_cores=load)  # fmt: skip


def test_crossings_and_row():
    recs = [_rec(1, 0.97, 60), _rec(2, 0.985, 120, 0.2), _rec(3, 0.984, 180), _rec(4, 0.991, 240)]
    assert tta.crossing(recs, 0.98).epoch == 2
    assert tta.crossing(recs, 0.99).epoch == 4
    assert tta.crossing(recs, 0.995) is None
    cfg = make_config(method="dt", dataset="mnist", embedding="one-hot")
    r = tta.row(cfg, recs, None)
    assert (r["val_98_seconds"], r["val_99_seconds"], r["val_99_epoch"]) == (120, 240, 4)
    assert r["variant"] == "Algorithm 1, sequential"
    assert r["paper_test"] is not None and r["finished"] is False
    assert r["other_busy_cores_max"] == 0.2 and r["other_busy_cores_mean"] == 0.05
    md = tta.render_markdown([r])
    assert "2.0 min (epoch 2)" in md and "running" in md
    inter = make_config(method="dt", order="interleaved", parallel="fused")
    assert tta.variant(inter, None) == "interleaved, fused-parallel"
    assert tta.variant(make_config(method="fm"), None) == ""
    never = tta.row(make_config(method="fm"), [_rec(1, 0.5, 10)], None)
    assert "not reached" in tta.render_markdown([never])
    fused = make_config(method="dt", order="interleaved", parallel="fused")
    assert "ranks" not in tta.variant(fused, _summary(world_size=1))
    assert tta.variant(make_config(method="dt", parallel="blocks"), _summary(world_size=2)) == (
        "Algorithm 1, blocks-parallel, 2 ranks"
    )


def _summary(**kw):
    from noprop.rundir import Summary

    base = dict(method="dt", dataset="digits", embedding="one-hot", val_accuracy=0.9,
                best_epoch=1, test_accuracy=0.9, test_accuracy_deterministic=0.9,
                test_accuracy_per_step=[0.9], train_seconds=1.0, epochs=1, data_passes=1.0,
                params_per_block=1, num_train=1, num_val=1, num_test=1, device="cpu",
                cpu="x", num_threads=1, parallel="none", world_size=1, torch_version="t",
                noprop_version="v")  # fmt: skip
    return Summary(**{**base, **kw})


def test_eval5_mean_is_the_reported_test_accuracy():
    recs = [_rec(1, 0.985, 60)]
    r = tta.row(make_config(method="dt"), recs, _summary(test_accuracy=0.5),
                {"test_accuracy": 0.9812, "runs": 5}, run="cell")  # fmt: skip
    assert r["test_accuracy"] == 0.9812 and r["finished"] and r["run"] == "cell"
    assert "98.12 (mean of 5)" in tta.render_markdown([r])


def test_plot_writes_the_table_and_the_test_curve(ct_runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "fig"
    assert main(["plot", str(ct_runs[0]), str(ct_runs[1]), "--out", str(out)]) == 0
    table = json.loads((out / "time_to_accuracy.json").read_text())["rows"]
    assert len(table) == 2 and all(r["finished"] for r in table)
    assert table[0]["test_accuracy"] == RunDir(ct_runs[0]).summary().test_accuracy
    assert "first val ≥ 99%" in (out / "time_to_accuracy.md").read_text()
    assert (out / "accuracy_vs_time.png").read_bytes().startswith(b"\x89PNG")


def test_test_curve_flag_on_the_cli(tmp_path):
    run = tmp_path / "r"
    assert main(["train", "--method", "dt", "--T", "2", "--epochs", "1", "--max-train-samples",
                 "100", "--test-curve", "--no-progress", "--out", str(run)]) == 0  # fmt: skip
    (rec,) = RunDir(run).records()
    assert rec.test_accuracy == RunDir(run).summary().test_accuracy
