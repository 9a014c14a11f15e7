"""Inverted dropout with a cheaper mask draw for CPU training.

``torch.nn.Dropout`` draws one Bernoulli sample per element, which on CPU cost as much as a whole
convolution of the Fig. 6 block (profiled: 17% of a DT training step on MNIST). Here one 64-bit random
integer supplies four 16-bit uniforms, and an element is kept when its uniform falls below
round(65536·(1 − p)); outputs are scaled by 65536/that count so the expectation is exact. The keep
probability differs from 1 − p by less than 1/65536 (``tests/test_models.py`` checks the rate per
position: an earlier version reused a sign-extended word and kept every fourth element always,
which cost 4 points of block accuracy on MNIST). Semantics otherwise equal ``nn.Dropout``: identity
in eval mode, and reproducible under ``torch.manual_seed``. For channels-last 4-D inputs the mask is
drawn in memory order so that no layout conversion happens.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

# ``random_()`` fills int64 uniformly on [0, 2**63): the top 16-bit word has a constant sign bit, so
# only the three low words of each draw are used (which ones are "low" depends on the byte order).
_LOW_WORDS = [0, 1, 2] if sys.byteorder == "little" else [1, 2, 3]


def _uniform16(shape: torch.Size, device: torch.device) -> Tensor:
    n = 1
    for s in shape:
        n *= s
    words = torch.empty(((n + 2) // 3,), dtype=torch.int64, device=device).random_()
    u = words.view(torch.int16).view(-1, 4)[:, _LOW_WORDS].reshape(-1)[:n]
    return u.view(shape)  # uniform on [-32768, 32767]


def fast_dropout(x: Tensor, p: float) -> Tensor:
    if p <= 0.0:
        return x
    keep_count = round(65536 * (1.0 - p))
    threshold = keep_count - 32768
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    xc = x.permute(0, 2, 3, 1) if channels_last and not x.is_contiguous() else x
    keep = _uniform16(xc.shape, x.device) < threshold
    out = xc * keep * (65536.0 / keep_count)
    return out.permute(0, 3, 1, 2) if xc is not x else out


class FastDropout(nn.Module):
    """Drop-in for ``nn.Dropout(p)`` (see module docstring)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return fast_dropout(x, self.p) if self.training else x

    def extra_repr(self) -> str:
        return f"p={self.p}"
