"""The one place ``lm compare`` reads a trained model: an adapter over :mod:`noprop.runs.language`.

Every evaluation call of the comparison goes through this module, so the read-outs can be swapped
(fair per-block read-outs p_t, CT/FM/DiffusionBlocks chains, the tuned lens) without touching the
planning, training or report code. What it calls today:

* :func:`~noprop.runs.language.fit_temperatures` on the validation windows (one τ per inference mode),
* :func:`~noprop.runs.language.test_scores` on the test windows with those temperatures and
  ``with_trajectory=True`` (the scores and the per-depth trajectory in one pass),
* :func:`~noprop.runs.language.mean_pairwise_cosine` of the output vectors (back-prop: the tied
  unembedding ``method.lm.unembedding``; NoProp-DT: ``method.embedding.weight``),
* :func:`~noprop.runs.language.generate` for the samples,

plus the DT schedule's ᾱ_t (``method.schedule.alpha_bar``) for the trajectory rows. Those functions
read the back-prop transformer and NoProp-DT only; for any other method :func:`check` raises
:class:`ReadoutUnsupported`, and the comparison records the run as trained but not evaluated.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...errors import ConfigError
from ...methods import Method, NoPropDT
from ...methods.transformer import TransformerBackprop
from ...precision import autocast
from ...runs.language import fit_temperatures, generate, mean_pairwise_cosine, test_scores

#: the methods the read-outs of :mod:`noprop.runs.language` support today
SUPPORTED = (TransformerBackprop, NoPropDT)


class ReadoutUnsupported(ConfigError):
    """lm compare cannot evaluate this method yet (its run is trained and planned all the same);
    ``reason`` is the message without the run's name."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"lm compare cannot evaluate run {name!r} yet: {reason}")
        self.reason = reason


def check(method: Method, name: str) -> None:
    if not isinstance(method, SUPPORTED):
        raise ReadoutUnsupported(
            name,
            f"the read-outs of noprop.runs.language cover --method backprop and dt, not "
            f"{method.name}",
        )


def evaluate(
    method: Method,
    name: str,
    val: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    chains: int,
    seed: int,
    progress: bool,
    precision: str,
    device: torch.device,
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Test scores (raw, and calibrated by temperatures fitted on ``val`` only) and the trajectory
    in output space: one row per depth (the input state, then every layer or block)."""
    check(method, name)
    kw = {"chains": chains, "seed": seed, "progress": progress}
    with autocast(precision, device):
        temps = fit_temperatures(method, *val, **kw)  # validation only
        scores = test_scores(method, *test, temperatures=temps, with_trajectory=True, **kw)
    trajectory = scores.pop("trajectory")  # same pass: one deterministic chain
    if isinstance(method, NoPropDT):
        for row, a in zip(trajectory, method.schedule.alpha_bar.tolist(), strict=True):
            row["alpha_bar"] = a
    return scores, trajectory


def output_vectors_cosine(method: Method) -> float:
    """Mean cosine between distinct output-space vectors (tied unembedding, or W_Embed)."""
    if isinstance(method, TransformerBackprop):
        return mean_pairwise_cosine(method.lm.unembedding)
    return mean_pairwise_cosine(method.embedding.weight)


def sample(
    method: Method,
    prompt: bytes,
    n: int,
    *,
    context: int,
    seed: int,
    precision: str,
    device: torch.device,
) -> str:
    """``n`` bytes sampled at temperature 1 after ``prompt``, decoded as UTF-8 (errors replaced)."""
    with autocast(precision, device):
        text = generate(method, prompt, n, context=context, seed=seed)
    return text.decode("utf-8", "replace")
