"""Noise schedules of NoProp-DT (spec §1.2–1.4).

Legend (paper symbol -> name here):
    ᾱ_t            alpha_bar[t]          t = 0..T, z_0 = noise end, z_T = label end
    α_{t-1}        alpha_bar[t-1] / alpha_bar[t]
    SNR(t)         snr[t] = ᾱ_t / (1 - ᾱ_t)
    a_t, b_t, c_t  a[t], b[t], c[t]      posterior coefficients of q(z_t | z_{t-1}, y), t = 1..T
    (T/2)(SNR(t) - SNR(t-1))             snr_delta[t], the per-block weight of Eq. 8 (before η)

NoProp's index convention is the reverse of DDPM: ᾱ_t = ∏_{s=t}^{T} α_s, so ᾱ *increases* with t and
z_0 ~ N(0, I) is pure noise while z_T sits next to the label embedding.

Choices the paper leaves open ([I] in the spec), all configurable through :class:`CosineSchedule`:

* The "fixed cosine schedule" is Nichol & Dhariwal's, index-reversed: ᾱ_t = g(T - t) with
  g(u) = cos²(((u/T) + s)/(1 + s)·π/2) / cos²(s/(1 + s)·π/2), offset ``s = 0.008``.
* g gives ᾱ_T = 1 (SNR(T) = ∞, c_T = 0) and ᾱ_0 = 0, so ᾱ is clipped to
  ``[alpha_bar_min, alpha_bar_max] = [1e-4, 0.999]``. The upper clip sets SNR(T) = 999 and therefore the
  last block's loss weight (T/2)·η·(SNR(T) - SNR(T-1)) = 5·0.1·964 ≈ 482 at T = 10 (vs ≈ 4982 with a
  0.9999 clip). With one optimiser state per block this weight does not change θ_T's own Adam step; it sets
  how strongly the last block's L2 term pulls on the *shared* learned W_Embed relative to the
  cross-entropy term that keeps the embeddings apart. 0.999 keeps that ratio ~10x smaller than 0.9999
  while still leaving z_T with noise std 0.03 around the label.
* Large T. The clip alone breaks for T >= 73 (defaults): g(1) >= 0.999, so ᾱ_{T-1} = ᾱ_T = 0.999, and for
  T >= 156 also g(T - 1) <= 1e-4, so ᾱ_0 = ᾱ_1 = 1e-4; a discrete schedule needs ᾱ strictly increasing (α_{t-1} < 1).
  Rule: t = 0, t = T and every t whose g(T - t) lies strictly inside the clip range keep the plain-clip value;
  the remaining *clipped* steps (the runs next to either end) are filled by linear interpolation in log-SNR
  λ_t = log SNR(t) between the neighbouring kept values. That is strictly monotone, stays inside the
  clip range and keeps ᾱ_0 = alpha_bar_min, ᾱ_T = alpha_bar_max (SNR(T) = 999) exactly. Whenever the
  plain clip was already strictly increasing (every T <= 72 with the defaults) no step is clipped except
  the ends, so ᾱ is bit-identical to the plain clip and all pinned results stay valid. The filled steps
  are small (T = 1000: SNR(T) - SNR(T-1) ≈ 1.4), and the float32 ``alpha_bar`` buffer stays strictly
  increasing up to T ≈ 10^4 (the float64 coefficients further).

Coefficients are computed once in float64 and stored as float32 buffers; methods never recompute them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class CosineSchedule:
    """Constants of the fixed cosine schedule (see module docstring)."""

    T: int = 10
    s: float = 0.008
    alpha_bar_min: float = 1e-4
    alpha_bar_max: float = 0.999

    def __post_init__(self) -> None:
        if self.T < 1:
            raise ConfigError(f"T must be >= 1 (got {self.T}); set --T")
        if not 0.0 < self.alpha_bar_min < self.alpha_bar_max < 1.0:
            raise ConfigError(
                "need 0 < alpha_bar_min < alpha_bar_max < 1 "
                f"(got {self.alpha_bar_min}, {self.alpha_bar_max}); set --alpha-bar-min/--alpha-bar-max"
            )
        if self.s < 0:
            raise ConfigError(f"cosine offset s must be >= 0 (got {self.s}); set --cosine-s")


def cosine_alpha_bar(cfg: CosineSchedule) -> Tensor:
    """ᾱ_t for t = 0..T in NoProp's convention (spec §1.3), float64, shape (T+1,), strictly increasing.

    ᾱ_t = clip(g(T - t), alpha_bar_min, alpha_bar_max) with g the cosine of spec §1.3 (module docstring),
    except that steps 0 < t < T whose g value is clipped (only for large T, e.g. T >= 73 with the defaults)
    are replaced by linear interpolation of λ_t = log SNR(t) between the nearest unclipped neighbours
    (the ends t = 0, T count as unclipped). Below that T the result is the plain clip, bit for bit.

    Raises:
        ConfigError: if no strictly increasing ᾱ fits (clip range too narrow for T+1 float64 values).
    """
    t = torch.arange(cfg.T + 1, dtype=torch.float64)
    u = (cfg.T - t) / cfg.T  # reversed index: t = T is the clean end
    f = torch.cos((u + cfg.s) / (1 + cfg.s) * math.pi / 2) ** 2
    f0 = math.cos(cfg.s / (1 + cfg.s) * math.pi / 2) ** 2
    g = f / f0
    alpha_bar = g.clamp(cfg.alpha_bar_min, cfg.alpha_bar_max)
    # Knots keep their value. A clipped step 0 < t < T always ties with an end (ᾱ_0 or ᾱ_T), so whenever
    # the plain clip is strictly increasing every step is a knot and we return it untouched (golden numbers).
    knot = (g > cfg.alpha_bar_min) & (g < cfg.alpha_bar_max)
    knot[0] = knot[-1] = True
    if not bool(knot.all()):
        knots = knot.nonzero().squeeze(1)
        gaps = (~knot).nonzero().squeeze(1)
        pos = torch.searchsorted(
            knots, gaps
        )  # knots[pos - 1] < gap < knots[pos]; knot 0 exists, so pos >= 1
        left, right = knots[pos - 1], knots[pos]
        lam = torch.logit(
            alpha_bar
        )  # λ_t = log SNR(t): strictly increasing in ᾱ, unbounded both ways
        w = (t[gaps] - t[left]) / (t[right] - t[left])
        lam_gap = lam[left] + w * (lam[right] - lam[left])
        alpha_bar = alpha_bar.clone()
        # the clamp only absorbs sigmoid(logit(x)) != x rounding; a tie it creates is caught below
        alpha_bar[gaps] = torch.sigmoid(lam_gap).clamp(cfg.alpha_bar_min, cfg.alpha_bar_max)
    if not bool((alpha_bar[1:] > alpha_bar[:-1]).all()):
        raise ConfigError(
            f"the cosine schedule with T={cfg.T}, s={cfg.s} has no strictly increasing ᾱ inside "
            f"[{cfg.alpha_bar_min}, {cfg.alpha_bar_max}]; lower --T or widen --alpha-bar-min/--alpha-bar-max "
            "(or change --cosine-s)"
        )
    return alpha_bar


def posterior_coefficients(alpha_bar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """a_t, b_t, c_t of q(z_t | z_{t-1}, y) = N(a_t u_y + b_t z_{t-1}, c_t I) (Eq. 6, App. A.3).

    Args:
        alpha_bar: ᾱ_0..ᾱ_T, shape (T+1,).

    Returns:
        (a, b, c), each shape (T+1,); entry 0 is unused and set to NaN so that an off-by-one reads loudly.
    """
    ab_prev, ab = alpha_bar[:-1], alpha_bar[1:]
    alpha_prev = ab_prev / ab  # α_{t-1} = ᾱ_{t-1} / ᾱ_t
    a = ab.sqrt() * (1 - alpha_prev) / (1 - ab_prev)
    b = alpha_prev.sqrt() * (1 - ab) / (1 - ab_prev)
    c = (1 - ab) * (1 - alpha_prev) / (1 - ab_prev)
    nan = torch.full((1,), float("nan"), dtype=alpha_bar.dtype)
    return torch.cat([nan, a]), torch.cat([nan, b]), torch.cat([nan, c])


def snr(alpha_bar: Tensor) -> Tensor:
    """SNR(t) = ᾱ_t / (1 - ᾱ_t) (Eq. 56)."""
    return alpha_bar / (1 - alpha_bar)


def kl_prior(u_y: Tensor, alpha_bar_0: Tensor | float) -> Tensor:
    """KL(q(z_0 | y) ‖ N(0, I)) = ½[ᾱ_0 ‖u_y‖² − d ᾱ_0 − d log(1 − ᾱ_0)] per example (spec §1.4).

    Args:
        u_y: class embeddings of the batch, shape (B, d).
        alpha_bar_0: ᾱ_0 of the schedule (scalar or 0-dim tensor).

    Returns:
        Shape (B,).
    """
    d = u_y.shape[-1]
    ab0 = torch.as_tensor(alpha_bar_0, dtype=u_y.dtype, device=u_y.device)
    return 0.5 * (ab0 * u_y.pow(2).sum(-1) - d * ab0 - d * torch.log1p(-ab0))


class DiscreteSchedule(nn.Module):
    """All per-step coefficients of a discrete schedule, as float32 buffers indexed by t = 0..T.

    Buffers: ``alpha_bar``, ``snr``, ``a``, ``b``, ``c`` and ``snr_delta`` = SNR(t) − SNR(t−1)
    (the Eq. 8 weight before the factor (T/2)·η; entry 0 is NaN).
    """

    def __init__(self, alpha_bar: Tensor) -> None:
        super().__init__()
        alpha_bar = alpha_bar.to(torch.float64)
        if alpha_bar.ndim != 1 or alpha_bar.numel() < 2:
            raise ConfigError("a schedule needs ᾱ_0..ᾱ_T with T >= 1")
        if not bool((alpha_bar[1:] > alpha_bar[:-1]).all()):
            raise ConfigError(
                "ᾱ_t must be strictly increasing in t (NoProp's convention); for the cosine schedule "
                "change --T, --alpha-bar-min, --alpha-bar-max or --cosine-s"
            )
        a, b, c = posterior_coefficients(alpha_bar)
        s = snr(alpha_bar)
        delta = torch.cat([torch.full((1,), float("nan"), dtype=s.dtype), s[1:] - s[:-1]])
        for name, value in dict(alpha_bar=alpha_bar, snr=s, a=a, b=b, c=c, snr_delta=delta).items():
            self.register_buffer(name, value.to(torch.float32), persistent=False)

    @classmethod
    def cosine(cls, cfg: CosineSchedule) -> DiscreteSchedule:
        return cls(cosine_alpha_bar(cfg))

    @property
    def T(self) -> int:
        return self.alpha_bar.numel() - 1

    def sample_marginal(
        self, u_y: Tensor, t: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """z_t ~ q(z_t | y) = N(sqrt(ᾱ_t) u_y, (1 − ᾱ_t) I) (Eq. 6). ``u_y``: (B, d) -> (B, d)."""
        eps = torch.randn(u_y.shape, generator=generator, device=u_y.device, dtype=u_y.dtype)
        ab = self.alpha_bar[t]
        return ab.sqrt() * u_y + (1 - ab).sqrt() * eps
