"""Class embeddings W_Embed ∈ R^{m×d} (spec §3.4); u_y is row y.

* ``one-hot``: fixed identity, d = m. Not a parameter, so nothing couples the blocks through it.
* ``learned``: trainable, d = ``embed_dim`` (default 20); orthonormal rows when d >= m ("orthogonal when
  possible"), otherwise i.i.d. N(0, 1/d) entries so rows have norm ≈ 1 like the other inits.
* ``prototype``: trainable, d = image size; row y starts as the training image of class y with the
  smallest median distance to the other images of its class (a medoid under the median). Classes with
  more than ``max_per_class`` images are subsampled (seeded) so the pairwise-distance matrix stays small.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError

EMBEDDINGS = ("one-hot", "learned", "prototype")


class ClassEmbedding(nn.Module):
    """Holds W_Embed; ``forward(y)`` returns u_y with shape (B, d)."""

    def __init__(self, kind: str, weight: Tensor) -> None:
        super().__init__()
        if kind not in EMBEDDINGS:
            raise ConfigError(f"unknown embedding {kind!r}; choose one of {', '.join(EMBEDDINGS)}")
        self.kind = kind
        if kind == "one-hot":
            self.register_buffer("weight", weight)
        else:
            self.weight = nn.Parameter(weight)

    @property
    def learnable(self) -> bool:
        return isinstance(self.weight, nn.Parameter)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    def forward(self, y: Tensor) -> Tensor:
        return self.weight[y]

    def mix(self, p: Tensor) -> Tensor:
        """p · W_Embed, e.g. û = Σ_k softmax(logits)_k u_k (spec §3.1); p has shape (..., m).

        For the one-hot embedding W_Embed = I and p · I = p exactly (every product with 0 is 0 and
        adding zeros is exact), so the (B, m) × (m, m) matmul — its forward and its backward — is
        skipped: with m = 256 byte values it was a third of a NoProp-LM block step's FLOPs.
        """
        return p if self.kind == "one-hot" else p @ self.weight


#: images per class the prototype initialisation reads at most (a seeded subsample of larger classes)
PROTOTYPE_MAX_PER_CLASS = 2000


def prototype_init(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    *,
    max_per_class: int = PROTOTYPE_MAX_PER_CLASS,
    seed: int = 0,
) -> Tensor:
    """Row y = the image of class y with the smallest median L2 distance to the others (spec §3.4).

    Args:
        x: training images, shape (N, ...); flattened to (N, D).
        y: labels, shape (N,).
        num_classes: m.
        max_per_class: classes larger than this are subsampled to keep cdist at (n, n) <= this².
        seed: seed of the subsample.

    Returns:
        W, shape (m, D).
    """
    flat = x.reshape(x.shape[0], -1).float()
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for k in range(num_classes):
        idx = (y == k).nonzero().flatten()
        if idx.numel() == 0:
            raise ConfigError(f"prototype embedding: class {k} has no training images")
        if idx.numel() > max_per_class:
            idx = idx[torch.randperm(idx.numel(), generator=gen)[:max_per_class]]
        pts = flat[idx]
        dist = torch.cdist(pts, pts)  # (n, n)
        dist.fill_diagonal_(float("nan"))  # median over the *other* images
        rows.append(pts[dist.nanmedian(dim=1).values.nan_to_num(0.0).argmin()])
    return torch.stack(rows)


def build_embedding(
    kind: str,
    num_classes: int,
    *,
    embed_dim: int = 20,
    train_x: Tensor | None = None,
    train_y: Tensor | None = None,
    seed: int = 0,
) -> ClassEmbedding:
    """Build W_Embed of the given kind (see module docstring)."""
    if kind == "one-hot":
        return ClassEmbedding(kind, torch.eye(num_classes))
    if kind == "learned":
        if embed_dim < 1:
            raise ConfigError(f"--embed-dim must be >= 1 (got {embed_dim})")
        gen = torch.Generator().manual_seed(seed)
        if embed_dim >= num_classes:
            w = torch.empty(num_classes, embed_dim)
            nn.init.orthogonal_(w, generator=gen)
        else:
            w = torch.randn(num_classes, embed_dim, generator=gen) / embed_dim**0.5
        return ClassEmbedding(kind, w)
    if kind == "prototype":
        if train_x is None or train_y is None:
            raise ConfigError("the prototype embedding needs the training images to initialise")
        return ClassEmbedding(kind, prototype_init(train_x, train_y, num_classes, seed=seed))
    raise ConfigError(f"unknown embedding {kind!r}; choose one of {', '.join(EMBEDDINGS)}")
