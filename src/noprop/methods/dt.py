"""NoProp-DT (spec §1.2–1.4, §2.1, §2.4): T blocks, each trained alone to denoise the label embedding.

Legend: ᾱ_t ``alpha_bar[t]``, SNR(t) ``snr[t]``, a_t/b_t/c_t ``a[t]/b[t]/c[t]``, η ``eta``,
û_θt(z_{t-1}, x) ``u_hat``, u_y ``u_y``, W_Embed ``W``. Blocks are indexed t = 1..T in the paper and
``blocks[t-1]`` here; *units* are 0-based (unit i trains block t = i + 1).

What is back-propagated: the loss of block t (Eq. 8 restricted to t) depends on θ_t, θ_out and W_Embed
only. Its input z_{t-1} is sampled from the fixed q(z_{t-1} | y), never produced by block t−1, so no
forward pass runs through the other blocks and no gradient reaches them. Back-propagation happens
*inside* block t (through its layers) and into the shared head and embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.embeddings import ClassEmbedding
from ..schedules import DiscreteSchedule, kl_prior
from .base import Method


class NoPropDT(Method):
    name = "dt"
    default_optimizer = "adamw"

    def __init__(
        self,
        blocks: list[nn.Module],
        embedding: ClassEmbedding,
        head: nn.Module,
        schedule: DiscreteSchedule,
        *,
        eta: float = 0.1,
    ) -> None:
        super().__init__(embedding, head)
        if len(blocks) != schedule.T:
            raise ValueError(f"need T={schedule.T} blocks, got {len(blocks)}")
        self.blocks = nn.ModuleList(blocks)
        self.schedule = schedule
        self.eta = eta

    @property
    def T(self) -> int:
        return self.schedule.T

    @property
    def num_units(self) -> int:
        return self.T

    def unit_modules(self, unit: int) -> list[nn.Module]:
        return [self.blocks[unit]]

    def u_hat(self, t: int, x: Tensor, z_prev: Tensor) -> Tensor:
        """û_θt(z_{t-1}, x) = softmax(logits) · W_Embed (spec §3.1): a convex combination of embeddings."""
        return self.blocks[t - 1](x, z_prev).softmax(-1) @ self.embedding.weight

    def loss(self, x: Tensor, y: Tensor, unit: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 8 / Eq. 61 for block t = unit + 1 on one mini-batch (Algorithm 1, inner loop)."""
        t, s = unit + 1, self.schedule
        # 1. u_y = W_Embed[y]
        u_y = self.embedding(y)  # (B, d)
        # 2. z_{t-1} ~ q(z_{t-1} | y) (Eq. 58; the algorithm's "z_t" is an index typo, spec §1.4)
        z_prev = s.sample_marginal(u_y, t - 1)
        # 3. denoising L2 term, weighted by (T/2) η (SNR(t) − SNR(t−1)); ‖·‖² sums over d
        l2 = (self.u_hat(t, x, z_prev) - u_y).pow(2).sum(-1).mean()
        weight = 0.5 * self.T * self.eta * s.snr_delta[t]
        # 4. cross-entropy of the head on z_T ~ q(z_T | y): trains θ_out (and W_Embed)
        ce = F.cross_entropy(self.head(s.sample_marginal(u_y, self.T), self.embedding.weight), y)
        # 5. KL(q(z_0 | y) ‖ N(0, I)): a constant for one-hot W_Embed
        kl = kl_prior(u_y, s.alpha_bar[0]).mean()
        total = ce + kl + weight * l2
        return total, {"loss": total.detach(), "l2": l2.detach(), "ce": ce.detach()}

    @torch.no_grad()
    def predict_steps(self, x: Tensor, *, deterministic: bool = False) -> Tensor:
        """Inference by Eq. 3 from z_0; returns the head's logits on z_0..z_T, shape (T+1, B, m).

        ``deterministic=False`` (the paper): z_0 ~ N(0, I) and fresh ε_t at every step.
        ``deterministic=True`` ([I]): z_0 = 0 (the mode of p(z_0)) and ε_t = 0, i.e. the posterior mean
        path; repeated runs give identical predictions.
        """
        s, W = self.schedule, self.embedding.weight
        shape = (x.shape[0], W.shape[1])
        z = (
            x.new_zeros(shape)
            if deterministic
            else torch.randn(shape, device=x.device, dtype=x.dtype)
        )
        readouts = [self.head(z, W)]
        for t in range(1, self.T + 1):
            z = s.a[t] * self.u_hat(t, x, z) + s.b[t] * z  # Eq. 3, mean
            if not deterministic:
                z = z + s.c[t].sqrt() * torch.randn_like(z)  # Eq. 3, noise
            readouts.append(self.head(z, W))
        return torch.stack(readouts)
