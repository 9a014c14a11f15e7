"""Class-probability heads p̂_θout(y | z_T) (spec §1.5).

Both heads map z (B, d) to class logits (B, m); ``W`` is W_Embed (m, d), used only by the posterior head.

* ``softmax`` (Eq. 14): logits = f_θout(z), one linear layer.
* ``posterior`` (Eqs. 15–16): ỹ = softmax(f_θout(z)) W_Embed and logit_y = −‖ỹ − u_y‖² / (2σ²), i.e. the
  posterior over y with equal priors and likelihood N(ỹ | u_y, σ²I). The paper does not give σ ([I]);
  the default σ = 0.1 lets the head reach confident probabilities for unit-norm embeddings (the largest
  squared distance between one-hot rows is 2, giving logit gaps of up to 100).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import ConfigError

HEADS = ("softmax", "posterior")


def zero_linear(d: int, num_classes: int) -> nn.Linear:
    """f_θout with zero weights and bias ([I], the paper gives no init): p̂ starts uniform.

    Why: f_θout only learns through cross-entropy at the optimiser's step size (1e-3). From PyTorch's
    default uniform init (|w| up to 1/√d) it takes hundreds of steps for the correct logit to overcome
    the random ones, and every read-out before that is wrong however good the blocks are. From zero,
    the first Adam step already ranks the correct class first for clean embeddings.
    """
    f = nn.Linear(d, num_classes)
    nn.init.zeros_(f.weight)
    nn.init.zeros_(f.bias)
    return f


class SoftmaxHead(nn.Module):
    """p̂(y | z) = softmax(f_θout(z)) with f_θout linear (Eq. 14)."""

    def __init__(self, d: int, num_classes: int) -> None:
        super().__init__()
        self.f_out = zero_linear(d, num_classes)

    def forward(self, z: Tensor, W: Tensor) -> Tensor:
        return self.f_out(z)


class PosteriorHead(nn.Module):
    """p̂(y | z) ∝ exp(−‖softmax(f_θout(z)) W − u_y‖² / (2σ²)) (Eqs. 15–16)."""

    def __init__(self, d: int, num_classes: int, sigma: float = 0.1) -> None:
        super().__init__()
        if sigma <= 0:
            raise ConfigError(f"--posterior-sigma must be > 0 (got {sigma})")
        self.f_out = zero_linear(d, num_classes)
        self.sigma = sigma

    def forward(self, z: Tensor, W: Tensor) -> Tensor:
        y_tilde = self.f_out(z).softmax(-1) @ W  # (B, d), Eq. 15
        sq_dist = (y_tilde.unsqueeze(1) - W.unsqueeze(0)).pow(2).sum(-1)  # (B, m)
        return -sq_dist / (2 * self.sigma**2)  # Eq. 16 (log-softmax of this is the posterior)


def build_head(kind: str, d: int, num_classes: int, *, sigma: float = 0.1) -> nn.Module:
    if kind == "softmax":
        return SoftmaxHead(d, num_classes)
    if kind == "posterior":
        return PosteriorHead(d, num_classes, sigma)
    raise ConfigError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")
