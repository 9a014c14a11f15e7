"""``--augment crop,flip``: random crop and horizontal flip of image training batches, on the device.

The augmentation the strongest NoProp CIFAR results use (torchvision's ``RandomCrop(H, padding=4)``
then ``RandomHorizontalFlip()``), written for a whole batch (B, C, H, W) at once: one gather of the
source pixels, no per-image Python.

* **crop**: the image is shifted by (dy, dx), each uniform in {−4, …, 4}; pixels shifted in from
  outside are 0. [I] The padding is 0 *after* normalisation — the training set's mean colour, as in
  GPU augmentation pipelines that pad the normalised tensor (torchvision pads the raw image with black).
* **flip**: the image is mirrored left–right with probability 1/2.

[I] Randomness: the draws of an example are a hash of (``--seed``, epoch, the example's position in
the training split), computed with integer tensor operations on the batch's device — no generator
state. Every block's pass over an epoch therefore sees the same augmented image of an example (a
fresh one every epoch), and the result is the same on CPU and GPU, after ``--resume`` (which restarts
at an epoch boundary), for block-parallel ranks and for data-parallel shards of a batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError

AUGMENTATIONS = ("crop", "flip")
PAD = 4
_P = 2**31 - 1  # a prime modulus: every product below stays under 2**62 (no int64 overflow)


def parse_augment(text: str) -> tuple[str, ...]:
    """``"none"`` → (); ``"flip,crop"`` → ("crop", "flip") (canonical order); a ConfigError otherwise."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items == ["none"] or not items:
        return ()
    unknown = [t for t in items if t not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(
            f"unknown --augment {unknown[0]!r}; use none, or a comma-separated list of "
            f"{', '.join(AUGMENTATIONS)}"
        )
    return tuple(a for a in AUGMENTATIONS if a in items)


def _mix(h: Tensor) -> Tensor:
    """A few rounds of multiply-mod-prime and xor-shift over values in [0, 2**31)."""
    for a, c in ((1_103_515_245, 12_345), (2_147_483_629, 1_013_904_223), (48_271, 7)):
        h = (h * a + c) % _P
        h = h ^ (h >> 13)
    return h


def draws(idx: Tensor, seed: int, epoch: int) -> Tensor:
    """Per-example random integers in [0, 2**31) from (seed, epoch, position): ``idx`` (B,) int64."""
    key = (seed * 1_000_003 + epoch * 10_007 + 29) % _P
    return _mix(_mix(idx.long() % _P) ^ key)


def augment_batch(x: Tensor, idx: Tensor, ops: tuple[str, ...], seed: int, epoch: int) -> Tensor:
    """The batch ``x`` (B, C, H, W) of examples ``idx`` (B,) with ``ops`` applied (module docstring),
    in ``x``'s memory format (channels-last stays channels-last)."""
    if not ops:
        return x
    b, _, h, w = x.shape
    r = draws(idx, seed, epoch)
    crop, flip = "crop" in ops, "flip" in ops
    dy = (r % (2 * PAD + 1) - PAD) if crop else torch.zeros_like(r)
    dx = (r // (2 * PAD + 1) % (2 * PAD + 1) - PAD) if crop else torch.zeros_like(r)
    mirrored = (r // (2 * PAD + 1) ** 2 % 2 == 1) if flip else torch.zeros_like(r, dtype=torch.bool)
    i = torch.arange(h, device=x.device)
    j = torch.arange(w, device=x.device)
    rows = i + dy[:, None]  # (B, H): source row of each output row
    cols = torch.where(mirrored[:, None], w - 1 - j, j) + dx[:, None]  # (B, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None]
    # advanced indices around a slice: the result is (B, H, W, C); back to (B, C, H, W) by a view
    out = x[batch, :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
    out = out.masked_fill_(~inside[..., None], 0).permute(0, 3, 1, 2)
    last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return out.contiguous(memory_format=torch.channels_last if last else torch.contiguous_format)
