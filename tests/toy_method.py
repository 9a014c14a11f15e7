"""A toy method in one file — what a contributor writes to add a method (tests/test_toy_method.py).

"Noisy-label chain": T blocks; block t learns to predict the class from x and the label embedding
corrupted by Gaussian noise of std ``noise`` (cross-entropy on its own logits), the head learns to read
the class from the same corrupted embedding. Inference runs z_0 → z_T with z_t = softmax(block_t) · W.
Each block trains alone (``local_units``), like NoProp-DT, so it can also run block-parallel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noprop.methods import BuildContext, Method, MethodOptions
from noprop.options import at_least, positive


@dataclass(frozen=True, kw_only=True)
class ToyConfig(MethodOptions):
    T: int = 2
    """number of blocks"""
    noise: float = 0.5
    """std of the Gaussian noise on the label embedding"""

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("T", self.T)
        positive("noise", self.noise)


class ToyChain(Method):
    name = "toy"
    label = "Toy chain"
    Config = ToyConfig
    local_units = True

    def __init__(self, blocks: list[nn.Module], embedding, head, *, noise: float) -> None:
        super().__init__(embedding, head)
        self.blocks = nn.ModuleList(blocks)
        self.noise = noise

    @classmethod
    def from_config(cls, options: ToyConfig, ctx: BuildContext) -> ToyChain:
        emb, head = ctx.embedding_and_head()
        blocks = [ctx.block("discrete", emb.dim) for _ in range(options.T)]
        return cls(blocks, emb, head, noise=options.noise)

    @classmethod
    def units_for(cls, options: ToyConfig) -> int:
        return options.T

    @property
    def num_units(self) -> int:
        return len(self.blocks)

    def unit_modules(self, unit: int) -> list[nn.Module]:
        return [self.blocks[unit]]

    def loss(self, x: Tensor, y: Tensor, unit: int) -> tuple[Tensor, dict[str, Tensor]]:
        u_y = self.embedding(y)
        z = u_y + self.noise * torch.randn_like(u_y)
        block_ce = F.cross_entropy(self.blocks[unit](x, z), y)
        head_ce = F.cross_entropy(self.head(z, self.embedding.weight), y)
        total = block_ce + head_ce
        return total, {"loss": total.detach(), "block_ce": block_ce.detach()}

    @torch.no_grad()
    def predict_steps(self, x: Tensor, *, deterministic: bool = False) -> Tensor:
        W = self.embedding.weight
        shape = (x.shape[0], W.shape[1])
        z = x.new_zeros(shape) if deterministic else torch.randn(shape, dtype=x.dtype)
        readouts = [self.head(z, W)]
        for block in self.blocks:
            z = block(x, z).softmax(-1) @ W
            readouts.append(self.head(z, W))
        return torch.stack(readouts)
