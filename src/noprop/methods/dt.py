"""NoProp-DT (spec §1.2–1.4, §2.1, §2.4): T blocks, each trained alone to denoise the label embedding.

Legend: ᾱ_t ``alpha_bar[t]``, SNR(t) ``snr[t]``, a_t/b_t/c_t ``a[t]/b[t]/c[t]``, η ``eta``,
û_θt(z_{t-1}, x) ``u_hat``, u_y ``u_y``, W_Embed ``W``. Blocks are indexed t = 1..T in the paper and
``blocks[t-1]`` here; *units* are 0-based (unit i trains block t = i + 1).

What is back-propagated: the loss of block t (Eq. 8 restricted to t) depends on θ_t, θ_out and W_Embed
only. Its input z_{t-1} is sampled from the fixed q(z_{t-1} | y), never produced by block t−1, so no
forward pass runs through the other blocks and no gradient reaches them. Back-propagation happens
*inside* block t (through its layers) and into the shared head and embedding.

Two training options beyond the paper (issue 22; both default to the paper's loss):

* ``--block-ce W`` adds W·CE(logits_t, y), the cross-entropy of block t's *own* logits (on its
  input z_{t−1} ~ q(z_{t−1} | y)) against the label, to block t's loss. The block's softmax p_t is
  already trained by the L2 term, a Brier score (proper: its minimiser is p(y | z_{t−1}, x)); the
  cross-entropy is the log score, also proper, with the same minimiser, and it targets bits directly —
  p_t is a read-out of the chain (runs/readouts.py). It reads only block t's output: local. Logged
  as the loss part ``own_ce`` (``block_own_ce`` in metrics.jsonl).
* ``--no-head-every-step``: the head θ_out (and its CE on z_T ~ q(z_T | y)) is trained in the last
  block's steps only (t = T), not in every block's. Why: the head's task — classify z_T at SNR(T) =
  999, where the label is nearly noise-free — is solved early (its CE falls to ~1e-3), yet it costs a
  forward and backward over (B, L, d) × (d, m) in every block's step (~17% of NoProp-LM's training
  FLOPs, issue 22). The noise ε of z_T is still drawn in every step, so the blocks see the same
  random numbers as with the default; the head's ``ce`` is logged for block T only (null for the
  others). A learned W_Embed still gets every block's L2 gradient. ``--parallel fused`` computes the
  head's CE in every block under vmap and masks it to block T's; ``--parallel blocks`` averages the
  shared gradient over the ranks as always (zeros from the ranks of blocks t < T).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.embeddings import ClassEmbedding
from ..options import non_negative, positive
from ..schedules import CosineSchedule, DiscreteSchedule, kl_prior
from ..solvers import ancestral_step
from .base import (
    BlockOptions,
    BlockwiseMethod,
    BuildContext,
    ChainSpec,
    Readout,
    block_logits,
    by_chain,
)


@dataclass(frozen=True, kw_only=True)
class DTConfig(BlockOptions):
    eta: float = 0.1
    """η, weight of the denoising term (Eq. 8; Table 3: 0.1 for dt, 1 for ct)"""
    cosine_s: float = 0.008
    """dt: offset s of the fixed cosine schedule (schedules/discrete.py)"""
    alpha_bar_min: float = 1e-4
    """dt: lower clip of ᾱ_t (the noise end)"""
    alpha_bar_max: float = 0.999
    """dt: upper clip of ᾱ_t (the label end; sets SNR(T) = 999)"""
    block_ce: float = 0.0
    """dt: weight W of a cross-entropy of each block's own logits against the label, added to that
    block's loss (local and proper; 0 = the paper's Eq. 8)"""
    head_every_step: bool = True
    """dt: train the head θ_out in every block's step (the paper); --no-head-every-step trains it in
    the last block's steps only (its task, classifying z_T at SNR 999, is solved early)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("eta", self.eta)
        non_negative("cosine_s", self.cosine_s)
        non_negative("block_ce", self.block_ce)
        if not 0.0 < self.alpha_bar_min < self.alpha_bar_max < 1.0:
            raise ConfigError(
                "need 0 < --alpha-bar-min < --alpha-bar-max < 1 "
                f"(got {self.alpha_bar_min}, {self.alpha_bar_max})"
            )


