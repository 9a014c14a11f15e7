"""The EDM noise levels of DiffusionBlocks (Shing, Koyama, Akiba 2025; ``shared/spec/diffusionblocks.md``).

Legend (paper symbol -> name here):
    σ                       sigma, the noise level of z_σ = ŷ + σ·ε (variance-exploding form)
    P_mean, P_std           p_mean, p_std: log σ ~ N(P_mean, P_std²) at training (spec §2)
    σ_min, σ_max, σ_data    sigma_min, sigma_max, sigma_data
    Φ, Φ⁻¹                  torch.special.ndtr / ndtri
    c_skip, c_out, c_in     EDM preconditioning (spec §3, the paper's Eq. 6)
    c_noise = ¼ ln σ        the noise-level input of every block
    w(σ)                    the loss weight (σ² + σ_d²)/(σ·σ_d)² (EDM's λ)

The partition (spec §2): the log-normal's probability mass inside [σ_min, σ_max] is cut into B equal
parts, q_b = q_min + (b/B)(q_max − q_min), σ_b = exp(P_mean + P_std·Φ⁻¹(q_b)), b = 0..B, so σ_0 = σ_min
and σ_B = σ_max. *Block* k (0-based, the k-th run at inference) owns the k-th interval from the top:
block 0 the highest noise [σ_{B−1}, σ_B], block B−1 the lowest [σ_0, σ_1].

Everything is computed in float64 (q_min = Φ(−4.18) ≈ 1.5e-5 needs it) and cast at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class EDMNoise:
    """The constants of spec §2–3 (the authors' values are the defaults) and the functions of σ."""

    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.sigma_min < self.sigma_max or not math.isfinite(self.sigma_max):
            raise ConfigError(
                f"need 0 < sigma_min < sigma_max (got {self.sigma_min}, {self.sigma_max})"
            )
        if not (self.p_std > 0 and self.sigma_data > 0):
            raise ConfigError("p_std and sigma_data must be positive")

    # ------------------------------------------------------ CDF space of log σ
    def cdf(self, sigma: Tensor | float) -> Tensor:
        """q = Φ((ln σ − P_mean)/P_std), float64."""
        s = torch.as_tensor(sigma, dtype=torch.float64)
        return torch.special.ndtr((s.log() - self.p_mean) / self.p_std)

    def icdf(self, q: Tensor) -> Tensor:
        """σ = exp(P_mean + P_std·Φ⁻¹(q)), float64."""
        return torch.exp(self.p_mean + self.p_std * torch.special.ndtri(q.double()))

    def boundaries(self, B: int) -> Tensor:
        """σ_0 < σ_1 < ... < σ_B: equal-probability boundaries (spec §2 check values), float64.

        The ends are σ_min and σ_max exactly (not round-tripped through Φ and Φ⁻¹)."""
        if B < 1:
            raise ConfigError(f"need at least one block (got {B})")
        q_min, q_max = self.cdf(self.sigma_min), self.cdf(self.sigma_max)
        b = torch.arange(B + 1, dtype=torch.float64)
        sigma = self.icdf(q_min + b / B * (q_max - q_min))
        sigma[0], sigma[-1] = self.sigma_min, self.sigma_max
        return sigma

    def block_range(self, B: int, block: int, overlap: float = 0.0) -> tuple[float, float]:
        """(lo, hi) of the σ that block ``block`` (0 = highest noise) trains on.

        Overlap γ (spec §2): the interval is widened in ln σ by γ × its own log-width on each side,
        then clamped to [σ_min, σ_max]."""
        if not 0 <= block < B:
            raise ValueError(f"block {block} of {B}")
        s = self.boundaries(B).log()
        lo, hi = s[B - 1 - block], s[B - block]
        width = hi - lo
        lo = max(float(lo - overlap * width), math.log(self.sigma_min))
        hi = min(float(hi + overlap * width), math.log(self.sigma_max))
        return math.exp(lo), math.exp(hi)

    def sample(
        self, lo: float, hi: float, shape: tuple[int, ...], device: torch.device | None = None
    ) -> Tensor:
        """σ ~ the log-normal truncated to [lo, hi]: uniform in CDF space between Φ(lo) and Φ(hi)
        (spec §2, the authors' sampler), float32 of ``shape``; draws from torch's global RNG."""
        q_lo, q_hi = self.cdf(lo), self.cdf(hi)
        u = torch.rand(shape, dtype=torch.float64, device=device)
        return self.icdf(q_lo + u * (q_hi - q_lo)).clamp(lo, hi).float()

    def grid(self, steps: int) -> Tensor:
        """The inference grid (spec §4): σ_max = s_0 > s_1 > ... > s_N = σ_min, equally spaced in CDF
        space (not EDM's ρ = 7 grid), float64. With N = B the grid points are the boundaries."""
        if steps < 1:
            raise ConfigError(f"need at least one inference step (got {steps})")
        q_min, q_max = self.cdf(self.sigma_min), self.cdf(self.sigma_max)
        k = torch.arange(steps + 1, dtype=torch.float64)
        sigma = self.icdf(q_max - k / steps * (q_max - q_min))
        sigma[0], sigma[-1] = self.sigma_max, self.sigma_min
        return sigma

    # -------------------------------------------------- preconditioning (Eq. 6)
    def c_skip(self, sigma: Tensor) -> Tensor:
        """σ_d² / (σ² + σ_d²)."""
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma: Tensor) -> Tensor:
        """σ·σ_d / √(σ² + σ_d²)."""
        return sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()

    def c_in(self, sigma: Tensor) -> Tensor:
        """1 / √(σ² + σ_d²)."""
        return 1.0 / (sigma**2 + self.sigma_data**2).sqrt()

    def c_noise(self, sigma: Tensor) -> Tensor:
        """¼ ln σ: the block's noise-level input."""
        return 0.25 * sigma.log()

    def weight(self, sigma: Tensor) -> Tensor:
        """w(σ) = (σ² + σ_d²)/(σ·σ_d)² = 1/c_out² (EDM's λ)."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


def block_of_step(step: int, steps: int, B: int) -> int:
    """The block that owns step k of an N-step grid (k = N: the final read-out at σ_min).

    Equal CDF spacing of both the grid and the partition makes ownership exact integer arithmetic:
    step k starts at the fraction k/N of the CDF range from the top, block b covers [b/B, (b+1)/B).
    So with N = B step k runs block k, and N = 2B runs every block twice; no σ is compared in float.
    """
    return min(step * B // steps, B - 1)
