"""Blocks, class embeddings and class-probability heads."""

from .blocks import BLOCKS, ConvBlock, MLPBlock, build_dt_block, count_parameters
from .embeddings import EMBEDDINGS, ClassEmbedding, build_embedding
from .heads import HEADS, PosteriorHead, SoftmaxHead, build_head

__all__ = [
    "BLOCKS",
    "EMBEDDINGS",
    "HEADS",
    "ClassEmbedding",
    "ConvBlock",
    "MLPBlock",
    "PosteriorHead",
    "SoftmaxHead",
    "build_dt_block",
    "build_embedding",
    "build_head",
    "count_parameters",
]