class NoPropDT(BlockwiseMethod):
    name = "dt"
    label = "NoProp-DT"
    Config = DTConfig
    fusable = True
    tasks = ("classification", "language")

    @classmethod
    def from_config(cls, options: DTConfig, ctx: BuildContext) -> NoPropDT:
        emb, head = ctx.embedding_and_head()
        schedule = DiscreteSchedule.cosine(
            CosineSchedule(
                T=options.T,
                s=options.cosine_s,
                alpha_bar_min=options.alpha_bar_min,
                alpha_bar_max=options.alpha_bar_max,
            )
        )
        blocks = [ctx.block("discrete", emb.dim) for _ in range(options.T)]
        return cls(blocks, emb, head, schedule, options)  # label_dims: build_method sets it

    def __init__(
        self,
        blocks: list[nn.Module],
        embedding: ClassEmbedding,
        head: nn.Module,
        schedule: DiscreteSchedule,
        options: DTConfig = DTConfig(),  # noqa: B008 (frozen: shared safely)
    ) -> None:
        super().__init__(embedding, head)
        if len(blocks) != schedule.T:
            raise ValueError(f"need T={schedule.T} blocks, got {len(blocks)}")
        self.blocks = nn.ModuleList(blocks)
        self.schedule = schedule
        self.eta = options.eta
        self.block_ce = options.block_ce
        self.head_every_step = options.head_every_step

    @property
    def T(self) -> int:
        return self.schedule.T

    def loss(self, x: Tensor, y: Tensor, unit: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 8 / Eq. 61 for block t = unit + 1 on one mini-batch (Algorithm 1, inner loop)."""
        t, s = unit + 1, self.schedule
        # 1. u_y = W_Embed[y]
        u_y = self.embedding(y)  # (B, d)
        # 2. z_{t-1} ~ q(z_{t-1} | y) (Eq. 58; the algorithm's "z_t" is an index typo, spec §1.4)
        z_prev = s.sample_marginal(u_y, t - 1)
        logits = self.blocks[t - 1](x, z_prev)
        # the noise of z_T is drawn after the block's forward (its dropout masks come first)
        eps_T = torch.randn(u_y.shape, device=u_y.device, dtype=u_y.dtype)
        head = self.head_every_step or t == self.T  # --no-head-every-step: the last block only
        return self.block_loss(logits, u_y, y, eps_T, self.weight(t), head=head)

    def weight(self, t: int | Tensor) -> Tensor:
        """(T/2) η (SNR(t) − SNR(t−1)), the weight of block t's denoising term in Eq. 8."""
        return 0.5 * self.T * self.eta * self.schedule.snr_delta[t]

    def block_loss(
        self,
        logits: Tensor,
        u_y: Tensor,
        y: Tensor,
        eps_T: Tensor,
        weight: Tensor,
        head: bool | Tensor = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Block t's term of Eq. 8 from its logits on z_{t−1} and the noise ε of z_T — the one DT loss.

        ``head``: whether the head's cross-entropy (step 4) is part of this block's loss — True (the
        paper), False (``--no-head-every-step`` for t < T: the head is not even run), or a 0/1 tensor
        multiplying it (the fused step's per-block mask under ``vmap``). With ``--block-ce W`` the
        loss adds W·CE(logits, y) (module docstring). The sequential step calls it for one block;
        ``--parallel fused`` calls it under ``vmap`` over the T blocks' stacked logits, noises,
        weights (and head masks) (parallel/fused.py).
        """
        s, W = self.schedule, self.embedding.weight
        # 3. denoising L2 term ‖û_θt(z_{t−1}, x) − u_y‖² (sums over d), weighted by (T/2) η ΔSNR
        l2 = (self.embedding.mix(logits.softmax(-1)) - u_y).pow(2).sum(-1).mean()
        # 5. KL(q(z_0 | y) ‖ N(0, I)): a constant for one-hot W_Embed
        kl = kl_prior(u_y, s.alpha_bar[0]).mean()
        parts = {"l2": l2.detach()}
        if head is False:
            total = kl + weight * l2
        else:
            # 4. cross-entropy of the head on z_T ~ q(z_T | y): trains θ_out (and W_Embed)
            ab_T = s.alpha_bar[self.T]
            z_T = ab_T.sqrt() * u_y + (1 - ab_T).sqrt() * eps_T
            ce = F.cross_entropy(self.head(z_T, W).flatten(0, -2), y.flatten())  # (B[, L]) labels
            total = (ce if head is True else head * ce) + kl + weight * l2
            parts["ce"] = ce.detach()
        if self.block_ce:
            # 6. (--block-ce) the block's own logits scored by the log score against y
            own_ce = F.cross_entropy(logits.flatten(0, -2), y.flatten())
            total = total + self.block_ce * own_ce
            parts["own_ce"] = own_ce.detach()
        return total, {"loss": total.detach(), **parts}

    def readout_names(self) -> list[str]:
        """``head_0``, then per block t ``p_t`` (block t's own softmax on z_{t−1}) and ``head_t``
        (p̂_θout on z_t); the paper's prediction is ``head_T``."""
        return ["head_0", *[n for t in range(1, self.T + 1) for n in (f"p_{t}", f"head_{t}")]]

    @torch.no_grad()
    def walk(self, x: Tensor, spec: ChainSpec) -> Iterator[Readout]:
        """Inference by Eq. 3 from z_0 (:meth:`Method.chain`): head(z_0), then for t = 1..T block t's
        logits on z_{t−1} (``p_t``) and head(z_t) (``head_t``).

        ``deterministic=False`` (the paper): z_0 ~ N(0, I) and fresh ε_t at every step.
        ``deterministic=True`` ([I]): z_0 = 0 (the mode of p(z_0)) and ε_t = 0, i.e. the posterior mean
        path; repeated runs give identical predictions.
        """
        C, deterministic = spec.chains, spec.deterministic
        s, W = self.schedule, self.embedding.weight
        shape = (C * x.shape[0], *self.z_shape(x)[1:])  # (C·B, d), or (C·B, L, d) on text
        z = (  # W's dtype: x may hold byte ids
            W.new_zeros(shape)
            if deterministic
            else torch.randn(shape, device=W.device, dtype=W.dtype)
        )
        heads, own = spec.wants("head"), spec.wants("p")
        if heads:
            yield Readout("head_0", by_chain(self.head(z, W), C), by_chain(z, C), 0.0)
        for t in range(1, self.T + 1):
            logits = block_logits(self.blocks[t - 1], x, z, C)  # block t on z_{t−1}
            if own:
                yield Readout(f"p_{t}", by_chain(logits, C), by_chain(z, C), t / self.T)
            u_hat = self.embedding.mix(logits.softmax(-1))  # û_θt = softmax(logits)·W (spec §3.1)
            z = ancestral_step(z, u_hat, s.a[t], s.b[t], s.c[t], noise=not deterministic)  # Eq. 3
            if heads:
                yield Readout(f"head_{t}", by_chain(self.head(z, W), C), by_chain(z, C), t / self.T)
