"""The lab's ``noprop`` subcommands, added through the ``noprop.commands`` entry point.

``noprop bench efficiency|reproduce|parallel``, ``noprop lm compare`` and ``noprop plot``: the same
names and flags as when they lived in the library's CLI (:data:`noprop.cli.COMMAND_GROUP`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from . import plots
from .bench import efficiency, parallel, reproduce
from .bench import lm as lm_compare


def cmd_bench(ns: argparse.Namespace) -> int:
    handlers = {
        "efficiency": efficiency.main_bench,
        "reproduce": reproduce.cmd_reproduce,
        "parallel": parallel.main_bench,
    }
    return handlers[ns.bench_command](ns)


def cmd_lm(ns: argparse.Namespace) -> int:
    return lm_compare.main_lm(ns)


def cmd_plot(ns: argparse.Namespace) -> int:
    return plots.cmd_plot(ns)


def add_commands(
    sub: argparse._SubParsersAction, parser_class: type[argparse.ArgumentParser]
) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``bench``, ``lm`` and ``plot`` to ``noprop``'s subcommands; their handlers by name."""
    bench = sub.add_parser("bench", help="benchmarks (efficiency, reproduce, parallel)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, parser_class=parser_class)
    efficiency.add_arguments(
        bench_sub.add_parser("efficiency", help="NoProp vs back-prop: time, memory, FLOP/s")
    )
    reproduce.add_arguments(bench_sub.add_parser("reproduce", help=reproduce.HELP_TEXT))
    parallel.add_arguments(
        bench_sub.add_parser("parallel", help="DT throughput: sequential, blocks, fused")
    )
    lm = sub.add_parser("lm", help="language-model experiments (compare)")
    lm_sub = lm.add_subparsers(dest="lm_command", required=True, parser_class=parser_class)
    lm_compare.add_arguments(lm_sub.add_parser("compare", help=lm_compare.HELP_TEXT))
    plots.add_arguments(sub.add_parser("plot", help=plots.HELP_TEXT))
    # handlers look their module's function up when called, so a test can replace it
    return {"bench": cmd_bench, "lm": cmd_lm, "plot": cmd_plot}
