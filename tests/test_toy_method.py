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
