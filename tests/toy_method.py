"""A toy method in one file — what a contributor writes to add a method (tests/test_toy_method.py).

"Noisy-label chain": T blocks; block t learns to predict the class from x and the label embedding
corrupted by Gaussian noise of std ``noise`` (cross-entropy on its own logits), the head learns to read
the class from the same corrupted embedding. Inference (``chain``, the one place it is written) runs N
Euler steps z ← z + h (softmax(block) · W − z), h = min(1, T/N), the block owning step k being
⌊kT/N⌋; N = ``inference_steps`` (default T: then z_t = softmax(block_t) · W). Each block trains alone
(``local_units``), like NoProp-DT, so it can also run block-parallel. It is built for images and
text alike (the task builds its blocks), and ``eval --steps`` varies N.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noprop.errors import ConfigError
from noprop.methods import BlockwiseMethod, BuildContext, ChainSpec, MethodOptions, Readout
from noprop.methods.base import block_logits, by_chain
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


class ToyChain(BlockwiseMethod):
    name = "toy"
    label = "Toy chain"
    Config = ToyConfig
    tasks = ("classification", "language")
    solvers = ("euler",)

    def __init__(self, blocks: list[nn.Module], embedding, head, *, noise: float) -> None:
        super().__init__(embedding, head)
        self.blocks = nn.ModuleList(blocks)
        self.noise = noise
        self.inference_steps, self.solver = len(blocks), "euler"  # eval --steps sets them

    @classmethod
    def from_config(cls, options: ToyConfig, ctx: BuildContext) -> ToyChain:
        emb, head = ctx.embedding_and_head()
        blocks = [ctx.block("discrete", emb.dim) for _ in range(options.T)]
        return cls(blocks, emb, head, noise=options.noise)

    def loss(self, x: Tensor, y: Tensor, unit: int) -> tuple[Tensor, dict[str, Tensor]]:
        u_y = self.embedding(y)
        z = u_y + self.noise * torch.randn_like(u_y)
        # logits (B[, L], m): one label per input, or one per position on text
        block_ce = F.cross_entropy(self.blocks[unit](x, z).flatten(0, -2), y.flatten())
        head_ce = F.cross_entropy(self.head(z, self.embedding.weight).flatten(0, -2), y.flatten())
        total = block_ce + head_ce
        return total, {"loss": total.detach(), "block_ce": block_ce.detach()}

    def readout_names(self) -> list[str]:
        return [f"head_{k}" for k in range(self.inference_steps + 1)]

    @torch.no_grad()
    def walk(self, x: Tensor, spec: ChainSpec) -> Iterator[Readout]:
        N = self.inference_steps if spec.steps is None else spec.steps
        if spec.solver not in (None, "euler") or N < 1:
            raise ConfigError(f"--method toy takes --solver euler and steps >= 1 (got {N})")
        C, W, T = spec.chains, self.embedding.weight, len(self.blocks)
        shape = (C * x.shape[0], *self.z_shape(x)[1:])
        z = W.new_zeros(shape) if spec.deterministic else torch.randn(shape, dtype=W.dtype)
        if not spec.wants("head"):
            return
        yield Readout("head_0", by_chain(self.head(z, W), C), by_chain(z, C), 0.0)
        for k in range(N):
            target = block_logits(self.blocks[k * T // N], x, z, C).softmax(-1) @ W
            z = z + min(1.0, T / N) * (target - z)
            yield Readout(
                f"head_{k + 1}", by_chain(self.head(z, W), C), by_chain(z, C), (k + 1) / N
            )
