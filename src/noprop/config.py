"""The typed run configuration: one frozen dataclass per component, nested into :class:`RunConfig`.

Sections: ``data`` (:class:`~noprop.data.DataConfig`), ``model`` (:class:`~noprop.models.config.
ModelConfig`), ``method`` (:class:`MethodConfig`: the ``--method`` name plus that method's own option
dataclass, ``Method.Config``) and ``train`` (:class:`~noprop.training.config.TrainConfig`). The CLI flags
are generated from these fields (:mod:`noprop.flags`), and the resolved config is written to
``config.json`` in the run directory. Every check raises a one-line :class:`~noprop.errors.ConfigError`
naming the flag to change; a flag that the chosen method does not have (``--fm-sigma`` with
``--method dt``) is such an error, not silently dropped.

``config.json`` keeps its 0.1 shape: ``{"data": {...}, "model": {...}, "method": {"method": NAME,
<that method's options>}, "train": {...}}``. Files written by noprop 0.1, whose method section lists
every method's options (``None`` meaning "the method's default"), are read as well (:func:`_legacy`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from .data import DataConfig
from .data.registry import is_text, task_kind
from .errors import ConfigError
from .limits import MAX_CONFIG_VALUES, MAX_TOTAL_LAYERS
from .methods import METHODS, Method, MethodOptions, method_class
from .models.config import ModelConfig
from .options import flag, resolved_hints, scalar_type
from .training.config import TrainConfig

#: the method section of a noprop 0.1 ``config.json``: every method's options in one flat section
LEGACY_METHOD_KEYS = frozenset(
    {"T", "eta", "cosine_s", "alpha_bar_min", "alpha_bar_max", "inference_steps", "solver"}
    | {"gamma_min", "gamma_max", "gamma_width", "fm_sigma", "t_samples", "adjoint_steps"}
)
#: keys every 0.1 method section holds (the DT schedule's, there from the start): how a 0.1 file is
#: told from a current one with a foreign key, which is an error
LEGACY_CORE = frozenset({"T", "eta", "cosine_s", "alpha_bar_min", "alpha_bar_max"})


def method_fields() -> dict[str, list[type[Method]]]:
    """Every method option name → the method classes that have it (in registry order)."""
    out: dict[str, list[type[Method]]] = {}
    for cls in METHODS.values():
        for f in dataclasses.fields(cls.Config):
            out.setdefault(f.name, []).append(cls)
    return out


@dataclass(frozen=True)
class MethodConfig:
    """The ``--method`` name and that method's options (default: the method's ``Config()``)."""

    method: str = "dt"
    options: MethodOptions | None = None

    def __post_init__(self) -> None:
        cls = method_class(self.method)
        if self.options is None:
            object.__setattr__(self, "options", cls.Config())
        elif not isinstance(self.options, cls.Config):
            raise ConfigError(
                f"--method {self.method} takes {cls.Config.__name__} options, "
                f"got {type(self.options).__name__}"
            )

    @property
    def cls(self) -> type[Method]:
        return METHODS[self.method]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self.options)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodConfig:
        d = dict(d)
        name = d.pop("method", "dt")
        if not isinstance(name, str):
            raise ConfigError(f"config section 'method': method must be a string (got {name!r})")
        method = method_class(name)
        own = {f.name for f in dataclasses.fields(method.Config)}
        if LEGACY_CORE <= set(d) and set(d) - own:
            d = _legacy(name, d, own)
        d = {k: v for k, v in d.items() if v is not None}  # None: the method's default
        unknown = set(d) - own
        if unknown:
            raise ConfigError(
                f"config section 'method' has keys {sorted(unknown)} that --method {name} does not take"
            )
        check_types("method", method.Config, d)
        return cls(name, method.Config(**d))

    def replace(self, **flat: Any) -> MethodConfig:
        """Copy with the method and/or its options replaced by flat name.

        Changing the method starts from the new method's defaults. A name that no method has, or that
        the chosen method does not have, is a ConfigError naming the methods that do.
        """
        name = flat.pop("method", self.method)
        cls = method_class(name)
        base = self.options if name == self.method else cls.Config()
        own = {f.name for f in dataclasses.fields(cls.Config)}
        owners = method_fields()
        for k in flat:
            if k not in own:
                users = ", ".join(c.name for c in owners.get(k, []))
                where = f"it applies to --method {users}" if users else "no method has it"
                raise ConfigError(f"--method {name} has no option {flag(k)} ({where})")
        return MethodConfig(name, dataclasses.replace(base, **flat))


def _legacy(name: str, d: dict[str, Any], own: set[str]) -> dict[str, Any]:
    """A noprop 0.1 method section → the method's own options.

    0.1 stored every method's options in one section; keys the method never read are dropped and
    ``None`` (the method's default, e.g. ``eta`` or ``solver``) takes the method's default. Runs made
    before ``--t-samples`` existed drew one t per image, so a missing ``t_samples`` means 1.
    """
    extra = set(d) - own - LEGACY_METHOD_KEYS
    if extra:
        raise ConfigError(
            f"config section 'method' has keys {sorted(extra)} that --method {name} does not take"
        )
    out = {k: v for k, v in d.items() if k in own and v is not None}
    if "t_samples" in own and "t_samples" not in d:
        out["t_samples"] = 1
    return out


def check_types(section: str, cls: type, values: dict[str, Any]) -> None:
    """Every value has its field's scalar type (an int for a float field, None where optional),
    so that a hand-edited or hostile config.json fails with one line naming the field, never with
    a TypeError from deep inside a check or a build."""
    hints = resolved_hints(cls)
    for key, value in values.items():
        hint = hints[key]
        tp = scalar_type(hint)
        if value is None and type(None) in typing.get_args(hint):
            continue
        if isinstance(value, bool) and tp is not bool:
            ok = False
        elif tp is float:
            ok = isinstance(value, (int, float))
        else:
            ok = isinstance(value, tp)
        if not ok:
            raise ConfigError(
                f"config section {section!r}: {key} must be {tp.__name__}, as for {flag(key)} "
                f"(got {repr(value)[:40]})"
            )


def check_limits(flat: dict[str, Any], text: bool) -> None:
    """The hard limits of :mod:`noprop.limits` (what a config may make noprop allocate)."""
    for key, most in MAX_CONFIG_VALUES.items():
        value = flat.get(key)
        if value is not None and value > most:
            raise ConfigError(f"{flag(key)} must be <= {most} (got {value}; noprop/limits.py)")
    layers = flat.get("T", 1) * flat["block_layers"]
    if text and layers > MAX_TOTAL_LAYERS:
        raise ConfigError(
            f"--T × --block-layers must be <= {MAX_TOTAL_LAYERS} (got {layers}; noprop/limits.py)"
        )


SECTION_NAMES = ("data", "model", "method", "train")
PLAIN_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        task = task_kind(self.data.dataset)
        check_limits(self.flat(), task == "language")
        parallel, cls, name = self.train.parallel, self.method.cls, self.method.method
        if task not in cls.tasks:
            raise ConfigError(
                f"--method {name} does not support the {task} task of --dataset "
                f"{self.data.dataset}; methods that do: "
                + ", ".join(n for n, c in METHODS.items() if task in c.tasks)
            )
        cls.check_task(self.options, task)
        if parallel in ("blocks", "fused") and not cls.local_units:
            raise ConfigError(
                f"--parallel {parallel} splits a method's independently trained blocks, but "
                f"--method {name} trains one network; use --parallel data (or none)"
            )
        if parallel == "fused" and not hasattr(cls, "block_loss"):
            raise ConfigError(f"--parallel fused needs a method with a per-block loss, not {name}")
        if self.train.offload_blocks and (self.train.order != "blocks" or not cls.local_units):
            raise ConfigError(
                "--offload-blocks keeps one NoProp-DT block on the accelerator at a time; it needs "
                "--method dt and --order blocks"
            )
        if self.train.offload_blocks and parallel in ("blocks", "data"):
            raise ConfigError(
                "--offload-blocks is for one process (--parallel none); under --parallel "
                f"{parallel} every rank already holds only its own blocks' work"
            )
        if self.train.order == "random" and parallel in ("blocks", "fused"):
            raise ConfigError(
                f"--order random draws one block per batch in one process; under --parallel "
                f"{parallel} every block trains on every batch: use --order blocks or interleaved"
            )
        if self.train.order == "random" and self.train.lr_schedule != "constant":
            raise ConfigError(
                "--lr-schedule cosine counts each block's steps over whole passes; with --order "
                "random a block's step count is random: use --lr-schedule constant"
            )
        if parallel == "fused" and self.train.lr_schedule != "constant":
            raise ConfigError(
                "--parallel fused keeps its own stacked optimiser; use --lr-schedule constant"
            )
        if parallel == "fused" and self.train.order != "interleaved":
            raise ConfigError(
                "--parallel fused trains every block on the same mini-batch, which is "
                "--order interleaved; add --order interleaved"
            )

    @property
    def options(self) -> MethodOptions:
        """The chosen method's options (``cfg.method.options``)."""
        assert self.method.options is not None
        return self.method.options

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": dataclasses.asdict(self.data),
            "model": dataclasses.asdict(self.model),
            "method": self.method.to_dict(),
            "train": dataclasses.asdict(self.train),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        if not isinstance(d, dict):
            raise ConfigError("a run config must be a JSON object")
        kwargs: dict[str, Any] = {}
        for name in SECTION_NAMES:
            if not isinstance(d.get(name, {}), dict):
                raise ConfigError(f"config section {name!r} must be a JSON object")
        for name, section_cls in PLAIN_SECTIONS.items():
            values = dict(d.get(name, {}))
            known = {f.name for f in dataclasses.fields(section_cls)}
            unknown = set(values) - known
            if unknown:
                raise ConfigError(f"config section {name!r} has unknown keys {sorted(unknown)}")
            check_types(name, section_cls, values)
            kwargs[name] = section_cls(**values)
        method = dict(d.get("method", {}))
        if (
            method.get("method") == "fm"
            and "fm_predict" not in method
            and is_text(kwargs["data"].dataset)
        ):  # text FM runs from before --fm-predict predicted v_θ (images: auto is velocity too)
            method["fm_predict"] = "velocity"
        kwargs["method"] = MethodConfig.from_dict(method)
        return cls(**kwargs)

    def replace(self, **flat: Any) -> RunConfig:
        """Copy with leaf fields replaced by flat name (e.g. ``epochs=3``, ``method="ct"``)."""
        parts: dict[str, Any] = {}
        rest = dict(flat)
        for name, section_cls in PLAIN_SECTIONS.items():
            names = {f.name for f in dataclasses.fields(section_cls)}
            own = {k: rest.pop(k) for k in list(rest) if k in names}
            parts[name] = dataclasses.replace(getattr(self, name), **own)
        owners = method_fields()
        leftover = sorted(k for k in rest if k != "method" and k not in owners)
        if leftover:
            raise ConfigError(f"unknown config fields {leftover}")
        parts["method"] = self.method.replace(**rest)
        return RunConfig(**parts)

    def flat(self) -> dict[str, Any]:
        """Every leaf field by flat name (the method section: its name and the method's options)."""
        return {k: v for section in self.to_dict().values() for k, v in section.items()}


def make_config(**flat: Any) -> RunConfig:
    """Build a :class:`RunConfig` from flat field names, e.g. ``make_config(dataset="mnist", T=10)``."""
    return RunConfig().replace(**flat)
