"""The contract every training method implements.

A method owns its blocks, the class embedding W_Embed and the head p̂_θout. Training is organised in
*units*: groups of parameters that are updated together by one optimiser. NoProp-DT has T units (θ_t,
one per block), which is what makes block-local and block-parallel training possible; end-to-end
methods (back-prop, CT, FM, adjoint) have a single unit. Parameters shared by every unit (the head,
a learned W_Embed, a learned schedule) are listed separately and updated on every step.

Legend: x input (B, ...), y labels (B,), z noised label embedding (B, d), W = W_Embed (m, d).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..models.embeddings import ClassEmbedding


class Method(nn.Module):
    """Base class: subclasses implement :meth:`loss` and :meth:`predict_steps`."""

    name: str = "base"
    default_optimizer: str = "adamw"

    def __init__(self, embedding: ClassEmbedding, head: nn.Module) -> None:
        super().__init__()
        self.embedding = embedding
        self.head = head

    @property
    def num_units(self) -> int:
        return 1

    def unit_modules(self, unit: int) -> list[nn.Module]:
        """Modules whose parameters form unit ``unit`` (θ_t for DT)."""
        raise NotImplementedError

    def unit_parameters(self, unit: int) -> list[nn.Parameter]:
        return [p for m in self.unit_modules(unit) for p in m.parameters()]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every unit's loss touches: head θ_out and, when learned, W_Embed."""
        params = list(self.head.parameters())
        if self.embedding.learnable:
            params.append(self.embedding.weight)
        return params

    def params_per_block(self) -> int:
        """Trainable parameters of one block (v2 Table 5 counts; excludes W_Embed and the head)."""
        return sum(p.numel() for p in self.unit_parameters(0))

    def loss(self, x: Tensor, y: Tensor, unit: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar training loss of ``unit`` on a batch, and named components for logging."""
        raise NotImplementedError

    def predict_steps(self, x: Tensor, *, deterministic: bool = False) -> Tensor:
        """Class logits read out after every inference step, shape (S, B, m); the last is the prediction."""
        raise NotImplementedError

    def predict(self, x: Tensor, *, deterministic: bool = False) -> Tensor:
        return self.predict_steps(x, deterministic=deterministic)[-1]
