"""Equal size and equal compute: parameters and training FLOPs per token of every run.

[I] The token/position embedding tables are excluded from the parameter match, as in Kaplan et al.
(2020): they are lookups that cost no FLOPs, and every NoProp block has its own (T tables where the
transformer has one), so matching total parameters would make a block-wise model computationally
smaller by about T × (256 + context) × w parameters' worth of matmuls it does not have. Total
parameters are reported too.

FLOPs of one training step (forward + backward of its loss; for a block-wise model, the sum over its
blocks' steps) are counted with ``torch.utils.flop_counter`` (plus the CPU flash-attention kernels,
which it does not know). :func:`match_width` chooses, per run, the width whose worst violation of the
two tolerances is smallest; where no width meets both, the report says so.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch.utils import flop_counter as fc

from noprop import Method, RunConfig, build_method
from noprop.models import count_parameters as count_trainable
from noprop.models import embedding_parameters
from noprop.tasks import LanguageTask

from .registry import REFERENCE, RunSpec

#: the issue's tolerances: parameters within 5%, training FLOPs per token within 10%
PARAM_TOLERANCE, FLOP_TOLERANCE = 0.05, 0.10
#: widths whose parameters are further than this from the reference's are not FLOP-counted
#: (their score is > 3 whatever their FLOPs; the full scan runs only if no width scores <= 3)
_PARAM_BAND = 0.15

_ATEN = torch.ops.aten
SDPA_CPU_FLOPS = {  # flop_counter knows the CUDA attention kernels, not the CPU flash kernel
    _ATEN._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, out_shape=None, **kw: (
        fc.sdpa_flop_count(q, k, v)
    ),
    _ATEN._scaled_dot_product_flash_attention_for_cpu_backward: lambda g, q, k, v, *a, out_shape=None, **kw: (
        fc.sdpa_backward_flop_count(g, q, k, v)
    ),
}  # fmt: skip


def count_parameters(method: Method) -> dict[str, int]:
    """Trainable parameters (a one-hot W_Embed is a fixed buffer, not counted), and how many of them
    are token/position embedding tables."""
    total = count_trainable(method)
    emb = embedding_parameters(method)
    return {"total": total, "embedding_tables": emb, "non_embedding": total - emb}


def step_flops(method: Method, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of forward + backward of every unit's loss on one batch (all T blocks for NoProp)."""
    total = 0
    method.train()
    for unit in range(method.num_units):
        with fc.FlopCounterMode(display=False, custom_mapping=SDPA_CPU_FLOPS) as counter:
            loss, _ = method.loss(x, y, unit)
            loss.backward()
        total += counter.get_total_flops()
        method.zero_grad(set_to_none=True)
    return total


def probe_batch(context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two seeded random windows: what the width search counts FLOPs on."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, context), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 256, (2, context), generator=gen)
    return x, y


def reference_config(shared: dict[str, Any], ns: argparse.Namespace) -> RunConfig:
    """The back-prop transformer at ``--width``: what every run is matched to."""
    return REFERENCE.config(shared, ns, ns.width, 1)


def match_width(
    spec: RunSpec, shared: dict[str, Any], ns: argparse.Namespace, task: LanguageTask
) -> tuple[int, dict[str, Any]]:
    """The width (a multiple of ``--heads``, at most 2 × ``--width``) of ``spec``'s run that best
    matches the reference: the smallest worst violation of the two tolerances, max(|Δparams| / 5%,
    |ΔFLOPs per token| / 10%), the smallest width on ties. The reference itself keeps ``--width``."""
    if spec.entry is REFERENCE:
        return ns.width, {}
    x, y = probe_batch(ns.context)
    ref = build_method(reference_config(shared, ns), task)
    p_ref, f_ref = count_parameters(ref)["non_embedding"], step_flops(ref, x, y)
    widths = list(range(ns.heads, 2 * ns.width + 1, ns.heads))
    params: dict[int, float] = {}

    def dp(w: int) -> float:
        if w not in params:
            m = build_method(spec.entry.config(shared, ns, w, spec.k), task)
            params[w] = count_parameters(m)["non_embedding"] / p_ref - 1
        return params[w]

    def best_of(candidates: list[int]) -> tuple[float, int, float, float] | None:
        best = None
        for w in candidates:
            m = build_method(spec.entry.config(shared, ns, w, spec.k), task)
            df = step_flops(m, x, y) / f_ref - 1
            score = max(abs(dp(w)) / PARAM_TOLERANCE, abs(df) / FLOP_TOLERANCE)
            if best is None or score < best[0]:
                best = (score, w, dp(w), df)
            if dp(w) > 0.5 and df > 0.5:
                break
        return best

    # parameters grow with width: bisect for the first width at or above the reference's, then
    # FLOP-count the widths around it whose parameters are within the band
    lo, hi = 0, len(widths) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if dp(widths[mid]) < 0:
            lo = mid + 1
        else:
            hi = mid
    i = j = lo
    while i > 0 and abs(dp(widths[i - 1])) <= _PARAM_BAND:
        i -= 1
    while j + 1 < len(widths) and abs(dp(widths[j + 1])) <= _PARAM_BAND:
        j += 1
    best = best_of(widths[i : j + 1])
    if best is None or best[0] > _PARAM_BAND / PARAM_TOLERANCE:
        best = best_of(widths)  # no width within the band meets the tolerances: scan them all
    assert best is not None
    return best[1], {"search_params_delta": best[2], "search_flops_delta": best[3]}


def ratios(run: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """A planned run's parameters and FLOPs per token over the reference's."""
    return {
        "non_embedding_ratio": run["parameters"]["non_embedding"]
        / reference["parameters"]["non_embedding"],
        "total_ratio": run["parameters"]["total"] / reference["parameters"]["total"],
        "flops_per_token_ratio": run["flops_per_token"] / reference["flops_per_token"],
    }


def within(matching: dict[str, Any]) -> tuple[bool, bool]:
    """Whether the parameters (5%) and FLOPs per token (10%) are within tolerance."""
    return (
        abs(matching["non_embedding_ratio"] - 1) <= PARAM_TOLERANCE,
        abs(matching["flops_per_token_ratio"] - 1) <= FLOP_TOLERANCE,
    )
