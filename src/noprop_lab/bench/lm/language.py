"""Reading a trained byte-level language model: test scores, its path through output space, samples.

Works on every text method: the back-prop transformer (:class:`~noprop.methods.transformer.
TransformerBackprop`), NoProp-DT, NoProp-CT, NoProp-FM and DiffusionBlocks with a label per position.

The API ``noprop lm compare`` calls (issue 22; the fair read-outs live in :mod:`noprop.runs.readouts`,
the tuned lens in :mod:`noprop_lab.bench.lm.tuned_lens`, both re-exported here):

* :func:`choose_readout` (validation windows) → :class:`ReadoutChoice`; :func:`score_readout` (test
  windows, that choice) → the reported bits per byte, accuracy, calibrated bits, the paper's read-out
  and every read-out p_t / head(z_t) per depth (stochastic and deterministic chains).
* :func:`fit_tuned_lens` (the back-prop model and *training* windows) → :class:`TunedLens`;
  :func:`lens_scores` (test windows) → per layer the logit lens and the tuned lens.
* :func:`generate` with a ``choice``: samples from the reported read-out.

The functions below predate the fair read-outs and report *the paper's* read-out (module docstring
of :mod:`noprop.runs.readouts`: head(z_T) for DT and CT, the nearest embedding for FM, the last block's
logits for DiffusionBlocks):

* :func:`test_scores` — bits per byte and top-1 accuracy: back-prop from its softmax; NoProp from the
  paper's read-out (DT: the head on z_T) of the deterministic chain, of one stochastic chain (the paper's inference) and of the
  *mixture* of S stochastic chains (p̂ = (1/S) Σ_s p̂_s, averaged in log space,
  :func:`noprop.tasks.language.mixture_bits`).
* :func:`trajectory` — one row per depth: back-prop's logit lens after the embedding and every layer
  l = 0..L; NoProp's head read-out of z_t after every block t = 0..T (deterministic chain). Each row
  has bits per byte, accuracy, and the cosine between the state (h_l, or z_t) and the output-space
  vector of the true next byte (the tied unembedding row W_U[y], or W_Embed[y]), raw and *centered*
  (state and target minus the mean of the 256 output vectors: output vectors can share a common
  direction — :func:`mean_pairwise_cosine` — which makes the raw cosine of any state high). [I] h_l
  is the raw residual stream (before the final LayerNorm the lens applies); z_0 = 0 of the
  deterministic chain has no direction, its cosine is reported as 0. CT, FM and DiffusionBlocks: one
  row per recorded grid point, the paper's read-out of z_{t_k} (cosine with W_Embed[y]; Ê[y] for
  DiffusionBlocks).
* :func:`generate` — bytes sampled one at a time from the model's next-byte distribution (NoProp: the
  paper's read-out on the deterministic chain, or with ``choice`` the chosen read-out's mixture), the
  context being the last ``context`` bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from noprop import ConfigError, Method, float32
from noprop.runs.readouts import (
    CHAIN_CHOICES,
    TEMPERATURES,
    ReadoutChoice,
    batches,
    chain_readouts,
    check_text_method,
    choose_readout,
    evaluate_readouts,
    fit_temperature,
    paper_readout,
    readout_log_probs,
    readout_names,
    score_readout,
    seeded,
)
from noprop.tasks import bits, mixture_bits

from .tuned_lens import TunedLens, fit_tuned_lens, lens_kl, lens_scores

__all__ = [
    "CHAIN_CHOICES",
    "TEMPERATURES",
    "ReadoutChoice",
    "TunedLens",
    "chain_readouts",
    "choose_readout",
    "evaluate_readouts",
    "fit_temperature",
    "fit_temperatures",
    "fit_tuned_lens",
    "generate",
    "lens_kl",
    "lens_scores",
    "mean_pairwise_cosine",
    "next_byte_logits",
    "paper_readout",
    "readout_log_probs",
    "readout_names",
    "score_readout",
    "test_scores",
    "trajectory",
]


def _check(method: Method) -> None:
    check_text_method(method)


@dataclass
class _Sums:
    """Running sums over positions of one read-out row."""

    bits: float = 0.0
    hits: float = 0.0
    cos: float = 0.0
    cos_centered: float = 0.0

    def add(
        self,
        logits: Tensor,
        y: Tensor,
        state: Tensor | None = None,
        vectors: Tensor | None = None,
    ) -> None:
        """Sums for one batch; ``vectors`` (256, d) are the output-space vectors (W_U or W_Embed)."""
        self.bits += float(bits(logits, y).double().sum())
        self.hits += float((logits.argmax(-1) == y).sum())
        if state is not None and vectors is not None:
            state, vectors = state.float(), vectors.float()
            self.cos += _cos_sum(state, vectors[y])
            mean = vectors.mean(0)  # the direction every output vector shares
            self.cos_centered += _cos_sum(state - mean, vectors[y] - mean)

    def row(self, n: int) -> dict[str, float]:
        return {
            "bits_per_byte": self.bits / n,
            "accuracy": self.hits / n,
            "cosine": self.cos / n,
            "cosine_centered": self.cos_centered / n,
        }


def _cos_sum(a: Tensor, b: Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=-1).double().sum())


def mean_pairwise_cosine(vectors: Tensor) -> float:
    """Mean cosine between distinct rows of (256, d) output vectors: near 1 means they share one
    direction (then the raw cosine of any state with them says little; see ``cosine_centered``)."""
    v = F.normalize(vectors.detach().float(), dim=-1)
    g = v @ v.T
    m = v.shape[0]
    return float((g.sum() - g.diagonal().sum()) / (m * (m - 1)))


def _readouts(
    method: Method,
    x: Tensor,
    y: Tensor,
    *,
    chains: int,
    batch: int,
    desc: str,
    progress: bool,
    keep_states: bool = False,
) -> Iterator[tuple[Tensor, dict[str, Tensor], list[Tensor] | None]]:
    """(y batch, {inference mode: final read-out logits}, states) per batch. Modes: back-prop
    ``output`` (B, L, 256); NoProp ``deterministic`` and ``one_chain`` (B, L, 256), ``mixture``
    (S, B, L, 256). With ``keep_states`` also the states the trajectory reads (the residual stream
    h_0..h_n, or z_0..z_T of the deterministic chain), from the same pass as the read-out: the
    deterministic chain is run once per batch, not once for the scores and again for the trajectory."""
    for xb, yb in batches(x, y, batch, desc, progress):
        det = _prediction_rows(method, xb)  # no noise drawn: the seed's draws are unchanged
        if not method.stochastic:  # back-prop: its output (= the lens of the last state)
            yield yb, {"output": det[-1][0][0]}, det if keep_states else None
            continue
        sto = _prediction_rows(method, xb, chains=chains, deterministic=False)[-1][0]
        modes = {"deterministic": det[-1][0][0], "one_chain": sto[0], "mixture": sto}
        yield yb, modes, det if keep_states else None


def _prediction_rows(
    method: Method, x: Tensor, *, chains: int = 1, deterministic: bool = True
) -> list[tuple[Tensor, Tensor | None]]:
    """(logits (C, B, L, 256) in float32, state) of the method's prediction after every step
    (:attr:`Method.prediction_kind`: DT's and CT's head(z_t), FM's nearest embedding,
    DiffusionBlocks' block logits, back-prop's logit lens of h_l): the trajectory's rows, the last
    one the prediction; the deterministic chain by default."""
    kinds = {method.prediction_kind}
    return [
        (float32(r.logits), r.state)
        for r in method.chain(x, chains=chains, deterministic=deterministic, kinds=kinds)
    ]


def _mode_bits(mode: str, logits: Tensor, y: Tensor) -> Tensor:
    return mixture_bits(logits, y) if mode == "mixture" else bits(logits, y)


def _mode_hits(mode: str, logits: Tensor, y: Tensor) -> Tensor:
    if mode == "mixture":  # the mixture's prediction: argmax of the averaged probabilities
        logits = torch.softmax(logits.float(), -1).mean(0)
    return (logits.argmax(-1) == y).sum()


def _check_chains(method: Method, chains: int) -> None:
    _check(method)
    if chains < 1:
        raise ConfigError(f"--chains must be >= 1 (got {chains})")


@torch.no_grad()
def fit_temperatures(
    method: Method,
    x: Tensor,
    y: Tensor,
    *,
    chains: int = 4,
    batch: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Per inference mode, the temperature τ of :data:`TEMPERATURES` whose p̂ ∝ exp(logits / τ)
    gives the fewest bits per byte on (x, y) — meant for the *validation* split (post-hoc
    calibration, Guo et al. 2017: one scalar, accuracy unchanged). [I] Why: NoProp's head is trained
    on z_T ~ q(z_T | y) at SNR(T) = 999, where the label is nearly noise-free, so it learns near-certain
    probabilities that its inference chain's z_T does not warrant."""
    _check_chains(method, chains)
    method.eval()
    sums: dict[str, Tensor] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for yb, modes, _ in _readouts(method, x, y, chains=chains, batch=batch,
                                      desc="fitting temperatures (validation)", progress=progress):  # fmt: skip
            for mode, logits in modes.items():
                row = torch.stack(
                    [_mode_bits(mode, logits / tau, yb).double().sum() for tau in TEMPERATURES]
                )
                sums[mode] = sums[mode] + row if mode in sums else row
    return {mode: float(TEMPERATURES[int(v.argmin())]) for mode, v in sums.items()}


