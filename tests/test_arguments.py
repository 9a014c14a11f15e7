"""One validator per kind of argument (issue 28): the validators, and every numeric flag of every
subcommand under fire.

The flags are found by walking ``build_parser()`` (subcommands of subcommands included), so a new
subcommand or flag is covered without editing this file: every option whose ``type=`` is a numeric
validator of :mod:`noprop.arguments` (and any left with a bare ``int``/``float``, which
:func:`test_no_flag_takes_a_bare_int_or_float` refuses). Each value is given as ``--flag=VALUE``
(so that ``-inf`` reaches the validator rather than argparse's option matching) to
:func:`noprop.cli.main` in-process, next to the subcommand's required arguments (paths under
``tmp_path`` that do not exist). The work behind validation is replaced by :func:`reached`: ``train``
after its config is built (``RunConfig().replace``, where the config flags are checked), ``bench
reproduce`` after the grid's configs (:func:`noprop_lab.bench.reproduce.check_grid`), ``lm compare``
after :func:`~noprop_lab.bench.lm.compare.check_arguments`, every other subcommand right after parsing
(their numbers are checked by their types only). The property: either exit 2 with exactly one line
on stderr naming the flag and nothing on stdout, or validation passes; never a traceback, never a
file. Values that no flag accepts (non-numbers, NaN, ±inf, negative or 64-bit-overflowing whole
numbers) must give exit 2; values the flag's rule accepts must pass (a rule joining two flags,
such as ``lm compare``'s "k divides --layers", may still refuse them in one line naming the flag).

Cases per CI run: :data:`SWEEP_VALUES` (25 values) × every numeric flag (102 when written: 2,550
calls), plus :data:`HYPOTHESIS_EXAMPLES` (400) Hypothesis draws of a flag and a value; the file
takes about 12 s on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from noprop import arguments as A
from noprop import cli
from noprop.config import RunConfig, method_fields
from noprop.errors import ConfigError
from noprop.flags import PARSERS
from noprop_lab import plots
from noprop_lab.bench import efficiency, parallel, reproduce
from noprop_lab.bench import grid as grid_module
from noprop_lab.bench.lm import compare

from .test_reliability import assert_one_line_error

# ----------------------------------------------------------------------------- the validators


@pytest.mark.parametrize("text", ["1", "4096", " 7 ", "+3", "1_000"])
def test_threads_accepts_1_to_4096(text):
    assert A.THREADS(text) == int(text)


@pytest.mark.parametrize(
    "text, message",
    [
        ("0", "must be >= 1 (got 0)"),
        ("-5", "must be >= 1 (got -5)"),
        ("4097", "must be <= 4096 (got 4097)"),
        ("1" + "0" * 5000, "must be a whole number from 1 to 4096"),  # beyond int()'s digits
        ("2.5", "must be a whole number from 1 to 4096 (got '2.5')"),
        ("1e3", "whole number"),
        ("0x10", "whole number"),
        ("nan", "whole number"),
        ("inf", "whole number"),
        ("", "whole number"),
        ("abc", "whole number"),
    ],
)
def test_threads_refuses_with_the_accepted_range(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        A.THREADS(text)


def test_count_bounds_and_the_config_check():
    c = A.count(2, 5)
    assert c("2") == 2 and c("5") == 5
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be >= 2 \(got 1\)"):
        c("1")
    assert c.check("--x", 3) == 3
    with pytest.raises(ConfigError, match=r"^--x must be <= 5 \(got 6\)$"):
        c.check("--x", 6)
    for bad in (2.0, True, "3", None):  # a config value of the wrong type is refused too
        with pytest.raises(ConfigError, match="--x must be a whole number from 2 to 5"):
            c.check("--x", bad)
    with pytest.raises(ConfigError, match=r"^--x must be >= 2 \(got 1\)$"):
        c.read("--x", "1")


def test_a_huge_value_is_shown_cut_to_a_line():
    with pytest.raises(ConfigError) as e:
        A.count().check("--epochs", 10**400)
    assert "..." in str(e.value) and len(str(e.value)) < 120


def test_seed_takes_what_torch_takes():
    import torch

    top = A.SEED(str(A.MAX_INT))
    torch.Generator().manual_seed(top + A.MAX_RUNS)  # evaluation adds the run index
    assert A.SEED("0") == 0
    for bad in ("-1", str(2**63), str(2**64), "1e3"):
        with pytest.raises(argparse.ArgumentTypeError):
            A.SEED(bad)


def test_field_counts_share_the_config_limits():
    from noprop.limits import MAX_CONFIG_VALUES

    assert A.THREADS.high == MAX_CONFIG_VALUES["threads"] == 4096
    assert A.STEPS.high == MAX_CONFIG_VALUES["inference_steps"]
    assert A.BLOCKS.high == MAX_CONFIG_VALUES["T"]
    assert A.field_count("epochs").high == A.MAX_INT
    assert A.field_count("seed", 0).low == 0


@pytest.mark.parametrize(
    "kind, good, bad",
    [
        (A.POSITIVE, ["1e-300", "3", "1e300"], ["0", "-1", "nan", "inf", "-inf", "1e400", "x"]),
        (A.NON_NEGATIVE, ["0", "0.5", "-0.0"], ["-1e-9", "nan", "inf", "abc"]),
        (A.FINITE, ["-1e300", "0", "3.5"], ["nan", "inf", "-inf", "1e999", ""]),
        (A.PROBABILITY, ["0", "1", "0.25"], ["-0.1", "1.0001", "nan", "inf"]),
        (A.FRACTION, ["0", "0.999"], ["1", "1.5", "-0.5", "nan"]),
        (A.MINUTES, ["0.5", "12", str(366 * 24 * 60)], ["0", "-1", "inf", "nan", "1e9"]),
        (A.SECONDS, ["1", "1800", str(A.MAX_SECONDS)], ["0", "-3", "inf", "nan", "1e300"]),
    ],
)
def test_real_kinds(kind, good, bad):
    for text in good:
        assert kind(text) == float(text)
        assert kind.check("--f", float(text)) == float(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(kind.expected)):
            kind(text)


def test_real_messages_name_the_range():
    assert A.POSITIVE.expected == "a finite number > 0"
    assert A.NON_NEGATIVE.expected == "a finite number >= 0"
    assert A.FRACTION.expected == "a number in [0, 1)"
    assert A.MINUTES.expected == "a number in (0, 527040]"
    with pytest.raises(ConfigError, match=r"^--lr must be a finite number > 0 \(got nan\)$"):
        A.POSITIVE.check("--lr", math.nan)
    with pytest.raises(ConfigError, match="--lr must be a finite number > 0"):
        A.POSITIVE.check("--lr", 10**400)  # an int too big for a float
    with pytest.raises(ConfigError, match="--lr must be a finite number > 0"):
        A.POSITIVE.check("--lr", "0.1")  # a string is not a number


def test_int_lists():
    steps = A.int_list(A.STEPS)
    assert steps("1,2, 10,") == [1, 2, 10]
    for text, message in [
        ("", "comma-separated list of whole numbers from 1 to 100000"),
        (",", "comma-separated"),
        ("1,2,x", "comma-separated"),
        ("1,0", r"values must be >= 1 \(got 0\)"),
        ("1,100001", r"values must be <= 100000 \(got 100001\)"),
        ("1.5", "comma-separated"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            steps(text)
    seeds = A.int_list(A.SEED, unique=True)
    assert seeds("0,1,2") == [0, 1, 2]
    with pytest.raises(argparse.ArgumentTypeError, match="lists 1 twice"):
        seeds("1,0,1")
    as_text = A.int_list(A.LAYERS, as_text=True)
    assert as_text("1, 2") == "1, 2"  # recorded as given (lm compare's plan)
    with pytest.raises(ConfigError, match="^--layers-per-block values must be >= 1"):
        as_text.read("--layers-per-block", "0,1")


def test_paths():
    assert A.PATH("runs/x") == "runs/x"
    for bad in ("", "a\0b"):
        with pytest.raises(argparse.ArgumentTypeError, match="a non-empty path"):
            A.PATH(bad)
    assert not A.PATH.numeric


def test_the_config_dataclasses_apply_the_same_rules():
    """A config file meets the rule of the flag (noprop.options → noprop.arguments)."""
    for flat, message in [
        ({"threads": 4097}, "--threads must be <= 4096 (got 4097)"),
        ({"threads": 0}, "--threads must be >= 1 (got 0)"),
        ({"seed": 2**63}, "--seed must be <= 9223372036854775807"),
        ({"epochs": 10**30}, "--epochs must be <= 9223372036854775807"),
        ({"lr": math.inf}, "--lr must be a finite number > 0 (got inf)"),
        ({"method": "ct", "gamma_width": 10**9}, "--gamma-width must be <= 16384"),
        (
            {"method": "diffusionblocks", "db_overlap": 1.0},
            "--db-overlap must be a number in [0, 1)",
        ),
    ]:
        with pytest.raises(ConfigError) as e:
            RunConfig().replace(**flat)
        assert message in str(e.value), (flat, str(e.value))
    d = RunConfig().to_dict()
    d["train"]["threads"] = 4097  # a run's config.json
    with pytest.raises(ConfigError, match="--threads must be <= 4096"):
        RunConfig.from_dict(d)


# ------------------------------------------------------------------------ the CLI, walked

PARSER = cli.build_parser()


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable (sub)command: its words and its parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaves(sub, (*path, name))


def is_numeric(action: argparse.Action) -> bool:
    t = action.type
    return t in (int, float) or (isinstance(t, A.Kind) and t.numeric)


def is_whole(action: argparse.Action) -> bool:
    """A flag of whole numbers (or of lists of them); the others take floats."""
    t = action.type
    return t is int or isinstance(t, (A.Count, A.IntList))


def is_config_flag(action: argparse.Action) -> bool:
    """A flag generated from a config field (noprop.flags): checked when the config is built."""
    return any(action.type is p for p in PARSERS.values())


@dataclass(frozen=True)
class Flag:
    path: tuple[str, ...]
    option: str
    action: argparse.Action
    parser: argparse.ArgumentParser

    @property
    def id(self) -> str:
        return f"{' '.join(self.path)} {self.option}"

    def owner(self) -> str | None:
        """A method that has this option (a method option given to another is an error)."""
        owners = method_fields().get(self.action.dest)
        return owners[0].name if owners and is_config_flag(self.action) else None

    def argv(self, value: str, tmp: Path) -> list[str]:
        """The subcommand, its required arguments, the context the flag needs, and the flag."""
        argv: list[str] = list(self.path)
        options = self.parser._option_string_actions
        for a in self.parser._actions:
            if not a.option_strings and a.nargs in (None, "+"):
                argv.append(str(tmp / a.dest))  # positional paths that do not exist
            elif a.option_strings and a.required:
                argv.append(f"{a.option_strings[0]}={tmp / a.dest}")
        owner = self.owner()
        if owner is not None and "--method" in options:
            argv.append(f"--method={owner}")
        if is_config_flag(self.action) and "--methods" in options:  # bench reproduce: a small grid
            argv += [f"--methods={owner or 'dt'}", "--embeddings=one-hot", "--seeds=0"]
        return [*argv, f"{self.option}={value}"]

    def accepts(self, value: str) -> bool:
        """Whether the flag's rule takes ``value`` (the oracle of the 'validation passes' branch)."""
        try:
            parsed = self.action.type(value)
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            return False
        if not is_config_flag(self.action):
            return True
        dest, owner = self.action.dest, self.owner()
        try:
            if "--methods" in self.parser._option_string_actions:
                grid_module.build_grid([owner or "dt"], ["one-hot"], [0], {dest: parsed})
            else:
                RunConfig().replace(**({"method": owner} if owner else {}), **{dest: parsed})
        except ConfigError:
            return False
        return True


