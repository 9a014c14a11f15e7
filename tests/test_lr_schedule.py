"""``--lr-schedule cosine``: per-unit cosine decay to 0.1·lr, resumable; constant changes nothing."""

from __future__ import annotations

import pytest
import torch

from noprop import Trainer, build_method, make_config
from noprop.errors import ConfigError
from noprop.training.steps import FINAL_LR_FRACTION, cosine_factor


def test_cosine_factor_runs_from_one_to_the_final_fraction():
    assert cosine_factor(0, 100) == 1.0
    assert cosine_factor(50, 100) == pytest.approx((1 + FINAL_LR_FRACTION) / 2)
    assert cosine_factor(100, 100) == pytest.approx(FINAL_LR_FRACTION)
    assert cosine_factor(500, 100) == pytest.approx(FINAL_LR_FRACTION)  # clamped past the end
    assert cosine_factor(7, None) == 1.0


def _fit(schedule: str, epochs: int = 2, T: int = 2):
    cfg = make_config(method="dt", T=T, epochs=epochs, batch_size=16, lr=2e-3, lr_schedule=schedule)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 12, generator=g), torch.arange(64) % 3
    tr = Trainer(build_method(cfg, (12,), 3), cfg, torch.device("cpu"), progress=False)
    tr.fit((x, y), (x[:16], y[:16]))
    return tr, cfg


def test_every_unit_decays_over_its_own_steps(one_thread):
    tr, cfg = _fit("cosine")
    horizon = cfg.train.epochs * 4  # 64 examples / batch 16, every epoch
    assert tr.opt.unit_steps == [horizon, horizon]
    for opt in tr.opt.units:  # the last step ran at the last step's factor
        assert opt.param_groups[0]["lr"] == pytest.approx(
            2e-3 * cosine_factor(horizon - 1, horizon)
        )
    assert tr.opt.shared_steps == 2 * horizon
    assert tr.opt.shared.param_groups[0]["lr"] == pytest.approx(
        2e-3 * cosine_factor(2 * horizon - 1, 2 * horizon)
    )


def test_the_schedule_is_saved_and_resumed(one_thread):
    tr, cfg = _fit("cosine", epochs=1)
    sd = tr.state_dict()
    assert sd["schedule_steps"] == {"units": [4, 4], "shared": 8}
    fresh = Trainer(build_method(cfg, (12,), 3), cfg, torch.device("cpu"), progress=False)
    fresh.load_state_dict(sd)
    assert fresh.opt.unit_steps == [4, 4] and fresh.opt.shared_steps == 8


def test_constant_leaves_the_learning_rate_and_the_checkpoint_layout_alone(one_thread):
    tr, _ = _fit("constant")
    assert all(o.param_groups[0]["lr"] == 2e-3 for o in tr.opt.units)
    assert "schedule_steps" not in tr.state_dict()


def test_fused_refuses_a_schedule():
    with pytest.raises(ConfigError, match="--lr-schedule constant"):
        make_config(method="dt", parallel="fused", order="interleaved", lr_schedule="cosine")