@torch.no_grad()
def test_scores(
    method: Method,
    x: Tensor,
    y: Tensor,
    *,
    chains: int = 4,
    batch: int = 16,
    seed: int = 0,
    progress: bool = False,
    temperatures: dict[str, float] | None = None,
    with_trajectory: bool = False,
) -> dict[str, Any]:
    """Bits per byte and accuracy on windows (x, y) of shape (N, L) (module docstring); with
    ``temperatures`` (from :func:`fit_temperatures` on validation) also the calibrated bits; with
    ``with_trajectory`` also ``"trajectory"``, :func:`trajectory`'s rows from the same pass."""
    _check_chains(method, chains)
    method.eval()
    n = y.numel()
    bits_sum: dict[str, float] = {}
    cal_sum: dict[str, float] = {}
    hits: dict[str, float] = {}
    sums: list[_Sums] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for yb, modes, states in _readouts(method, x, y, chains=chains, batch=batch, desc="test",
                                           progress=progress, keep_states=with_trajectory):  # fmt: skip
            if states is not None:
                sums = _add_trajectory(method, states, yb, sums)
            for mode, logits in modes.items():
                bits_sum[mode] = bits_sum.get(mode, 0.0) + float(
                    _mode_bits(mode, logits, yb).double().sum()
                )
                hits[mode] = hits.get(mode, 0.0) + float(_mode_hits(mode, logits, yb))
                if temperatures:
                    tau = temperatures[mode]
                    cal = float(_mode_bits(mode, logits / tau, yb).double().sum())
                    cal_sum[mode] = cal_sum.get(mode, 0.0) + cal
    rows = {
        mode: {
            "bits_per_byte": bits_sum[mode] / n,
            "accuracy": hits[mode] / n,
            **(
                {"temperature": temperatures[mode], "bits_per_byte_calibrated": cal_sum[mode] / n}
                if temperatures
                else {}
            ),
        }
        for mode in bits_sum
    }
    traj = {"trajectory": [{"depth": i, **t.row(n)} for i, t in enumerate(sums)]} if sums else {}
    if "output" in rows:
        return {**rows["output"], **traj}
    return {**rows.pop("mixture"), "chains": chains, **rows, **traj}


