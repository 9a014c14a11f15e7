"""One validator per kind of argument, shared by every subcommand and the config files.

Why: a rule used to be written where a flag was read, so each subcommand had its own, or none:
``train --threads 4097`` was refused while ``eval --threads 4097`` started thousands of OS threads,
and ``lm compare --minutes inf`` ended in a traceback. Here each kind of number is checked by one
object, used in two ways:

* as an argparse ``type=``: ``kind(text)`` parses the text and raises
  :class:`argparse.ArgumentTypeError`, which the CLI prints as one line before anything is read or
  written (exit status 2): ``noprop: error: argument --threads: must be <= 4096 (got 4097)``;
* as a check of a value already parsed (a ``--config`` TOML file, a run's ``config.json``, the
  Python API): ``kind.check("--threads", value)`` raises a one-line
  :class:`~noprop.errors.ConfigError` (``kind.read(flag, text)`` for text read outside argparse).
  The config dataclasses reach it through :mod:`noprop.options` (``at_least``, ``positive``,
  ``non_negative``, ``fraction``), so a flag and a file meet the same rule.

The kinds:

* :func:`count` (:class:`Count`): a whole number from ``low`` to ``high``; at most :data:`MAX_INT`
  (2^63 - 1: torch seeds, int64 tensors and TOML integers hold no more), and for a config field at
  most its limit in :data:`noprop.limits.MAX_CONFIG_VALUES` (:func:`field_count`). Named ones:
  :data:`THREADS` (1-4096 torch threads, each an OS thread), :data:`SEED` (0 to 2^63 - 1;
  evaluation adds the run index, still below the 2^64 torch accepts), :data:`CHAINS`,
  :data:`RUNS`, :data:`STEPS` (inference steps), :data:`BLOCKS` (``--T``), :data:`LAYERS`.
* :class:`Real`: a finite float in a range, each end open or closed: :data:`POSITIVE`,
  :data:`NON_NEGATIVE`, :data:`FINITE`, :func:`probability` (:data:`PROBABILITY` [0, 1],
  :data:`FRACTION` [0, 1)), :data:`SECONDS` and :data:`MINUTES` (> 0 and at most a year: a longer
  budget overflows the FLOP budgets and timeouts computed from it).
* :func:`int_list` (:class:`IntList`): comma-separated counts, e.g. ``--chains 1,4,16``.
* :data:`WHOLE` and :data:`NUMBER` (:class:`Number`): parse only, for the flags generated from
  config fields (:mod:`noprop.flags`): their range is the field's own check, run when the config
  is built, so that the flag and a config file cannot disagree.
* :data:`PATH` (:class:`FilePath`): a non-empty path without NUL bytes.

Nothing here imports the CLI or any model code: it sits in the package's lowest layer.
"""

from __future__ import annotations

import argparse
import math
import numbers
import operator
from typing import Any

from .errors import ConfigError
from .limits import MAX_CONFIG_VALUES, MAX_TOTAL_LAYERS

#: the largest whole number any flag or config field takes (int64: torch, numpy, TOML)
__all__ = [
    "BLOCKS",
    "CHAINS",
    "FINITE",
    "FRACTION",
    "LAYERS",
    "MINUTES",
    "NON_NEGATIVE",
    "NUMBER",
    "PATH",
    "POSITIVE",
    "PROBABILITY",
    "RUNS",
    "SECONDS",
    "SEED",
    "STEPS",
    "THREADS",
    "WHOLE",
    "Count",
    "FilePath",
    "IntList",
    "Kind",
    "Number",
    "Real",
    "count",
    "field_count",
    "int_list",
    "probability",
]

MAX_INT = 2**63 - 1
#: seconds in a year: the longest time budget or timeout (``--minutes``, ``--timeout``)
MAX_SECONDS = 366 * 24 * 3600
#: stochastic chains averaged at once (each is a copy of the batch in memory; the paper uses one)
MAX_CHAINS = 4096
#: inference runs of one evaluation (each a full pass over the test set)
MAX_RUNS = 10_000
#: the longest shown value in a message (a 4000-digit number would fill the terminal)
SHOWN_CHARS = 40


