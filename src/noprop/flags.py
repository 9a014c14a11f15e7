"""Command-line flags generated from the config dataclasses (``max_train_samples`` → ``--max-train-samples``).

The help text of a flag is its field's docstring (:func:`noprop.options.field_docs`), so the CLI, the
Python API and ``config.json`` list the same knobs with one description. Method options are the union
of every registered method's ``Config``; the help names the methods that take each one and their
defaults. Defaults are suppressed in the parsed namespace, so :func:`given_flags` returns only the
flags the user typed (what ``--resume`` compares with the run's config).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from .arguments import NUMBER, WHOLE
from .config import PLAIN_SECTIONS, method_fields
from .methods import METHODS
from .options import field_docs, flag, resolved_hints, scalar_type

#: the argparse ``type=`` of a config field's flag: parse only (``--T x`` is refused here); the
#: field's range is its dataclass's check (noprop.options → noprop.arguments), run when the config is
#: built, so that a flag, a ``--config`` file and a run's ``config.json`` meet one rule
PARSERS: dict[type, Any] = {int: WHOLE, float: NUMBER}


def _add(p: argparse.ArgumentParser, name: str, tp: Any, help_text: str) -> None:
    if scalar_type(tp) is bool:
        p.add_argument(
            flag(name),
            dest=name,
            action=argparse.BooleanOptionalAction,
            default=argparse.SUPPRESS,
            help=help_text,
        )
    else:
        p.add_argument(
            flag(name),
            dest=name,
            type=PARSERS.get(scalar_type(tp), scalar_type(tp)),
            default=argparse.SUPPRESS,
            metavar=name.upper(),
            help=help_text,
        )


def config_flag_names() -> list[str]:
    """Every config field that has a flag (plain sections, ``method`` and every method option)."""
    names = [f.name for cls in PLAIN_SECTIONS.values() for f in dataclasses.fields(cls)]
    return [*names, "method", *method_fields()]


def add_config_flags(p: argparse.ArgumentParser, skip: frozenset[str] = frozenset()) -> None:
    """One flag per config field (except ``skip``), grouped by section."""
    for section, cls in PLAIN_SECTIONS.items():
        group = p.add_argument_group(f"{section} options")
        docs, hints = field_docs(cls), resolved_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in skip:
                _add(group, f.name, hints[f.name], f"{docs.get(f.name, '')} (default: {f.default})")
        if section == "model":  # method options follow the model's, as in config.json
            _add_method_flags(p, skip, METHODS)


def _add_method_flags(p: argparse.ArgumentParser, skip: frozenset[str], methods: dict) -> None:
    """``--method``, then one group per set of methods sharing options ("options of dt", "options
    of ct, fm, adjoint", ...), in registry order: each flag listed once, under the methods it
    applies to."""
    if "method" not in skip:
        labels = ", ".join(f"{name} ({cls.label})" for name, cls in methods.items())
        _add(p.add_argument_group("method"), "method", str, f"{labels} (default: dt)")
    groups: dict[tuple[str, ...], argparse._ArgumentGroup] = {}
    for name, owners in method_fields().items():
        if name in skip:
            continue
        key = tuple(c.name for c in owners)
        if key not in groups:
            groups[key] = p.add_argument_group(f"options of --method {', '.join(key)}")
        first = owners[0].Config
        doc = field_docs(first).get(name, "")
        defaults = ", ".join(
            f"{c.name} {next(f.default for f in dataclasses.fields(c.Config) if f.name == name)}"
            for c in owners
        )
        _add(groups[key], name, resolved_hints(first)[name], f"{doc} (default: {defaults})")


def given_flags(ns: argparse.Namespace) -> dict[str, Any]:
    """The config fields the user gave on the command line (defaults are suppressed)."""
    return {name: getattr(ns, name) for name in config_flag_names() if hasattr(ns, name)}
