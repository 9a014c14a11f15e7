"""NoProp-FM (spec §1.7, Algorithm 3, §2.4): flow matching in label-embedding space.

Legend: t ∈ [0, 1], z_0 ~ N(0, I) noise, z_1 = u_y = W_Embed[y], σ ``sigma`` (path noise),
v_θ(z_t, x, t) ``v`` = logits·W_Embed (no softmax: "unrestricted weights", spec §3.1),
z̃_1 ``z1_tilde`` = z_t + (1 − t) v_θ (Eq. 12), h_x the cached image features.

* Path (Eq. 10): z_t = t u_y + (1 − t) z_0 + σ ε. σ is not given by the paper ([I]); default 0, the
  plain conditional OT path, for which the target field u_y − z_0 is exact (tests/test_ct.py).
* Loss (Eq. 11/63): ‖v_θ − (u_y − z_0)‖² summed over d; with a learned W_Embed plus the anchor
  cross-entropy −log p̂_θout(y | z̃_1) (Eqs. 12–13/64) that keeps the embeddings apart. With the fixed
  one-hot W_Embed the head is unused in training and receives no parameter updates.
* Inference: dz/dt = v_θ(z, x, t) from t = 0 to 1 with ``--solver`` on N uniform steps (paper: 1000,
  Euler is the natural reading). v_θ is predicted directly (no division by 1 − t), so few steps are
  stable: one Euler step already lands on E[u_y | x] for the exact field.
* Read-out: the class whose embedding is nearest (Euclidean) to z (paper), returned as logits
  −‖z − u_k‖² so argmax is the prediction; reported on z_t at ≤ 11 evenly spaced grid points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.ct_blocks import CTBlock
from ..models.embeddings import ClassEmbedding
from ..options import non_negative
from ..solvers import ODE_SOLVERS
from .base import BuildContext, ContinuousTimeMethod, TimeSamplingOptions


@dataclass(frozen=True, kw_only=True)
class FMConfig(TimeSamplingOptions):
    solver: Literal[ODE_SOLVERS] = "euler"  # type: ignore[valid-type]
    """inference ODE solver: euler (default for fm/adjoint), heun, midpoint, rk4, dopri5 ..."""
    fm_sigma: float = 0.0
    """fm: σ of the Gaussian probability path (Eq. 10)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative("fm_sigma", self.fm_sigma)


def nearest_embedding_logits(z: Tensor, W: Tensor) -> Tensor:
    """−‖z − u_k‖² for every class k, (B, d) × (m, d) -> (B, m); argmax = nearest embedding."""
    return -(z.pow(2).sum(-1, keepdim=True) - 2 * z @ W.T + W.pow(2).sum(-1))


class NoPropFM(ContinuousTimeMethod):
    name = "fm"
    label = "NoProp-FM"
    Config = FMConfig
    default_optimizer = "adam"
    compilable = True  # --compile: 0.78x with prototypes, but 1.10x (slower) one-hot, measured

    @classmethod
    def from_config(cls, options: FMConfig, ctx: BuildContext) -> NoPropFM:
        emb, head = ctx.embedding_and_head()
        return cls(
            ctx.block("continuous", emb.dim),
            emb,
            head,
            sigma=options.fm_sigma,
            inference_steps=options.inference_steps,
            solver=options.solver,
            t_samples=options.t_samples,
        )

    def __init__(
        self,
        block: CTBlock,
        embedding: ClassEmbedding,
        head: torch.nn.Module,
        *,
        sigma: float = FMConfig.fm_sigma,
        inference_steps: int = FMConfig.inference_steps,
        solver: str = FMConfig.solver,
        t_samples: int = FMConfig.t_samples,
    ) -> None:
        super().__init__(
            block,
            embedding,
            head,
            inference_steps=inference_steps,
            solver=solver,
            t_samples=t_samples,
        )
        self.sigma = sigma

    def shared_parameters(self) -> list[torch.nn.Parameter]:
        """θ_out and W_Embed when W_Embed is learned; nothing otherwise (the head is then unused)."""
        return super().shared_parameters() if self.embedding.learnable else []

    def inert_parameters(self) -> list[torch.nn.Parameter]:
        """With a fixed W_Embed no loss reads the head (the read-out is the nearest embedding)."""
        return [] if self.embedding.learnable else list(self.head.parameters())

    def v(self, h_x: Tensor, z_t: Tensor, t: Tensor) -> Tensor:
        """v_θ(z_t, x, t) = logits·W_Embed from cached image features h_x (spec §3.1)."""
        return self.embedding.mix(self.block_fuse(h_x, z_t, t))

    def loss(self, x: Tensor, y: Tensor, unit: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 11 (+ Eq. 13 with a learned W_Embed) on one mini-batch (Algorithm 3)."""
        # 1. z_1 = u_y, z_0 ~ N(0, I), t_i ~ U(0, 1), K = t_samples draws per example
        h_x, u_y, t = self.sample_times(self.block.encode_x(x), self.embedding(y))  # (KB, ·)
        z_0 = torch.randn_like(u_y)
        t = t.unsqueeze(1)  # (KB, 1)
        # 2. z_t ~ N(t z_1 + (1 − t) z_0, σ²)  (Eq. 10)
        z_t = t * u_y + (1 - t) * z_0
        if self.sigma > 0:
            z_t = z_t + self.sigma * torch.randn_like(z_t)
        # 3. flow-matching term ‖v_θ − (z_1 − z_0)‖²  (Eq. 11)
        v = self.v(h_x, z_t, t.squeeze(1))
        fm = (v - (u_y - z_0)).pow(2).sum(-1).mean()
        parts = {"fm": fm.detach()}
        total = fm
        # 4. anchor CE on the extrapolated z̃_1 = z_t + (1 − t) v_θ when W_Embed is learned (Eqs. 12–13)
        if self.embedding.learnable:
            z1_tilde = z_t + (1 - t) * v
            ce = F.cross_entropy(
                self.head(z1_tilde, self.embedding.weight), y.repeat(self.t_samples)
            )
            total = total + ce
            parts["ce"] = ce.detach()
        return total, {"loss": total.detach(), **parts}

    def velocity(self, h_x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """The inference ODE's field dz/dt is v_θ itself."""
        return self.v(h_x, z, t)

    def read_out(self, z: Tensor) -> Tensor:
        """Logits of the nearest class embedding (Euclidean) to z (spec §1.7 read-out)."""
        return nearest_embedding_logits(z, self.embedding.weight)
