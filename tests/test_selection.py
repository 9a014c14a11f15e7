"""Model selection and ``--patience`` follow the task's metric (issue 20, point 5).

Images select on validation accuracy (higher is better), text on validation bits per byte (lower is
better). A scripted evaluator makes the epoch with the best accuracy differ from the epoch with the
best bits per byte, so each test can see which one was selected. The epoch record is typed
(:class:`EpochRecord`) and metrics.jsonl keeps noprop 0.1's keys.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from noprop import make_config, train
from noprop.rundir import RunDir, Summary
from noprop.runs.listing import best_val_accuracy
from noprop.tasks import ClassificationTask, LanguageTask, Task
from noprop.training import Callback, EpochRecord, Trainer, TrainState

from .problems import tiny_method

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "run-v0.1.0-dt"

#: (validation accuracy, validation bits per byte) of epochs 1..4: accuracy is best at epoch 4,
#: bits per byte at epoch 3
SCRIPT = [(0.50, 3.0), (0.90, 2.5), (0.60, 2.0), (0.95, 2.2)]


def scripted(scores):
    """An evaluator returning ``scores[epoch - 1]`` (the trainer counts the epoch before validating)."""

    def evaluator(trainer, x, y, *, deterministic, seed, validation=True):
        acc, bpb = scores[trainer.state.epoch - 1]
        return {"accuracy": acc, "accuracy_per_step": [0.0, acc],
                "bits_per_byte": bpb, "bits_per_byte_per_step": [8.0, bpb]}  # fmt: skip

    return evaluator


class Snapshots(Callback):
    """Every epoch's record and weights."""

    def __init__(self) -> None:
        self.records: list[EpochRecord] = []
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch_end(self, trainer, record) -> None:
        assert isinstance(record, EpochRecord)
        self.records.append(record)
        self.weights[record.epoch] = {
            k: v.detach().clone() for k, v in trainer.method.state_dict().items()
        }


def fit(task: Task, scores, epochs: int, **cfg_kw) -> tuple[Trainer, Snapshots]:
    method, cfg, (x, y) = tiny_method(T=2, epochs=epochs, batch_size=32, **cfg_kw)
    snaps = Snapshots()
    trainer = Trainer(method, cfg, torch.device("cpu"), task=task, progress=False,
                      callbacks=[snaps], evaluator=scripted(scores))  # fmt: skip
    trainer.fit((x, y), (x[:8], y[:8]))
    return trainer, snaps


def image_task() -> Task:
    return ClassificationTask.from_shape((1, 8, 8), 4)


def text_task() -> Task:  # only its metric matters here: the scripted evaluator scores
    return LanguageTask("text", context=16)


def assert_best_model_is(trainer: Trainer, snaps: Snapshots, epoch: int) -> None:
    assert trainer.best_model is not None
    expected = snaps.weights[epoch]
    assert trainer.best_model.keys() == expected.keys()
    assert all(torch.equal(trainer.best_model[k], expected[k]) for k in expected)


def test_tasks_declare_their_selection_metric():
    assert (ClassificationTask.metric, ClassificationTask.higher_is_better) == ("accuracy", True)
    assert (LanguageTask.metric, LanguageTask.higher_is_better) == ("bits_per_byte", False)


def test_text_selects_the_epoch_with_the_fewest_bits_per_byte(one_thread):
    trainer, snaps = fit(text_task(), SCRIPT, epochs=4)
    st = trainer.state
    assert (st.metric, st.higher_is_better) == ("bits_per_byte", False)
    assert st.best_epoch == 3 and st.best_val == 2.0
    assert st.best_scores == {"accuracy": 0.60, "bits_per_byte": 2.0}
    assert_best_model_is(trainer, snaps, 3)
    w3, w4 = snaps.weights[3], snaps.weights[4]
    assert any(not torch.equal(w3[k], w4[k]) for k in w3)  # epoch 4's model is another one


def test_images_still_select_the_epoch_with_the_best_accuracy(one_thread):
    trainer, snaps = fit(image_task(), SCRIPT, epochs=4)
    st = trainer.state
    assert (st.metric, st.higher_is_better) == ("accuracy", True)
    assert st.best_epoch == 4 and st.best_val == 0.95
    assert_best_model_is(trainer, snaps, 4)


def test_patience_counts_epochs_without_a_better_value_of_the_same_metric(one_thread):
    # bits per byte best at epoch 2 and then worse twice; accuracy improves every epoch
    scores = [(0.1, 3.0), (0.2, 2.0), (0.3, 2.1), (0.4, 2.2), (0.5, 1.0)]
    text, _ = fit(text_task(), scores, epochs=5, patience=2)
    assert (text.state.epoch, text.state.best_epoch) == (4, 2)
    image, _ = fit(image_task(), scores, epochs=5, patience=2)
    assert (image.state.epoch, image.state.best_epoch) == (5, 5)


