"""Causal transformers over bytes: the back-prop language model and the NoProp-LM block (issue 11).

Shapes: x (B, L) byte ids (any integer dtype), z (B, L, d) noised next-byte embeddings, h (B, L, w)
the residual stream of width w. Position i only ever reads positions ≤ i: attention is
``scaled_dot_product_attention(is_causal=True)`` and every other layer acts on one position at a time,
so both models are causal by construction (tests/test_language.py checks it by perturbation).

* :class:`TransformerLM` — the back-prop baseline: token + learned position embedding, ``n_layer``
  pre-LayerNorm layers (causal self-attention, GELU MLP), a final LayerNorm and the unembedding tied
  to the token embedding (nanoGPT's layout). :meth:`TransformerLM.residual_stream` returns h_0..h_L,
  the input of the logit lens (the lab: noprop_lab/bench/lm/language.py).
* :class:`LanguageBlock` — one NoProp-LM block û_θt(z_{t−1}, x): its own token and position
  embeddings and ``layers`` transformer layers over the clean context (the "image branch" of Fig. 6),
  a label branch over z and a fusion MLP to 256 logits. [I] The image block's BatchNorms become
  LayerNorms (statistics over a (B, L) batch of positions mix the positions of a window) and ReLU
  becomes GELU, as in the transformer layers; the label branch and fusion keep Fig. 6's shape
  (FC→norm→act on z, concatenation, FC→norm→act→FC(m)) at the block's width w.
* :class:`ContinuousLanguageBlock` — the same block with a noise-level (time) input, û_θ(z, x, t), for
  the methods whose one network serves a continuum of noise levels (DiffusionBlocks' blocks: t =
  c_noise). [I] The conditioning is the CT block's (Fig. 6 right): a sinusoidal embedding of t →
  FC(w) → GELU, a third branch of the fusion. Adaptive LayerNorm in every encoder layer (the authors'
  ViT) would make the context encoding depend on t, so each inference step would rerun the whole
  encoder; here the context is encoded once per input and only the fusion sees t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ct_blocks import TIME_DIM, sinusoidal_embedding

VOCAB = 256  # byte values


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused QKV projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, h: Tensor) -> Tensor:
        B, L, w = h.shape
        q, k, v = self.qkv(h).view(B, L, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, L, w/heads)
        return self.proj(out.transpose(1, 2).reshape(B, L, w))


class TransformerLayer(nn.Module):
    """Pre-LN layer: h + attn(LN(h)), then h + MLP(LN(h)) with a GELU MLP of width ``mlp_ratio``·w."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.attn(self.ln_1(h))
        return h + self.mlp(self.ln_2(h))


