"""The paper's hyper-parameters as named presets, and TOML config files (``noprop train --preset/--config``).

:data:`PRESETS` holds one :class:`Preset` per data set × method of the paper's hyper-parameter table
(v1 Table 3 = v2 Table 4, spec §4), named ``paper-DATASET-METHOD`` (``paper-mnist-dt``,
``paper-cifar10-ct``, ...). The table is written once, below, as :data:`PAPER_TABLE`; each row becomes a
flat config (the names :meth:`~noprop.config.RunConfig.replace` takes). "Timesteps" is ``T`` for DT and
the back-prop twin, ``inference_steps`` for CT and FM, and both ``adjoint_steps`` and ``inference_steps``
for the adjoint ("1000 for adjoint in training and inference"); η is set where the method has one.

A config file is TOML with flat keys (``epochs = 3``) and/or the sections of ``config.json``
(``[data] [model] [method] [train]``) holding the same field names (TOML lets the method name be
a flat ``method = "ct"`` only without a ``[method]`` table; beside one it goes inside it). :func:`resolve_flat` merges, from
lowest to highest precedence: the defaults, the preset, the file, the flags the user typed. The
preset's method options are dropped when a file or flag picks another method (``--preset
paper-mnist-dt --method ct`` keeps the preset's optimiser settings, not its ``T`` and ``eta``); a
file option that the resolved method lacks is an error, as a flag would be. Every problem is a one-line
:class:`~noprop.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import PLAIN_SECTIONS, SECTION_NAMES, MethodConfig, method_fields
from .errors import ConfigError
from .flags import scalar_type
from .limits import MAX_JSON_BYTES
from .options import flag, resolved_hints
from .untrusted import one_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, released as tomli
    import tomli as tomllib

#: where the table comes from (v1 Table 3 is the same table)
SOURCE = "spec §4 (v2 Table 4)"

#: the paper's hyper-parameter table, cell for cell; ``None`` is the table's "–" (no η)
#: (dataset, method, batch, epochs, optimiser, LR, weight decay, timesteps, η)
PAPER_TABLE: tuple[tuple[Any, ...], ...] = (
    ("MNIST", "Backprop", 128, 100, "AdamW", 0.001, 0.001, 10, None),
    ("MNIST", "NoProp-DT", 128, 100, "AdamW", 0.001, 0.001, 10, 0.1),
    ("MNIST", "Adjoint", 128, 2, "AdamW", 0.001, 0.001, 1000, None),
    ("MNIST", "NoProp-CT", 128, 100, "Adam", 0.001, 0.001, 1000, 1),
    ("MNIST", "NoProp-FM", 128, 100, "Adam", 0.001, 0.001, 1000, None),
    ("CIFAR-10", "Backprop", 128, 150, "AdamW", 0.001, 0.001, 10, None),
    ("CIFAR-10", "NoProp-DT", 128, 150, "AdamW", 0.001, 0.001, 10, 0.1),
    ("CIFAR-10", "Adjoint", 128, 4, "AdamW", 0.001, 0.001, 1000, None),
    ("CIFAR-10", "NoProp-CT", 128, 500, "Adam", 0.001, 0.001, 1000, 1),
    ("CIFAR-10", "NoProp-FM", 128, 500, "Adam", 0.001, 0.001, 1000, None),
    ("CIFAR-100", "Backprop", 128, 150, "AdamW", 0.001, 0.001, 10, None),
    ("CIFAR-100", "NoProp-DT", 128, 150, "AdamW", 0.001, 0.001, 10, 0.1),
    ("CIFAR-100", "Adjoint", 128, 4, "AdamW", 0.001, 0.001, 1000, None),
    ("CIFAR-100", "NoProp-CT", 128, 1000, "Adam", 0.001, 0.001, 1000, 1),
    ("CIFAR-100", "NoProp-FM", 128, 1000, "Adam", 0.001, 0.001, 1000, None),
)

DATASET_OF = {"MNIST": "mnist", "CIFAR-10": "cifar10", "CIFAR-100": "cifar100"}
METHOD_OF = {
    "Backprop": "backprop",
    "NoProp-DT": "dt",
    "Adjoint": "adjoint",
    "NoProp-CT": "ct",
    "NoProp-FM": "fm",
}
#: the method options the table's "Timesteps" column sets
TIMESTEP_FIELDS = {
    "backprop": ("T",),
    "dt": ("T",),
    "adjoint": ("adjoint_steps", "inference_steps"),
    "ct": ("inference_steps",),
    "fm": ("inference_steps",),
}


@dataclass(frozen=True)
class Preset:
    name: str
    values: dict[str, Any]
    """flat config fields (``RunConfig().replace(**values)``)"""
    source: str
    """the table row the values come from"""

    def describe(self) -> str:
        """One line: the name, the values and the source row (``noprop presets``)."""
        values = " ".join(f"{k}={v}" for k, v in self.values.items())
        return f"{self.name}: {values}  [{self.source}]"


def _cell(v: Any) -> str:
    return "–" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _preset(row: tuple[Any, ...]) -> Preset:
    data, label, batch, epochs, optimiser, lr, wd, steps, eta = row
    dataset, method = DATASET_OF[data], METHOD_OF[label]
    values: dict[str, Any] = {
        "dataset": dataset,
        "method": method,
        "batch_size": batch,
        "epochs": epochs,
        "optimizer": optimiser.lower(),
        "lr": float(lr),
        "weight_decay": float(wd),
        **{name: steps for name in TIMESTEP_FIELDS[method]},
    }
    if eta is not None:
        values["eta"] = float(eta)
    if method in ("ct", "fm"):
        values["t_samples"] = 1  # Algorithm 2/3 draw one t per image (noprop's default is 8)
    source = f"{SOURCE}: " + " | ".join(map(_cell, row))
    return Preset(f"paper-{dataset}-{method}", values, source)


PRESETS: dict[str, Preset] = {p.name: p for p in map(_preset, PAPER_TABLE)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown --preset {name!r}; `noprop presets` lists them")
    return PRESETS[name]


def _field_types() -> dict[str, dict[str, Any]]:
    """Section → field → the scalar type its flag takes (the method section: every method's options)."""
    out = {s: {k: scalar_type(t) for k, t in resolved_hints(cls).items()}
           for s, cls in PLAIN_SECTIONS.items()}  # fmt: skip
    method = {"method": str}
    for name, owners in method_fields().items():
        method[name] = scalar_type(resolved_hints(owners[0].Config)[name])
    out["method"] = method
    return out


def _typed(where: str, key: str, value: Any, tp: Any) -> Any:
    """``value`` as the flag's type (a TOML integer is accepted for a float), else a ConfigError."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    raise ConfigError(
        f"{where}: {key} must be {kind.get(tp, tp.__name__)}, as for {flag(key)} (got {value!r})"
    )


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML config file → flat config fields (checked: known names, each in its own section, typed)."""
    where = f"config file {path}"
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_JSON_BYTES:  # a config is a few lines
                raise ConfigError(
                    f"{where} is larger than {MAX_JSON_BYTES} bytes (noprop/limits.py)"
                )
            doc = tomllib.load(f)
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"{where} not found") from None
    except OSError as e:
        raise ConfigError(f"cannot read {where}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where} is not valid TOML: {e}") from None
    except Exception as e:  # noqa: BLE001 - e.g. RecursionError on deeply nested arrays
        raise ConfigError(f"cannot read {where}: {one_line(e)}") from None
    types = _field_types()
    section_of = {k: s for s, fields in types.items() for k in fields}
    flat: dict[str, Any] = {}

    def put(key: str, value: Any, section: str) -> None:
        if key in flat:
            raise ConfigError(f"{where}: {key} is given twice")
        flat[key] = _typed(where, key, value, types[section][key])

    for key, value in doc.items():
        if key in SECTION_NAMES and isinstance(value, dict):
            for k, v in value.items():
                if k not in types[key]:
                    home = f" (it belongs in [{section_of[k]}])" if k in section_of else ""
                    raise ConfigError(f"{where}: section [{key}] has no key {k!r}{home}")
                put(k, v, key)
        elif key in section_of:
            put(key, value, section_of[key])
        else:
            raise ConfigError(
                f"{where}: unknown key {key!r} (keys are config field names, flat or in the "
                f"sections {', '.join(f'[{s}]' for s in SECTION_NAMES)})"
            )
    return flat


def resolve_flat(
    preset: str | None, config_path: str | Path | None, flags: dict[str, Any]
) -> dict[str, Any]:
    """Flat config fields: the preset's, overridden by the file's, overridden by the flags."""
    base = dict(get_preset(preset).values) if preset is not None else {}
    file = load_config_file(config_path) if config_path is not None else {}
    method = flags.get("method", file.get("method", base.get("method", MethodConfig.method)))
    owners = method_fields()
    own = {f.name for f in dataclasses.fields(MethodConfig(method).cls.Config)}
    if base and method != base["method"]:  # the preset's method options are its method's
        base = {k: v for k, v in base.items() if k not in owners}
    for k in file:
        if k in owners and k not in own:
            users = ", ".join(c.name for c in owners[k])
            raise ConfigError(
                f"config file {config_path}: --method {method} has no option {k} "
                f"(it applies to --method {users})"
            )
    return {**base, **file, **flags}