FLAGS = [
    Flag(path, action.option_strings[-1], action, parser)
    for path, parser in leaves(PARSER)
    for action in parser._actions
    if action.option_strings and is_numeric(action)
]


class Reached(Exception):
    """Validation passed: the work (training, evaluation, a benchmark) would start here."""


def reached(*args: object, **kwargs: object) -> None:
    raise Reached


@contextlib.contextmanager
def stubbed() -> Iterator[None]:
    """Everything after validation replaced by :func:`reached` (see the module docstring)."""
    check_grid, check_arguments = reproduce.check_grid, compare.check_arguments

    def grid_then_stop(*args: object, **kwargs: object) -> None:
        check_grid(*args, **kwargs)
        raise Reached

    def lm_then_stop(ns: argparse.Namespace) -> None:
        check_arguments(ns)
        raise Reached

    with pytest.MonkeyPatch.context() as m:
        m.setattr(cli, "build_parser", lambda: PARSER)  # built once: 30 ms a call
        m.setattr(cli, "train", reached)
        m.setattr(reproduce, "check_grid", grid_then_stop)
        m.setattr(compare, "check_arguments", lm_then_stop)
        m.setattr(efficiency, "run", reached)
        m.setattr(parallel, "run", reached)
        m.setattr(plots, "cmd_plot", reached)  # the lab's command, added by its entry point
        for name in cli.COMMANDS:
            if name not in ("train", "bench", "lm"):
                m.setitem(cli.COMMANDS, name, reached)
        yield


