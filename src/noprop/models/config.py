"""The model options shared by every method: class embedding, block kind and head (spec §3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..options import at_least, check_choices, positive

EmbeddingKind = Literal["one-hot", "learned", "prototype"]
BlockKind = Literal["auto", "conv", "mlp"]
HeadKind = Literal["softmax", "posterior"]
HeadInit = Literal["readout", "default"]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    embedding: EmbeddingKind = "one-hot"
    """class embedding W_Embed: one-hot, learned, prototype"""
    embed_dim: int = 20
    """dimension of the learned embedding"""
    block: BlockKind = "auto"
    """block architecture: auto (the task's default: conv for images >= 16x16, else mlp), conv, mlp"""
    head: HeadKind = "softmax"
    """class-probability head: softmax (Eq. 14) or posterior (Eqs. 15-16)"""
    posterior_sigma: float = 0.1
    """σ of the posterior head (Eq. 16)"""
    head_init: HeadInit = "readout"
    """readout (nearest-embedding read-out, default) or default (PyTorch uniform)"""

    def __post_init__(self) -> None:
        check_choices(self)
        at_least("embed_dim", self.embed_dim)
        positive("posterior_sigma", self.posterior_sigma)