class ContextEncoder(nn.Module):
    """Token + learned position embedding, then ``layers`` transformer layers: h_0, ..., h_layers."""

    def __init__(self, context: int, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(VOCAB, width)
        self.pos = nn.Embedding(context, width)
        self.layers = nn.ModuleList(TransformerLayer(width, heads) for _ in range(layers))
        _init_gpt(self, layers)

    def embed(self, x: Tensor) -> Tensor:
        """h_0 = tok(x) + pos(i), (B, L, w)."""
        L = x.shape[-1]
        if L > self.context:
            raise ValueError(f"input of {L} positions is longer than the context {self.context}")
        return self.tok(x.long()) + self.pos.weight[:L]

    def stream(self, x: Tensor) -> list[Tensor]:
        """The residual stream after the embedding and after every layer: h_0..h_layers."""
        hs = [self.embed(x)]
        for layer in self.layers:
            hs.append(layer(hs[-1]))
        return hs

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return h


def _init_gpt(module: nn.Module, layers: int) -> None:
    """GPT-2's init (as nanoGPT): N(0, 0.02) weights, zero biases, residual projections scaled by
    1/sqrt(2·layers) so the stream's variance does not grow with depth."""
    for name, p in module.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(p)
        elif p.dim() >= 2:
            std = (
                0.02 / math.sqrt(2 * max(layers, 1))
                if name.endswith(("proj.weight", "2.weight"))
                else 0.02
            )
            nn.init.normal_(p, 0.0, std)


class TransformerLM(nn.Module):
    """The back-prop baseline (module docstring); ``forward(x)`` → next-byte logits (B, L, 256)."""

    def __init__(self, context: int, width: int, heads: int, n_layer: int) -> None:
        super().__init__()
        self.encoder = ContextEncoder(context, width, heads, n_layer)
        self.ln_f = nn.LayerNorm(width)

    @property
    def unembedding(self) -> Tensor:
        """W_U = the token embedding (tied), (256, w): row k is byte k's direction in the stream."""
        return self.encoder.tok.weight

    def lens(self, h: Tensor) -> Tensor:
        """The logit lens: decode a residual-stream state with the final norm and the unembedding."""
        return self.ln_f(h) @ self.unembedding.T

    def residual_stream(self, x: Tensor) -> list[Tensor]:
        return self.encoder.stream(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.lens(self.encoder(x))


class LanguageBlock(nn.Module):
    """One NoProp-LM block: context encoder ‖ label branch(z) → fusion → 256 logits per position.

    ``forward(x, z) == fuse(encode_x(x), z)``: inference encodes the context once per block and reuses
    it for every chain (the block contract of models/blocks.py).
    """

    def __init__(self, context: int, width: int, heads: int, layers: int, d: int) -> None:
        super().__init__()
        self.encoder = ContextEncoder(context, width, heads, layers)
        self.ln_x = nn.LayerNorm(width)
        self.label = nn.Sequential(nn.Linear(d, width), nn.LayerNorm(width), nn.GELU())
        self.fusion = nn.Sequential(
            nn.Linear(2 * width, width), nn.LayerNorm(width), nn.GELU(), nn.Linear(width, VOCAB)
        )

    def encode_x(self, x: Tensor) -> Tensor:
        return self.ln_x(self.encoder(x))

    def fuse(self, h_x: Tensor, z: Tensor) -> Tensor:
        if z.dim() > h_x.dim():  # several chains (C, B, L, d) share one encoded context
            h_x = h_x.expand(*z.shape[:-1], h_x.shape[-1])
        return self.fusion(torch.cat([h_x, self.label(z)], dim=-1))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.fuse(self.encode_x(x), z)


class ContinuousLanguageBlock(LanguageBlock):
    """:class:`LanguageBlock` with a time branch: ``forward(x, z, t) == fuse(encode_x(x), z, t)``.

    t is a scalar (one noise level for every position) or has z's shape without its last dimension
    (one level per label: (B, L), or (C, B, L) for C chains)."""

    def __init__(self, context: int, width: int, heads: int, layers: int, d: int) -> None:
        super().__init__(context, width, heads, layers, d)
        self.time = nn.Sequential(nn.Linear(TIME_DIM, width), nn.GELU())
        self.fusion[0] = nn.Linear(3 * width, width)

    def fuse(self, h_x: Tensor, z: Tensor, t: Tensor | float) -> Tensor:  # type: ignore[override]
        t = torch.as_tensor(t, device=z.device)
        if t.dim() == 0:  # one level for the whole batch: embed once, broadcast
            h_t = self.time(sinusoidal_embedding(t.reshape(1))).expand(*z.shape[:-1], -1)
        else:
            h_t = self.time(sinusoidal_embedding(t.expand(z.shape[:-1])))
        if z.dim() > h_x.dim():  # several chains (C, B, L, d) share one encoded context
            h_x = h_x.expand(*z.shape[:-1], h_x.shape[-1])
        return self.fusion(torch.cat([h_x, self.label(z), h_t], dim=-1))

    def forward(self, x: Tensor, z: Tensor, t: Tensor | float) -> Tensor:  # type: ignore[override]
        return self.fuse(self.encode_x(x), z, t)


def embedding_parameters(module: nn.Module) -> int:
    """Parameters of the token and position embedding tables (lookups: no FLOPs) in ``module``."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Embedding))