def run_cli(argv: list[str]) -> tuple[int | str, str, str]:
    """(exit status or "reached", stdout, stderr) of ``noprop ARGV`` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc: int | str = cli.main(argv)
        except SystemExit as e:  # argparse
            rc = int(e.code or 0)
        except Reached:
            rc = "reached"
    return rc, out.getvalue(), err.getvalue()


def never_valid(flag: Flag, value: str) -> bool:
    """Values no numeric flag takes: not a number of the flag's kind, NaN, ±inf, negative whole
    numbers, whole numbers beyond 2^63 - 1."""
    try:
        x = float(value)
    except ValueError:
        return True
    if not math.isfinite(x):
        return True
    if not is_whole(flag.action):
        return False
    try:
        n = int(value)
    except ValueError:
        return True  # "1.5", "1e3"
    return n < 0 or n > A.MAX_INT


def check_one(flag: Flag, value: str, tmp: Path) -> None:
    rc, out, err = run_cli(flag.argv(value, tmp))
    if rc == "reached":
        assert err == "" and out == "", (flag.id, value, err)
        assert not never_valid(flag, value), (flag.id, value)
        assert flag.accepts(value), (flag.id, value, "passed, but the flag's rule refuses it")
    else:
        line = assert_one_line_error(rc, err)  # exit 2, one line, no traceback
        assert out == "", (flag.id, value, out)
        assert flag.option in line, (flag.id, value, line)
        if flag.accepts(value):  # only a rule joining flags may refuse it (lm compare: k | layers)
            assert not is_config_flag(flag.action), (flag.id, value, line)  # the oracle has those
            assert not line.startswith(f"noprop: error: argument {flag.option}:"), (flag.id, value)
    assert list(tmp.iterdir()) == [], (flag.id, value, "wrote a file")


#: every value is thrown at every numeric flag
SWEEP_VALUES = [
    *("0", "-1", "-0", "1", "-7.5", "0.5", "1.5", "1e3", "10"),
    *(str(10**k) for k in (6, 19, 30, 400)),  # 10**19 > 2^63 - 1
    *("1e300", "1e400", "-1e400", "inf", "-inf", "nan", "NaN"),
    *("abc", "", "1e", "0x10", "1,2,x"),
]
HYPOTHESIS_EXAMPLES = 400


def test_the_walk_finds_every_subcommand_s_numeric_flags():
    ids = {f.id for f in FLAGS}
    for expected in [
        "train --threads", "train --epochs", "train --lr", "train --seed", "train --T",
        "train --val-fraction", "train --gamma-width", "eval --threads", "eval --runs",
        "eval --chains", "eval --steps", "predict --threads", "predict --chains", "predict --seed",
        "bench efficiency --max-batches", "bench efficiency --memory-vs-T",
        "bench efficiency --background-seconds", "bench reproduce --seeds", "bench reproduce --runs",
        "bench reproduce --lr", "bench parallel --cores", "bench parallel --timeout",
        "lm compare --minutes", "lm compare --layers-per-block", "lm compare --lr",
    ]:  # fmt: skip
        assert expected in ids, expected
    assert len(FLAGS) > 100


def test_no_flag_takes_a_bare_int_or_float():
    """A bare ``type=int`` takes any number (the issue's ``eval --threads``): use a validator."""
    bare = [f.id for f in FLAGS if f.action.type in (int, float)]
    assert bare == [], f"give these flags a validator of noprop.arguments: {bare}"


@pytest.mark.parametrize("flag", FLAGS, ids=lambda f: f.id)
def test_every_numeric_flag_refuses_bad_values_in_one_line(flag, tmp_path):
    tmp = tmp_path / "t"
    tmp.mkdir()
    with stubbed():
        for value in SWEEP_VALUES:
            check_one(flag, value, tmp)


def values() -> st.SearchStrategy[str]:
    big = st.integers(0, 450).map(lambda k: str(10**k))
    return st.one_of(
        st.integers(-(2**70), 2**70).map(str),
        big,
        big.map(lambda s: "-" + s),
        st.integers(-400, 400).map(lambda k: f"1e{k}"),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(SWEEP_VALUES),
        st.text(alphabet="0123456789.,-+eExinfa _", max_size=8),
    )


@settings(
    max_examples=HYPOTHESIS_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(flag=st.sampled_from(FLAGS), value=values())
def test_any_value_of_any_numeric_flag(flag, value, tmp_path):
    tmp = tmp_path / "h"
    tmp.mkdir(exist_ok=True)
    with stubbed():
        check_one(flag, value, tmp)


# ------------------------------------------------------------------ the issue's examples


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--threads", "4097", "--out", "{tmp}/run"], "--threads must be <= 4096"),
        (["eval", "{tmp}/run", "--threads", "4097"], "--threads: must be <= 4096 (got 4097)"),
        (["predict", "{tmp}/run", "{tmp}/x.npy", "--threads", "4097"], "--threads: must be <="),
        (
            ["lm", "compare", "--out", "{tmp}/cmp", "--minutes", "inf"],
            "--minutes: must be a number",
        ),
        (
            ["bench", "reproduce", "--out", "{tmp}/g", "--threads", "5000"],
            "--threads must be <= 4096",
        ),
    ],
)
def test_the_issue_s_examples_exit_2_with_one_line(argv, fragment, tmp_path, monkeypatch):
    """Before: eval/predict started 4097 OS threads, lm compare ended in a traceback (and bench
    reproduce set the thread count before checking it). Now: one line, exit 2, nothing written,
    the thread count untouched (nothing stubbed: validation comes first)."""
    import torch

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    rc, out, err = run_cli([a.format(tmp=tmp_path) for a in argv])
    assert_one_line_error(rc, err, fragment)
    assert out == "" and list(tmp_path.iterdir()) == []
    assert torch.get_num_threads() == threads
