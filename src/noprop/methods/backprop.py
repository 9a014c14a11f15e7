"""The back-propagation twin of NoProp-DT (spec §2.5): the same blocks and head, chained and trained
end to end with cross-entropy.

z_0 ~ N(0, I);  z_t = (1 − α_t) z_{t−1} + α_t û_θt(z_{t−1}, x),  α_t = tanh(w_t) with learnable w_t;
ŷ = argmax p̂_θout(y | z_T). The paper gives no init for w_t ([I]): w_t = atanh(0.5) so every α_t starts
at 0.5. The loss is the cross-entropy of the head on z_T ([I]: "presumably" in the spec). There is a
single unit: one optimiser updates every block, the α's, the head and W_Embed together.

On a task with a label per position (next-byte prediction) ``--method backprop`` is the standard causal
transformer instead (:class:`~noprop.methods.transformer.TransformerBackprop`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.embeddings import ClassEmbedding
from .base import (
    BlockOptions,
    BuildContext,
    ChainSpec,
    Method,
    Readout,
    block_logits,
    by_chain,
)
from .transformer import TransformerBackprop


@dataclass(frozen=True, kw_only=True)
class BackpropConfig(BlockOptions):
    """T chained blocks (on text: T transformer layers)."""


class Backprop(Method):
    name = "backprop"
    label = "Backprop"
    Config = BackpropConfig
    tasks = ("classification", "language")

    @classmethod
    def from_config(cls, options: BackpropConfig, ctx: BuildContext) -> Method:
        if ctx.task.label_dims:  # next-token prediction: the standard causal transformer
            return TransformerBackprop.from_config(options, ctx)
        emb, head = ctx.embedding_and_head()
        return cls([ctx.block("discrete", emb.dim) for _ in range(options.T)], emb, head)

    def __init__(self, blocks: list[nn.Module], embedding: ClassEmbedding, head: nn.Module) -> None:
        super().__init__(embedding, head)
        self.blocks = nn.ModuleList(blocks)
        self.w = nn.Parameter(torch.full((len(blocks),), math.atanh(0.5)))

    @property
    def T(self) -> int:
        return len(self.blocks)

    def unit_modules(self, unit: int) -> list[nn.Module]:
        return list(self.blocks)

    def unit_parameters(self, unit: int) -> list[nn.Parameter]:
        return [*super().unit_parameters(unit), self.w]

    def params_per_block(self) -> int:
        return sum(p.numel() for p in self.blocks[0].parameters())

    def _chain(self, x: Tensor, z: Tensor) -> list[Tensor]:
        alpha = torch.tanh(self.w)
        zs = [z]
        for t, block in enumerate(self.blocks):
            u_hat = self.embedding.mix(block(x, z).softmax(-1))
            z = (1 - alpha[t]) * z + alpha[t] * u_hat
            zs.append(z)
        return zs

    def loss(self, x: Tensor, y: Tensor, unit: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        z0 = torch.randn(x.shape[0], self.embedding.dim, device=x.device, dtype=x.dtype)
        ce = F.cross_entropy(self.head(self._chain(x, z0)[-1], self.embedding.weight), y)
        return ce, {"loss": ce.detach(), "ce": ce.detach()}

    def readout_names(self) -> list[str]:
        return [f"head_{t}" for t in range(self.T + 1)]

    @torch.no_grad()
    def walk(self, x: Tensor, spec: ChainSpec) -> Iterator[Readout]:
        """Head logits on z_0..z_T (:meth:`Method.chain`); ``deterministic`` starts from z_0 = 0
        instead of noise (the chain itself draws no noise)."""
        C, deterministic = spec.chains, spec.deterministic
        shape = (C * x.shape[0], self.embedding.dim)
        z = (
            x.new_zeros(shape)
            if deterministic
            else torch.randn(shape, device=x.device, dtype=x.dtype)
        )
        W, alpha = self.embedding.weight, torch.tanh(self.w)
        if not spec.wants("head"):
            return
        yield Readout("head_0", by_chain(self.head(z, W), C), by_chain(z, C), 0.0)
        for t, block in enumerate(self.blocks):
            u_hat = self.embedding.mix(block_logits(block, x, z, C).softmax(-1))
            z = (1 - alpha[t]) * z + alpha[t] * u_hat
            yield Readout(
                f"head_{t + 1}", by_chain(self.head(z, W), C), by_chain(z, C), (t + 1) / self.T
            )
