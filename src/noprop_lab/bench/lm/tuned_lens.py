"""The tuned lens (Belrose et al. 2023, "Eliciting latent predictions from transformers with the tuned
lens") of the frozen back-prop transformer, next to its logit lens (issue 22).

The logit lens decodes a residual-stream state h_l (after the embedding, l = 0, and after layer l)
with the model's own final LayerNorm and unembedding: logits_l = LN_f(h_l) W_Uᵀ. Intermediate states
need not live in the basis the unembedding reads, so the tuned lens first applies one learned affine
*translator* per layer, h_l ↦ A_l h_l + b_l, and then the same frozen LN_f and W_U. Translators start at
the identity (A_l = I, b_l = 0: the logit lens) and are fitted to minimise

    KL( p_L(· | x_{≤i}) ‖ p_l^tuned(· | x_{≤i}) ),    averaged over positions i of **training** windows,

the divergence from the model's own final distribution p_L to the lens's (Belrose et al., Eq. 2: the
lens is fitted to the model's output, not to the labels, so fitting reads no labels at all).

[I] choices: the last state h_L is pinned to the identity (no translator): its lens *is* the model's
output, by definition, and the KL there is already 0. Belrose et al. train with SGD + Nesterov for
250 steps of 2^18 tokens; here Adam (lr 1e-3, :data:`FIT_STEPS` = 300 steps of 8 windows by default,
seeded random windows) — cheap on a CPU, and the test shows it lowers the training KL at every layer.
The frozen model's parameters are read detached: fitting leaves the model and its gradients untouched.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noprop import ConfigError, Method, float32
from noprop.models import TransformerLM

LN2 = math.log(2.0)
#: default optimiser steps of :func:`fit_tuned_lens`
FIT_STEPS = 300


class TunedLens(nn.Module):
    """One affine translator per residual-stream state h_0..h_{L−1} (h_L: the identity, pinned)."""

    def __init__(self, width: int, states: int) -> None:
        super().__init__()
        self.translators = nn.ModuleList(nn.Linear(width, width) for _ in range(states - 1))
        with torch.no_grad():
            for f in self.translators:
                f.weight.copy_(torch.eye(width))
                f.bias.zero_()

    @property
    def states(self) -> int:
        return len(self.translators) + 1

    def translate(self, l: int, h: Tensor) -> Tensor:
        """A_l h_l + b_l (h_L unchanged)."""
        return h if l == len(self.translators) else self.translators[l](h)

    def logits(self, lm: TransformerLM, states: list[Tensor]) -> list[Tensor]:
        """The tuned lens's logits of every state h_0..h_L (the model's frozen LN_f and W_U)."""
        return [decode(lm, self.translate(l, h)) for l, h in enumerate(states)]


def decode(lm: TransformerLM, h: Tensor) -> Tensor:
    """LN_f(h) W_Uᵀ with the model's parameters detached (= ``lm.lens``, no gradient into the model)."""
    ln = lm.ln_f
    w = None if ln.weight is None else ln.weight.detach()
    b = None if ln.bias is None else ln.bias.detach()
    return F.layer_norm(h, ln.normalized_shape, w, b, ln.eps) @ lm.unembedding.detach().T


def has_residual_stream(method: Method) -> bool:
    """Whether ``method`` is a transformer with a residual stream (``method.lm``, a
    :class:`~noprop.models.transformer.TransformerLM`: back-prop on text), which the lens reads."""
    return isinstance(getattr(method, "lm", None), TransformerLM)


def _lm(method: Method) -> TransformerLM:
    if not has_residual_stream(method):
        raise ConfigError(
            "the tuned lens reads the back-prop transformer (--method backprop, text)"
        )
    return method.lm  # type: ignore[attr-defined]


def _kl(logp_final: Tensor, logits: Tensor) -> Tensor:
    """KL(p_final ‖ softmax(logits)) per position, nats."""
    return (logp_final.exp() * (logp_final - torch.log_softmax(logits.float(), -1))).sum(-1)