def shown(value: Any) -> str:
    """``value`` as a message quotes it: text in quotes, numbers as they are, cut to a line."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _number(x: float) -> str:
    """1.0 → ``1``, 0.5 → ``0.5`` (bounds in messages)."""
    return str(int(x)) if float(x).is_integer() else str(x)


class Kind:
    """A validator of one kind of argument (see the module docstring).

    Subclasses define :meth:`parse` (text → value; ``ValueError`` for text that is not one) and
    :meth:`problem` (the rule: why a parsed value is refused, or None), and :attr:`expected`.
    """

    #: what the kind accepts, e.g. "a whole number from 1 to 4096"
    expected: str = "a value"
    #: a number (or a list of numbers): the CLI's property tests throw numbers at these flags
    numeric: bool = True

    def parse(self, text: str) -> Any:
        raise NotImplementedError

    def problem(self, value: Any) -> str | None:
        """``"must be >= 1 (got 0)"``, or None if ``value`` is accepted."""
        return None

    def __call__(self, text: str) -> Any:
        """argparse ``type=``: the parsed value, or an ArgumentTypeError (one line, exit 2)."""
        try:
            value = self.parse(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(
                f"must be {self.expected} (got {shown(text)})"
            ) from None
        problem = self.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    def check(self, flag: str, value: Any) -> Any:
        """``value`` (of a config file or the API) if accepted, else a ConfigError naming ``flag``."""
        problem = self.problem(value)
        if problem is not None:
            raise ConfigError(f"{flag} {problem}")
        return value

    def read(self, flag: str, text: str) -> Any:
        """:meth:`__call__` for text read outside argparse (a recorded plan, the Python API): the
        value, or a ConfigError naming ``flag``."""
        try:
            return self(text)
        except argparse.ArgumentTypeError as e:
            raise ConfigError(f"{flag} {e}") from None

    def __repr__(self) -> str:  # argparse's help and error messages name a type by it
        return f"<{type(self).__name__}: {self.expected}>"


class Count(Kind):
    """A whole number from ``low`` to ``high`` (``"1.5"``, ``"1e3"``, ``"0x10"`` are not)."""

    def __init__(self, low: int = 1, high: int = MAX_INT, expected: str | None = None) -> None:
        self.low, self.high = low, high
        self.expected = expected or f"a whole number from {low} to {high}"

    def parse(self, text: str) -> int:
        return int(text)  # ValueError for non-numbers and for more than 4300 digits

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool):
            return f"must be {self.expected} (got {shown(value)})"
        try:
            n = operator.index(value)
        except TypeError:
            return f"must be {self.expected} (got {shown(value)})"
        if n < self.low:
            return f"must be >= {self.low} (got {shown(n)})"
        if n > self.high:
            return f"must be <= {self.high} (got {shown(n)})"
        return None


class Real(Kind):
    """A finite float from ``low`` to ``high``, each end open or closed (NaN and ±inf never)."""

    def __init__(
        self,
        low: float = -math.inf,
        high: float = math.inf,
        *,
        low_open: bool = False,
        high_open: bool = False,
    ) -> None:
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        if math.isfinite(low) and math.isfinite(high):
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            self.expected = f"a number in {left}{_number(low)}, {_number(high)}{right}"
        elif math.isfinite(low):
            self.expected = f"a finite number {'>' if low_open else '>='} {_number(low)}"
        elif math.isfinite(high):
            self.expected = f"a finite number {'<' if high_open else '<='} {_number(high)}"
        else:
            self.expected = "a finite number"

    def parse(self, text: str) -> float:
        return float(text)  # "1e400" is inf: refused by problem()

    def problem(self, value: Any) -> str | None:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if ok:
            try:
                x = float(value)
            except OverflowError:  # an int beyond 1e308
                x = math.inf
            ok = (
                math.isfinite(x)
                and (x > self.low if self.low_open else x >= self.low)
                and (x < self.high if self.high_open else x <= self.high)
            )
        return None if ok else f"must be {self.expected} (got {shown(value)})"


class IntList(Kind):
    """Comma-separated whole numbers, each an ``item`` (e.g. ``--steps 1,10,100``).

    ``unique``: a value listed twice is refused. ``as_text``: return the text as given (checked),
    for flags whose text is recorded and compared (``lm compare --layers-per-block``).
    """

    def __init__(self, item: Count, *, unique: bool = False, as_text: bool = False) -> None:
        self.item, self.unique, self.as_text = item, unique, as_text
        self.expected = (
            f"a comma-separated list of whole numbers from {item.low} to {item.high}, e.g. 1,2"
        )

    def parse(self, text: str) -> list[int]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise ValueError(text)
        return [self.item.parse(s) for s in items]

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, (list, tuple)) or not value:
            return f"must be {self.expected} (got {shown(value)})"
        for v in value:
            problem = self.item.problem(v)
            if problem is not None:
                return f"values {problem}"
        if self.unique and len(set(value)) != len(value):
            twice = next(v for v in value if value.count(v) > 1)
            return f"lists {twice} twice"
        return None

    def __call__(self, text: str) -> Any:
        values = super().__call__(text)
        return text if self.as_text else values


class Number(Kind):
    """Any float, parsed only: the flags generated from config fields, whose range (finiteness
    included) is the field's own check, run when the config is built."""

    expected = "a number"

    def parse(self, text: str) -> float:
        return float(text)

    def problem(self, value: Any) -> str | None:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return None if ok else f"must be {self.expected} (got {shown(value)})"


