"""End to end through the CLI on the bundled digits: training, summary, eval, resume."""

import json

import pytest

from noprop.cli import main


def _train(tmp_path, *args):
    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--no-progress", *args])
    assert rc == 0
    return out, json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("method,epochs", [("dt", 10), ("backprop", 4)])
def test_digits_reaches_090(tmp_path, method, epochs):
    out, summary = _train(tmp_path, "--method", method, "--epochs", str(epochs))
    assert summary["test_accuracy"] >= 0.90, summary
    assert summary["epochs"] == epochs and summary["data_passes"] == epochs * (
        10 if method == "dt" else 1
    )
    for key in (
        "val_accuracy",
        "test_accuracy",
        "train_seconds",
        "params_per_block",
        "device",
        "torch_version",
    ):
        assert key in summary
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1))
    assert len(metrics[0]["block_loss"]) == (10 if method == "dt" else 1)
    assert json.loads((out / "config.json").read_text())["method"]["method"] == method


def test_eval_prints_accuracy_and_per_step(tmp_path, capsys):
    out, _ = _train(tmp_path, "--epochs", "2", "--T", "3", "--max-train-samples", "300")
    capsys.readouterr()
    assert main(["eval", str(out), "--runs", "3"]) == 0
    text = capsys.readouterr().out
    assert "± " in text and "t=3" in text
    result = json.loads(text.strip().splitlines()[-1])
    assert result["runs"] == 3 and 0 <= result["test_accuracy"] <= 1
    assert main(["eval", str(out), "--deterministic", "--runs", "2"]) == 0
    det = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert det["test_accuracy_stderr"] == 0.0  # deterministic inference is repeatable


def test_resume_continues_from_last_epoch(tmp_path):
    args = ["--T", "2", "--max-train-samples", "300", "--seed", "3"]
    full, s_full = _train(tmp_path / "a", *args, "--epochs", "3")
    part, _ = _train(tmp_path / "b", *args, "--epochs", "2")
    assert main(["train", "--resume", str(part), "--epochs", "3", "--no-progress"]) == 0
    m_part = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    m_full = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in m_part] == [1, 2, 3]
    # the same seed on CPU gives the same trajectory whether or not the run was interrupted
    flat = [v for m in m_part for v in m["block_loss"]]
    assert flat == pytest.approx([v for m in m_full for v in m["block_loss"]], rel=1e-4)
    s_part = json.loads((part / "summary.json").read_text())
    assert s_part["epochs"] == 3 and s_part["val_accuracy"] == pytest.approx(s_full["val_accuracy"])
