"""NoProp-CT (spec §1.6, Algorithm 2, §2.4): one network û_θ(z_t, x, t) for all t ∈ [0, 1] and a
learned noise schedule (App. B, schedules/learned.py).

Legend: t ∈ [0, 1] (0 = noise, 1 = label), ᾱ_t ``alpha_bar``, γ(t) ``gamma``, SNR(t) = exp(−γ(t)),
SNR′(t) ``snr_prime``, η ``eta``, û_θ(z_t, x, t) ``u_hat``, u_y ``u_y``, W_Embed ``W``, h_x the cached
image features. For the probability-flow ODE: r = sqrt(SNR(t)) = exp(−γ(t)/2) and y = z_t·sqrt(1 + r²)
= z_t / sqrt(1 − ᾱ_t).

Training (Algorithm 2): each image gets K = ``t_samples`` independent t ~ U(0, 1) and z_t ~ q(z_t | y)
that share its image features h_x ([I], ContinuousTimeMethod.sample_times; the paper draws one, K = 1).

Text (a label per position, the NoProp-LM setting of models/transformer.py): the block is
:class:`~noprop.models.transformer.ContinuousLanguageBlock` (the causal context encoder once per
window; label, time and fusion layers position-wise). Every term of Eq. 9 is per position: t, z_t and
the noise of z_1 are drawn per position ([I], sample_times) and the terms are averaged over
positions. Inference integrates every position's z on the one t-grid (a scalar t): the positions'
ODEs are uncoupled, so this is each position's own solve, run in one batch; causal because position
i's field reads only the context up to i and its own z.

Inference (``--solver``; [I], the paper only says "T = 1000 steps"):

* ODE solvers (euler, heun, midpoint, rk4, or torchdiffeq's adaptive ones) integrate the probability-flow
  ODE of the VP marginals q(z_t | y) = N(sqrt(ᾱ_t) u_y, (1 − ᾱ_t) I) with û as the x0-prediction. In t
  it reads dz/dt = ½(−γ′(t))(sqrt(ᾱ_t) û − ᾱ_t z) — no division by 1 − ᾱ, but its linear part is stiff
  near t = 1 (rate ½|γ′|ᾱ ≈ 5 for the initial ±5 range, 9 for VDM's), so explicit Euler in t with
  few steps amplifies the initial noise instead of removing it (digits: 0.19 test accuracy at one
  step, vs 0.91 here). We therefore integrate it in the variables (r, y), where it
  becomes **dy/dr = û(z = y / sqrt(1 + r²), x, t(r))** (the data-prediction form of DPM-Solver++):
  the right-hand side is a convex combination of class embeddings, bounded for every step size, so any
  step count is stable. The grid is the paper's uniform t-grid t_k = k/N mapped to r_k; Euler on it is
  exactly the deterministic DDIM update between grid points, heun/rk4 are its higher-order versions.
  t(r) inverts the monotone schedule by interpolation on a dense table (exact at grid points).
* ``ancestral`` (the default for CT): the stochastic a/b/c discretisation (spec §2.4 "CT"): Eq. 3 on the t-grid with
  ᾱ_{t−1} := ᾱ(t_{k−1}), ᾱ_t := ᾱ(t_k), computed in float64 by schedules.posterior_coefficients.
  a, b, c lie in [0, 1], so it is stable for any step count too.

``deterministic=True`` starts from z_0 = 0 (the mode of p(z_0)) and, for ``ancestral``, adds no noise.
The read-out is the head p̂_θout on z_t at ≤ 11 evenly spaced grid points (the last is the prediction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..models.ct_blocks import CTBlock
from ..models.embeddings import ClassEmbedding
from ..options import at_least, positive
from ..schedules import LearnedSchedule, kl_prior, posterior_coefficients
from ..solvers import ODE_SOLVERS, STOCHASTIC, ancestral_step, integrate
from .base import BuildContext, ContinuousTimeMethod, TimeSamplingOptions

CT_SOLVERS = (*STOCHASTIC, *ODE_SOLVERS)


@dataclass(frozen=True, kw_only=True)
class CTConfig(TimeSamplingOptions):
    solver: Literal[CT_SOLVERS] = "ancestral"  # type: ignore[valid-type]
    """inference scheme: ancestral (the stochastic a/b/c sampler, default for ct), or an ODE solver
    (euler, heun, midpoint, rk4, dopri5 ...) of the probability-flow ODE"""
    eta: float = 1.0
    """η, weight of the denoising term (Eq. 9; Table 3: 1 for ct)"""
    gamma_min: float = -3.0
    """ct: initial γ at the label end (learned schedule, App. B)"""
    gamma_max: float = 3.0
    """ct: initial γ at the noise end"""
    gamma_width: int = 64
    """ct: hidden width of the monotone γ network"""

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("eta", self.eta)
        if not (math.isfinite(self.gamma_min) and math.isfinite(self.gamma_max)):
            raise ConfigError("--gamma-min and --gamma-max must be finite")
        if not self.gamma_min < self.gamma_max:
            raise ConfigError(
                f"need --gamma-min < --gamma-max (got {self.gamma_min}, {self.gamma_max})"
            )
        at_least("gamma_width", self.gamma_width)


TABLE_POINTS = 4097  # dense t-table for inverting r(t) at solver midpoints


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x; xp increasing. Exact at the knots."""
    i = torch.searchsorted(xp, x.reshape(1)).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    return (f0 + (x - x0) / (x1 - x0) * (f1 - f0)).reshape(())


