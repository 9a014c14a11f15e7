"""The models ``noprop lm compare`` can train: one :class:`Entry` per ``--models`` name.

An entry says which ``--method`` it trains, what the report calls it, and which config fields it
sets on top of the options every model shares (data, context, heads, batch, learning rate, seed,
device, precision). Width is not among them: :mod:`.matching` chooses it per run so that the run
matches the back-prop transformer. Adding a model is adding one entry to :data:`ENTRIES`.

Depth: the models share ``--layers`` L transformer layers in all. A *block-wise* entry (``dt``,
``diffusionblocks``) splits them into T = L / k blocks of k = ``--layers-per-block`` layers each
(``--block-layers k``), one run per k of the depth sweep; the others are one network of L layers
(``backprop``; ``ct`` and ``fm``, whose one network is trained for every t) and have one run.

[I] CT and FM draw one (t, z_t) per position and step here (``--t-samples 1``, Algorithm 2 of the
paper): with the library's default of 8 draws sharing one context encoding, their training FLOPs per
token are ~1.5× the back-prop transformer's at equal parameters, and no width matches both. They
train with AdamW, as every other model here (their library default is Adam), and integrate
``--inference-steps`` steps (default 20, for the per-epoch validation too; the paper: 1000).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from noprop import ConfigError, RunConfig, make_config
from noprop.arguments import LAYERS, int_list
from noprop.models import TEXT_EMBED_DIM

#: the ``--models`` default: the comparison of lm compare's first version (back-prop vs NoProp-DT)
DEFAULT_MODELS = "backprop,dt"

Options = Callable[[argparse.Namespace, int], dict[str, Any]]


def _embedding(ns: argparse.Namespace) -> dict[str, Any]:
    """W_Embed of a NoProp-style model: ``--embedding`` (and ``--embed-dim`` when given)."""
    return {"embedding": ns.embedding, **({"embed_dim": ns.embed_dim} if ns.embed_dim else {})}


def _blocks(ns: argparse.Namespace, k: int) -> dict[str, Any]:
    return {"T": ns.layers // k, "block_layers": k, **_embedding(ns)}


def _one_network(ns: argparse.Namespace, k: int) -> dict[str, Any]:
    return {"block_layers": ns.layers, "t_samples": 1, "inference_steps": ns.inference_steps,
            "optimizer": "adamw", **_embedding(ns)}  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """One ``--models`` name: how its runs are configured and named."""

    name: str
    """the ``--models`` name"""
    method: str
    """the ``--method`` it trains"""
    label: str
    """the report's name for it (samples, figures)"""
    short: str
    """its name in table rows"""
    blockwise: bool
    """T = L / k blocks of k layers (swept by ``--layers-per-block``); else one network of L layers"""
    options: Options
    """config fields beyond the shared ones and the width, from the CLI options and k"""
    column: str = ""
    """its column header in the size table (default: ``short``)"""
    legacy_name: str | None = None
    """the run's name at k = 1, where lm compare's first version named it otherwise"""
    extra: dict[str, Any] = field(default_factory=dict)
    """fixed config fields (e.g. ``fm_source``)"""

    def run_name(self, k: int) -> str:
        """The run's key in the report and its directory under ``--out``."""
        if not self.blockwise:
            return self.name
        if k == 1:
            return self.legacy_name or self.name
        return f"{self.name}-k{k}"

    def run_label(self, k: int, short: bool = False) -> str:
        base = self.short if short else self.label
        return base if not self.blockwise or k == 1 else f"{base}, {k} layers per block"

    def config(
        self, shared: dict[str, Any], ns: argparse.Namespace, width: int, k: int
    ) -> RunConfig:
        return make_config(
            method=self.method, width=width, **shared, **self.options(ns, k), **self.extra
        )


