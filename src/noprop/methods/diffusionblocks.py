"""DiffusionBlocks (Shing, Koyama, Akiba 2025; ``shared/spec/diffusionblocks.md``): B blocks, each trained
alone to denoise the label embedding over its own range of EDM noise levels.

Legend: σ ``sigma`` (z_σ = ŷ + σ·ε), Ê the embedding table with L2-normalised rows (``targets``), ŷ = Ê[y],
c_in / c_noise / c_skip / c_out and w(σ) from :class:`~noprop.schedules.edm.EDMNoise`, F_b block b's
network, D̂ the denoised estimate. Blocks are 0-based: block 0 owns the highest noise and runs first at
inference; *unit* b trains block b (``--T`` is B, the number of blocks).

Training (one block, spec §2–3): σ ~ the log-normal truncated to block b's range (widened by the
overlap γ, ``--db-overlap``), z_σ = ŷ + σ·ε, logits = F_b(x, c_in(σ)·z_σ, c_noise(σ)), and

* ``--db-loss ce`` (default, the paper's for labels and tokens): CE(logits, y), D̂ = softmax(logits)·Ê;
* ``--db-loss l2`` (the general EDM form): D̂ = c_skip·z_σ + c_out·(logits·Ê), loss ‖D̂ − ŷ‖².

Each example's loss is weighted by w(σ). ``--db-weighting per-sample`` is the paper's Eq. 6;
``block-mean`` is what the authors' code computes (a (B,) loss times a (B, 1) weight broadcasts to
mean(loss)·mean(w): one scalar per batch instead of per-example weights, spec §5) — offered because an
independent rebuild found it better for language models. It is the default: on MNIST validation
(10,000 training images, 3 epochs, 3 seeds; experiments/diffusionblocks/weighting.sh) it scored
0.938 against 0.921 for per-sample, better on every seed. Why, plausibly: within one block's range
w(σ) spans up to four orders of magnitude (2.5e5 at σ = 0.002, 25 at 0.2), so per-sample weighting
trains the low-noise block almost only on its least noisy examples; block-mean keeps the plain CE
average, and AdamW ignores the constant scale.

What is back-propagated: block b's loss reads F_b and, when learned, Ê only; z_σ comes from the fixed
noising of ŷ, never from another block, so no other block runs forward and no gradient reaches one
(tests/test_diffusionblocks.py, and the conformance suite's locality check).

Inference (spec §4): z = σ_max·ε (``deterministic``: z = 0, the mode), an N-step grid equally spaced in
CDF space from σ_max to σ_min (``--inference-steps``; default N = B, one evaluation per block), the
block owning each σ (:func:`~noprop.schedules.edm.block_of_step`) gives D̂, and Euler steps
z ← z + (σ_next − σ)(z − D̂)/σ; a last evaluation at σ_min gives the prediction. The read-out after
every step is the block's own logits — its direct estimate of p(y | x) — so there is no head.

Noise conditioning [I]: images use the CT block of Fig. 6 (right) with c_noise in place of t (what the
authors did for their NoProp comparison); text uses :class:`~noprop.models.transformer.
ContinuousLanguageBlock`, the NoProp-LM block with the same time branch. σ is drawn per label: per
image, and per position on text (positions are separate predictions: a position's z reaches only
its own logits, through the position-wise label branch and fusion).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.embeddings import ClassEmbedding
from ..options import at_least, fraction
from ..schedules import EDMNoise, block_of_step
from ..solvers import edm_euler_step, record_indices
from .base import (
    BlockOptions,
    BlockwiseMethod,
    BuildContext,
    ChainSpec,
    Readout,
    by_chain,
    chain_features,
)
from .fm import nearest_embedding_logits

DB_SOLVERS = ("euler",)


@dataclass(frozen=True, kw_only=True)
class DiffusionBlocksConfig(BlockOptions):
    T: int = 3
    """diffusionblocks: its number of blocks B (3, the authors' NoProp comparison)"""
    db_overlap: float = 0.05
    """diffusionblocks: overlap γ of the blocks' noise ranges, as a fraction of each range's log-width
    on each side (the authors: 0.05; 0.1 in their NoProp comparison and text runs)"""
    db_weighting: Literal["per-sample", "block-mean"] = "block-mean"
    """diffusionblocks: block-mean (the authors' code: mean(w)·mean(loss) over the batch; chosen on
    MNIST validation, BENCHMARKS.md) or per-sample (w(σ) per example, the paper's Eq. 6)"""
    db_loss: Literal["ce", "l2"] = "ce"
    """diffusionblocks: ce (cross-entropy on the block's logits, the paper's for labels) or l2 (EDM's
    c_skip/c_out denoiser and ‖D − ŷ‖²)"""
    inference_steps: int | None = None
    """diffusionblocks: Euler steps at inference (default: one per block)"""
    solver: Literal[DB_SOLVERS] = "euler"  # type: ignore[valid-type]
    """diffusionblocks: euler (the authors' sampler)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        fraction("db_overlap", self.db_overlap)
        if self.inference_steps is not None:
            at_least("inference_steps", self.inference_steps)


class DiffusionBlocks(BlockwiseMethod):
    name = "diffusionblocks"
    label = "DiffusionBlocks"
    Config = DiffusionBlocksConfig
    tasks = ("classification", "language")
    solvers = DB_SOLVERS
    step_axis = "evaluation k (the owning block's logits at σ_k; k = 0 is σ_max = 80)"

    @classmethod
    def from_config(cls, options: DiffusionBlocksConfig, ctx: BuildContext) -> DiffusionBlocks:
        emb, _ = ctx.embedding_and_head()  # no head: the read-out is the last block's own logits
        blocks = [ctx.block("continuous", emb.dim) for _ in range(options.T)]
        return cls(blocks, emb, options)

    def __init__(
        self,
        blocks: list[nn.Module],
        embedding: ClassEmbedding,
        options: DiffusionBlocksConfig = DiffusionBlocksConfig(),  # noqa: B008 (frozen)
        noise: EDMNoise | None = None,
    ) -> None:
        super().__init__(embedding, nn.Identity())
        self.blocks = nn.ModuleList(blocks)
        self.noise = noise or EDMNoise()
        self.overlap, self.weighting = options.db_overlap, options.db_weighting
        self.loss_kind = options.db_loss
        self.ranges = [
            self.noise.block_range(len(blocks), b, self.overlap) for b in range(len(blocks))
        ]
        # plain attributes, so an evaluation sweep may set them (runs/sweep.py)
        self.inference_steps = options.inference_steps or len(blocks)
        self.solver = "euler"

    def shared_parameters(self) -> list[nn.Parameter]:
        """A learned Ê (read by every block's loss); there is no head."""
        return [self.embedding.weight] if self.embedding.learnable else []

    # ------------------------------------------------------------------ targets
    def targets(self) -> Tensor:
        """Ê: W_Embed with L2-normalised rows, the one table of training targets *and* of inference's
        D̂ (the authors' code normalised only the former, spec §5). One-hot rows are unit already."""
        W = self.embedding.weight
        return W if self.embedding.kind == "one-hot" else F.normalize(W, dim=-1)

    def output_embeddings(self) -> Tensor:
        return self.targets()

    def mix(self, p: Tensor) -> Tensor:
        """p·Ê for p of shape (..., m) (one-hot: p itself, exactly, as ClassEmbedding.mix)."""
        return p if self.embedding.kind == "one-hot" else p @ self.targets()

    def denoise(self, z: Tensor, logits: Tensor, sigma: Tensor) -> Tensor:
        """D̂ from the block's logits on z_σ; ``sigma`` broadcasts against z (…, 1) or is a scalar."""
        if self.loss_kind == "ce":
            return self.mix(logits.softmax(-1))
        return self.noise.c_skip(sigma) * z + self.noise.c_out(sigma) * self.mix(logits)

    def block_logits(
        self,
        block: int,
        z: Tensor,
        sigma: Tensor,
        h_x: Tensor | None = None,
        x: Tensor | None = None,
    ) -> Tensor:
        """F_b(x, c_in(σ)·z, c_noise(σ)) from cached features ``h_x`` (or the input ``x``)."""
        net = self.blocks[block]
        if h_x is None:
            h_x = net.encode_x(x)
        s = sigma if sigma.dim() == 0 else sigma.unsqueeze(-1)
        return net.fuse(h_x, self.noise.c_in(s) * z, self.noise.c_noise(sigma))

    # ----------------------------------------------------------------- training
    def loss(self, x: Tensor, y: Tensor, unit: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Block ``unit``'s weighted denoising loss on one mini-batch (module docstring)."""
        lo, hi = self.ranges[unit]
        # 1. ŷ = Ê[y]; σ per label from the block's truncated log-normal; z_σ = ŷ + σ·ε
        y_hat = self.targets()[y]  # (B[, L], d)
        sigma = self.noise.sample(lo, hi, tuple(y.shape), device=y_hat.device)  # (B[, L])
        s = sigma.unsqueeze(-1)
        z = y_hat + s * torch.randn_like(y_hat)
        logits = self.block_logits(unit, z, sigma, x=x)
        # 2. the per-label inner loss
        if self.loss_kind == "ce":
            per = F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="none")
        else:
            per = (self.denoise(z, logits, s) - y_hat).pow(2).sum(-1).flatten()
        # 3. w(σ): per example (Eq. 6) or, as the authors' code, the batch mean times the mean loss
        w = self.noise.weight(sigma).flatten()
        if self.weighting == "per-sample":
            total = (w * per).mean()
        else:
            total = w.mean() * per.mean()
        return total, {"loss": total.detach(), self.loss_kind: per.mean().detach()}

    # ---------------------------------------------------------------- inference
    @property
    def prediction_kind(self) -> str:
        """``p`` (the owning block's own softmax, ``--db-loss ce``) or ``near`` (the embedding
        nearest to D̂, ``--db-loss l2``, whose outputs are not scores)."""
        return "p" if self.loss_kind == "ce" else "near"

    def readout_names(self) -> list[str]:
        return [f"{self.prediction_kind}_{k}" for k in record_indices(self.inference_steps)]

    @torch.no_grad()
    def walk(self, x: Tensor, spec: ChainSpec) -> Iterator[Readout]:
        """The Euler sampler (spec §4; :meth:`Method.chain`): read out at the grid points (≤ 11
        evenly spaced ones, incl. the last, for N ≥ 11; all N + 1 otherwise); state z_{σ_k}."""
        steps = self.inference_steps if spec.steps is None else spec.steps
        if spec.solver not in (None, *self.solvers):
            raise ConfigError(
                f"--method diffusionblocks has no solver {spec.solver!r}; it uses euler"
            )
        C, deterministic = spec.chains, spec.deterministic
        grid = self.noise.grid(steps)  # float64, σ_max .. σ_min
        record = record_indices(steps)  # validates steps >= 1
        wanted = set(record) if spec.wants(self.prediction_kind) else set()
        W = self.embedding.weight
        shape = (C * x.shape[0], *self.z_shape(x)[1:])
        z = (
            W.new_zeros(shape)
            if deterministic
            else self.noise.sigma_max * torch.randn(shape, device=W.device, dtype=W.dtype)
        )
        h: dict[int, Tensor] = {}  # input features, once per block and input (repeated per chain)
        for k in range(steps + 1):
            b = block_of_step(k, steps, self.T)
            if b not in h:
                h[b] = chain_features(self.blocks[b], x, C)
            sigma = grid[k].to(device=W.device, dtype=W.dtype)
            logits = self.block_logits(b, z, sigma, h_x=h[b])
            if k in wanted:
                out = logits if self.loss_kind == "ce" else self._read_out(z, logits, sigma)
                name = f"{self.prediction_kind}_{k}"
                yield Readout(name, by_chain(out, C), by_chain(z, C), k / steps)
            if k < steps:
                z = edm_euler_step(z, self.denoise(z, logits, sigma), sigma, grid[k + 1].item())

    def _read_out(self, z: Tensor, logits: Tensor, sigma: Tensor) -> Tensor:
        """``--db-loss l2``: logits of the class embedding nearest to D̂ (its outputs are not scores)."""
        return nearest_embedding_logits(self.denoise(z, logits, sigma), self.targets())
