"""Adding a method is one file (tests/toy_method.py) and one registry line; the conformance suite
runs over it unchanged, and the CLI, config and trainer pick it up."""

from __future__ import annotations

import json

import pytest

from noprop.methods import METHODS

from .test_conformance import Conformance
from .toy_method import ToyChain


@pytest.fixture(autouse=True)
def toy_registered(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", ToyChain)  # the one registry line


class TestToyConformance(Conformance):
    method_names = ["toy"]


def test_toy_trains_end_to_end_from_the_config(tmp_path):
    from noprop import make_config, train

    cfg = make_config(method="toy", T=2, noise=0.3, epochs=2, max_train_samples=200)
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["method"] == "toy" and summary["test_accuracy"] > 0.3
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["method"] == {"method": "toy", "T": 2, "noise": 0.3}


def test_toy_options_are_validated_and_scoped():
    from noprop import make_config
    from noprop.errors import ConfigError

    with pytest.raises(ConfigError, match="--noise must be a finite number > 0"):
        make_config(method="toy", noise=0.0)
    with pytest.raises(ConfigError, match="--method dt has no option --noise"):
        make_config(method="dt", noise=0.5)


def test_toy_from_the_command_line(tmp_path, capsys):
    from noprop.cli import main

    out = tmp_path / "run"
    args = ["train", "--method", "toy", "--noise", "0.3", "--T", "2", "--epochs", "1"]
    assert main([*args, "--max-train-samples", "100", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["method"]["noise"] == 0.3
    assert main(["eval", str(out), "--deterministic"]) == 0
    assert "test accuracy (deterministic" in capsys.readouterr().out


def test_toy_runs_through_every_inference_command(tmp_path, capsys):
    """One file and one registry line: eval --chains, eval --steps (its own Euler steps), predict
    and export consume the toy's ``chain`` with no other file changed."""
    import numpy as np

    from noprop.cli import main
    from noprop.data import load_dataset

    out = tmp_path / "run"
    assert main(["train", "--method", "toy", "--T", "2", "--epochs", "1", "--max-train-samples",
                 "200", "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    assert main(["eval", str(out), "--chains", "1,3"]) == 0
    rows = json.loads((out / "eval_chains.json").read_text())["rows"]
    assert [r["chains"] for r in rows] == [0, 1, 3]
    assert main(["eval", str(out), "--steps", "1,4", "--solver", "euler"]) == 0
    steps = json.loads((out / "eval_steps.json").read_text())["rows"]
    assert [(r["solver"], r["steps"]) for r in steps] == [("euler", 1), ("euler", 4)]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in steps)
    x = load_dataset("digits").test[0][:7].numpy()
    np.save(tmp_path / "x.npy", x)
    capsys.readouterr()
    assert main(["predict", str(out), str(tmp_path / "x.npy"), "--chains", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) >= 7
    assert main(["export", str(out), "--out", str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "model.safetensors").is_file()


def test_toy_chain_draws_what_repeated_inputs_draw():
    """C chains on x = one chain on x repeated C times (the protocol's contract), and
    predict_steps is the chain's head read-outs."""
    import torch

    from noprop.methods.base import repeat_rows

    from .problems import tiny_method

    m, _, (x, _) = tiny_method("toy")
    m.eval()
    torch.manual_seed(3)
    three = [r.logits for r in m.chain(x, chains=3)]
    torch.manual_seed(3)
    one = m.predict_steps(repeat_rows(x, 3))
    torch.testing.assert_close(torch.stack(three).flatten(1, 2), one)


def test_toy_on_text_through_the_lm_comparisons_read_outs(tmp_path):
    """The toy trained on text is read by the LM comparison's evaluation (lm compare's one
    adapter): temperatures, test scores, the fair read-out chosen on validation, the trajectory."""
    import torch

    from noprop.cli import main
    from noprop.runs import load_run_with_task
    from noprop_lab.bench.lm.readout import evaluate

    from .test_language import _write_corpus

    corpus = _write_corpus(tmp_path / "corpus.txt", 8_000)
    out = tmp_path / "text-run"
    assert main(["train", "--method", "toy", "--T", "2", "--dataset", "text", "--data-dir",
                 str(corpus), "--context", "16", "--width", "32", "--heads", "2", "--batch-size",
                 "8", "--max-train-samples", "32", "--epochs", "1", "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    method, _, _, data, _ = load_run_with_task(out, "cpu")
    val, test = [(x[:6], y[:6]) for x, y in (data.val, data.test)]
    scores, trajectory = evaluate(method, "toy", val, test, chains=2, seed=0,
                                  progress=False, precision="32", device=torch.device("cpu"))  # fmt: skip
    fair = scores["fair"]
    assert fair["readout"] in method.readout_names() and fair["bits_per_byte"] > 0
    assert fair["paper_readout"] == "head_2"
    assert {"deterministic", "one_chain"} <= set(scores) and len(trajectory) == 3
