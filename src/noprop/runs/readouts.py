"""Fair read-outs of a text model's inference chains: chosen on validation, scored on test (issue 22).

A block-wise model offers more than one next-byte distribution along its inference chain. The paper
defines one — the head p̂_θout(y | z_T) on the chain's last state (Eq. 3, then ŷ = argmax p̂_θout,
Eq. 14) — but an audit found it unfair for likelihoods: the head is trained on z_T ~ q(z_T | y) at
SNR(T) = 999 only, and reading it on an inference z_t applies a fixed, wrong temperature. Every
block's own softmax is a direct estimate of p(y | x, z) trained with a proper scoring rule, so it is
read out too. What this module *reports* is the read-out, and the number S of chains, that score the
fewest bits per byte on the **validation** windows (:func:`choose_readout`); the test windows are then
scored with that choice only (:func:`score_readout`), next to the paper's read-out.

Read-outs (``name``; t a block, k an index of the solver's recorded grid points,
:func:`noprop.solvers.record_indices`; logits (C, B, L, 256) for C chains):

* back-prop transformer — ``output``: the model's softmax (no chain; C = 1).
* NoProp-DT — ``head_t`` = p̂_θout(y | z_t), t = 0..T (**the paper's: head_T**); ``p_t`` = softmax of
  block t's own logits on its input z_{t−1}, t = 1..T: with one-hot W_Embed Eq. 8's L2 term is
  ‖p_t − e_y‖², the Brier score (proper: minimised by p(y | x, z_{t−1})); ``--block-ce`` adds the log
  score. These ``p_t`` are the read-outs usually reported.
* DiffusionBlocks — ``p_k`` = softmax of the owning block's logits at evaluation k (trained with
  cross-entropy; the method's own read-out, **the paper's: p_N** at σ_min); ``--db-loss l2`` reads the
  nearest embedding to D̂ instead (``near_k``, as its ``predict_steps``).
* NoProp-CT — ``head_k`` = p̂_θout(y | z_{t_k}) (**the paper's: head_N**, t = 1); ``p_k`` = softmax of
  û_θ's logits at (z_{t_k}, t_k) — trained by Eq. 9's L2 term, a Brier score as DT's.
* NoProp-FM — ``near_k`` = softmax(−‖z_{t_k} − u_j‖²) (**the paper's: near_N**, the nearest embedding;
  as a distribution its temperature 1 is arbitrary, see calibration). [I] FM has no trained likelihood
  with one-hot W_Embed (the head is inert), so ``p_k`` is added: the extrapolation z̃_1 = z_t + (1 − t)
  v_θ(z_t, x, t) (Eq. 12) minimises Eq. 11's L2 at z̃_1 = E[u_y | z_t, x] — with one-hot W_Embed the
  posterior probability vector itself (a Brier-trained estimate). It is not constrained to the simplex,
  so it is read as p ∝ max(z̃_1, 0) + ε with ε = :data:`noprop.methods.fm.FM_FLOOR` (every byte keeps mass). With a
  learned W_Embed the head *is* trained, by Eq. 13 on z̃_1, so ``head_k`` = p̂_θout(y | z̃_1) instead.
  With ``--fm-predict clean`` (the text default) z̃_1 = softmax(logits)·W_Embed, so one-hot ``p_k`` is
  that softmax itself, no floor needed.

Chains. A stochastic chain starts at **pure noise** (z_0 ~ N(0, I); DiffusionBlocks σ_max·ε; FM with
``--fm-source current-token`` its own source W_Embed[x_i] + σ_src·ε — the current byte is input, not
the target) and draws the method's inference noise; never from a noised ground truth: nothing here
reads y before a read-out exists. The *deterministic* chain (z_0 = its mode, no noise) is reported for
the audit but is not a candidate ([I]: its blocks see noise-free inputs they were never trained on,
issue 22's U-shape). The mixture of S chains is p̄ = (1/S) Σ_s p_s (probabilities averaged, then the
log: :func:`noprop.tasks.language.mixture_bits`); the S of a choice are the first S of the same chains.

Calibration: after the choice, one temperature τ (p ∝ exp(logits / τ) per chain, then mixed) is fitted
on the same validation windows (Guo et al. 2017); test reports raw and calibrated bits.
[I] The choice itself is on raw bits; τ is fitted for the chosen read-out only.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..methods import Method, kind_of
from ..precision import float32

__all__ = [
    "CHAIN_CHOICES",
    "TEMPERATURES",
    "ReadoutChoice",
    "batches",
    "chain_readouts",
    "chain_states",
    "check_text_method",
    "choose_readout",
    "evaluate_readouts",
    "fit_temperature",
    "paper_readout",
    "readout_log_probs",
    "readout_names",
    "readout_position",
    "score_readout",
    "seeded",
]

LN2 = math.log(2.0)
#: the mixture sizes :func:`choose_readout` tries by default (prefixes of one set of 8 chains)
CHAIN_CHOICES = (1, 2, 4, 8)
#: the temperatures a calibration chooses from (log-spaced, 1 included)
TEMPERATURES = torch.logspace(math.log10(0.25), math.log10(64.0), 49, dtype=torch.float64)


def check_text_method(method: Method) -> None:
    """ConfigError unless ``method`` was built for text (a label per position)."""
    if method.label_dims != 1:
        raise ConfigError(f"this analysis reads text models; this {method.name} run is not one")


# ------------------------------------------------------------------------ what is read out
def readout_names(method: Method) -> list[str]:
    """Every read-out of ``method`` (:meth:`Method.readout_names`), in chain order."""
    check_text_method(method)
    return method.readout_names()


def paper_readout(method: Method) -> str:
    """The read-out the paper defines (:meth:`Method.paper_readout`): the last state's head (DT,
    CT), nearest embedding (FM), the last block's logits (DiffusionBlocks), the output (back-prop)."""
    return method.paper_readout()