def test_the_record_is_typed_and_metrics_jsonl_keeps_its_keys(one_thread):
    _, snaps = fit(text_task(), SCRIPT, epochs=1)
    (rec,) = snaps.records
    assert rec.val_accuracy == 0.5 and rec.val("bits_per_byte") == 3.0
    assert rec.val_scores == {"bits_per_byte": 3.0, "bits_per_byte_per_step": [8.0, 3.0]}
    assert set(rec.loss_parts) == {"l2", "ce"} and len(rec.block_loss) == 2  # DT's parts, T = 2
    line = rec.to_dict()
    assert set(line) == {
        "epoch", "block_loss", "block_l2", "block_ce", "epoch_seconds", "wall_seconds",
        "data_passes", "other_busy_cores", "val_accuracy", "val_accuracy_per_step",
        "val_bits_per_byte", "val_bits_per_byte_per_step",
    } - ({"other_busy_cores"} if rec.other_busy_cores is None else set())  # fmt: skip
    assert EpochRecord.from_dict(line) == rec


def test_noprop_0_1_metrics_lines_read_and_write_back_unchanged():
    lines = (FIXTURE_RUN / "metrics.jsonl").read_text().splitlines()
    for d in map(json.loads, lines):
        rec = EpochRecord.from_dict(d)
        assert rec.loss_parts.keys() == {"ce", "l2"} and rec.val_scores == {}
        assert rec.to_dict() == d and list(rec.to_dict()) == list(d)  # keys and their order
    future = {**json.loads(lines[0]), "some_future_key": [0], "val_foo": 1.0}
    rec = EpochRecord.from_dict(future)
    assert rec.extra == {"some_future_key": [0]} and rec.val_scores == {"foo": 1.0}
    assert rec.to_dict() == future


def test_old_checkpoint_state_resumes_selecting_on_accuracy(one_thread):
    """noprop < 0.2 checkpoints: best_val -1.0 meant "none yet"; they were selected on accuracy, and a
    text run resumed from one keeps selecting on accuracy (its best_val is an accuracy)."""
    legacy = {
        "epoch": 1,
        "train_seconds": 1.0,
        "data_passes": 2.0,
        "best_val": -1.0,
        "best_epoch": 0,
    }
    st = TrainState(**legacy)
    assert (st.best_val, st.metric, st.higher_is_better) == (None, "accuracy", True)
    assert st.improves(0.0)
    method, cfg, (x, y) = tiny_method(T=2, epochs=3, batch_size=32)
    scores = [(0.5, 3.0), (0.7, 2.5), (0.6, 2.0)]  # epoch 1 from the checkpoint; 2 and 3 run now
    trainer = Trainer(method, cfg, torch.device("cpu"), task=text_task(), progress=False,
                      evaluator=scripted(scores))  # fmt: skip
    sd = trainer.state_dict()
    sd["train_state"] = {**legacy, "best_val": 0.5, "best_epoch": 1}
    trainer.load_state_dict(sd)
    trainer.fit((x, y), (x[:8], y[:8]))
    assert trainer.state.metric == "accuracy" and trainer.state.best_epoch == 2


def test_a_missing_selection_metric_is_named(one_thread):
    method, cfg, (x, y) = tiny_method(T=2, epochs=1, batch_size=32)
    trainer = Trainer(method, cfg, torch.device("cpu"), task=text_task(), progress=False,
                      evaluator=lambda *a, **k: {"accuracy": 0.5, "accuracy_per_step": [0.5]})  # fmt: skip
    with pytest.raises(KeyError, match="bits_per_byte"):
        trainer.fit((x, y), (x[:8], y[:8]))


def test_runs_listing_of_an_unfinished_run_follows_the_metric():
    records = [
        {"epoch": e, "val_accuracy": acc, "val_bits_per_byte": bpb}
        for e, (acc, bpb) in enumerate(SCRIPT, 1)
    ]
    assert best_val_accuracy(records, LanguageTask) == 0.60
    assert best_val_accuracy(records, ClassificationTask) == 0.95
    assert best_val_accuracy([{"epoch": 1}], LanguageTask) is None


def _corpus(path: Path, size: int = 6_000) -> Path:
    r = random.Random(0)
    words = ["the cat", "a dog", "sat on", "ran to", "the mat.", "a tree.", "my friend", "walked"]
    text = ""
    while len(text) < size:
        text += " ".join(r.choice(words) for _ in range(4)) + "\n"
    path.write_text(text)
    return path


