"""The learned noise schedule of NoProp-CT (spec §1.3 "CT", App. B Eqs. 65–67).

Legend (paper symbol -> name here); t ∈ [0, 1], t = 0 is the noise end, t = 1 the label end:
    γ̃(t)           gamma_tilde(t)      monotone two-layer network with positive weights
    γ̄(t)           gamma_bar(t)        (γ̃(t) − γ̃(0)) / (γ̃(1) − γ̃(0)) ∈ [0, 1]           (Eq. 66)
    γ(t)           gamma(t)            γ0 + (γ1 − γ0)(1 − γ̄(t)), decreasing               (Eq. 67)
    γ0 = γ(1)      gamma_min           label end: ᾱ_1 = σ(−γ0) close to 1
    γ1 = γ(0)      gamma_max           noise end: ᾱ_0 = σ(−γ1) close to 0
    ᾱ_t            alpha_bar(t)        σ(−γ(t))
    SNR(t)         snr(t)              exp(−γ(t)) = ᾱ_t / (1 − ᾱ_t)                          (Eq. 65)
    SNR′(t)        snr_prime(t)        −γ′(t) exp(−γ(t)) > 0, closed form (no finite differences)
    ψ              the module's parameters (trained jointly with θ, θ_out and W_Embed, Algorithm 2)

Choices the paper leaves open ([I]):

* γ̃(t) = softplus(w_0)·t + Σ_j softplus(v_j)·sigmoid(softplus(w_j)·t + b_j), j = 1..``width`` (64):
  a linear layer 1→64 with sigmoid activation, then a linear layer 64→1, plus a positive linear skip
  (VDM's monotone network has the same skip). Positivity is enforced by a softplus reparameterisation of
  every weight (biases are free), so γ̃ is increasing for *any* parameter values, and the skip makes it
  *strictly* increasing, so γ̄ is well defined and the probability-flow ODE's time change is invertible.
* Initialisation: skip weight 1 and hidden-to-output weights 0.01, so γ̄(t) = t ± 0.015 and the
  schedule starts as VDM's linear γ(t) = γ1 − (γ1 − γ0)t up to 1.5% of the range; the hidden
  sigmoids' slopes (2..20) and centres (0..1) are drawn at random so they can reshape γ in training.
* Endpoints: γ0 = ``gamma_min`` is a free parameter and γ1 = γ0 + softplus(gap), so γ1 > γ0 holds
  throughout training (a decreasing γ is what makes SNR′ > 0 and the loss weight positive).
* Initial endpoints (``--gamma-min``/``--gamma-max``): −3 and 3, i.e. ᾱ_1 = 0.953 (z_1 keeps noise of
  std 0.22) and ᾱ_0 = 0.047. Why not VDM's −13.3/5 or ±7: the denoising term of Eq. 9 is
  ½η∫SNR′(t)‖û − u_y‖² dt = ½η∫‖û − u_y‖² dSNR, so noise levels are weighted by dSNR and the low-SNR
  region, where û must be read from x because z_t is mostly noise, receives a share of about
  1/SNR(1) of the weight. A smaller SNR(1) trains that region faster: on digits (100 epochs, batch 32,
  seed 0) ±5 reached 0.942 test accuracy and ±7 0.933, and the endpoints still move in training.
  On full MNIST (2 epochs, seed 0, Euler ODE sampler) the *validation* accuracy was 0.784 with ±5,
  0.893 with ±3 and 0.882 with [−3, 8], so ±3 is the default (selected on validation, not test).
  Rechecked with the ancestral sampler in experiments/ct_validation_study.py (BENCHMARKS.md):
  [−2, 3], [−2.5, 3], [−4, 3], [−5, 3] and [−4, 4] were all below ±3 on validation (default sampler).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class LearnedSchedule(nn.Module):
    """Monotone learned γ(t) of App. B and everything derived from it.

    Every function accepts t of any shape and dtype (float64 for inference coefficients); parameters
    are cast to t's dtype, so float64 evaluation is exact to float64 precision.
    """

    def __init__(self, *, gamma_min: float = -3.0, gamma_max: float = 3.0, width: int = 64) -> None:
        super().__init__()
        if not gamma_min < gamma_max:
            raise ConfigError(
                f"need --gamma-min < --gamma-max (got {gamma_min}, {gamma_max}): "
                "γ must decrease from the noise end to the label end"
            )
        if width < 1:
            raise ConfigError(f"--gamma-width must be >= 1 (got {width})")
        self.gamma_min = nn.Parameter(torch.tensor(float(gamma_min)))  # γ0 = γ(1)
        self.gap = nn.Parameter(torch.tensor(_inv_softplus(gamma_max - gamma_min)))  # γ1 − γ0
        self.w_skip = nn.Parameter(torch.tensor(_inv_softplus(1.0)))
        centres = torch.rand(width)  # sigmoid centres in [0, 1]
        slopes = 2.0 + 18.0 * torch.rand(width)  # sigmoid slopes in [2, 20]
        self.w_in = nn.Parameter(torch.log(torch.expm1(slopes)))  # softplus⁻¹(slope)
        self.b_in = nn.Parameter(-slopes * centres)
        self.w_out = nn.Parameter(torch.full((width,), _inv_softplus(0.01)))

    # ---------------------------------------------------------------- γ̃, γ̄, γ
    def _weights(self, dtype: torch.dtype) -> tuple[Tensor, ...]:
        w_in, w_out, w_skip = (
            F.softplus(p.to(dtype)) for p in (self.w_in, self.w_out, self.w_skip)
        )
        return w_in, self.b_in.to(dtype), w_out, w_skip

    def gamma_tilde_and_grad(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """γ̃(t) and dγ̃/dt (closed form), both shaped like t."""
        w_in, b_in, w_out, w_skip = self._weights(t.dtype)
        h = torch.sigmoid(t.unsqueeze(-1) * w_in + b_in)  # (..., width)
        g = (h * w_out).sum(-1) + w_skip * t
        dg = (h * (1 - h) * w_in * w_out).sum(-1) + w_skip
        return g, dg

    def gamma_endpoints(self, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """(γ0, γ1) = (γ(1), γ(0)), with γ1 − γ0 = softplus(gap) > 0."""
        g0 = self.gamma_min.to(dtype)
        return g0, g0 + F.softplus(self.gap.to(dtype))

    def gamma_and_grad(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """γ(t) (Eq. 67) and γ′(t) = −(γ1 − γ0) γ̃′(t) / (γ̃(1) − γ̃(0)), shaped like t."""
        g_t, dg_t = self.gamma_tilde_and_grad(t)
        ends, _ = self.gamma_tilde_and_grad(
            torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device)
        )
        span = ends[1] - ends[0]  # > 0: γ̃ is strictly increasing
        gamma_bar = (g_t - ends[0]) / span  # Eq. 66
        g0, g1 = self.gamma_endpoints(t.dtype)
        gamma = g0 + (g1 - g0) * (1 - gamma_bar)  # Eq. 67
        return gamma, -(g1 - g0) * dg_t / span

    def gamma(self, t: Tensor) -> Tensor:
        return self.gamma_and_grad(t)[0]

    # ------------------------------------------------------------ ᾱ and SNR
    def alpha_bar(self, t: Tensor) -> Tensor:
        """ᾱ_t = σ(−γ(t)) (App. B)."""
        return torch.sigmoid(-self.gamma(t))

    def snr(self, t: Tensor) -> Tensor:
        """SNR(t) = exp(−γ(t)) (Eq. 65)."""
        return torch.exp(-self.gamma(t))

    def snr_prime(self, t: Tensor) -> Tensor:
        """SNR′(t) = −γ′(t) exp(−γ(t)), the Eq. 9 weight before ½η; positive for every ψ."""
        gamma, dgamma = self.gamma_and_grad(t)
        return -dgamma * torch.exp(-gamma)

    def sample_marginal(self, u_y: Tensor, t: Tensor) -> Tensor:
        """z_t ~ q(z_t | y) = N(sqrt(ᾱ_t) u_y, (1 − ᾱ_t) I) per example (Eq. 6, Algorithm 2).

        Args:
            u_y: (B, d), or (B, L, d) with a label per position.
            t: u_y's shape without its last dimension, or a scalar.

        Returns:
            u_y's shape, differentiable w.r.t. ψ (reparameterised).
        """
        gamma = self.gamma(t).unsqueeze(-1)
        eps = torch.randn_like(u_y)
        return torch.sigmoid(-gamma).sqrt() * u_y + torch.sigmoid(gamma).sqrt() * eps
