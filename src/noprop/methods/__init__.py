"""The ``METHODS`` registry: name -> builder. ``build_method`` raises a ConfigError listing the names.

A builder takes the run config, the input shape, the number of classes and the training tensors (for
the prototype embedding's init) and returns a :class:`~noprop.methods.base.Method`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import RunConfig
from ..errors import ConfigError
from ..models import build_dt_block, build_embedding, build_head
from ..models.ct_blocks import build_ct_block
from ..models.embeddings import ClassEmbedding
from ..schedules import CosineSchedule, DiscreteSchedule
from ..schedules_ct import LearnedSchedule
from .adjoint import Adjoint
from .backprop import Backprop
from .base import Method
from .ct import NoPropCT
from .dt import NoPropDT
from .fm import NoPropFM

Builder = Callable[
    [RunConfig, tuple[int, ...], int, torch.Tensor | None, torch.Tensor | None], Method
]


def build_embedding_and_head(
    cfg: RunConfig, in_shape: tuple[int, ...], num_classes: int, train_x, train_y
) -> tuple[ClassEmbedding, torch.nn.Module]:
    """W_Embed (seeded by ``--seed``) and the head p̂_θout, shared by every method."""
    emb = build_embedding(
        cfg.model.embedding,
        num_classes,
        embed_dim=cfg.model.embed_dim,
        train_x=train_x,
        train_y=train_y,
        seed=cfg.train.seed,
    )
    head = build_head(
        cfg.model.head, emb.weight, sigma=cfg.model.posterior_sigma, init=cfg.model.head_init
    )
    return emb, head


def _dt_blocks(cfg: RunConfig, in_shape, num_classes: int, d: int) -> list[torch.nn.Module]:
    return [build_dt_block(cfg.model.block, in_shape, d, num_classes) for _ in range(cfg.method.T)]


def build_dt(cfg: RunConfig, in_shape, num_classes, train_x=None, train_y=None) -> Method:
    emb, head = build_embedding_and_head(cfg, in_shape, num_classes, train_x, train_y)
    m = cfg.method
    schedule = DiscreteSchedule.cosine(
        CosineSchedule(
            T=m.T, s=m.cosine_s, alpha_bar_min=m.alpha_bar_min, alpha_bar_max=m.alpha_bar_max
        )
    )
    eta = 0.1 if m.eta is None else m.eta  # Table 3: η = 0.1 for DT
    return NoPropDT(_dt_blocks(cfg, in_shape, num_classes, emb.dim), emb, head, schedule, eta=eta)


def build_backprop(cfg: RunConfig, in_shape, num_classes, train_x=None, train_y=None) -> Method:
    emb, head = build_embedding_and_head(cfg, in_shape, num_classes, train_x, train_y)
    return Backprop(_dt_blocks(cfg, in_shape, num_classes, emb.dim), emb, head)


def build_ct(cfg: RunConfig, in_shape, num_classes, train_x=None, train_y=None) -> Method:
    emb, head = build_embedding_and_head(cfg, in_shape, num_classes, train_x, train_y)
    m = cfg.method
    block = build_ct_block(cfg.model.block, in_shape, emb.dim, num_classes)
    schedule = LearnedSchedule(gamma_min=m.gamma_min, gamma_max=m.gamma_max, width=m.gamma_width)
    eta = 1.0 if m.eta is None else m.eta  # Table 3: η = 1 for CT
    return NoPropCT(
        block,
        emb,
        head,
        schedule,
        eta=eta,
        inference_steps=m.inference_steps,
        solver=m.solver or "ancestral",
        t_samples=m.t_samples,
    )


def build_fm(cfg: RunConfig, in_shape, num_classes, train_x=None, train_y=None) -> Method:
    emb, head = build_embedding_and_head(cfg, in_shape, num_classes, train_x, train_y)
    m = cfg.method
    block = build_ct_block(cfg.model.block, in_shape, emb.dim, num_classes)
    return NoPropFM(
        block,
        emb,
        head,
        sigma=m.fm_sigma,
        inference_steps=m.inference_steps,
        solver=m.solver or "euler",
        t_samples=m.t_samples,
    )


def build_adjoint(cfg: RunConfig, in_shape, num_classes, train_x=None, train_y=None) -> Method:
    emb, head = build_embedding_and_head(cfg, in_shape, num_classes, train_x, train_y)
    m = cfg.method
    block = build_ct_block(cfg.model.block, in_shape, emb.dim, num_classes)
    return Adjoint(
        block,
        emb,
        head,
        adjoint_steps=m.adjoint_steps,
        inference_steps=m.inference_steps,
        solver=m.solver or "euler",
    )


METHODS: dict[str, Builder] = {
    "dt": build_dt,
    "backprop": build_backprop,
    "ct": build_ct,
    "fm": build_fm,
    "adjoint": build_adjoint,
}


def build_method(
    cfg: RunConfig,
    in_shape: tuple[int, ...],
    num_classes: int,
    train_x: torch.Tensor | None = None,
    train_y: torch.Tensor | None = None,
) -> Method:
    """Build the method named by ``cfg.method.method`` with parameters seeded by ``--seed``."""
    name = cfg.method.method
    if name not in METHODS:
        raise ConfigError(f"method {name!r} is not available; choose one of {', '.join(METHODS)}")
    torch.manual_seed(cfg.train.seed)
    return METHODS[name](cfg, tuple(in_shape), num_classes, train_x, train_y)


__all__ = [
    "METHODS",
    "Adjoint",
    "Backprop",
    "Method",
    "NoPropCT",
    "NoPropDT",
    "NoPropFM",
    "build_method",
]
