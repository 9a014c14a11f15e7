"""Noise schedules, one per file, in the paper's symbols (the steppers that walk them: noprop/solvers.py).

* :mod:`~noprop.schedules.discrete` — NoProp-DT's fixed cosine ᾱ_t, t = 0..T, SNR, the posterior
  coefficients a_t, b_t, c_t of Eq. 3 and the KL of Eq. 8 (spec §1.2–1.4).
* :mod:`~noprop.schedules.learned` — NoProp-CT's learned ᾱ(t) = σ(−γ(t)) (spec §1.6, Eq. 9).
* :mod:`~noprop.schedules.edm` — DiffusionBlocks' EDM noise levels σ, the preconditioning
  c_skip/c_out/c_in/c_noise and the equal-CDF partition into blocks.
"""

from .discrete import (
    CosineSchedule,
    DiscreteSchedule,
    cosine_alpha_bar,
    kl_prior,
    posterior_coefficients,
    snr,
)
from .edm import EDMNoise, block_of_step
from .learned import LearnedSchedule

__all__ = [
    "CosineSchedule",
    "DiscreteSchedule",
    "EDMNoise",
    "LearnedSchedule",
    "block_of_step",
    "cosine_alpha_bar",
    "kl_prior",
    "posterior_coefficients",
    "snr",
]
