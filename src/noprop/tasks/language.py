"""Byte-level next-token prediction (issue 11): the vocabulary is the 256 byte values.

Data (``noprop.data.text``): one uint8 tensor per split. Windows: the split is cut into consecutive,
non-overlapping windows of ``--context`` bytes, x = bytes [iL, iL + L) and y = bytes [iL + 1, iL + L + 1)
(teacher forcing: every position of a window is a target); a trailing remainder shorter than a window
is dropped. [I] Non-overlapping windows make one epoch one pass over every byte as a target, and the
trainer's shuffled mini-batches of windows are then exactly its image mini-batches. The windows are
built by one indexing operation (``unfold``), no per-sample Python. ``--max-train-samples K`` keeps a
seeded random subset of K training windows (in corpus order).

A block reads x (B, L) and z (B, L, d) and returns (B, L, 256) logits; labels are (B, L), so a method
sees one label per position (``label_dims = 1``). Metrics: top-1 accuracy (the trainer's
``accuracy``, over all positions) and bits per byte, the mean of −log2 p̂(next byte) (:func:`bits`);
the model is selected on validation bits per byte (:attr:`LanguageTask.metric`).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..data import DataConfig, DataSplits
from ..data.text import TextCorpus, load_text
from ..errors import ConfigError
from ..models.config import TEXT_EMBED_DIM, ModelConfig
from ..models.transformer import VOCAB, ContinuousLanguageBlock, LanguageBlock
from .base import BlockFamily, Task

__all__ = ["LanguageTask", "bits", "mixture_bits", "unigram_bits", "windows"]

LN2 = math.log(2.0)


def windows(data: Tensor, context: int) -> tuple[Tensor, Tensor]:
    """(x, y) of shapes (N, L): non-overlapping windows and the same windows shifted by one byte."""
    n = max(0, (data.numel() - 1) // context)
    x = data[: n * context].view(n, context)
    y = data[1 : n * context + 1].view(n, context).long()
    return x, y


def bits(logits: Tensor, y: Tensor) -> Tensor:
    """−log2 p̂(y) per position from logits (..., 256), via log-softmax (no underflow)."""
    logp = torch.log_softmax(logits.float(), -1)
    return -logp.gather(-1, y.expand(*logp.shape[:-1]).unsqueeze(-1)).squeeze(-1) / LN2


def mixture_bits(logits: Tensor, y: Tensor) -> Tensor:
    """−log2 of the mixture (1/S) Σ_s p̂_s(y) over chains on dim 0 of logits (S, ..., 256).

    Computed in log space: log Σ_s exp(log p̂_s(y)) − log S, so a chain that puts 1e-300 on the
    true byte neither underflows nor dominates."""
    logp = torch.log_softmax(logits.float(), -1)
    logp_y = logp.gather(-1, y.expand(*logp.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return -(torch.logsumexp(logp_y, 0) - math.log(logits.shape[0])) / LN2


def unigram_bits(train: Tensor, test: Tensor) -> float:
    """Bits per byte of the unigram baseline: p(b) from the training bytes' counts, add-one smoothed
    (every byte value keeps a non-zero probability), scored on ``test`` (both uint8, 1-D)."""
    counts = torch.bincount(train.long(), minlength=VOCAB).double() + 1.0
    logp = counts.log() - counts.sum().log()
    return float(-logp[test.long()].mean() / LN2)


class LanguageTask(Task):
    """Next-byte prediction on a text corpus of :data:`noprop.data.text.TEXT_DATASETS`."""

    name: ClassVar[str] = "language"
    #: models are selected (and ``--patience`` counts) on validation bits per byte, lower is better
    metric: ClassVar[str] = "bits_per_byte"
    higher_is_better: ClassVar[bool] = False
    label_dims: ClassVar[int] = 1
    default_embed_dim: ClassVar[int] = TEXT_EMBED_DIM
    #: a chain model is selected on its best read-out, not the paper's (:mod:`noprop.runs.selection`)
    evaluator: ClassVar[str | None] = "noprop.runs.selection:fair_local_evaluate"

    def __init__(self, dataset: str, context: int = 128) -> None:
        self.dataset = dataset
        self.context = context
        self.corpus: TextCorpus | None = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.context,)

    @property
    def num_classes(self) -> int:
        return VOCAB

    def class_name(self, k: int) -> str:
        return repr(bytes([k]))[2:-1]

    def load(self, data: DataConfig, seed: int) -> DataSplits:
        self.context = data.context
        corpus = load_text(data.dataset, data.data_dir, download=data.download)
        self.corpus = corpus
        train = windows(corpus.train, self.context)
        if data.max_train_samples is not None and data.max_train_samples < train[0].shape[0]:
            # a seeded random subset of the windows (kept in corpus order), as images subsample
            gen = torch.Generator().manual_seed(seed)
            keep = torch.randperm(train[0].shape[0], generator=gen)[: data.max_train_samples]
            keep = keep.sort().values
            train = (train[0][keep], train[1][keep])
        val, test = windows(corpus.val, self.context), windows(corpus.test, self.context)
        for split, (x, _) in (("train", train), ("validation", val), ("test", test)):
            if x.shape[0] == 0:
                raise ConfigError(
                    f"--dataset {data.dataset}: the {split} split is shorter than one "
                    f"--context {self.context} window; use a shorter --context or more text"
                )
        return DataSplits(train, val, test, VOCAB, (self.context,), data.dataset, (0.0,), (1.0,))  # type: ignore[arg-type]

    def data_info(self) -> dict | None:
        """The corpus facts a run directory records (``corpus.json``): SHA-256, bytes per split."""
        return None if self.corpus is None else {**self.corpus.info(), "context": self.context}

    def check_model(self, model: ModelConfig) -> None:
        if model.embedding == "prototype":
            raise ConfigError(
                "--embedding prototype initialises W_Embed from class images; text has none "
                "(use one-hot or learned)"
            )
        if model.width % model.heads:
            raise ConfigError(f"--width {model.width} must be a multiple of --heads {model.heads}")

    def build_block(self, family: BlockFamily, model: ModelConfig, d: int) -> nn.Module:
        if model.block not in ("auto", "transformer"):
            raise ConfigError(f"--block {model.block} is an image block; text uses transformer")
        cls = LanguageBlock if family == "discrete" else ContinuousLanguageBlock
        return cls(self.context, model.width, model.heads, model.block_layers, d)

    def eval_batch_size(self, requested: int) -> int:
        """Windows per inference batch: a window is L positions, each with S × 256 read-out logits."""
        return max(1, requested // 8)

    def score(self, logits: Tensor, y: Tensor) -> Tensor:
        return (logits.argmax(-1) == y).flatten(1).sum(-1)

    def extra_scores(self, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Summed bits per position for every read-out: logits (S, B, L, 256) → (S,)."""
        return {"bits_per_byte": bits(logits, y).flatten(1).sum(-1)}
