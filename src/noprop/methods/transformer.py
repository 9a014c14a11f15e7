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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.transformer import TransformerLM
from .base import BuildContext, Method


class TransformerBackprop(Method):
    name = "backprop"
    label = "Backprop (transformer)"
    default_optimizer = "adamw"
    tasks = ("language",)

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

    @torch.no_grad()
    def predict_steps(self, x: Tensor, *, deterministic: bool = False) -> Tensor:
        """Logit lens after the embedding and every layer, (T+1, B, L, 256); the last is the model's
        output. The model has no noise, so ``deterministic`` changes nothing."""
        return torch.stack([self.lm.lens(h) for h in self.lm.residual_stream(x)])
