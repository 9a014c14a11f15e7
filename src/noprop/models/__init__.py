"""Blocks, class embeddings and class-probability heads."""

from .blocks import BLOCKS, ConvBlock, MLPBlock, build_dt_block, count_parameters
from .config import IMAGE_EMBED_DIM, TEXT_EMBED_DIM
from .embeddings import (
    EMBEDDINGS,
    PROTOTYPE_MAX_PER_CLASS,
    ClassEmbedding,
    build_embedding,
    prototype_init,
)
from .heads import HEADS, PosteriorHead, SoftmaxHead, build_head
from .transformer import TransformerLM, embedding_parameters

__all__ = [
    "BLOCKS",
    "EMBEDDINGS",
    "HEADS",
    "IMAGE_EMBED_DIM",
    "PROTOTYPE_MAX_PER_CLASS",
    "TEXT_EMBED_DIM",
    "TransformerLM",
    "ClassEmbedding",
    "ConvBlock",
    "MLPBlock",
    "PosteriorHead",
    "SoftmaxHead",
    "build_dt_block",
    "build_embedding",
    "build_head",
    "count_parameters",
    "embedding_parameters",
    "prototype_init",
]