def readout_position(method: Method, name: str) -> float:
    """Where along the chain ``name`` reads, in [0, 1] (t/T, or k/N on the solver's grid)."""
    if name == "output":
        return 1.0
    i = int(name.rsplit("_", 1)[1])
    length = method.T if not method.solvers else method.inference_steps  # type: ignore[attr-defined]
    return i / length


@torch.no_grad()
def chain_readouts(
    method: Method, x: Tensor, *, chains: int = 1, deterministic: bool = False
) -> Iterator[tuple[str, Tensor]]:
    """(name, logits (C, B, L, 256), float32) for every read-out of C = ``chains`` inference chains
    on windows x (B, L), in chain order (:func:`readout_names`); the deterministic chain has C = 1.

    Lazy: a consumer that stops after the read-out it needs runs no later block. The chains draw the
    same random numbers as the method's ``predict_steps`` on x repeated C times (chain s = rows
    s·B .. s·B + B − 1); the context is encoded once per block, not once per chain."""
    for name, logits, _ in chain_states(method, x, chains=chains, deterministic=deterministic):
        yield name, logits


@torch.no_grad()
def chain_states(
    method: Method, x: Tensor, *, chains: int = 1, deterministic: bool = False
) -> Iterator[tuple[str, Tensor, Tensor | None]]:
    """:func:`chain_readouts` with the state each read-out reads (:class:`noprop.methods.Readout`):
    z_t for ``head_t``, the block's input z_{t−1} for DT's ``p_t``, z_{t_k} (or DiffusionBlocks'
    z_{σ_k}) at grid point k; None for back-prop's ``output`` (its residual stream is the state of
    its ``lens_l`` read-outs)."""
    names = set(readout_names(method))  # chains >= 1: Method.chain checks it
    kinds = {kind_of(n) for n in names}
    for r in method.chain(x, chains=chains, deterministic=deterministic, kinds=kinds):
        if r.name in names:
            yield r.name, float32(r.logits), r.state


# ------------------------------------------------------------------------------ scoring
@dataclass
class _Sums:
    """Summed bits and hits of one read-out's mixtures of the first S chains, for each S."""

    bits: dict[int, float] = field(default_factory=dict)
    hits: dict[int, float] = field(default_factory=dict)

    def add(self, logits: Tensor, y: Tensor, sizes: Sequence[int], tau: float = 1.0) -> None:
        logp = torch.log_softmax(logits / tau if tau != 1.0 else logits, -1)
        logp_y = logp.gather(-1, y.expand(*logp.shape[:-1]).unsqueeze(-1)).squeeze(-1)
        cum = logp.exp().cumsum(0) if max(sizes) > 1 else logp
        for S in sizes:
            mix = -(torch.logsumexp(logp_y[:S], 0) - math.log(S)) / LN2
            self.bits[S] = self.bits.get(S, 0.0) + float(mix.double().sum())
            hit = (cum[S - 1].argmax(-1) == y).sum()  # argmax of the averaged probabilities
            self.hits[S] = self.hits.get(S, 0.0) + float(hit)


