"""Denoising blocks û_θt(z_{t-1}, x) of NoProp-DT (spec §3.1–3.3, Figure 6 left).

The block contract
------------------
A block is any ``nn.Module`` with ``forward(x, z) -> logits`` where ``x`` is the input batch (B, ...),
``z`` the noised label embedding (B, d) and ``logits`` has shape (B, m). The method turns logits into
û = softmax(logits) · W_Embed, so a block never sees W_Embed and can be a whole network. A block *may*
also split itself as ``forward(x, z) == fuse(encode_x(x), z)``; inference then computes the image
features once per input and reuses them (useful when the same block runs many steps, as in CT/FM).

Architecture choices that reproduce v2 Table 5 exactly (spec §3.3): 3×3 "valid" convolutions, stride 1,
2×2 max-pool after conv1 and conv3, dropout 0.2 after each conv stage, BatchNorm with affine parameters.
For the prototype embedding (d = image size) the label branch is a second copy of the image branch
applied to z reshaped as an image. Dropout in that copy is kept, as in the image branch ([I]).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .dropout import FastDropout

HIDDEN = 256


def conv_stack(in_channels: int, dropout: float = 0.2) -> nn.Sequential:
    """conv(32)→ReLU→pool→drop→conv(64)→ReLU→drop→conv(128)→ReLU→pool→drop→flatten (Fig. 6)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        FastDropout(dropout),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        FastDropout(dropout),
        nn.Conv2d(64, 128, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        FastDropout(dropout),
        nn.Flatten(),
    )


def conv_out_features(in_shape: tuple[int, int, int]) -> int:
    """Flattened size after :func:`conv_stack` (MNIST 2048, CIFAR 3200)."""
    _, h, w = in_shape
    h, w = (h - 2) // 2, (w - 2) // 2  # conv1 + pool
    h, w = (h - 4) // 2, (w - 4) // 2  # conv2, conv3 + pool
    if h < 1 or w < 1:
        raise ConfigError(f"input {in_shape} is too small for the conv block; use --block mlp")
    return 128 * h * w


def image_branch(in_shape: tuple[int, int, int], *, batch_norm: bool) -> nn.Sequential:
    """Conv stack → FC(256) → BN (DT, no ReLU after the BN as drawn) or → ReLU (CT, no BN)."""
    tail: list[nn.Module] = [nn.BatchNorm1d(HIDDEN)] if batch_norm else [nn.ReLU()]
    return nn.Sequential(
        conv_stack(in_shape[0]), nn.Linear(conv_out_features(in_shape), HIDDEN), *tail
    )


class LabelBranch(nn.Module):
    """FC(256)→BN→ReLU, then a residual FC(256)→BN→ReLU→FC(256)→BN added back (Fig. 6 left)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(d, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU())
        self.res = nn.Sequential(
            nn.Linear(HIDDEN, HIDDEN),
            nn.BatchNorm1d(HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.BatchNorm1d(HIDDEN),
        )

    def forward(self, z: Tensor) -> Tensor:
        h = self.inp(z)
        return h + self.res(h)


class ImageAsLabel(nn.Module):
    """Label branch for the prototype embedding: z (B, C·H·W) is an image, processed like x."""

    def __init__(self, in_shape: tuple[int, int, int], *, batch_norm: bool) -> None:
        super().__init__()
        self.in_shape = in_shape
        self.net = image_branch(in_shape, batch_norm=batch_norm)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.reshape(z.shape[0], *self.in_shape))


def fusion_mlp(in_features: int, num_classes: int, *, batch_norm: bool) -> nn.Sequential:
    """FC(256)→[BN]→ReLU→FC(128)→[BN]→ReLU→FC(m) (Fig. 6)."""

    def norm(n: int) -> list[nn.Module]:
        return [nn.BatchNorm1d(n)] if batch_norm else []

    return nn.Sequential(
        nn.Linear(in_features, HIDDEN),
        *norm(HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, 128),
        *norm(128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


class TwoBranchBlock(nn.Module):
    """image branch(x) ‖ label branch(z) → fusion MLP → logits; subclasses build the three parts."""

    image: nn.Module
    label: nn.Module
    fusion: nn.Module

    def encode_x(self, x: Tensor) -> Tensor:
        return self.image(x)

    def fuse(self, h_x: Tensor, z: Tensor) -> Tensor:
        return self.fusion(torch.cat([h_x, self.label(z)], dim=1))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.fuse(self.encode_x(x), z)


class ConvBlock(TwoBranchBlock):
    """The DT block of Figure 6 (left): image branch ‖ label branch → fusion MLP → m logits."""

    def __init__(self, in_shape: tuple[int, int, int], d: int, num_classes: int) -> None:
        super().__init__()
        self.image = image_branch(in_shape, batch_norm=True)
        if d == math.prod(in_shape):
            self.label: nn.Module = ImageAsLabel(in_shape, batch_norm=True)
        else:
            self.label = LabelBranch(d)
        self.fusion = fusion_mlp(2 * HIDDEN, num_classes, batch_norm=True)


class MLPBlock(TwoBranchBlock):
    """A small DT block for flat or tiny inputs (e.g. 8×8 digits): the Fig. 6 layout with an MLP image
    branch FC(256)→BN→ReLU instead of the conv stack; label branch and fusion as in Fig. 6."""

    def __init__(self, in_shape: tuple[int, ...], d: int, num_classes: int) -> None:
        super().__init__()
        self.image = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(in_shape), HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU()
        )
        self.label = LabelBranch(d)
        self.fusion = fusion_mlp(2 * HIDDEN, num_classes, batch_norm=True)


BLOCKS = ("auto", "conv", "mlp")


def resolve_block_kind(kind: str, in_shape: tuple[int, ...]) -> str:
    """``auto`` picks the conv block for images of at least 16×16 and the MLP block otherwise."""
    if kind not in BLOCKS:
        raise ConfigError(f"unknown block {kind!r}; choose one of {', '.join(BLOCKS)}")
    if kind != "auto":
        return kind
    return "conv" if len(in_shape) == 3 and min(in_shape[1:]) >= 16 else "mlp"


def build_dt_block(kind: str, in_shape: tuple[int, ...], d: int, num_classes: int) -> nn.Module:
    """One DT block of the requested kind (``conv`` | ``mlp`` | ``auto``)."""
    if resolve_block_kind(kind, in_shape) == "conv":
        return ConvBlock(tuple(in_shape), d, num_classes)  # type: ignore[arg-type]
    return MLPBlock(in_shape, d, num_classes)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
