"""The model options shared by every method: class embedding, block kind and head (spec §3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..options import at_least, check_choices, positive

#: ``--embed-dim`` when not given (``Task.default_embed_dim``): 20 for images (the paper's
#: CIFAR-100 dimension, spec Table 1), 64 for the 256 byte values (issue 11)
IMAGE_EMBED_DIM, TEXT_EMBED_DIM = 20, 64

EmbeddingKind = Literal["one-hot", "learned", "prototype"]
BlockKind = Literal["auto", "conv", "mlp", "transformer"]
HeadKind = Literal["softmax", "posterior"]
HeadInit = Literal["readout", "default"]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    embedding: EmbeddingKind = "one-hot"
    """class embedding W_Embed: one-hot, learned, prototype"""
    embed_dim: int | None = None
    """dimension of the learned embedding (default: 20 for images, 64 for text)"""
    block: BlockKind = "auto"
    """block architecture: auto (the task's default: conv for images >= 16x16, else mlp; text:
    transformer), conv, mlp, transformer"""
    head: HeadKind = "softmax"
    """class-probability head: softmax (Eq. 14) or posterior (Eqs. 15-16)"""
    posterior_sigma: float = 0.1
    """σ of the posterior head (Eq. 16)"""
    head_init: HeadInit = "readout"
    """readout (nearest-embedding read-out, default) or default (PyTorch uniform)"""
    width: int = 128
    """text: width w of the transformer residual stream (back-prop model and NoProp-LM blocks)"""
    heads: int = 4
    """text: attention heads per transformer layer"""
    block_layers: int = 1
    """text, dt: transformer layers inside each NoProp-LM block"""

    def __post_init__(self) -> None:
        check_choices(self)
        if self.embed_dim is not None:
            at_least("embed_dim", self.embed_dim)
        for name in ("width", "heads", "block_layers"):
            at_least(name, getattr(self, name))
        positive("posterior_sigma", self.posterior_sigma)