def batches(x: Tensor, y: Tensor, batch: int, desc: str, progress: bool):
    """(x, y) in slices of ``batch`` windows, with a progress bar named ``desc`` when ``progress``."""
    bar = tqdm(total=x.shape[0], desc=desc, unit="window", leave=False, mininterval=1.0,
               disable=None if progress else True)  # fmt: skip
    for start in range(0, x.shape[0], batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        yield xb, yb
        bar.update(xb.shape[0])
    bar.close()


@contextlib.contextmanager
def seeded(method: Method, seed: int) -> Iterator[None]:
    """The global RNG seeded with ``seed`` inside, restored after (the chains' noise draws)."""
    device = next(method.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _sizes(method: Method, chains: Sequence[int]) -> list[int]:
    sizes = sorted(set(chains))
    if not sizes or sizes[0] < 1:
        raise ConfigError(f"chain counts must be >= 1 (got {list(chains)})")
    return sizes if method.stochastic else [1]


@torch.no_grad()
def evaluate_readouts(
    method: Method,
    x: Tensor,
    y: Tensor,
    *,
    chains: Sequence[int] = CHAIN_CHOICES,
    deterministic: bool = False,
    only: Sequence[str] | None = None,
    temperature: float = 1.0,
    batch: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, dict[int, dict[str, float]]]:
    """{read-out: {S: {"bits_per_byte", "accuracy"}}} on windows (x, y) (N, L): the mixture of the
    first S of max(chains) stochastic chains (``deterministic``: the one deterministic chain, S = 1),
    for every read-out (or those in ``only``; the chains stop after the last one needed), each
    chain's logits divided by ``temperature`` first."""
    check_text_method(method)
    sizes = [1] if deterministic else _sizes(method, chains)
    names = readout_names(method)
    wanted = set(names if only is None else only)
    if not wanted <= set(names):
        raise ConfigError(
            f"unknown read-outs {sorted(wanted - set(names))}; {method.name} has {names}"
        )
    last = max(names.index(n) for n in wanted)
    method.eval()
    sums: dict[str, _Sums] = {}
    with seeded(method, seed):
        for xb, yb in batches(x, y, batch, "read-outs", progress):
            for i, (name, logits) in enumerate(
                chain_readouts(method, xb, chains=max(sizes), deterministic=deterministic)
            ):
                if name in wanted:
                    sums.setdefault(name, _Sums()).add(logits, yb, sizes, temperature)
                if i == last:
                    break
    n = y.numel()
    return {
        name: {S: {"bits_per_byte": s.bits[S] / n, "accuracy": s.hits[S] / n} for S in sizes}
        for name, s in ((nm, sums[nm]) for nm in names if nm in sums)
    }


@dataclass(frozen=True)
class ReadoutChoice:
    """What :func:`choose_readout` chose on validation: the read-out, the number of chains S, the
    temperature τ fitted for it, and every candidate's validation bits per byte (``table``:
    read-out → S → bits)."""

    readout: str
    chains: int
    temperature: float = 1.0
    paper_readout: str = ""
    table: dict[str, dict[int, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the table's S keys become strings)."""
        d = asdict(self)
        d["table"] = {r: {str(S): b for S, b in row.items()} for r, row in self.table.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReadoutChoice:
        """The inverse of :meth:`to_dict` (e.g. a choice read back from a report's JSON)."""
        table = {
            r: {int(S): float(b) for S, b in row.items()} for r, row in d.get("table", {}).items()
        }
        return cls(str(d["readout"]), int(d["chains"]), float(d.get("temperature", 1.0)),
                   str(d.get("paper_readout", "")), table)  # fmt: skip


@torch.no_grad()
def choose_readout(
    method: Method,
    x_val: Tensor,
    y_val: Tensor,
    *,
    chains: Sequence[int] = CHAIN_CHOICES,
    candidates: Sequence[str] | None = None,
    calibrate: bool = True,
    batch: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> ReadoutChoice:
    """The (read-out, S) with the fewest bits per byte on the **validation** windows (x_val, y_val),
    among ``candidates`` (default: every read-out of the method, :func:`readout_names`) × mixtures of
    S ∈ ``chains`` stochastic chains; ties go to the fewer chains, then the earlier read-out. With
    ``calibrate`` also τ ∈ :data:`TEMPERATURES` for that choice (one more pass, up to the chosen
    read-out). Meant for validation only: the test split is scored by :func:`score_readout`."""
    table = evaluate_readouts(method, x_val, y_val, chains=chains, only=candidates, batch=batch,
                              seed=seed, progress=progress)  # fmt: skip
    bits = {r: {S: row["bits_per_byte"] for S, row in rows.items()} for r, rows in table.items()}
    order = {name: i for i, name in enumerate(readout_names(method))}
    readout, S = min(
        ((r, S) for r, row in bits.items() for S in row),
        key=lambda rs: (bits[rs[0]][rs[1]], rs[1], order[rs[0]]),
    )
    tau = (
        fit_temperature(method, x_val, y_val, readout, S, batch=batch, seed=seed)
        if calibrate
        else 1.0
    )
    return ReadoutChoice(readout, S, tau, paper_readout(method), bits)


@torch.no_grad()
def fit_temperature(
    method: Method,
    x: Tensor,
    y: Tensor,
    readout: str,
    chains: int,
    *,
    batch: int = 16,
    seed: int = 0,
) -> float:
    """The τ of :data:`TEMPERATURES` whose p ∝ exp(logits / τ) (per chain, then the mixture of
    ``chains``) gives the fewest bits per byte of ``readout`` on (x, y) — validation windows."""
    check_text_method(method)
    S = chains if method.stochastic else 1
    method.eval()
    total = torch.zeros(len(TEMPERATURES), dtype=torch.float64)
    with seeded(method, seed):
        for xb, yb in batches(x, y, batch, "temperature", False):
            for name, logits in chain_readouts(method, xb, chains=S):
                if name == readout:
                    for i, tau in enumerate(TEMPERATURES.tolist()):
                        s = _Sums()
                        s.add(logits, yb, [S], tau)
                        total[i] += s.bits[S]
                    break
    return float(TEMPERATURES[int(total.argmin())])


@torch.no_grad()
def score_readout(
    method: Method,
    x: Tensor,
    y: Tensor,
    choice: ReadoutChoice,
    *,
    with_deterministic: bool = True,
    batch: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Test scores of a validation ``choice`` on windows (x, y) — for the test split.

    Returns ``bits_per_byte`` / ``accuracy`` of the chosen read-out's mixture of S chains (raw) and
    ``bits_per_byte_calibrated`` (at the choice's τ), the choice itself (``readout``, ``chains``,
    ``temperature``, ``paper_readout``), the paper's read-out at the same S (``paper``), and
    ``readouts``: one row per read-out (name, position along the chain, S, bits, accuracy) for S = 1
    and S = the choice's — every p_t and head(z_t) for the trajectory figure; with
    ``with_deterministic`` also ``deterministic``, the same rows on the deterministic chain (S = 1)."""
    check_text_method(method)
    sizes = _sizes(method, sorted({1, choice.chains}))
    names = readout_names(method)
    if choice.readout not in names:
        raise ConfigError(f"{method.name} has no read-out {choice.readout!r} (it has {names})")
    method.eval()
    n = y.numel()
    sums: dict[str, _Sums] = {}
    calibrated = _Sums()
    with seeded(method, seed):
        for xb, yb in batches(x, y, batch, "test read-outs", progress):
            for name, logits in chain_readouts(method, xb, chains=max(sizes)):
                sums.setdefault(name, _Sums()).add(logits, yb, sizes)
                if name == choice.readout:
                    calibrated.add(logits, yb, [max(sizes)], choice.temperature)
    S = max(sizes)

    def rows(
        table: dict[str, _Sums], sizes: list[int], deterministic: bool
    ) -> list[dict[str, Any]]:
        return [
            {"readout": r, "position": readout_position(method, r), "chains": k,
             "deterministic": deterministic, "bits_per_byte": table[r].bits[k] / n,
             "accuracy": table[r].hits[k] / n}
            for k in sizes for r in names
        ]  # fmt: skip

    paper = sums[paper_readout(method)]
    out: dict[str, Any] = {
        "readout": choice.readout,
        "chains": S,
        "temperature": choice.temperature,
        "paper_readout": paper_readout(method),
        "bits_per_byte": sums[choice.readout].bits[S] / n,
        "accuracy": sums[choice.readout].hits[S] / n,
        "bits_per_byte_calibrated": calibrated.bits[S] / n,
        "paper": {"bits_per_byte": paper.bits[S] / n, "accuracy": paper.hits[S] / n},
        "readouts": rows(sums, sizes, False),
    }
    if with_deterministic and method.stochastic:
        det = evaluate_readouts(method, x, y, deterministic=True, batch=batch, seed=seed)
        out["deterministic"] = [
            {"readout": r, "position": readout_position(method, r), "chains": 1,
             "deterministic": True, **det[r][1]}
            for r in names
        ]  # fmt: skip
    return out


@torch.no_grad()
def readout_log_probs(method: Method, x: Tensor, choice: ReadoutChoice) -> Tensor:
    """log p̄ (B, L, 256) of the chosen read-out: log of the mean over S chains of softmax(logits/τ)
    — the distribution :func:`score_readout` scores (calibrated), e.g. for generation."""
    method.eval()
    for name, logits in chain_readouts(method, x, chains=choice.chains):
        if name == choice.readout:
            logp = F.log_softmax(logits / choice.temperature, -1)
            return torch.logsumexp(logp, 0) - math.log(logp.shape[0])
    raise ConfigError(f"{method.name} has no read-out {choice.readout!r}")