ENTRIES: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry("backprop", "backprop", "Back-prop transformer", "back-prop transformer", False,
              lambda ns, k: {"T": ns.layers}, column="back-prop"),
        Entry("dt", "dt", "NoProp-LM (DT)", "NoProp-LM", True, _blocks, legacy_name="noprop"),
        Entry("ct", "ct", "NoProp-CT", "NoProp-CT", False, _one_network),
        Entry("fm", "fm", "NoProp-FM", "NoProp-FM", False, _one_network),
        Entry("fm-current-token", "fm", "NoProp-FM from the current byte",
              "NoProp-FM (current byte)", False, _one_network,
              extra={"fm_source": "current-token"}),
        Entry("diffusionblocks", "diffusionblocks", "DiffusionBlocks", "DiffusionBlocks", True,
              _blocks),
    )
}  # fmt: skip

#: the back-prop transformer: the reference every run is matched to (its width is ``--width``)
REFERENCE = ENTRIES["backprop"]


@dataclass(frozen=True)
class RunSpec:
    """One run of the comparison: an entry at k layers per block (k = 1 for one-network entries)."""

    entry: Entry
    k: int

    @property
    def name(self) -> str:
        return self.entry.run_name(self.k)

    @property
    def label(self) -> str:
        return self.entry.run_label(self.k)

    @property
    def short(self) -> str:
        return self.entry.run_label(self.k, short=True)


def parse_models(text: str) -> list[Entry]:
    """``--models a,b,...`` → entries, in the given order; unknown or repeated names are errors."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--models needs at least one model, e.g. --models backprop,dt")
    unknown = [n for n in names if n not in ENTRIES]
    if unknown:
        raise ConfigError(f"--models: unknown model {unknown[0]!r}; known: {', '.join(ENTRIES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--models lists a model twice: {text}")
    return [ENTRIES[n] for n in names]


def parse_layers_per_block(text: str, layers: int) -> list[int]:
    """``--layers-per-block 1,2,3,6`` → sorted distinct k, each dividing ``--layers``."""
    ks = sorted(set(int_list(LAYERS).read("--layers-per-block", text)))  # the flag's own rule
    bad = [k for k in ks if layers % k]
    if bad:
        raise ConfigError(
            f"--layers-per-block {bad[0]} does not divide --layers {layers} "
            f"(T = --layers / k blocks of k layers)"
        )
    return ks


def run_specs(entries: list[Entry], ks: list[int]) -> list[RunSpec]:
    """Every run: one per k for a block-wise entry, one for the others."""
    return [RunSpec(e, k) for e in entries for k in (ks if e.blockwise else [1])]


def spec_of(name: str, run: dict[str, Any]) -> RunSpec:
    """The spec of a planned run (``plan.runs[name]``); reports written before the registry name
    their two runs only: ``backprop`` and ``noprop`` (DT, one layer per block)."""
    model = run.get("model") or ("backprop" if name == "backprop" else "dt")
    return RunSpec(ENTRIES[model], run.get("layers_per_block", 1))


def architecture(config: dict[str, Any]) -> str:
    """A run's architecture in words, from its planned config (``plan.runs[name].config``)."""
    c = config
    if c["method"] == "backprop":
        return f"{c['T']} layers × width {c['width']}, {c['heads']} heads"
    dim = c.get("embed_dim") or TEXT_EMBED_DIM  # None: the text default
    emb = "one-hot W_Embed" if c["embedding"] == "one-hot" else f"learned W_Embed d={dim}"
    k = c["block_layers"]
    if c["method"] == "dt":
        return f"T={c['T']} blocks × {k} layer{'s' if k > 1 else ''} × width {c['width']}, {emb}"
    if c["method"] == "diffusionblocks":
        return f"B={c['T']} blocks × {k} layer{'s' if k > 1 else ''} × width {c['width']}, {emb}"
    steps = c.get("inference_steps")
    source = ", from the current byte" if c.get("fm_source") == "current-token" else ""
    return (
        f"one network of {k} layers × width {c['width']}, {emb}, {c.get('t_samples')} t per "
        f"position{source}, {steps} inference steps"
    )
