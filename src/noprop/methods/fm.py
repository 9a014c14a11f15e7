"""NoProp-FM (spec §1.7, Algorithm 3, §2.4): flow matching in label-embedding space.

Legend: t ∈ [0, 1], z_0 ~ N(0, I) noise, z_1 = u_y = W_Embed[y], σ ``sigma`` (path noise),
v_θ(z_t, x, t) ``v`` = logits·W_Embed (no softmax: "unrestricted weights", spec §3.1),
z̃_1 ``z1_tilde`` = z_t + (1 − t) v_θ (Eq. 12), h_x the cached image features.

* Path (Eq. 10): z_t = t u_y + (1 − t) z_0 + σ ε. σ is not given by the paper ([I]); default 0, the
  plain conditional OT path, for which the target field u_y − z_0 is exact (tests/test_ct.py).
* Loss (Eq. 11/63): ‖v_θ − (u_y − z_0)‖² summed over d; with a learned W_Embed plus the anchor
  cross-entropy −log p̂_θout(y | z̃_1) (Eqs. 12–13/64) that keeps the embeddings apart. With the fixed
  one-hot W_Embed the head is unused in training and receives no parameter updates.
* Inference: dz/dt = v_θ(z, x, t) from t = 0 to 1 with ``--solver`` on N uniform steps (paper: 1000,
  Euler is the natural reading). v_θ is predicted directly (no division by 1 − t), so few steps are
  stable: one Euler step already lands on E[u_y | x] for the exact field.
* Read-out: the class whose embedding is nearest (Euclidean) to z (paper), returned as logits
  −‖z − u_k‖² so argmax is the prediction; reported on z_t at ≤ 11 evenly spaced grid points.

``--fm-predict`` ([I]; ``auto``, the default: ``velocity`` on images, ``clean`` on text). The paper's
network outputs v_θ = logits·W_Embed. On text that did not learn (issue 22: in a 3-minute
``lm compare`` NoProp-FM scored 8.44 bits per byte against the unigram's 4.84, loss 215 → 187). The
target u_y − z_0 is mostly −z_0, isotropic noise in all 256 dimensions, but the text block's output
layer is Linear(width, 256): v_θ lies in a width-dimensional affine subspace (120 there), so the
noise's other 136 dimensions, 136 of Eq. 11's 257 expected units at t = 0, are out of reach.
``clean`` makes the network predict the clean embedding instead, z̃_1 = softmax(logits)·W_Embed (CT's û_θ, spec §3.1), and v_θ = (z̃_1 − z_t)/(1 − t),
Eq. 12 solved for v_θ, with 1 − t clamped at :data:`T_EPS` = 0.05 at inference (the x-prediction of
Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise", which argues the same for
high-dimensional data). The loss is Eq. 11 weighted by (1 − t)²: ‖z̃_1 − z_t − (1 − t)(u_y − z_0)‖²,
which at σ = 0 is ‖z̃_1 − u_y‖², a Brier score at every t. A positive weight w(t) leaves each t's
minimiser, v_θ = E[u_y − z_0 | z_t, x, t], unchanged; it moves only a finite network's effort between
t's. Unweighted, Eq. 11 in this form weighs t near 1 up to 400× more than t = 0 (1/(1 − t)²), where
the next byte is decided; in one exploratory 3-minute tiny-shakespeare run (a patch, not kept; issue
22's note) it reached validation accuracy 0.169 against 0.240 weighted. The ODE, the read-outs and
Eq. 13 (on z̃_1) are unchanged. With one-hot W_Embed the softmax *is* z̃_1, a Brier-trained p(y | x, z_t, t): the fair
read-out ``p_k``. Euler's last step lands on z̃_1 exactly (z + (1/N)(z̃_1 − z)/(1/N)).

Text (a label per position; the block is :class:`~noprop.models.transformer.ContinuousLanguageBlock`,
causal context encoder once per window, label/time/fusion layers position-wise): t, z_0 and the path
noise are drawn per position ([I], as CT: ContinuousTimeMethod.sample_times) and Eq. 11 is averaged
over positions; inference integrates every position on one t-grid (the positions' ODEs are uncoupled).

``--fm-source current-token`` (text only; the "path in embedding space between the current token and
the next token" that the NoProp post sees in a transformer's residual stream): the flow starts at the
embedding of the byte *at* the position, z_0 = W_Embed[x_i] + σ_src ε, instead of N(0, I), and ends at
the next byte's, z_1 = W_Embed[y_i] = W_Embed[x_{i+1}]; the path, the target u_y − z_0 and inference
are otherwise unchanged (deterministic inference starts at W_Embed[x_i] exactly). [I] σ_src
(``--fm-source-sigma``, default 0.1, not tuned) is added because an ODE is a deterministic map: from
a single point it reaches a single point, so without noise the flow could not split one source into
the several next bytes a context allows; with it, the small ball around W_Embed[x_i] is divided among
them (stochastic inference samples a next byte, as the noise source does). Gradient reaches a learned
W_Embed through both ends of the path (one table), as through u_y in the paper's form.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..models.ct_blocks import CTBlock
from ..models.embeddings import ClassEmbedding
from ..options import non_negative
from ..solvers import ODE_SOLVERS
from .base import BuildContext, ContinuousTimeMethod, TimeSamplingOptions, repeat_rows

#: where the flow starts: the paper's Gaussian noise, or (text) the current byte's embedding
FM_SOURCES = ("noise", "current-token")
DEFAULT_SOURCE_SIGMA = 0.1
#: what the network outputs: v_θ itself (the paper), the clean embedding z̃_1, or per task (auto)
FM_PREDICTS = ("auto", "velocity", "clean")
#: [I] ``--fm-predict clean``: v_θ = (z̃_1 − z_t) / max(1 − t, T_EPS), as Li & He (2025, "JiT")
T_EPS = 0.05
#: [I] the probability floor ε of the ``p_k`` read-out with ``--fm-predict velocity`` (before
#: renormalising): z̃_1 is not constrained to the simplex
FM_FLOOR = 1e-4


@dataclass(frozen=True, kw_only=True)
class FMConfig(TimeSamplingOptions):
    solver: Literal[ODE_SOLVERS] = "euler"  # type: ignore[valid-type]
    """inference ODE solver: euler (default for fm/adjoint), heun, midpoint, rk4, dopri5 ..."""
    fm_sigma: float = 0.0
    """fm: σ of the Gaussian probability path (Eq. 10)"""
    fm_source: Literal[FM_SOURCES] = "noise"  # type: ignore[valid-type]
    """fm: where the flow starts: noise (z_0 ~ N(0, I), the paper) or current-token (text only:
    the embedding of the byte at each position, flowing to the next byte's)"""
    fm_source_sigma: float = DEFAULT_SOURCE_SIGMA
    """fm --fm-source current-token: std σ_src of the Gaussian noise added to the current byte's
    embedding, z_0 = W_Embed[x_i] + σ_src ε"""
    fm_predict: Literal[FM_PREDICTS] = "auto"  # type: ignore[valid-type]
    """fm: what the network outputs: velocity (v_θ = logits·W_Embed, the paper), clean (z̃_1 =
    softmax(logits)·W_Embed, v_θ = (z̃_1 − z_t)/(1 − t)), or auto (velocity on images, clean on text)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative("fm_sigma", self.fm_sigma)
        non_negative("fm_source_sigma", self.fm_source_sigma)
        if self.fm_source == "noise" and self.fm_source_sigma != DEFAULT_SOURCE_SIGMA:
            raise ConfigError("--fm-source-sigma applies to --fm-source current-token only")


def resolve_predict(predict: str, task: str) -> str:
    """``--fm-predict auto`` → clean on text, velocity (the paper's) elsewhere ([I], see module)."""
    if predict == "auto":
        return "clean" if task == "language" else "velocity"
    return predict


def _one_minus(t: Tensor, like: Tensor) -> Tensor:
    """max(1 − t, T_EPS), shaped to broadcast against ``like`` (t: a scalar, or one per row)."""
    one_minus = (1 - torch.as_tensor(t, device=like.device, dtype=like.dtype)).clamp_min(T_EPS)
    return one_minus.unsqueeze(-1) if one_minus.dim() else one_minus


def nearest_embedding_logits(z: Tensor, W: Tensor) -> Tensor:
    """−‖z − u_k‖² for every class k, (B, d) × (m, d) -> (B, m); argmax = nearest embedding."""
    return -(z.pow(2).sum(-1, keepdim=True) - 2 * z @ W.T + W.pow(2).sum(-1))


class NoPropFM(ContinuousTimeMethod):
    name = "fm"
    label = "NoProp-FM"
    Config = FMConfig
    default_optimizer = "adam"
    tasks = ("classification", "language")
    compilable = True  # --compile: 0.78x with prototypes, but 1.10x (slower) one-hot, measured

    @classmethod
    def check_task(cls, options: FMConfig, task: str) -> None:
        if options.fm_source == "current-token" and task != "language":
            raise ConfigError(
                f"--fm-source current-token flows from the current byte to the next; the {task} "
                "task has no current token (use --fm-source noise)"
            )

    @classmethod
    def from_config(cls, options: FMConfig, ctx: BuildContext) -> NoPropFM:
        cls.check_task(options, ctx.task.name)
        emb, head = ctx.embedding_and_head()
        predict = resolve_predict(options.fm_predict, ctx.task.name)
        return cls(ctx.block("continuous", emb.dim), emb, head,
                   dataclasses.replace(options, fm_predict=predict))  # fmt: skip

    def __init__(
        self,
        block: CTBlock,
        embedding: ClassEmbedding,
        head: torch.nn.Module,
        options: FMConfig = FMConfig(),  # noqa: B008 (frozen: shared safely)
    ) -> None:
        super().__init__(block, embedding, head, options)
        self.sigma = options.fm_sigma
        self.source = options.fm_source
        self.source_sigma = options.fm_source_sigma
        # not "predict": Method.predict() is the inference API; auto without a task: images'
        self.prediction = resolve_predict(options.fm_predict, "classification")

    def shared_parameters(self) -> list[torch.nn.Parameter]:
        """θ_out and W_Embed when W_Embed is learned; nothing otherwise (the head is then unused)."""
        return super().shared_parameters() if self.embedding.learnable else []

    def inert_parameters(self) -> list[torch.nn.Parameter]:
        """With a fixed W_Embed no loss reads the head (the read-out is the nearest embedding)."""
        return [] if self.embedding.learnable else list(self.head.parameters())

    def v(self, h_x: Tensor, z_t: Tensor, t: Tensor) -> Tensor:
        """v_θ(z_t, x, t) from cached features h_x: logits·W_Embed (spec §3.1), or with
        ``predict="clean"`` (z̃_1 − z_t) / max(1 − t, T_EPS), z̃_1 = softmax(logits)·W_Embed (Eq. 12
        solved for v_θ)."""
        if self.prediction == "velocity":
            return self.embedding.mix(self.block_fuse(h_x, z_t, t))
        return (self.z1_hat(h_x, z_t, t) - z_t) / _one_minus(t, z_t)

    def z1_hat(self, h_x: Tensor, z_t: Tensor, t: Tensor) -> Tensor:
        """``predict="clean"``: the network's clean embedding z̃_1 = softmax(logits)·W_Embed."""
        return self.embedding.mix(self.block_fuse(h_x, z_t, t).softmax(-1))

    def loss(self, x: Tensor, y: Tensor, unit: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 11 (+ Eq. 13 with a learned W_Embed) on one mini-batch (Algorithm 3)."""
        # 1. z_1 = u_y, z_0 ~ N(0, I) (or the current byte's embedding), t_i ~ U(0, 1), K =
        #    t_samples draws per example (text: per position, shapes (KB, L, ·))
        h_x, u_y, t = self.sample_times(self.block.encode_x(x), self.embedding(y))  # (KB, ·)
        z_0 = self.source_z(x, u_y, deterministic=False)
        t = t.unsqueeze(-1)  # (KB, 1)
        # 2. z_t ~ N(t z_1 + (1 − t) z_0, σ²)  (Eq. 10)
        z_t = t * u_y + (1 - t) * z_0
        if self.sigma > 0:
            z_t = z_t + self.sigma * torch.randn_like(z_t)
        # 3. flow-matching term ‖v_θ − (z_1 − z_0)‖²  (Eq. 11); predicting z̃_1, the same term times
        #    (1 − t)²: ‖z̃_1 − z_t − (1 − t)(z_1 − z_0)‖² (= ‖z̃_1 − z_1‖² at σ = 0; see the module)
        if self.prediction == "clean":
            z1_tilde = self.z1_hat(h_x, z_t, t.squeeze(-1))
            fm = (z1_tilde - z_t - (1 - t) * (u_y - z_0)).pow(2).sum(-1).mean()
        else:
            v = self.v(h_x, z_t, t.squeeze(-1))
            fm = (v - (u_y - z_0)).pow(2).sum(-1).mean()
            z1_tilde = z_t + (1 - t) * v  # the extrapolation of Eq. 12
        parts = {"fm": fm.detach()}
        total = fm
        # 4. anchor CE on z̃_1 when W_Embed is learned (Eqs. 12–13)
        if self.embedding.learnable:
            ce = F.cross_entropy(
                self.head(z1_tilde, self.embedding.weight).flatten(0, -2),
                repeat_rows(y, self.t_samples).flatten(),
            )
            total = total + ce
            parts["ce"] = ce.detach()
        return total, {"loss": total.detach(), **parts}

    def source_z(self, x: Tensor, like: Tensor, *, deterministic: bool) -> Tensor:
        """z_0 of the path, shaped like ``like`` (the labels' embeddings, K·B rows for B inputs
        ``x``): N(0, I) noise, or with ``--fm-source current-token`` W_Embed[x] + σ_src ε, row k·B + i
        from input i; ``deterministic``: the mode (0, or W_Embed[x])."""
        if self.source == "noise":
            return torch.zeros_like(like) if deterministic else torch.randn_like(like)
        z_0 = repeat_rows(self.embedding(x.long()), like.shape[0] // x.shape[0])
        if deterministic or self.source_sigma == 0:
            return z_0
        return z_0 + self.source_sigma * torch.randn_like(z_0)

    def initial_z(self, x: Tensor, deterministic: bool) -> Tensor:
        """Inference's z_0: :meth:`source_z` (the noise source: ContinuousTimeMethod's, unchanged)."""
        if self.source == "noise":
            return super().initial_z(x, deterministic)
        return self.source_z(x, x.new_empty(x.shape[0]), deterministic=deterministic)

    def velocity(self, h_x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """The inference ODE's field dz/dt is v_θ itself."""
        return self.v(h_x, z, t)

    def read_out(self, z: Tensor) -> Tensor:
        """Logits of the nearest class embedding (Euclidean) to z (spec §1.7 read-out)."""
        return nearest_embedding_logits(z, self.embedding.weight)

    @property
    def prediction_kind(self) -> str:
        return "near"

    def chain_kinds(self) -> tuple[str, ...]:
        """``near_k`` = softmax(−‖z_{t_k} − u_j‖²), the paper's read-out (as a distribution its
        temperature 1 is arbitrary); then the network's own estimate of p(y | x, z_t): ``p_k`` with
        a fixed W_Embed, ``head_k`` = p̂_θout(y | z̃_1) with a learned one (the head is trained on
        z̃_1 by Eq. 13 then)."""
        return ("near", "head" if self.embedding.learnable else "p")

    def chain_readout(self, kind: str, h_x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """``p_k`` [I] (one-hot W_Embed, where the head is inert): z̃_1 = z_t + (1 − t) v_θ (Eq. 12)
        minimises Eq. 11's L2 at E[u_y | z_t, x] — with one-hot W_Embed the posterior probability
        vector itself. With ``--fm-predict clean`` z̃_1 = softmax(logits)·W_Embed, so ``p_k`` is
        that softmax (its logits); with ``velocity`` z̃_1 is not on the simplex and is read as
        p ∝ max(z̃_1, 0) + :data:`FM_FLOOR` (every class keeps mass)."""
        if kind == "near":
            return self.read_out(z)
        if kind == "p" and self.prediction == "clean" and not self.embedding.learnable:
            return self.block_fuse(h_x, z, t)
        z1 = z + (1 - t) * self.v(h_x, z, t)  # z̃_1 (Eq. 12) = E[u_y | z_t, x] at the optimum
        if kind == "head":
            return self.head(z1, self.embedding.weight)
        p = z1.float().clamp_min(0) + FM_FLOOR
        return (p / p.sum(-1, keepdim=True)).log()
