"""The continuous-time block û_θ(z_t, x, t) of NoProp-CT/FM and the adjoint baseline (Fig. 6 right).

Legend: x input (B, ...), z = z_t noised label embedding (B, d), t time (B,) or scalar in [0, 1],
logits (B, m). CT turns logits into û = softmax(logits)·W_Embed, FM into v_θ = logits·W_Embed.

Figure 6 (right), no batch norm anywhere:
    image x     : conv stack (as DT) → flatten → FC(256) → ReLU
    noised z_t  : FC(256) → ReLU        (prototype, d = image size: a copy of the image branch)
    time t      : sinusoidal embedding (64) → FC(256) → ReLU
    concat [256, 256, 256] → FC(256) → ReLU → FC(128) → ReLU → FC(m)
With the DT conventions of models/blocks.py (3×3 valid convolutions, pooling after conv1 and conv3)
this reproduces v2 Table 5's CT counts: MNIST 0.87M/0.87M/1.48M, CIFAR-10 1.16M/1.17M/2.07M,
CIFAR-100 1.20M/1.18M/2.08M (tests/test_ct.py).

Choices the paper leaves open ([I]):
* Time embedding: the transformer/DDPM sinusoid of 1000·t (so the 1000-step inference grid is resolved
  by the highest frequency), 32 sines and 32 cosines with periods from 2π to 2π·10⁴.
* The ``mlp`` variant for tiny inputs (8×8 digits) replaces the conv stack by flatten → FC(256) → ReLU.

The block splits as ``forward(x, z, t) == fuse(encode_x(x), z, t)``: inference computes the image
features once per input and reuses them at every one of the (up to 1000) integration steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .blocks import HIDDEN, ImageAsLabel, fusion_mlp, image_branch, resolve_block_kind

TIME_DIM = 64
TIME_SCALE = 1000.0


def sinusoidal_embedding(t: Tensor, dim: int = TIME_DIM, scale: float = TIME_SCALE) -> Tensor:
    """[sin(s·ω_k), cos(s·ω_k)]_k with s = scale·t, ω_k = 10⁻⁴ᵏ/⁽ᵈⁱᵐ/²⁾, k = 0..dim/2−1. (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    angles = (scale * t.float()).unsqueeze(-1) * freqs  # (B, half)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class CTBlock(nn.Module):
    """Image ‖ label ‖ time branches → fusion MLP → m logits (Fig. 6 right)."""

    def __init__(self, image: nn.Module, label: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.image = image
        self.label = label
        self.time = nn.Sequential(nn.Linear(TIME_DIM, HIDDEN), nn.ReLU())
        self.fusion = fusion_mlp(3 * HIDDEN, num_classes, batch_norm=False)

    def encode_x(self, x: Tensor) -> Tensor:
        """Image features h_x, (B, 256); independent of z and t, so computed once per input."""
        return self.image(x)

    def fuse(self, h_x: Tensor, z: Tensor, t: Tensor | float) -> Tensor:
        """Logits from cached image features, z (B, d) and t (B,) or scalar."""
        t = torch.as_tensor(t, device=z.device)
        if t.dim() == 0:  # one time for the whole batch: embed once, broadcast
            h_t = self.time(sinusoidal_embedding(t.reshape(1))).expand(z.shape[0], -1)
        else:
            h_t = self.time(sinusoidal_embedding(t))
        return self.fusion(torch.cat([h_x, self.label(z), h_t], dim=1))

    def forward(self, x: Tensor, z: Tensor, t: Tensor | float) -> Tensor:
        return self.fuse(self.encode_x(x), z, t)


def build_ct_block(kind: str, in_shape: tuple[int, ...], d: int, num_classes: int) -> CTBlock:
    """The CT block: ``conv`` (Fig. 6 right), ``mlp`` (tiny inputs) or ``auto`` (as for DT blocks)."""
    if resolve_block_kind(kind, in_shape) == "conv":
        shape = tuple(in_shape)
        image: nn.Module = image_branch(shape, batch_norm=False)  # type: ignore[arg-type]
        if d == math.prod(shape):  # prototype: the label branch is a copy of the image branch
            label: nn.Module = ImageAsLabel(shape, batch_norm=False)  # type: ignore[arg-type]
        else:
            label = nn.Sequential(nn.Linear(d, HIDDEN), nn.ReLU())
    else:
        image = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), HIDDEN), nn.ReLU())
        label = nn.Sequential(nn.Linear(d, HIDDEN), nn.ReLU())
    return CTBlock(image, label, num_classes)
