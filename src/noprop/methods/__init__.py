"""The ``METHODS`` registry: ``--method`` name → method class (each class describes itself).

Adding a method: one file defining a :class:`~noprop.methods.base.Method` subclass (with its
``Config``, ``from_config``, ``loss``, ``walk`` (its sampler) and ``readout_names``) and one line below.
"""

from __future__ import annotations

from ..errors import ConfigError
from .adjoint import Adjoint, AdjointConfig
from .backprop import Backprop, BackpropConfig
from .base import (
    BlockOptions,
    BlockwiseMethod,
    BuildContext,
    ChainSpec,
    ContinuousTimeMethod,
    Method,
    MethodOptions,
    Readout,
    kind_of,
)
from .ct import CTConfig, NoPropCT
from .diffusionblocks import DiffusionBlocks, DiffusionBlocksConfig
from .dt import DTConfig, NoPropDT
from .fm import FMConfig, NoPropFM
from .transformer import TransformerBackprop

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (NoPropDT, Backprop, NoPropCT, NoPropFM, Adjoint, DiffusionBlocks)
}


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``; a one-line ConfigError listing the names otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown --method {name!r}; choose one of {', '.join(METHODS)}"
        ) from None


__all__ = [
    "METHODS",
    "Adjoint",
    "AdjointConfig",
    "Backprop",
    "BackpropConfig",
    "BlockOptions",
    "BlockwiseMethod",
    "BuildContext",
    "CTConfig",
    "ChainSpec",
    "ContinuousTimeMethod",
    "DTConfig",
    "DiffusionBlocks",
    "DiffusionBlocksConfig",
    "FMConfig",
    "Method",
    "MethodOptions",
    "NoPropCT",
    "NoPropDT",
    "NoPropFM",
    "Readout",
    "TransformerBackprop",
    "kind_of",
    "method_class",
]
