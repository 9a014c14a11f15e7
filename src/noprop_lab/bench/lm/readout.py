"""The one place ``lm compare`` reads a trained model: an adapter over :mod:`noprop_lab.bench.lm.language`.

Every evaluation call of the comparison goes through this module, so the read-outs can be swapped
(fair per-block read-outs p_t, CT/FM/DiffusionBlocks chains, the tuned lens) without touching the
planning, training or report code. What it calls today:

* :func:`~noprop_lab.bench.lm.language.fit_temperatures` on the validation windows (one τ per inference mode),
* :func:`~noprop_lab.bench.lm.language.test_scores` on the test windows with those temperatures and
  ``with_trajectory=True`` (the scores and the per-depth trajectory in one pass),
* :func:`~noprop_lab.bench.lm.language.mean_pairwise_cosine` of the output vectors (back-prop: the tied
  unembedding ``method.lm.unembedding``; NoProp-DT: ``method.embedding.weight``),
* :func:`~noprop_lab.bench.lm.language.generate` for the samples,

plus the DT schedule's ᾱ_t (``method.schedule.alpha_bar``) for the trajectory rows, and the fair
read-out protocol of :mod:`noprop.runs.readouts` (issue 22): :func:`~noprop.runs.readouts.choose_readout`
picks, on the validation windows only, the read-out (a block's own softmax p_t, head(z_t), …) and
the number S of stochastic chains (powers of two up to ``--chains``) with the fewest bits per byte
and fits its temperature; :func:`~noprop.runs.readouts.score_readout` scores that choice on test,
with every per-block read-out, chains started at pure noise. For the back-prop transformer the
tuned lens (:mod:`noprop_lab.bench.lm.tuned_lens`) is fitted on training windows and reported on test next
to the logit lens. Every text method is read (back-prop, DT, CT, FM, DiffusionBlocks).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from noprop import ConfigError, Method, autocast
from noprop.runs.readouts import choose_readout, score_readout

from .language import fit_temperatures, generate, mean_pairwise_cosine, test_scores
from .tuned_lens import fit_tuned_lens, has_residual_stream, lens_scores

#: training windows the tuned lens is fitted on (a random subset, seeded)
LENS_WINDOWS = 512


class ReadoutUnsupported(ConfigError):
    """lm compare cannot evaluate this method yet (its run is trained and planned all the same);
    ``reason`` is the message without the run's name."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"lm compare cannot evaluate run {name!r} yet: {reason}")
        self.reason = reason


def check(method: Method, name: str) -> None:
    if method.label_dims != 1:
        raise ReadoutUnsupported(
            name, f"its {method.name} model was not built for text (a label per position)"
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
    train_x: Tensor | None = None,
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Test scores (raw, and calibrated by temperatures fitted on ``val`` only) and the trajectory
    in output space: one row per depth (the input state, then every layer or block).

    ``scores["fair"]``: the fair read-out chosen on ``val`` and scored on ``test`` (module docstring);
    ``scores["tuned_lens"]``: back-prop only, with ``train_x`` given, the per-layer tuned and logit lens
    on ``test`` (fitted on ``train_x``)."""
    check(method, name)
    kw = {"chains": chains, "seed": seed, "progress": progress}
    sizes = [2**i for i in range(chains.bit_length()) if 2**i <= chains] or [1]
    with autocast(precision, device):
        temps = fit_temperatures(method, *val, **kw)  # validation only
        scores = test_scores(method, *test, temperatures=temps, with_trajectory=True, **kw)
        choice = choose_readout(method, *val, chains=sizes, seed=seed, progress=progress)
        scores["fair"] = score_readout(method, *test, choice, seed=seed, progress=progress)
        if has_residual_stream(method) and train_x is not None:
            g = torch.Generator().manual_seed(seed)
            pick = torch.randperm(train_x.shape[0], generator=g)[:LENS_WINDOWS]
            lens = fit_tuned_lens(method, train_x[pick.to(train_x.device)], seed=seed)
            scores["tuned_lens"] = lens_scores(method, lens, *test)
    trajectory = scores.pop("trajectory")  # same pass: one deterministic chain
    alpha_bar = getattr(getattr(method, "schedule", None), "alpha_bar", None)
    if isinstance(alpha_bar, Tensor) and len(alpha_bar) == len(trajectory):  # DT: ᾱ_t per depth
        for row, a in zip(trajectory, alpha_bar.tolist(), strict=True):
            row["alpha_bar"] = a
    return scores, trajectory


def output_vectors_cosine(method: Method) -> float:
    """Mean cosine between distinct output-space vectors (tied unembedding, or W_Embed)."""
    return mean_pairwise_cosine(method.output_embeddings())


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
