"""Class-probability heads p̂_θout(y | z_T) (spec §1.5).

Both heads map z (B, d) to class logits (B, m); ``W`` is W_Embed (m, d), used only by the posterior head.

* ``softmax`` (Eq. 14): logits = f_θout(z), one linear layer.
* ``posterior`` (Eqs. 15–16): ỹ = softmax(f_θout(z)) W_Embed and logit_y = −‖ỹ − u_y‖² / (2σ²), i.e. the
  posterior over y with equal priors and likelihood N(ỹ | u_y, σ²I). The paper does not give σ ([I]);
  the default σ = 0.1 lets the head reach confident probabilities for unit-norm embeddings (the largest
  squared distance between one-hot rows is 2, giving logit gaps of up to 100).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError

HEADS = ("softmax", "posterior")


def readout_linear(W: Tensor, init: str = "readout") -> nn.Linear:
    """f_θout initialised as the nearest-embedding read-out ([I], the paper gives no init).

    logit_k = κ(⟨z, u_k⟩ − ½‖u_k‖²) / s = −κ‖z − u_k‖² / (2s) + const(z), with s = mean_k ‖u_k‖², so at
    initialisation argmax f_θout(z) is the class whose embedding is closest to z (FM's read-out). The
    temperature κ = ln(9(m − 1)) makes a clean one-hot embedding score p̂(y | u_y) = 0.9: confident
    enough that cross-entropy concentrates on the examples that are wrong, not so confident that the
    head's own gradient vanishes.

    Why: with PyTorch's default uniform init the head maps the embedding corners to random classes,
    and some classes own no region of embedding space at all. The head learns only through
    cross-entropy at the optimiser's step size, so it takes hundreds of steps before every class is
    reachable; meanwhile DT read-outs are wrong however good the blocks are, and the back-prop twin
    saturates its blocks onto the reachable classes and stalls (measured on digits: 0.80 train
    accuracy after 60 epochs vs 0.99 with this init).
    """
    W = W.detach().float()
    m, d = W.shape
    f = nn.Linear(d, m)
    if init == "default":  # PyTorch's uniform init, for comparison (docs/methods.md: "slow start")
        return f
    scale = W.pow(2).sum(-1).mean().clamp_min(1e-8) / math.log(9 * max(m - 1, 1))
    with torch.no_grad():
        f.weight.copy_(W / scale)
        f.bias.copy_(-0.5 * W.pow(2).sum(-1) / scale)
    return f


class SoftmaxHead(nn.Module):
    """p̂(y | z) = softmax(f_θout(z)) with f_θout linear (Eq. 14)."""

    def __init__(self, W: Tensor, init: str = "readout") -> None:
        super().__init__()
        self.f_out = readout_linear(W, init)

    def forward(self, z: Tensor, W: Tensor) -> Tensor:
        return self.f_out(z)


class PosteriorHead(nn.Module):
    """p̂(y | z) ∝ exp(−‖softmax(f_θout(z)) W − u_y‖² / (2σ²)) (Eqs. 15–16)."""

    def __init__(self, W: Tensor, sigma: float = 0.1, init: str = "readout") -> None:
        super().__init__()
        if sigma <= 0:
            raise ConfigError(f"--posterior-sigma must be > 0 (got {sigma})")
        self.f_out = readout_linear(W, init)
        self.sigma = sigma

    def forward(self, z: Tensor, W: Tensor) -> Tensor:
        y_tilde = self.f_out(z).softmax(-1) @ W  # (B, d), Eq. 15
        if y_tilde.dim() == 2:
            sq_dist = (y_tilde.unsqueeze(1) - W.unsqueeze(0)).pow(2).sum(-1)  # (B, m)
        else:  # a label per position: (B, L, m) by ‖a‖² − 2a·b + ‖b‖², not a (B, L, m, d) tensor
            sq_dist = y_tilde.pow(2).sum(-1, keepdim=True) - 2 * y_tilde @ W.T + W.pow(2).sum(-1)
        return -sq_dist / (2 * self.sigma**2)  # Eq. 16 (log-softmax of this is the posterior)


def build_head(kind: str, W: Tensor, *, sigma: float = 0.1, init: str = "readout") -> nn.Module:
    """The head of the given kind, its f_θout initialised from W_Embed (m, d) (see readout_linear)."""
    if kind == "softmax":
        return SoftmaxHead(W, init)
    if kind == "posterior":
        return PosteriorHead(W, sigma, init)
    raise ConfigError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")
