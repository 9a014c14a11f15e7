"""Identities that catch a wrong schedule formula (spec §1.2–1.4)."""

import math

import pytest
import torch

from noprop.errors import ConfigError
from noprop.schedules import (
    CosineSchedule,
    DiscreteSchedule,
    cosine_alpha_bar,
    kl_prior,
    posterior_coefficients,
    snr,
)


@pytest.fixture(params=[1, 2, 10, 40, 73, 100, 1000])
def sched(request) -> DiscreteSchedule:
    return DiscreteSchedule.cosine(CosineSchedule(T=request.param))


def _f64(s: DiscreteSchedule):
    ab = cosine_alpha_bar(CosineSchedule(T=s.T))
    a, b, c = posterior_coefficients(ab)
    return ab, a, b, c, snr(ab)


def test_alpha_bar_increasing_and_clipped(sched):
    ab = sched.alpha_bar
    assert (ab[1:] > ab[:-1]).all()
    assert ab[0] == pytest.approx(1e-4) and ab[-1] == pytest.approx(0.999)


def test_all_coefficients_finite(sched):
    for name in ("alpha_bar", "snr", "a", "b", "c", "snr_delta"):
        v = getattr(sched, name)
        v = v if name in ("alpha_bar", "snr") else v[1:]
        assert torch.isfinite(v).all(), name
    assert (sched.c[1:] > 0).all() and (sched.snr_delta[1:] > 0).all()


def test_kl_weight_identity(sched):
    """a_t² / c_t = SNR(t) − SNR(t−1) (Eqs. 51–56)."""
    ab, a, b, c, s = _f64(sched)
    lhs = a[1:] ** 2 / c[1:]
    torch.testing.assert_close(lhs, s[1:] - s[:-1], rtol=1e-9, atol=1e-12)


