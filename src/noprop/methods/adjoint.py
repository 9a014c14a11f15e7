"""The adjoint-sensitivity baseline (spec §2.5): a neural ODE over the CT block, trained end to end.

Legend: z_0 ~ N(0, I), dz/dt = f_θ(z, x, t) on t ∈ [0, 1], f_θ ``velocity`` = logits·W_Embed of the
CT block (Fig. 6 right), ŷ = argmax p̂_θout(y | z_1) with the linear head; h_x the image features.

* f_θ = logits·W_Embed ([I]; FM's unrestricted velocity). The alternative f = softmax(logits)·W − z
  relaxes towards a convex combination of embeddings and can never cancel the initial noise: z_1 keeps
  e^{−1} z_0, a per-coordinate noise of std 0.37 against a one-hot margin of 0.63.
* Loss: cross-entropy of the head on z_1 ([I], "linear layer for final classification"). Gradients come
  from torchdiffeq's ``odeint_adjoint`` (Chen et al. 2018): the backward pass solves the adjoint ODE
  instead of back-propagating through the solver's steps. The image features h_x are computed once,
  carried in the ODE state with dh/dt = 0, and their adjoint at t = 0 is back-propagated into the image
  branch, so the conv stack is not re-run at every step.
* Training grid: ``--adjoint-steps`` uniform steps (paper: 1000) of the ``--solver``'s torchdiffeq
  fixed-grid twin (euler, heun2, midpoint, rk4), or an adaptive torchdiffeq solver (rtol = atol = 1e-5).
  1000 steps are too slow on CPU; the tests use 8.
* Inference: the same ODE with ``--inference-steps``/``--solver`` (solvers.py), read out by the head at
  ≤ 11 grid points. ``deterministic=True`` starts from z_0 = 0.
* Dropout inside f_θ (only the prototype label branch has any) draws different masks in the forward
  and adjoint passes, which makes the adjoint gradient approximate; the paper uses one-hot embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.ct_blocks import CTBlock
from ..models.embeddings import ClassEmbedding
from ..options import at_least
from ..solvers import ADAPTIVE, ODE_SOLVERS, TORCHDIFFEQ_FIXED
from .base import BuildContext, ContinuousTimeMethod, ContinuousTimeOptions


@dataclass(frozen=True, kw_only=True)
class AdjointConfig(ContinuousTimeOptions):
    solver: Literal[ODE_SOLVERS] = "euler"  # type: ignore[valid-type]
    """inference ODE solver: euler (default for fm/adjoint), heun, midpoint, rk4, dopri5 ...
    (for the adjoint also the training solver)"""
    adjoint_steps: int = 1000
    """adjoint: fixed solver steps during training (the paper: 1000)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("adjoint_steps", self.adjoint_steps)


class Adjoint(ContinuousTimeMethod):
    name = "adjoint"
    label = "Adjoint"
    Config = AdjointConfig

    @classmethod
    def from_config(cls, options: AdjointConfig, ctx: BuildContext) -> Adjoint:
        emb, head = ctx.embedding_and_head()
        return cls(ctx.block("continuous", emb.dim), emb, head, options)

    def __init__(
        self,
        block: CTBlock,
        embedding: ClassEmbedding,
        head: torch.nn.Module,
        options: AdjointConfig = AdjointConfig(),  # noqa: B008 (frozen: shared safely)
    ) -> None:
        super().__init__(block, embedding, head, options)
        self.adjoint_steps = options.adjoint_steps

    def velocity(self, h_x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """f_θ(z, x, t) = logits·W_Embed from cached image features h_x."""
        return self.embedding.mix(self.block.fuse(h_x, z, t))

    def _ode_parameters(self) -> list[Tensor]:
        """What f_θ depends on besides the state: the block minus its image branch, and a learned W."""
        image = {id(p) for p in self.block.image.parameters()}
        params = [p for p in self.block.parameters() if id(p) not in image]
        return params + ([self.embedding.weight] if self.embedding.learnable else [])

    def loss(self, x: Tensor, y: Tensor, unit: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """CE of the head on z_1 = ODESolve(f_θ, z_0), gradients by the adjoint method."""
        from torchdiffeq import odeint_adjoint  # optional dependency (extra "ct")

        h_x = self.block.encode_x(x)
        z_0 = self.initial_z(x, deterministic=False)

        def field(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            z, h = state
            return self.velocity(h, z, t), torch.zeros_like(h)

        if self.solver in ADAPTIVE:
            t = torch.tensor([0.0, 1.0], device=x.device)
            kwargs: dict = {"method": self.solver, "rtol": 1e-5, "atol": 1e-5}
        else:
            t = torch.linspace(0.0, 1.0, self.adjoint_steps + 1, device=x.device)
            kwargs = {"method": TORCHDIFFEQ_FIXED[self.solver]}
        zs, _ = odeint_adjoint(
            field, (z_0, h_x), t, adjoint_params=tuple(self._ode_parameters()), **kwargs
        )
        ce = F.cross_entropy(self.head(zs[-1], self.embedding.weight), y)
        return ce, {"loss": ce.detach(), "ce": ce.detach()}
