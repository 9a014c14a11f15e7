"""The tuned lens of the back-prop transformer (issue 22, runs/tuned_lens.py; acceptance point 4).

At the last layer the tuned lens is the model's output; at initialisation it is the logit lens;
fitting reads the training windows only (no labels, no other split) and leaves the model unchanged;
and it lowers the training KL to the final distribution at every earlier layer.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from noprop.build import build_method
from noprop.config import make_config
from noprop.errors import ConfigError
from noprop.tasks import LanguageTask
from noprop_lab.bench.lm.language import TunedLens, fit_tuned_lens, lens_kl, lens_scores
from noprop_lab.bench.lm.tuned_lens import decode

L = 16


def _windows(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of a skewed bigram source over 6 byte values (something for the model to learn)."""
    g = torch.Generator().manual_seed(seed)
    P = torch.rand(6, 6, generator=torch.Generator().manual_seed(0)) ** 4
    P = P / P.sum(-1, keepdim=True)
    s = [0]
    for _ in range(n * L):
        s.append(int(torch.multinomial(P[s[-1]], 1, generator=g)))
    seq = torch.tensor(s) + 97
    return seq[:-1].view(n, L).to(torch.uint8), seq[1:].view(n, L)


@pytest.fixture(scope="module")
def trained():
    """A 3-layer back-prop transformer trained for 80 steps on the bigram source."""
    torch.manual_seed(0)
    cfg = make_config(dataset="stdlib", method="backprop", T=3, width=32, heads=2, context=L)
    m = build_method(cfg, LanguageTask("stdlib", L))
    x, y = _windows(64, 1)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for i in range(80):
        idx = slice(8 * (i % 8), 8 * (i % 8) + 8)
        loss, _ = m.loss(x[idx], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.zero_grad(set_to_none=True)
    return m.eval(), (x, y)


def test_identity_translators_are_the_logit_lens_and_the_last_layer_is_the_output(trained):
    m, (x, _) = trained
    lm = m.lm
    states = lm.residual_stream(x[:4])
    fresh = TunedLens(lm.unembedding.shape[1], len(states))
    for got, h in zip(fresh.logits(lm, states), states, strict=True):
        torch.testing.assert_close(got, lm.lens(h))
    lens = fit_tuned_lens(m, x, steps=20)
    with torch.no_grad():
        last = lens.logits(lm, lm.residual_stream(x[:4]))[-1]
        assert torch.equal(last, decode(lm, states[-1].detach()))
        torch.testing.assert_close(last, lm(x[:4]), rtol=0, atol=1e-6)
    assert lens.states == len(states) == len(lens.translators) + 1  # h_L has no translator


def test_fitting_lowers_the_training_kl_at_every_earlier_layer(trained, one_thread):
    m, (x, _) = trained
    lens = fit_tuned_lens(m, x)  # the defaults: 300 Adam steps of 8 windows
    kl = lens_kl(m, lens, x)
    for layer in range(lens.states - 1):
        assert kl["tuned"][layer] < 0.8 * kl["logit"][layer], layer
    assert kl["tuned"][-1] == kl["logit"][-1] == pytest.approx(0.0, abs=1e-6)


def test_fitting_reads_the_training_windows_only_and_leaves_the_model_alone(trained):
    """The fit takes the training windows and nothing else (no labels, no other split): the same
    train windows give the same lens bit for bit, whatever the other splits hold; other training
    windows give another lens (the check can fail). The model's weights and gradients are untouched."""
    m, (x, _) = trained
    assert [p for p in inspect.signature(fit_tuned_lens).parameters if p != "method"][
        0
    ] == "train_x"
    assert not {"x", "y", "test_x", "val_x", "train_y"} & set(
        inspect.signature(fit_tuned_lens).parameters
    )
    weights = {k: v.clone() for k, v in m.state_dict().items()}
    test_x, test_y = _windows(8, 2)
    a = fit_tuned_lens(m, x, steps=15, seed=3)
    test_x.fill_(0), test_y.fill_(0)  # another split changes: nothing the fit reads
    b = fit_tuned_lens(m, x, steps=15, seed=3)
    other = fit_tuned_lens(m, _windows(64, 5)[0], steps=15, seed=3)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not all(
        torch.equal(p, r) for p, r in zip(a.parameters(), other.parameters(), strict=True)
    )
    assert all(torch.equal(v, weights[k]) for k, v in m.state_dict().items())
    assert all(p.grad is None for p in m.parameters())


def test_lens_scores_per_layer_on_test(trained):
    m, (x, _) = trained
    lens = fit_tuned_lens(m, x, steps=50)
    test_x, test_y = _windows(8, 2)
    rows = lens_scores(m, lens, test_x, test_y, batch=3)
    assert [r["depth"] for r in rows] == list(range(lens.states))
    last = rows[-1]
    assert last["tuned_lens_bits_per_byte"] == pytest.approx(last["logit_lens_bits_per_byte"])
    assert last["tuned_lens_accuracy"] == last["logit_lens_accuracy"]
    out = torch.log_softmax(m.lm(test_x).detach(), -1).gather(-1, test_y.unsqueeze(-1))
    assert last["logit_lens_bits_per_byte"] == pytest.approx(
        float(-out.mean() / 0.6931471805599453)
    )
    assert all(0 <= r["tuned_lens_accuracy"] <= 1 for r in rows)


def test_the_tuned_lens_reads_the_back_prop_transformer_only():
    cfg = make_config(dataset="stdlib", method="dt", T=2, width=16, heads=2, context=L)
    m = build_method(cfg, LanguageTask("stdlib", L))
    with pytest.raises(ConfigError, match="back-prop"):
        fit_tuned_lens(m, _windows(2, 0)[0], steps=1)