def fit_tuned_lens(
    method: Method,
    train_x: Tensor,
    *,
    steps: int = FIT_STEPS,
    batch: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
) -> TunedLens:
    """Fit a :class:`TunedLens` of the frozen back-prop model on the **training** windows
    ``train_x`` (N, L) (module docstring): ``steps`` Adam steps, each on ``batch`` windows drawn
    with a ``seed``-ed generator, minimising Σ_l mean_i KL(p_L ‖ p_l^tuned). Takes no labels and no
    other split; the model is unchanged."""
    lm = _lm(method)
    if train_x.shape[0] == 0:
        raise ConfigError("the tuned lens needs training windows")
    method.eval()
    device = next(lm.parameters()).device
    width = lm.unembedding.shape[1]
    lens = TunedLens(width, len(lm.encoder.layers) + 1).to(device)
    opt = torch.optim.Adam(lens.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, train_x.shape[0], (min(batch, train_x.shape[0]),), generator=gen)
        xb = train_x[idx].to(device)
        with torch.no_grad():
            states = [float32(h) for h in lm.residual_stream(xb)]
            logp_final = torch.log_softmax(decode(lm, states[-1]), -1)
        loss = sum(
            _kl(logp_final, decode(lm, lens.translate(l, h))).mean()
            for l, h in enumerate(states[:-1])
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        opt.step()
    return lens.eval()


@torch.no_grad()
def lens_kl(
    method: Method, lens: TunedLens, x: Tensor, *, batch: int = 16
) -> dict[str, list[float]]:
    """Mean KL(p_L ‖ lens_l) in bits per position on windows x, per state l = 0..L, for the logit
    lens (``logit``) and the tuned lens (``tuned``)."""
    lm = _lm(method)
    method.eval()
    sums = {"logit": [0.0] * lens.states, "tuned": [0.0] * lens.states}
    for start in range(0, x.shape[0], batch):
        states = [float32(h) for h in lm.residual_stream(x[start : start + batch])]
        logp_final = torch.log_softmax(decode(lm, states[-1]), -1)
        tuned = lens.logits(lm, states)
        for l, h in enumerate(states):
            sums["logit"][l] += float(_kl(logp_final, decode(lm, h)).double().sum())
            sums["tuned"][l] += float(_kl(logp_final, tuned[l]).double().sum())
    n = x.shape[0] * x.shape[1]
    return {k: [v / n / LN2 for v in row] for k, row in sums.items()}


@torch.no_grad()
def lens_scores(
    method: Method, lens: TunedLens, x: Tensor, y: Tensor, *, batch: int = 16
) -> list[dict[str, float]]:
    """One row per state l = 0..L (``depth``) on windows (x, y) — for the test split: bits per byte
    and accuracy of the logit lens (``logit_lens_*``) and of the tuned lens (``tuned_lens_*``); at
    l = L both are the model's output."""
    lm = _lm(method)
    method.eval()
    keys = ("logit_lens_bits_per_byte", "logit_lens_accuracy",
            "tuned_lens_bits_per_byte", "tuned_lens_accuracy")  # fmt: skip
    sums = [dict.fromkeys(keys, 0.0) for _ in range(lens.states)]
    for start in range(0, x.shape[0], batch):
        yb = y[start : start + batch]
        states = [float32(h) for h in lm.residual_stream(x[start : start + batch])]
        tuned = lens.logits(lm, states)
        for l, h in enumerate(states):
            for prefix, logits in (("logit_lens", decode(lm, h)), ("tuned_lens", tuned[l])):
                logp = torch.log_softmax(logits.float(), -1)
                sums[l][f"{prefix}_bits_per_byte"] += float(
                    -logp.gather(-1, yb.unsqueeze(-1)).double().sum() / LN2
                )
                sums[l][f"{prefix}_accuracy"] += float((logits.argmax(-1) == yb).sum())
    n = y.numel()
    return [{"depth": l, **{k: v / n for k, v in row.items()}} for l, row in enumerate(sums)]
