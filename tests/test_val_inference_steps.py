"""``--val-inference-steps``: CT/FM/adjoint validate with fewer steps; the test keeps its own."""

from __future__ import annotations

import pytest
import torch

import noprop.training.trainer as trainer_mod
from noprop import Trainer, build_method, make_config
from noprop.errors import ConfigError


@pytest.mark.parametrize("method", ["ct", "fm", "adjoint"])
def test_validation_uses_val_inference_steps_and_restores_the_test_steps(method, monkeypatch):
    cfg = make_config(method=method, inference_steps=50, val_inference_steps=3)
    m = build_method(cfg, (12,), 3)
    seen: list[int] = []

    def spy(method_, *args, **kwargs):
        seen.append(method_.inference_steps)
        return {"accuracy": 0.0, "accuracy_per_step": [0.0]}

    monkeypatch.setattr(trainer_mod, "evaluate", spy)
    tr = Trainer(m, cfg, torch.device("cpu"), progress=False)
    tr.evaluate(torch.randn(4, 12), torch.zeros(4, dtype=torch.long))
    assert seen == [3]
    assert m.inference_steps == 50  # the final test (runs/train.py) reads this


def test_without_the_flag_validation_uses_the_test_steps(monkeypatch):
    cfg = make_config(method="ct", inference_steps=7)
    m = build_method(cfg, (12,), 3)
    seen: list[int] = []
    monkeypatch.setattr(
        trainer_mod, "evaluate",
        lambda method_, *a, **k: seen.append(method_.inference_steps)
        or {"accuracy": 0.0, "accuracy_per_step": [0.0]},
    )  # fmt: skip
    Trainer(m, cfg, torch.device("cpu"), progress=False).evaluate(
        torch.randn(4, 12), torch.zeros(4, dtype=torch.long)
    )
    assert seen == [7]


def test_the_flag_is_checked_and_only_for_continuous_time_methods():
    with pytest.raises(ConfigError, match="--val-inference-steps must be >= 1"):
        make_config(method="ct", val_inference_steps=0)
    with pytest.raises(ConfigError, match="--method dt has no option --val-inference-steps"):
        make_config(method="dt", val_inference_steps=5)
