"""``--method backprop`` on text: a causal transformer trained end to end (issue 11's baseline).

The image back-prop twin chains NoProp-DT's blocks; for next-byte prediction the natural back-prop
model is the standard one instead, a pre-LayerNorm causal transformer with ``--T`` layers of width
``--width`` (:class:`noprop.models.transformer.TransformerLM`), trained with next-byte cross-entropy
over every position. :meth:`Backprop.from_config` builds this class when the task has a label per
position. Its read-out after "step" l is the logit lens of the residual stream h_l (the final norm and
the tied unembedding applied to h_l), so ``predict_steps`` has the same (S, B, L, 256) contract as
NoProp-DT's read-out after every block and the trainer's per-step accuracy is the lens's accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.transformer import TransformerLM
from .base import BuildContext, ChainSpec, Method, Readout


class TransformerBackprop(Method):
    name = "backprop"
    label = "Backprop (transformer)"
    tasks = ("language",)
    stochastic = False

    @classmethod
    def from_config(cls, options, ctx: BuildContext) -> TransformerBackprop:  # type: ignore[override]
        m = ctx.model
        return cls(TransformerLM(ctx.task.in_shape[0], m.width, m.heads, options.T))

    def __init__(self, lm: TransformerLM) -> None:
        nn.Module.__init__(self)  # no W_Embed or NoProp head: the unembedding is the output space
        self.lm = lm
        self.label_dims = 1

    @property
    def T(self) -> int:
        return len(self.lm.encoder.layers)

    def unit_modules(self, unit: int) -> list[nn.Module]:
        return [self.lm]

    def shared_parameters(self) -> list[nn.Parameter]:
        return []

    def params_per_block(self) -> int:
        """Parameters of one transformer layer."""
        return sum(p.numel() for p in self.lm.encoder.layers[0].parameters())

    def loss(self, x: Tensor, y: Tensor, unit: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.lm(x)
        ce = F.cross_entropy(logits.flatten(0, -2), y.flatten())
        return ce, {"loss": ce.detach(), "ce": ce.detach()}

    def output_embeddings(self) -> Tensor:
        return self.lm.unembedding

    def readout_names(self) -> list[str]:
        """One read-out, the model's ``output`` (the logit lens of earlier layers is no candidate:
        the model is trained on its output only)."""
        return ["output"]

    @property
    def prediction_kind(self) -> str:
        return "lens"

    def paper_readout(self) -> str:
        return "output"

    @torch.no_grad()
    def walk(self, x: Tensor, spec: ChainSpec) -> Iterator[Readout]:
        """``lens_l``: the logit lens of the residual stream h_l after the embedding and every layer
        (state h_l), l = 0..T; then ``output``, the model's output (= ``lens_T``). The model draws no
        noise: one chain whatever ``chains`` and ``deterministic`` (:attr:`stochastic` is False)."""
        last = None  # lens_T is the output: not computed twice
        if spec.wants("lens"):
            for i, h in enumerate(self.lm.residual_stream(x)):
                last = self.lm.lens(h)[None]
                yield Readout(f"lens_{i}", last, h[None], i / self.T)
        if spec.wants("output"):
            yield Readout("output", self.lm(x)[None] if last is None else last, None, 1.0)