class NoPropCT(ContinuousTimeMethod):
    name = "ct"
    label = "NoProp-CT"
    Config = CTConfig
    default_optimizer = "adam"
    solvers = CT_SOLVERS
    tasks = ("classification", "language")
    compilable = True  # --compile: 0.89x (one-hot) / 0.74x (prototype) inference time, measured

    @classmethod
    def from_config(cls, options: CTConfig, ctx: BuildContext) -> NoPropCT:
        emb, head = ctx.embedding_and_head()
        block = ctx.block("continuous", emb.dim)
        schedule = LearnedSchedule(
            gamma_min=options.gamma_min, gamma_max=options.gamma_max, width=options.gamma_width
        )
        return cls(block, emb, head, schedule, options)

    def __init__(
        self,
        block: CTBlock,
        embedding: ClassEmbedding,
        head: torch.nn.Module,
        schedule: LearnedSchedule,
        options: CTConfig = CTConfig(),  # noqa: B008 (frozen: shared safely)
    ) -> None:
        super().__init__(block, embedding, head, options)
        self.schedule = schedule
        self.eta = options.eta

    def shared_parameters(self) -> list[torch.nn.Parameter]:
        """Head θ_out, a learned W_Embed and the schedule's ψ (all updated jointly, Algorithm 2)."""
        return [*super().shared_parameters(), *self.schedule.parameters()]

    def u_hat(self, h_x: Tensor, z_t: Tensor, t: Tensor) -> Tensor:
        """û_θ(z_t, x, t) = softmax(logits)·W_Embed from cached image features h_x (spec §3.1)."""
        return self.embedding.mix(self.block_fuse(h_x, z_t, t).softmax(-1))

    def loss(self, x: Tensor, y: Tensor, unit: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 9 / Eq. 62 on one mini-batch (Algorithm 2)."""
        s, W = self.schedule, self.embedding.weight
        # 1. u_y = W_Embed[y]; per-example t_i ~ U(0, 1), K = t_samples draws per example (text:
        #    per position; every shape below then has an extra L after the batch dimension)
        u_y = self.embedding(y)  # (B, d)
        h_x, u_k, t = self.sample_times(self.block.encode_x(x), u_y)  # (KB, ·), t: (KB,)
        # 2. z_t ~ q(z_t | y) with ᾱ_t = σ(−γ_ψ(t)) (reparameterised, so ψ gets gradient)
        z_t = s.sample_marginal(u_k, t)
        # 3. denoising term ½ η SNR′(t) ‖û_θ(z_t, x, t) − u_y‖² (‖·‖² sums over d), mean over KB
        l2 = (self.u_hat(h_x, z_t, t) - u_k).pow(2).sum(-1)  # (KB,)
        denoise = (0.5 * self.eta * s.snr_prime(t) * l2).mean()
        # 4. cross-entropy of the head on z_1 ~ q(z_1 | y), ᾱ_1 = σ(−γ0)
        gamma_0, gamma_1 = s.gamma_endpoints()
        eps = torch.randn_like(u_y)
        z_1 = torch.sigmoid(-gamma_0).sqrt() * u_y + torch.sigmoid(gamma_0).sqrt() * eps
        ce = F.cross_entropy(self.head(z_1, W).flatten(0, -2), y.flatten())
        # 5. KL(q(z_0 | y) ‖ N(0, I)) with ᾱ_0 = σ(−γ1)
        kl = kl_prior(u_y, torch.sigmoid(-gamma_1)).mean()
        total = ce + kl + denoise
        return total, {
            "loss": total.detach(),
            "l2": l2.mean().detach(),
            "ce": ce.detach(),
            "kl": kl.detach(),
            "gamma_0": gamma_0.detach(),
            "gamma_1": gamma_1.detach(),
        }

    # -------------------------------------------------------------- inference
    def chain_kinds(self) -> tuple[str, ...]:
        """``p_k``: softmax of û_θ's logits at (z_{t_k}, t_k), trained by Eq. 9's L2 term (a Brier
        score); ``head_k``: p̂_θout(y | z_{t_k}), the paper's read-out."""
        return ("p", "head")

    def chain_readout(self, kind: str, h_x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        if kind == "p":
            return self.block_fuse(h_x, z, t)
        return super().chain_readout(kind, h_x, z, t)

    def sample(
        self, h_x: Tensor, z_0: Tensor, steps: int, record: list[int], noise: bool
    ) -> list[Tensor]:
        """``--solver ancestral``: the a/b/c steps on the float64 t-grid."""
        t_grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64, device=z_0.device)
        return self._ancestral(h_x, z_0, t_grid, record, noise=noise)

    def ode(
        self, h_x: Tensor, z_0: Tensor, steps: int, solver: str, record: list[int]
    ) -> list[Tensor]:
        """An ODE solver: the probability-flow ODE on the float64 t-grid."""
        t_grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64, device=z_0.device)
        return self._probability_flow(h_x, z_0, t_grid, record, solver)

    def _probability_flow(
        self, h_x: Tensor, z_0: Tensor, t_grid: Tensor, record: list[int], solver: str
    ) -> list[Tensor]:
        """dy/dr = û(y / sqrt(1 + r²), x, t(r)) on the grid r_k = exp(−γ(t_k)/2)."""
        table_t = torch.cat(
            [
                t_grid,
                torch.linspace(0.0, 1.0, TABLE_POINTS, dtype=t_grid.dtype, device=t_grid.device),
            ]
        ).unique()  # sorted
        table_log_r = -0.5 * self.schedule.gamma(table_t)  # increasing in t
        r_grid = torch.exp(-0.5 * self.schedule.gamma(t_grid))

        def field(r: Tensor, y: Tensor) -> Tensor:
            r = r.to(torch.float64)
            t = _interp(r.log(), table_log_r, table_t)
            return self.u_hat(h_x, y / torch.sqrt(1 + r**2), t.float())

        y_0 = z_0 * torch.sqrt(1 + r_grid[0] ** 2)
        ys = integrate(field, y_0, r_grid, solver, record)
        return [y / torch.sqrt(1 + r_grid[k] ** 2) for y, k in zip(ys, record, strict=True)]

    def _ancestral(
        self, h_x: Tensor, z_0: Tensor, t_grid: Tensor, record: list[int], *, noise: bool
    ) -> list[Tensor]:
        """z_k = a_k û(z_{k−1}, x, t_{k−1}) + b_k z_{k−1} + sqrt(c_k) ε_k (Eq. 3 on the t-grid)."""
        a, b, c = posterior_coefficients(self.schedule.alpha_bar(t_grid))  # float64, index 1..N
        wanted, z = set(record), z_0
        out = [z_0] if 0 in wanted else []
        for k in range(1, t_grid.numel()):
            z = ancestral_step(z, self.u_hat(h_x, z, t_grid[k - 1].float()), a[k], b[k], c[k],
                               noise=noise)  # fmt: skip
            if k in wanted:
                out.append(z)
        return out