def test_a_text_run_selects_and_reports_bits_per_byte(tmp_path, one_thread):
    corpus = _corpus(tmp_path / "corpus.txt")
    cfg = make_config(dataset="text", data_dir=str(corpus), context=16, width=16, heads=2, T=2,
                      batch_size=16, epochs=3, lr=3e-3)  # fmt: skip
    summary = train(cfg, tmp_path / "run", progress=False)
    records = RunDir(tmp_path / "run").records()
    best = min(records, key=lambda r: r.val_scores["bits_per_byte"])
    assert summary["selected_on"] == "bits_per_byte"
    assert summary["best_epoch"] == best.epoch
    assert summary["val_scores"] == {  # DT: the fair read-out's bits, and the paper read-out's
        k: best.val_scores[k] for k in ("bits_per_byte", "bits_per_byte_paper")
    }
    assert summary["val_accuracy"] == best.val_accuracy  # the selected epoch's, not the best one


def test_an_image_summary_says_it_selected_on_accuracy():
    summary = json.loads((FIXTURE_RUN / "summary.json").read_text())
    s = Summary.from_dict(summary)  # written by noprop 0.1: no selected_on, no val_scores
    assert (s.selected_on, s.val_scores) == ("accuracy", {})


# ------------------------------------------------- text chain models: the fair read-out (issue 22)
def _text_dt_trainer():
    from noprop.build import build_method

    from .test_language import L

    cfg = make_config(dataset="stdlib", method="dt", T=2, width=16, heads=2, context=L)
    task = LanguageTask("stdlib", L)
    method = build_method(cfg, task)
    return Trainer(method, cfg.train, torch.device("cpu"), task=task, progress=False)


def test_a_text_chain_model_is_validated_on_its_best_readout(one_thread):
    """``bits_per_byte`` of the per-epoch validation is the fewest bits of any read-out on one
    stochastic chain (:func:`evaluate_readouts`, S = 1, same seed); the paper's read-out is kept as
    ``bits_per_byte_paper``; the test curve and deterministic evaluations are unchanged."""
    from noprop.runs.readouts import evaluate_readouts
    from noprop.runs.selection import fair_local_evaluate

    from .test_language import L, _bytes

    trainer = _text_dt_trainer()
    x, y = _bytes(6, L, seed=1), _bytes(6, L, seed=2).long()
    trainer.method.train()
    out = fair_local_evaluate(trainer, x, y, deterministic=False, seed=3)
    assert trainer.method.training  # validation leaves the model as it found it
    plain = Trainer.local_evaluate(trainer, x, y, deterministic=False, seed=3)
    assert out["bits_per_byte_paper"] == plain["bits_per_byte"]
    assert out["accuracy"] == plain["accuracy"]
    table = evaluate_readouts(trainer.method, x, y, chains=(1,), seed=3)
    assert out["bits_per_byte"] == min(r[1]["bits_per_byte"] for r in table.values())
    assert set(table) > {"head_2"}  # the paper's kind is among the candidates, but not alone
    for kw in ({"validation": False}, {"deterministic": True}):
        kw = {"deterministic": False, **kw}
        same = fair_local_evaluate(trainer, x, y, seed=3, **kw)
        assert same == Trainer.local_evaluate(trainer, x, y, seed=3, **kw)


def test_text_cli_runs_select_on_the_fair_readout(tmp_path, one_thread):
    """Through ``noprop train``: a DT text run's metrics.jsonl records both numbers and the selected
    epoch is the one with the fewest fair bits; a back-prop text run is unchanged."""
    from .test_language import _cli, _write_corpus

    corpus = _write_corpus(tmp_path / "corpus.txt", 8_000)
    base = ["train", "--dataset", "text", "--data-dir", str(corpus), "--context", "16", "--width",
            "16", "--heads", "2", "--batch-size", "16", "--max-train-samples", "64",
            "--epochs", "3", "--no-progress", "--threads", "1"]  # fmt: skip
    for method in ("dt", "backprop"):
        out = tmp_path / method
        assert _cli(*base, "--method", method, "--T", "2", "--out", str(out)) == 0
        records = RunDir(out).records()
        scores = [r.val_scores for r in records]
        summary = json.loads((out / "summary.json").read_text())
        if method == "backprop":
            assert all("bits_per_byte_paper" not in s for s in scores)
            continue
        assert all(s["bits_per_byte"] <= s["bits_per_byte_paper"] + 1.0 for s in scores)
        best = min(range(3), key=lambda i: scores[i]["bits_per_byte"])
        assert summary["best_epoch"] == best + 1
        assert summary["val_scores"]["bits_per_byte"] == scores[best]["bits_per_byte"]
