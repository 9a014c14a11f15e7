"""The precision policy: ``--precision 32 | bf16-mixed | 16-mixed`` (Lightning's names).

``32`` (the default, the paper's) runs everything in float32 and is bit-identical to noprop before
this option existed. The mixed policies keep float32 master weights, gradients and optimiser states
and run the *networks* under :func:`torch.autocast` in bfloat16 or float16.

Where the cast boundary is, and why there:

* **Inside autocast** is only what autocast itself lowers: matmul, linear, conv and attention — the
  blocks, the head and ``W_Embed``'s mixing product. Those hold the FLOPs; that is where the speed is.
* **Float32** stays everything else, for three reasons. (1) Autocast runs every loss function
  (cross-entropy, MSE, KL) in float32 by its own op list, and leaves elementwise ops in their inputs'
  dtype; the targets (rows of ``W_Embed``), the schedules' buffers (ᾱ_t, SNR(t), a_t, b_t, c_t) and
  the solver state z are float32, so type promotion keeps the losses, the SNR weights, the KL term
  and every diffusion update in float32. NoProp-CT's learned schedule γ(t) is elementwise (no
  matmul), so autocast never lowers it. (2) The ODE solvers cast the network's velocity to the
  state's dtype (``solvers.integrate``), so the solver state never drops to bf16. (3) The steps cast
  each loss to float32 before the finiteness check and the (scaled) backward (``training/steps.py``)
  and inference casts every read-out to float32 (:func:`float32`), so a caller never sees bf16.
* ``16-mixed`` adds loss scaling (``torch.amp.GradScaler``), one scaler per training unit: the blocks
  are independent, so one block's overflow must not shrink another's scale. A step whose scaled
  gradients overflow is skipped and counted, not treated as divergence (the steps module).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from torch import Tensor

from .errors import ConfigError

Precision = Literal["32", "bf16-mixed", "16-mixed"]
PRECISIONS: tuple[str, ...] = ("32", "bf16-mixed", "16-mixed")

#: the autocast dtype of each mixed policy
DTYPES: dict[str, torch.dtype] = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def check_precision(name: str) -> None:
    """``--precision`` must be one of :data:`PRECISIONS`."""
    if name not in PRECISIONS:
        raise ConfigError(f"unknown --precision {name!r}; choose one of {', '.join(PRECISIONS)}")


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The networks' context under ``precision``: autocast for the mixed policies, else nothing.

    ``32`` returns a null context (not ``autocast(enabled=False)``), so the float32 path runs exactly
    the code it ran before the option existed."""
    check_precision(precision)
    if precision == "32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=DTYPES[precision])


def float32(t: Tensor) -> Tensor:
    """``t`` as float32 if it is a lower-precision float (the read-outs leaving autocast)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def uses_scaler(precision: str) -> bool:
    """Whether the policy needs loss scaling (float16's narrow exponent range does; bf16's does not)."""
    return precision == "16-mixed"


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matmuls/convolutions natively (else bf16-mixed is slower).

    On CPUs, oneDNN needs AVX512-BF16 or AMX (``mkldnn._is_mkldnn_bf16_supported``); without it the
    convolutions fall back to ``_slow_conv2d`` (measured 10x slower than float32 on an AVX2 EPYC)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