class FilePath(Kind):
    """A non-empty path without NUL bytes (the operating system refuses those with a traceback)."""

    expected = "a non-empty path"
    numeric = False

    def parse(self, text: str) -> str:
        if not text or "\0" in text:
            raise ValueError(text)
        return text


def count(low: int = 1, high: int = MAX_INT) -> Count:
    """A whole number from ``low`` to ``high`` (argparse ``type=`` and ``.check``)."""
    return Count(low, high)


def field_count(name: str, low: int = 1) -> Count:
    """The count of the config field ``name``: >= ``low``, at most its limit in
    :data:`~noprop.limits.MAX_CONFIG_VALUES` (else :data:`MAX_INT`), so that a flag of another
    subcommand for the same quantity (``eval --threads``, ``lm compare --context``) takes what the
    config takes."""
    return Count(low, MAX_CONFIG_VALUES.get(name, MAX_INT))


def probability(*, high_open: bool = False) -> Real:
    """A number in [0, 1] (``high_open``: [0, 1), for a fraction that must leave something)."""
    return Real(0.0, 1.0, high_open=high_open)


def int_list(item: Count | None = None, *, unique: bool = False, as_text: bool = False) -> IntList:
    """Comma-separated counts (default: each >= 1), e.g. ``--chains 1,4,16``."""
    return IntList(item or count(), unique=unique, as_text=as_text)


THREADS = field_count("threads")
SEED = field_count("seed", 0)
CHAINS = count(1, MAX_CHAINS)
RUNS = count(1, MAX_RUNS)
STEPS = field_count("inference_steps")
BLOCKS = field_count("T")
#: transformer layers of one model (all its blocks together): the config's ``T`` × ``block_layers``
LAYERS = count(1, MAX_TOTAL_LAYERS)
POSITIVE = Real(0.0, low_open=True)
#: a share that must leave something: [0, 1)
FRACTION = probability(high_open=True)
PROBABILITY = probability()
NON_NEGATIVE = Real(0.0)
FINITE = Real()
SECONDS = Real(0.0, MAX_SECONDS, low_open=True)
MINUTES = Real(0.0, MAX_SECONDS / 60, low_open=True)
#: parse only: the flags generated from config fields (their range: the field's own check)
WHOLE = Count(-MAX_INT - 1, MAX_INT, "a whole number")
NUMBER = Number()
PATH = FilePath()
