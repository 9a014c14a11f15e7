"""Helpers for the typed option dataclasses every component owns (data, model, method, training).

An option dataclass documents each field with a docstring right below it (the PEP 257 "attribute
docstring"); :func:`field_docs` reads those docstrings from the source, and the CLI turns them into
``--help`` text, so the documentation of a knob lives in one place, next to its default.
``Literal[...]`` fields list their allowed values; :func:`check_choices` validates them with a one-line
:class:`~noprop.errors.ConfigError` naming the flag. Numbers are checked by :func:`at_least`,
:func:`positive`, :func:`non_negative` and :func:`fraction`, which apply the validators of :mod:`noprop.arguments`
(the CLI's ``type=`` of every other flag for the same kind of number), so each rule is written once.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from typing import Any, Literal

from .arguments import FRACTION, NON_NEGATIVE, POSITIVE, field_count
from .errors import ConfigError


def flag(name: str) -> str:
    """``max_train_samples`` → ``--max-train-samples``."""
    return "--" + name.replace("_", "-")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (and its dataclass bases), one line each."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (e.g. a class made at run time)
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def resolved_hints(cls: type) -> dict[str, Any]:
    """Field annotations evaluated (the modules use ``from __future__ import annotations``)."""
    return typing.get_type_hints(cls)


def choices(tp: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation, else None."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    for arg in typing.get_args(tp):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return None


def scalar_type(tp: Any) -> Any:
    """int / float / str / bool of an annotation (``X | None`` → X, ``Literal[...]`` → str)."""
    if choices(tp) is not None:
        return type(choices(tp)[0])
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return args[0]
    return tp


def check_choices(obj: Any) -> None:
    """Every ``Literal`` field of the dataclass ``obj`` holds one of its allowed values."""
    hints = resolved_hints(type(obj))
    for f in dataclasses.fields(obj):
        allowed = choices(hints[f.name])
        value = getattr(obj, f.name)
        if allowed is not None and value is not None and value not in allowed:
            raise ConfigError(
                f"unknown {flag(f.name)} {value!r}; choose one of {', '.join(map(str, allowed))}"
            )


def positive(name: str, value: float) -> None:
    """A finite number > 0 (NaN and inf are refused): :data:`noprop.arguments.POSITIVE`."""
    POSITIVE.check(flag(name), value)


def non_negative(name: str, value: float) -> None:
    """A finite number >= 0: :data:`noprop.arguments.NON_NEGATIVE`."""
    NON_NEGATIVE.check(flag(name), value)


def fraction(name: str, value: float) -> None:
    """A number in [0, 1): a share that leaves something (``--db-overlap``, ``--val-fraction``)."""
    FRACTION.check(flag(name), value)


def at_least(name: str, value: int, low: int = 1) -> None:
    """A whole number >= ``low`` and at most the field's limit (:data:`noprop.limits.
    MAX_CONFIG_VALUES`, else 2^63 - 1): :func:`noprop.arguments.field_count`, the rule of every
    flag for the same quantity (``eval --threads``, ``lm compare --context``)."""
    field_count(name, low).check(flag(name), value)
