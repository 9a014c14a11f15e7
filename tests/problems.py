"""Small shared fixtures: tiny configs and random data that build in milliseconds."""

from __future__ import annotations

import torch

from noprop import build_method
from noprop.config import make_config


def tiny_data(n: int = 64, shape=(1, 8, 8), num_classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.arange(n) % num_classes
    return x, y


def tiny_method(method: str = "dt", embedding: str = "one-hot", T: int = 3, **kw):
    """A tiny method; ``T`` is passed to the methods that have blocks (dt, backprop)."""
    x, y = tiny_data()
    if method in ("dt", "backprop"):
        kw["T"] = T
    cfg = make_config(method=method, embedding=embedding, block="mlp", embed_dim=6, **kw)
    return build_method(cfg, x.shape[1:], 4, x, y), cfg, (x, y)


def poison_digits(monkeypatch, where, cells: dict[tuple[int, int], float]) -> None:
    """Make ``load_dataset("digits")`` read a copy of the bundled digits with ``cells`` set: (image,
    pixel 0..63) -> value, e.g. NaN."""
    import numpy as np

    from noprop.data import datasets

    table = np.loadtxt(datasets._digits_file(), delimiter=",")
    for (i, j), v in cells.items():
        table[i, j] = v
    path = where / "poisoned-digits.csv.gz"
    np.savetxt(path, table, delimiter=",")
    monkeypatch.setattr(datasets, "_digits_file", lambda: path)
