"""NoProp-FM's ``--fm-predict``: the network outputs v_θ (the paper) or the clean embedding z̃_1.

Issue 22: with v_θ predicted directly, NoProp-FM on text did not beat the unigram in a 3-minute
``lm compare`` (its 256-d one-hot noise has to pass through a 120-wide network). With
``--fm-predict clean`` the network predicts z̃_1 = softmax(logits)·W_Embed and v_θ = (z̃_1 − z_t)/(1 − t)
(Eq. 12 solved for v_θ), trained on Eq. 11 weighted by (1 − t)². ``auto`` (the default) chooses clean on text and velocity on images; runs
made before the option existed load as velocity.
"""

from __future__ import annotations

import json

import pytest
import torch

from noprop.build import build_method
from noprop.config import RunConfig, make_config
from noprop.errors import ConfigError
from noprop.methods.fm import T_EPS, resolve_predict
from noprop.runs.readouts import chain_readouts
from noprop.tasks import task_for

from .test_language import L, _bytes, _method


def test_auto_is_clean_on_text_and_velocity_on_images():
    assert resolve_predict("auto", "language") == "clean"
    assert resolve_predict("auto", "classification") == "velocity"
    assert resolve_predict("velocity", "language") == "velocity"
    assert _method("fm")[0].prediction == "clean"
    assert _method("fm", fm_predict="velocity")[0].prediction == "velocity"
    cfg = make_config(dataset="digits", method="fm")
    assert build_method(cfg, task_for("digits")).prediction == "velocity"


def test_a_config_without_the_option_loads_as_velocity():
    """Runs from before --fm-predict predicted v_θ: their config.json must rebuild that model."""
    d = make_config(dataset="stdlib", method="fm", context=L).to_dict()
    assert d["method"]["fm_predict"] == "auto"
    del d["method"]["fm_predict"]
    assert RunConfig.from_dict(json.loads(json.dumps(d))).options.fm_predict == "velocity"


def test_bad_value_is_a_config_error():
    with pytest.raises(ConfigError, match="fm_predict|fm-predict"):
        make_config(dataset="stdlib", method="fm", fm_predict="noise")


@pytest.mark.parametrize("t_value", [0.0, 0.3, 0.9, 0.99])
def test_clean_field_is_eq12_solved_for_v(t_value):
    """v_θ = (softmax(logits)·W_Embed − z_t) / max(1 − t, T_EPS), per position."""
    method, _, _ = _method("fm", fm_predict="clean")
    x = _bytes(2, L, seed=1)
    h = method.block.encode_x(x)
    z = torch.randn(2, L, method.embedding.dim)
    t = torch.full((2, L), t_value)
    z1 = method.block.fuse(h, z, t).softmax(-1) @ method.embedding.weight
    want = (z1 - z) / max(1 - t_value, T_EPS)
    torch.testing.assert_close(method.v(h, z, t), want)
    # a scalar t (inference: one grid for every position) gives the same field
    torch.testing.assert_close(method.v(h, z, torch.tensor(t_value)), want)


def test_clean_loss_is_eq11_weighted_by_one_minus_t_squared(monkeypatch):
    """The clean loss is (1 − t)² × Eq. 11 on the derived v_θ, per position; a network that predicts
    u_y exactly (a one-hot softmax) has zero loss."""
    method, _, _ = _method("fm", fm_predict="clean", t_samples=2)
    x, y = _bytes(3, L, seed=2), _bytes(3, L, seed=3).long()
    g = torch.Generator().manual_seed(0)
    t = torch.rand(6, L, generator=g) * 0.9  # below 1 − T_EPS: v_θ's clamp is inactive
    z_0 = torch.randn(6, L, 256, generator=g)
    sample = method.sample_times
    monkeypatch.setattr(method, "sample_times", lambda h, u: (*sample(h, u)[:2], t))
    monkeypatch.setattr(method, "source_z", lambda x, like, deterministic: z_0)
    got = method.loss(x, y, 0)[1]["fm"]
    h = torch.cat([method.block.encode_x(x)] * 2)
    u = method.embedding(torch.cat([y, y]))
    z_t = t.unsqueeze(-1) * u + (1 - t.unsqueeze(-1)) * z_0
    eq11 = (method.v(h, z_t, t) - (u - z_0)).pow(2).sum(-1)
    torch.testing.assert_close(got, ((1 - t) ** 2 * eq11).mean())
    ys = torch.cat([y, y])  # the K = 2 draws share their labels
    monkeypatch.setattr(
        method.block, "fuse", lambda h, z, t: 1e4 * torch.nn.functional.one_hot(ys, 256).float()
    )
    assert method.loss(x, y, 0)[1]["fm"].item() == pytest.approx(0.0, abs=1e-6)


def test_clean_inference_lands_on_the_predicted_distribution(monkeypatch):
    """Euler's last step from t = 1 − 1/N lands exactly on z̃_1 (one-hot: the softmax), and the
    read-out p_k is that softmax."""
    method, _, _ = _method("fm", fm_predict="clean", inference_steps=4, solver="euler")
    x = _bytes(2, L, seed=4)
    p = torch.softmax(torch.randn(256), -1)
    monkeypatch.setattr(method.block, "fuse", lambda h, z, t: p.log().expand(*z.shape))
    reads = dict((name, logits) for name, logits in chain_readouts(method, x))
    torch.testing.assert_close(reads["p_4"].softmax(-1)[0, 0, 0], p)
    # the chain's last state is p itself, so its nearest embedding is argmax p
    assert reads["near_4"].argmax(-1).eq(p.argmax()).all()


def test_velocity_runs_keep_the_papers_field():
    """--fm-predict velocity on text is the paper's v_θ = logits·W_Embed, no division by 1 − t."""
    method, _, _ = _method("fm", fm_predict="velocity")
    x = _bytes(2, L, seed=5)
    h = method.block.encode_x(x)
    z = torch.randn(2, L, 256)
    t = torch.full((2, L), 0.5)
    want = method.block.fuse(h, z, t) @ method.embedding.weight
    torch.testing.assert_close(method.v(h, z, t), want)


def test_the_inference_api_is_not_shadowed():
    """``Method.predict`` stays callable on FM (the option is stored as ``prediction``)."""
    for fm_predict in ("clean", "velocity"):
        method, _, _ = _method("fm", fm_predict=fm_predict, inference_steps=2)
        x = _bytes(2, L, seed=6)
        assert method.predict(x).shape == (2, L, 256)