def test_forward_conditional_reproduces_marginal_closed_form(sched):
    """If z_{t-1} ~ N(√ᾱ_{t-1} u, 1−ᾱ_{t-1}) then a_t u + b_t z_{t-1} + √c_t ε ~ N(√ᾱ_t u, 1−ᾱ_t)."""
    ab, a, b, c, _ = _f64(sched)
    mean = a[1:] + b[1:] * ab[:-1].sqrt()  # coefficient of u
    var = b[1:] ** 2 * (1 - ab[:-1]) + c[1:]
    torch.testing.assert_close(mean, ab[1:].sqrt(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(var, 1 - ab[1:], rtol=1e-9, atol=1e-12)


def test_forward_conditional_reproduces_marginal_monte_carlo():
    s = DiscreteSchedule.cosine(CosineSchedule(T=10))
    torch.manual_seed(0)
    u = torch.randn(1, 4).expand(200_000, 4)
    for t in (1, 5, 10):
        z_prev = s.sample_marginal(u, t - 1)
        z_t = s.a[t] * u + s.b[t] * z_prev + s.c[t].sqrt() * torch.randn_like(u)
        torch.testing.assert_close(z_t.mean(0), s.alpha_bar[t].sqrt() * u[0], atol=0.01, rtol=0)
        torch.testing.assert_close(z_t.var(0), (1 - s.alpha_bar[t]).expand(4), atol=0.01, rtol=0.02)


def test_spec_table_values():
    """The spec's worked example (T=10, ᾱ clipped to [1e-4, 0.9999])."""
    s = DiscreteSchedule.cosine(CosineSchedule(T=10, alpha_bar_max=0.9999))
    assert s.alpha_bar[5].item() == pytest.approx(0.494, abs=1e-3)
    assert s.a[5].item() == pytest.approx(0.330, abs=1e-3)
    assert s.b[2].item() == pytest.approx(0.470, abs=1e-3)
    assert s.c[1].item() == pytest.approx(0.972, abs=1e-3)
    assert s.snr[9].item() == pytest.approx(34.83, rel=1e-3)


def test_kl_prior_matches_torch_distributions():
    u = torch.randn(5, 7, dtype=torch.float64)
    ab0 = 0.3
    q = torch.distributions.Normal(math.sqrt(ab0) * u, math.sqrt(1 - ab0))
    p = torch.distributions.Normal(torch.zeros_like(u), torch.ones_like(u))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(kl_prior(u, ab0), expected)


@pytest.mark.parametrize(
    "kw", [dict(T=0), dict(alpha_bar_min=0.0), dict(alpha_bar_max=1.0), dict(s=-1.0)]
)
def test_bad_schedule_config(kw):
    with pytest.raises(ConfigError):
        CosineSchedule(**kw)


def _plain_clip_alpha_bar(cfg: CosineSchedule) -> torch.Tensor:
    """Verbatim copy of the pre-issue-10 formula (plain clip), which the golden numbers were made with."""
    t = torch.arange(cfg.T + 1, dtype=torch.float64)
    u = (cfg.T - t) / cfg.T
    f = torch.cos((u + cfg.s) / (1 + cfg.s) * math.pi / 2) ** 2
    f0 = math.cos(cfg.s / (1 + cfg.s) * math.pi / 2) ** 2
    return (f / f0).clamp(cfg.alpha_bar_min, cfg.alpha_bar_max)


def _strictly_increasing(x: torch.Tensor) -> bool:
    return bool((x[1:] > x[:-1]).all())


def test_cosine_alpha_bar_bit_identical_to_plain_clip_for_T_up_to_72():
    for T in range(1, 73):
        cfg = CosineSchedule(T=T)
        assert torch.equal(cosine_alpha_bar(cfg), _plain_clip_alpha_bar(cfg)), T


@pytest.mark.parametrize(
    "kw",
    [
        dict(s=0.0),
        dict(s=0.02),
        dict(alpha_bar_min=1e-3, alpha_bar_max=0.99),
        dict(alpha_bar_min=1e-5, alpha_bar_max=0.9999),
        dict(s=0.1, alpha_bar_min=1e-2, alpha_bar_max=0.95),
    ],
)
def test_cosine_alpha_bar_bit_identical_wherever_plain_clip_was_valid(kw):
    kept = 0
    for T in range(1, 301):
        cfg = CosineSchedule(T=T, **kw)
        old = _plain_clip_alpha_bar(cfg)
        if _strictly_increasing(old):
            assert torch.equal(cosine_alpha_bar(cfg), old), T
            kept += 1
    assert kept >= 5  # the comparison really ran


@pytest.mark.parametrize("T", [73, 100, 156, 500, 1000, 5000])
def test_large_T_schedule_is_valid(T):
    cfg = CosineSchedule(T=T)
    assert not _strictly_increasing(_plain_clip_alpha_bar(cfg))  # the case issue 10 is about
    ab = cosine_alpha_bar(cfg)
    assert _strictly_increasing(ab)
    assert ab[0].item() == cfg.alpha_bar_min and ab[-1].item() == cfg.alpha_bar_max
    assert bool((ab >= cfg.alpha_bar_min).all() and (ab <= cfg.alpha_bar_max).all())
    a, b, c = posterior_coefficients(ab)
    mean = a[1:] + b[1:] * ab[:-1].sqrt()
    var = b[1:] ** 2 * (1 - ab[:-1]) + c[1:]
    torch.testing.assert_close(mean, ab[1:].sqrt(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(var, 1 - ab[1:], rtol=1e-9, atol=1e-12)

    s = DiscreteSchedule.cosine(cfg)
    assert _strictly_increasing(s.alpha_bar)
    assert s.snr[T].item() == pytest.approx(999.0, rel=1e-6)
    assert torch.isfinite(s.alpha_bar).all() and torch.isfinite(s.snr).all()
    for name in ("a", "b", "c", "snr_delta"):
        assert torch.isfinite(getattr(s, name)[1:]).all(), name
    assert bool(((s.a[1:] >= 0) & (s.a[1:] <= 1) & (s.b[1:] >= 0) & (s.b[1:] <= 1)).all())
    assert bool((s.c[1:] >= 0).all() and (s.snr_delta[1:] > 0).all())


def test_large_T_keeps_unclipped_cosine_values_and_fills_clipped_runs_in_log_snr():
    cfg = CosineSchedule(T=1000)
    old, ab = _plain_clip_alpha_bar(cfg), cosine_alpha_bar(cfg)
    inside = (old > cfg.alpha_bar_min) & (old < cfg.alpha_bar_max)
    assert torch.equal(ab[inside], old[inside])
    # top run: knots T-k-1 (last unclipped) and T; λ = log SNR is linear in t between them
    k = int((old[1:-1] >= cfg.alpha_bar_max).sum())
    assert k >= 1
    lam = torch.logit(ab[-(k + 2) :])
    torch.testing.assert_close(
        lam, torch.linspace(lam[0].item(), lam[-1].item(), k + 2, dtype=torch.float64)
    )


def test_impossible_schedule_error_names_the_flags():
    cfg = CosineSchedule(T=1000, alpha_bar_min=0.5, alpha_bar_max=0.5 + 1e-14)
    with pytest.raises(ConfigError) as err:
        cosine_alpha_bar(cfg)
    for flag in ("--T", "--alpha-bar-min", "--alpha-bar-max", "--cosine-s"):
        assert flag in str(err.value)


def test_non_increasing_alpha_bar_error_names_the_flags():
    with pytest.raises(ConfigError, match="--alpha-bar-max"):
        DiscreteSchedule(torch.tensor([0.1, 0.1, 0.5], dtype=torch.float64))
