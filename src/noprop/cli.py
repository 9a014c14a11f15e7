"""The ``noprop`` command line: ``train``, ``eval`` (and the subcommands later issues add).

Other distributions add subcommands through the ``noprop.commands`` entry-point group
(:func:`plugin_commands`): the lab (``noprop_lab``) adds ``bench``, ``lm`` and ``plot`` that way, so
the library imports nothing of it; without the lab installed those commands are simply absent.

Training flags are generated from the config dataclasses (:mod:`noprop.flags`), so the CLI, the Python
API and ``config.json`` always list the same knobs, each documented once, next to its default. Any error a user can cause
prints one line on stderr and exits with status 2; nothing is written in that case. An operating-system
failure while running (disk full, permissions changed mid-run) prints one line and exits with status 1;
Ctrl-C exits with 130. In every case the last completed epoch's checkpoint is kept for ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any, NoReturn

from .arguments import CHAINS, RUNS, SEED, STEPS, THREADS, int_list
from .config import RunConfig
from .device import check_device
from .errors import NoPropError
from .flags import add_config_flags, given_flags
from .precision import PRECISIONS
from .presets import PRESETS, resolve_flat
from .rundir import RunDir
from .runs import evaluate_chains, evaluate_run, sweep_steps, train
from .runs.inputs import check_predictions_path, read_inputs, tsv_line, write_predictions
from .runs.listing import describe, find_runs, format_rows
from .runs.model import export, load
from .runs.sweep import STEP_METHODS
from .runs.train import say_thread_cap
from .version import __version__

#: the entry-point group through which another distribution adds ``noprop`` subcommands
COMMAND_GROUP = "noprop.commands"
#: an entry point's object: ``add(subparsers, parser_class)`` adds its subcommands to ``noprop``'s
#: ``subparsers`` (``parser_class`` for nested ones, so errors print like the others) and returns
#: ``{command: handler}``, each handler taking the parsed namespace and returning the exit status
AddCommands = Callable[
    [argparse._SubParsersAction, type], dict[str, Callable[[argparse.Namespace], int]]
]


def plugin_commands() -> list[AddCommands]:
    """The ``noprop.commands`` entry points of the installed distributions, loaded, by name."""
    return [ep.load() for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name)]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"noprop: error: {message}\n")

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        # argparse (3.11) drops a lone "--" given as an option's value (``--runs=--``) and hands
        # the option an empty list instead of an error: a value is required
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            self.error(f"argument {'/'.join(action.option_strings)}: expected one argument")
        return super()._get_values(action, arg_strings)


PRECISION_HELP = "networks under autocast at inference (default: the run's training precision)"
THREADS_HELP = f"torch CPU threads, 1 to {THREADS.high} (default: the cores free at start-up)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="noprop", description="Train and evaluate NoProp networks (arXiv 2503.24322).")
    p.add_argument("--version", action="version", version=f"noprop {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train a model into a run directory")
    add_config_flags(t)
    t.add_argument("--preset", metavar="NAME", help="start from a paper preset (`noprop presets`)")
    t.add_argument(
        "--config", metavar="FILE", help="TOML config file (overrides --preset; flags override it)"
    )
    t.add_argument("--out", help="run directory (default: runs/METHOD-DATASET-TIMESTAMP)")
    t.add_argument(
        "--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last completed epoch"
    )
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = sub.add_parser("eval", help="evaluate a run's selected model on the test set")
    e.add_argument("run_dir")
    e.add_argument(
        "--deterministic", action="store_true", help="z_0 = 0 and no noise during inference"
    )
    e.add_argument(
        "--runs", type=RUNS, default=1, help="number of inference runs (mean ± standard error)"
    )
    e.add_argument("--device", default="auto")
    e.add_argument("--threads", type=THREADS, help=THREADS_HELP)
    e.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    e.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where the run's data set is (default: the directory its config names); read only: "
        "eval never creates or downloads into a data directory",
    )
    e.add_argument(
        "--chains",
        type=int_list(CHAINS),
        help="comma-separated chain counts, e.g. 1,4,16: test accuracy and seconds of averaging the "
        "head's probabilities over N stochastic chains, next to the deterministic chain "
        "(writes eval_chains.json)",
    )
    e.add_argument(
        "--steps",
        type=int_list(STEPS),
        help="ct/fm/adjoint: comma-separated inference step counts, e.g. 1,2,5,10,20,50,100,1000 "
        "(prints accuracy and seconds per step count and solver; writes eval_steps.json)",
    )
    e.add_argument(
        "--solver",
        help="ct/fm/adjoint: comma-separated solvers for --steps (default: the run's solver: "
        "ancestral for ct, euler for fm/adjoint)",
    )
    e.add_argument(
        "--compile",
        action="store_true",
        help="ct/fm: torch.compile the per-step inference before evaluating (costs a few seconds "
        "first; for long evaluations such as prototypes, --runs 5, --chains 16 or --steps; "
        "timings in BENCHMARKS.md)",
    )
    #: the plugins' handlers by command (kept out of the namespace, which commands may write out)
    p.plugin_handlers = {}  # type: ignore[attr-defined]
    for add_commands in plugin_commands():
        p.plugin_handlers.update(add_commands(sub, _Parser))  # type: ignore[attr-defined]
    sub.add_parser("presets", help="list the paper's hyper-parameter presets (--preset NAME)")
    pr = sub.add_parser("predict", help="classify images with a trained (or exported) model")
    pr.add_argument("run_dir", help="a run directory or a `noprop export` directory")
    pr.add_argument("inputs", nargs="+", help=".npy array, IDX file, or PNG/JPEG files/directories")
    pr.add_argument("--out", help="write the predictions to a .csv or .json file")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    pr.add_argument("--deterministic", action="store_true", help="z_0 = 0 and no noise")
    pr.add_argument(
        "--chains", type=CHAINS, default=1, help="average the head's probabilities over N chains"
    )
    pr.add_argument("--seed", type=SEED, help="seed of the inference noise (default: the run's)")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--threads", type=THREADS, help=THREADS_HELP)
    pr.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    ex = sub.add_parser("export", help="weights (safetensors) + config + normalisation, no pickle")
    ex.add_argument("run_dir")
    ex.add_argument("--out", required=True, help="directory to create")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ls = sub.add_parser("runs", help="list run directories: method, data, accuracy, status")
    ls.add_argument("root", nargs="?", default="runs", help="directory to search (default: runs)")
    return p


def _set_threads(n: int | None) -> None:
    """``--threads`` of eval and predict (already checked by its type, ``arguments.THREADS``); without
    it, say when the start-up cap is in force (train records its thread count with the run:
    noprop/runs/train.py)."""
    import torch

    if n is not None:
        torch.set_num_threads(n)
    else:
        say_thread_cap(torch.get_num_threads())


def cmd_train(ns: argparse.Namespace) -> int:
    given = given_flags(ns)
    if ns.resume:
        if ns.out and ns.out != ns.resume:
            raise NoPropError("give either --resume RUN_DIR or --out, not both")
        if ns.preset is not None or ns.config is not None:
            raise NoPropError("--resume uses the run's own config.json; drop --preset/--config")
        summary = train(
            RunConfig(), ns.resume, resume=True, progress=not ns.no_progress, overrides=given
        )
        out = ns.resume
    else:
        cfg = RunConfig().replace(**resolve_flat(ns.preset, ns.config, given))
        out = ns.out or default_out(f"{cfg.method.method}-{cfg.data.dataset}")
        summary = train(cfg, out, overwrite=ns.overwrite, progress=not ns.no_progress)
    if not summary:  # a non-zero rank of a parallel run: rank 0 reports
        return 0
    print(end_of_run_line(summary, out))
    return 0


def default_out(name: str, root: str = "runs") -> str:
    """``runs/NAME-YYYYmmdd-HHMMSS``, with ``-2``, ``-3``... appended when a run started in the same
    second already took the name (two runs of one script would otherwise collide and the second be
    refused as "a different run")."""
    base = f"{root}/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while os.path.exists(out):
        n += 1
        out = f"{base}-{n}"
    return out


def end_of_run_line(summary: dict, out: str) -> str:
    """``val 0.9722 · test 0.9583 (deterministic 0.9778) · 30 epochs · 25.1 s · 2 threads · runs/...``
    (the thread count: the numbers depend on it); under ``--precision 16-mixed`` the steps skipped
    for float16 overflow follow the epochs (``· 7 of 3300 steps skipped ·``)."""
    val = summary["val_accuracy"]
    threads = summary.get("num_threads")
    skipped = summary.get("skipped_steps")  # --precision 16-mixed only
    skips = "" if skipped is None else f"{skipped} of {summary.get('steps')} steps skipped · "
    return (
        f"val {'-' if val is None else f'{val:.4f}'} · test {summary['test_accuracy']:.4f} "
        f"(deterministic {summary['test_accuracy_deterministic']:.4f}) · {summary['epochs']} "
        f"epochs · {skips}{summary['train_seconds']:.1f} s · {threads} "
        f"thread{'' if threads == 1 else 's'} · {out}"
    )


def cmd_eval(ns: argparse.Namespace) -> int:
    _set_threads(ns.threads)
    check_device(ns.device)
    if ns.steps or ns.solver:
        return _eval_steps(ns)
    if ns.chains:
        return _eval_chains(ns)
    r = evaluate_run(ns.run_dir, deterministic=ns.deterministic, runs=ns.runs, device=ns.device,
                     compile=ns.compile, precision=ns.precision, data_dir=ns.data_dir)  # fmt: skip
    mode = "deterministic" if r["deterministic"] else "stochastic"
    print(
        f"test accuracy ({mode}, {r['runs']} runs): {r['test_accuracy']:.4f} ± "
        f"{r['test_accuracy_stderr']:.4f} ({r['seconds']:.1f} s)"
    )
    extra = sorted(k.removeprefix("test_") for k in r if k.startswith("test_") and k not in
                   ("test_accuracy", "test_accuracy_stderr"))  # fmt: skip
    for k in extra:  # text runs: bits per byte
        print(f"test {k.replace('_', ' ')} ({mode}): {r[f'test_{k}']:.4f}")
    print(
        "read-out after each step t: accuracy" + "".join(f", {k.replace('_', ' ')}" for k in extra)
    )
    for t, acc in enumerate(r["accuracy_per_step"]):
        print(f"  t={t:<4d} {acc:.4f}" + "".join(f"  {r[f'{k}_per_step'][t]:.4f}" for k in extra))
    keys = ("test_accuracy", "test_accuracy_stderr", "runs", *(f"test_{k}" for k in extra))
    print(json.dumps({k: r[k] for k in keys}))
    return 0


def _parse_list(text: str, flag: str) -> list[str]:
    """A comma-separated list of names (lists of numbers: ``arguments.int_list``, the flag's type)."""
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise NoPropError(f"{flag} is empty")
    return items


def _eval_chains(ns: argparse.Namespace) -> int:
    rows = evaluate_chains(ns.run_dir, ns.chains, device=ns.device, compile=ns.compile,
                           precision=ns.precision, data_dir=ns.data_dir)  # fmt: skip
    print(f"{'chains':>13}{'accuracy':>10}{'seconds':>10}")
    for r in rows:
        label = "deterministic" if r["chains"] == 0 else str(r["chains"])
        print(f"{label:>13}{r['test_accuracy']:>10.4f}{r['seconds']:>10.2f}")
    print(f"written to {RunDir(ns.run_dir).path / 'eval_chains.json'}")
    return 0


def _eval_steps(ns: argparse.Namespace) -> int:
    steps = ns.steps or [1000]
    if ns.solver is None:  # the run's own inference solver (CT: ancestral; FM/adjoint: euler)
        cfg = RunDir(ns.run_dir).config()
        if not cfg.method.cls.solvers:
            raise NoPropError(
                f"--steps/--solver apply to the methods with an inference solver ({STEP_METHODS}); "
                f"{ns.run_dir} is a {cfg.method.method} run"
            )
        ns.solver = cfg.options.solver  # type: ignore[attr-defined]
    solvers = _parse_list(ns.solver, "--solver")
    rows = sweep_steps(ns.run_dir, steps, solvers, ns.device, deterministic=ns.deterministic,
                       compile=ns.compile, precision=ns.precision, data_dir=ns.data_dir)  # fmt: skip
    bpb = bool(rows) and "test_bits_per_byte" in rows[0]  # text runs
    print(
        f"{'solver':<10}{'steps':>7}{'accuracy':>10}"
        + ("  bits/byte" if bpb else "")
        + f"{'seconds':>10}"
    )
    for r in rows:
        b = f"{r['test_bits_per_byte']:>11.4f}" if bpb else ""
        print(
            f"{r['solver']:<10}{r['steps']:>7}{r['test_accuracy']:>10.4f}{b}{r['seconds']:>10.2f}"
        )
    print(f"written to {RunDir(ns.run_dir).eval_steps_path}")
    return 0


def cmd_presets(ns: argparse.Namespace) -> int:
    for preset in PRESETS.values():
        print(preset.describe())
    return 0


def cmd_predict(ns: argparse.Namespace) -> int:
    _set_threads(ns.threads)
    check_device(ns.device)
    if ns.out:
        check_predictions_path(ns.out, overwrite=ns.overwrite)
    model = load(ns.run_dir, ns.device, ns.precision)
    images, names = read_inputs(ns.inputs, model.in_shape)
    probs = model.predict_proba(
        images, chains=ns.chains, deterministic=ns.deterministic, seed=ns.seed
    )
    conf, classes = probs.max(-1)
    rows = [
        {
            "input": n,
            "class": int(c),
            "name": model.task.class_name(int(c)),
            "probability": round(float(p), 6),
        }
        for n, c, p in zip(names, classes, conf, strict=True)
    ]
    if ns.out:
        write_predictions(ns.out, rows)
        print(f"{len(rows)} predictions written to {ns.out}")
    else:
        for r in rows:
            # names are untrusted: escaped, so each input is one line of four fields
            print(tsv_line((r["input"], r["class"], r["name"], f"{r['probability']:.4f}")))
    return 0


def cmd_export(ns: argparse.Namespace) -> int:
    out = export(ns.run_dir, ns.out, overwrite=ns.overwrite)
    print(f"exported {ns.run_dir} to {out} (model.safetensors, config.json, normalisation.json)")
    return 0


def cmd_runs(ns: argparse.Namespace) -> int:
    print(format_rows([describe(p) for p in find_runs(ns.root)]))
    return 0


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "presets": cmd_presets,
    "predict": cmd_predict,
    "export": cmd_export,
    "runs": cmd_runs,
}


def _one_line(e: BaseException) -> str:
    """Error messages are single lines; fold any stray newline rather than print a second line."""
    return " ".join(str(e).split("\n")).strip() or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        handler = COMMANDS.get(ns.command) or parser.plugin_handlers[ns.command]
        return handler(ns)
    except NoPropError as e:
        print(f"noprop: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        print(f"noprop: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("noprop: interrupted; the last completed epoch's checkpoint is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
