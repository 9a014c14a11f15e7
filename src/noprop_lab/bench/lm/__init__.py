"""``noprop lm compare``: NoProp-style language models against a back-prop transformer at equal size
and equal FLOPs.

The question (issue 11): a transformer also works in its output space — every layer adds an update to
the residual stream, and the logit lens reads the stream after each layer as a next-byte guess.
NoProp prescribes such a path (the noising process in label-embedding space) and trains each block to
take one step of it, alone. This command trains the models on the same bytes and reports where their
paths differ (issue 22: any subset of the registered models, and how much depth a block needs).

What it does, in order (every step is resumable: rerunning with the same ``--out`` reuses finished
runs and their evaluations, and resumes unfinished runs):

1. **Models** (:mod:`.registry`, ``--models``, default ``backprop,dt``). Back-prop: a causal
   transformer of ``--layers`` L pre-LN layers of width ``--width``. Each other model is one registry
   entry: NoProp-DT (run ``noprop``: L blocks of one layer), DiffusionBlocks, NoProp-CT, NoProp-FM.
   ``--layers-per-block k1,k2,...`` runs each block-wise model (DT, DiffusionBlocks) once per k, as
   T = L / k blocks of k layers (runs ``dt-k2``, ``diffusionblocks-k3``, ...: the depth sweep).
2. **Matching** (:mod:`.matching`). Each run's width (a multiple of ``--heads``) is chosen so that its
   *non-embedding* parameters are within 5% and its training FLOPs per token (counted with
   ``torch.utils.flop_counter``) within 10% of the back-prop transformer's; where no width meets
   both, the report says so.
3. **Budget** (:mod:`.compare`). A short timed calibration (a few optimiser steps of each) gives each run's
   FLOP/s; the common FLOP budget F is set so that the n trainings take n × ``--minutes`` in all
   (F = n·M·60 / Σ 1/r_i), i.e. about M minutes each. F becomes a number of training windows per run
   (epochs × a seeded random subset of windows, ``--max-train-samples``).
4. **Training** runs ``noprop train`` in a child process per run into ``OUT/NAME`` (ordinary run
   directories: ``noprop eval``, ``--resume``); the child's peak resident memory is read with
   ``os.wait4``. Model selection: the validation split only.
5. **Evaluation** on the test split, through one adapter (:mod:`.readout`) over
   :mod:`noprop_lab.bench.lm.language`: bits per byte and top-1 accuracy (NoProp-DT: deterministic chain,
   one stochastic chain, and the mixture of ``--chains`` chains), calibrated by one temperature fitted
   on validation, the unigram baseline, the trajectory in output space (logit lens per layer /
   read-out per block), and ``--sample-bytes`` bytes sampled from the same prompt. Methods the
   read-outs do not cover yet are reported as trained but not evaluated.
6. **Report** (:mod:`.report`, prose in ``report_template.md``): ``report.json``, ``report.md``,
   ``trajectory.png`` and, for a depth sweep, ``depth.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from noprop import PRECISIONS
from noprop.arguments import (
    CHAINS,
    LAYERS,
    MINUTES,
    PATH,
    POSITIVE,
    SEED,
    STEPS,
    count,
    field_count,
    int_list,
)
from noprop.data import TEXT_DATASETS

from .compare import NANOGPT_ANCHOR, run, train_child
from .matching import FLOP_TOLERANCE, PARAM_TOLERANCE, count_parameters, step_flops
from .registry import DEFAULT_MODELS, ENTRIES
from .report import order, render_markdown, specs

HELP_TEXT = (
    "NoProp-style LMs vs a back-prop transformer at equal parameters and FLOPs (issue 11, 22)"
)
#: the runs of the default comparison (``--models backprop,dt``)
NAMES = ("backprop", "noprop")
#: ``--sample-bytes``: each byte is one forward pass of every model
MAX_SAMPLE_BYTES = 1 << 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=PATH, help="directory of the runs and the report")
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help=f"comma-separated models to train, of {', '.join(ENTRIES)} (default "
                   f"{DEFAULT_MODELS}; dt's run is named noprop)")  # fmt: skip
    p.add_argument("--layers-per-block", default="1", type=int_list(LAYERS, as_text=True),
                   help="transformer layers per block of the block-wise models (dt, "
                   "diffusionblocks), comma-separated for a depth sweep, e.g. 1,2,3,6: T = --layers "
                   "/ k blocks each (default 1)")  # fmt: skip
    p.add_argument("--dataset", default="stdlib", choices=TEXT_DATASETS,
                   help="text corpus (default: stdlib, this Python's standard library source)")  # fmt: skip
    p.add_argument("--data-dir", help="text: the file or directory; tiny-shakespeare: its folder")
    p.add_argument("--minutes", type=MINUTES, default=12.0,
                   help="the FLOP budget is sized so that the n trainings take n × M minutes in "
                   "all (default 12: the default two take about 26 minutes on 2 CPU cores)")  # fmt: skip
    p.add_argument("--layers", type=LAYERS, default=6,
                   help="transformer layers of every model (NoProp-DT: T = layers / k blocks)")  # fmt: skip
    p.add_argument("--width", type=field_count("width"), default=128,
                   help="back-prop transformer width")  # fmt: skip
    p.add_argument("--heads", type=field_count("heads"), default=4,
                   help="attention heads (every model)")  # fmt: skip
    p.add_argument("--context", type=field_count("context"), default=128, help="bytes of context")
    p.add_argument("--batch-size", type=field_count("batch_size"), default=32,
                   help="windows per training step")  # fmt: skip
    p.add_argument("--lr", type=POSITIVE, default=1e-3, help="AdamW learning rate (every model)")
    p.add_argument("--lr-schedule", default="cosine", choices=("constant", "cosine"),
                   help="every model (default cosine: --lr down to 0.1·--lr over the run)")  # fmt: skip
    p.add_argument("--embedding", default="one-hot", choices=("one-hot", "learned"),
                   help="W_Embed of the NoProp-style models (default one-hot, 256-d; learned: "
                   "--embed-dim, default 64)")  # fmt: skip
    p.add_argument("--embed-dim", type=field_count("embed_dim"), default=None,
                   help="dimension of a learned W_Embed")  # fmt: skip
    p.add_argument("--inference-steps", type=STEPS, default=20,
                   help="ct, fm: solver steps at inference and validation (default 20)")  # fmt: skip
    p.add_argument("--chains", type=CHAINS, default=4, help="stochastic chains in NoProp's mixture")
    p.add_argument("--sample-bytes", type=count(0, MAX_SAMPLE_BYTES), default=200,
                   help="bytes generated per model")  # fmt: skip
    p.add_argument(
        "--prompt", help="generation prompt (default: the first 64 bytes of the test split)"
    )
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="32", choices=PRECISIONS,
                   help="every model, training and evaluation (default 32: the paper's)")  # fmt: skip
    p.add_argument("--eval-windows", type=count(), default=None,
                   help="evaluate on the first N test windows only (default: all)")  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true", help="replace runs of another config in --out"
    )
    p.add_argument("--no-progress", action="store_true")


def summary_line(r: dict) -> str:
    """The one line ``main_lm`` prints: every run's test bits per byte with the read-out chosen on
    validation (calibrated in brackets), and the paper's read-out where it differs; reports from
    before the fair read-outs print their mixture and deterministic chain."""
    sp = specs(r)
    parts = [f"unigram {r['unigram_bits_per_byte']:.3f}"]
    for name in order(r):
        test = r["runs"][name].get("test")
        short = sp[name].short
        if test is None:
            parts.append(f"{short} not evaluated")
            continue
        fair = test.get("fair")
        if fair is not None and "readout" in fair:
            readout = fair["readout"] + (f"×{fair['chains']}" if fair["chains"] > 1 else "")
            paper = ""
            if fair["paper_readout"] != fair["readout"] or fair["chains"] > 1:
                paper = (
                    f"; the paper's {fair['paper_readout']} {fair['paper']['bits_per_byte']:.3f}"
                )
            parts.append(f"{short} {readout} {fair['bits_per_byte']:.3f} "
                         f"({fair['bits_per_byte_calibrated']:.3f}{paper})")  # fmt: skip
            continue
        if "deterministic" in test:
            det = test["deterministic"]
            parts.append(f"{short} deterministic {det['bits_per_byte']:.3f} "
                         f"({det['bits_per_byte_calibrated']:.3f})")  # fmt: skip
            short = f"{short} mixture of {test['chains']}"
        parts.append(
            f"{short} {test['bits_per_byte']:.3f} ({test['bits_per_byte_calibrated']:.3f})"
        )
    return "test bits per byte (calibrated on validation): " + " · ".join(parts)


def main_lm(ns: argparse.Namespace) -> int:
    r = run(ns)
    print(f"{summary_line(r)} · report in {Path(ns.out) / 'report.md'}")
    return 0


__all__ = [
    "FLOP_TOLERANCE",
    "HELP_TEXT",
    "NAMES",
    "NANOGPT_ANCHOR",
    "PARAM_TOLERANCE",
    "add_arguments",
    "count_parameters",
    "main_lm",
    "render_markdown",
    "run",
    "step_flops",
    "train_child",
]