def _add_trajectory(
    method: Method, states: list[tuple[Tensor, Tensor | None]], y: Tensor, sums: list[_Sums]
) -> list[_Sums]:
    """Add one batch's (read-out, state) rows (:func:`_prediction_rows`: h_0..h_n or z_0..z_T, or
    z at the recorded grid points) to the per-depth sums of :func:`trajectory`; the cosine is with
    the method's output-space vectors (:meth:`Method.output_embeddings`)."""
    vectors = method.output_embeddings()
    sums = sums or [_Sums() for _ in states]
    for s, (logits, state) in zip(sums, states, strict=True):
        s.add(logits[0], y, None if state is None else float32(state[0]), vectors)
    return sums


@torch.no_grad()
def trajectory(
    method: Method, x: Tensor, y: Tensor, *, batch: int = 16, progress: bool = False
) -> list[dict[str, float]]:
    """One row per depth (0 = the input state): bits per byte, accuracy, cosine (module docstring)."""
    _check(method)
    method.eval()
    n = y.numel()
    sums: list[_Sums] = []
    for xb, yb in batches(x, y, batch, "trajectory", progress):
        sums = _add_trajectory(method, _prediction_rows(method, xb), yb, sums)
    return [{"depth": i, **s.row(n)} for i, s in enumerate(sums)]


@torch.no_grad()
def next_byte_logits(
    method: Method, context: Tensor, choice: ReadoutChoice | None = None
) -> Tensor:
    """Logits (256,) of the byte after ``context`` (1-D byte ids, at most the model's context): the
    model's output, NoProp's paper read-out on the deterministic chain, or with ``choice`` the log
    of the chosen read-out's mixture (:func:`readout_log_probs`; its chains draw from the global RNG)."""
    _check(method)
    x = context.view(1, -1)
    if choice is not None:
        return readout_log_probs(method, x, choice)[0, -1]
    return float32(method.final_logits(x, deterministic=True))[0, 0, -1]


@torch.no_grad()
def generate(
    method: Method,
    prompt: bytes,
    n: int = 200,
    *,
    context: int,
    seed: int = 0,
    temperature: float = 1.0,
    choice: ReadoutChoice | None = None,
) -> bytes:
    """``n`` bytes sampled one at a time after ``prompt`` (temperature 1: the model's distribution;
    ``choice``: from the chosen read-out, :func:`next_byte_logits`)."""
    if not prompt:
        raise ConfigError("generation needs a non-empty prompt")
    method.eval()
    device = next(method.parameters()).device
    tokens = torch.tensor(list(prompt), dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = bytearray()
    with seeded(method, seed):  # a chosen read-out's stochastic chains: seeded, RNG restored after
        for _ in range(n):
            logits = next_byte_logits(method, tokens[-context:], choice).float() / temperature
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
            tokens = torch.cat([tokens, nxt])
            out.append(int(nxt))
    return bytes(out)
