"""``noprop plot RUN_DIR... --out DIR``: PNG figures of one or several run directories.

Written into ``DIR`` (matplotlib, Agg canvas, imported only when plotting):

* ``accuracy_vs_time.png`` — validation accuracy after every epoch against cumulative training time,
  one line per run, with the final test accuracy of the validation-selected model marked (the paper's
  Fig. 3; mean ± standard error when the run holds ``eval5.json`` from ``noprop bench reproduce``);
  runs trained with ``--test-curve`` also show their test accuracy after every epoch.
* ``time_to_accuracy.md`` / ``.json`` — per run: when the validation accuracy first reached 98% and
  99% (training seconds, epoch), the selected model's test accuracy, the paper's Table 1 figure and
  the load the epochs were timed under (:mod:`noprop_lab.bench.time_to_accuracy`).
* ``accuracy_vs_steps.png`` — test accuracy and inference time against the number of inference steps,
  per run and solver, for runs holding ``eval_steps.json`` (``sweep_steps``); skipped when none does.
* ``per_step-RUN.png`` — accuracy of the read-out of z_t after every inference step: the test set
  (``summary.json``) and the validation set at selected epochs (``metrics.jsonl``).
* ``block_loss-RUN.png`` — each block's mean training loss per epoch (log scale when all positive).
* ``prototypes-RUN.png`` — for ``--embedding prototype``: the initial and the learned W_Embed rows as
  images in pixel units (de-normalised with the training mean/std), one per class. The initial rows
  are drawn from the run's training split, read where its config says and never downloaded
  (:mod:`noprop.runs.reading`): without the data here the figure is skipped with one warning.

A directory written by ``noprop bench reproduce`` (holding ``cells/``) stands for all its cells.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from noprop import (
    CONFIG,
    ConfigError,
    DataNotFound,
    EpochRecord,
    NoPropError,
    RunConfig,
    RunDir,
    Summary,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    check_device,
    record_indices,
)
from noprop.arguments import PATH
from noprop.data import class_examples
from noprop.models import IMAGE_EMBED_DIM, PROTOTYPE_MAX_PER_CLASS, prototype_init
from noprop.runs import load_run_with_task

from .bench import time_to_accuracy
from .bench.grid import CELLS
from .bench.paper import row_label


@dataclass
class RunInfo:
    path: Path
    name: str  # unique, file-name safe
    config: RunConfig
    metrics: list[EpochRecord]
    summary: Summary | None
    eval5: dict[str, Any] | None
    eval_steps: dict[str, Any] | None

    @property
    def method(self) -> str:
        return self.config.method.method

    @property
    def embedding(self) -> str:
        return self.config.model.embedding

    @property
    def continuous_time(self) -> bool:
        """CT/FM/adjoint: inference steps on a time grid rather than one block per step."""
        return self.config.method.cls.continuous_time

    @property
    def label(self) -> str:
        embed_dim = self.config.model.embed_dim or IMAGE_EMBED_DIM
        how = time_to_accuracy.variant(self.config, self.summary)
        how = f", {how}" if how else ""
        return f"{self.name} — {row_label(self.method, self.embedding, embed_dim)}{how}"


def expand_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories; a ``noprop bench reproduce`` directory stands for its ``cells/*``."""
    out: list[Path] = []
    for p in map(Path, paths):
        if RunDir(p).is_run():
            out.append(p)
        elif (p / CELLS).is_dir():
            cells = sorted(c for c in (p / CELLS).iterdir() if RunDir(c).is_run())
            if not cells:
                raise ConfigError(f"{p}/{CELLS} holds no run directories")
            out.extend(cells)
        elif not p.exists():
            raise ConfigError(f"{p}: no such run directory")
        else:
            raise ConfigError(f"{p} is not a noprop run directory (no {CONFIG})")
    return out


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text) or "run"


def _run_names(run_dirs: list[Path]) -> list[str]:
    """One distinct, file-name-safe label per run (legends and figure file names).

    A label is the directory's name. Two ``bench reproduce`` tables hold the same cell
    names (``dt-one-hot-s0``), so colliding cells are labelled ``<table>.<cell>`` after
    the reproduce directory that holds them; a numeric suffix settles what is left.
    """
    bases = [_safe(p.resolve().name) for p in run_dirs]
    names: list[str] = []
    for p, base in zip(run_dirs, bases, strict=True):
        parent = Path(os.path.normpath(p.absolute())).parent  # a symlinked cell keeps its table
        if bases.count(base) > 1 and parent.name == CELLS:
            base = f"{_safe(parent.parent.name)}.{base}"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def load_infos(run_dirs: list[Path]) -> list[RunInfo]:
    """Everything the figures need from each run, read through :class:`~noprop.rundir.RunDir`."""
    infos = []
    for p, name in zip(run_dirs, _run_names(run_dirs), strict=True):
        rd = RunDir(p)
        infos.append(
            RunInfo(
                path=p,
                name=name,
                config=rd.config(),
                metrics=rd.records(),
                summary=rd.summary(),
                eval5=rd.read_eval5(),
                eval_steps=rd.read_eval_steps(),
            )
        )
    return infos


# ------------------------------------------------------------------------------ matplotlib
def _figure(**kwargs: Any) -> Any:
    """A Figure on an Agg canvas (no pyplot state, no GUI backend)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise NoPropError(
            "noprop plot needs matplotlib; install it with pip install 'noprop[plot]'"
        ) from None
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def require_matplotlib() -> None:
    """A one-line NoPropError, before any work starts, when matplotlib is missing."""
    _figure()


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data))
    return path


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# ---------------------------------------------------------------------------------- figures
def plot_accuracy_vs_time(infos: list[RunInfo], path: Path) -> Path | None:
    """Fig. 3: validation accuracy per epoch vs cumulative training time; final test accuracy marked.

    A run trained with ``--test-curve`` also gets its test accuracy after every epoch (solid; the
    validation line is then dashed), and the 98%/99% levels of the time-to-accuracy table are drawn."""
    from matplotlib.lines import Line2D

    runs = [i for i in infos if i.metrics]
    if not runs:
        return None
    fig = _figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for info, color in zip(runs, _colors(len(runs)), strict=True):
        xs = [m.wall_seconds for m in info.metrics if m.val_accuracy is not None]
        ys = [100 * m.val_accuracy for m in info.metrics if m.val_accuracy is not None]
        tested = [m for m in info.metrics if m.test_accuracy is not None]
        if tested:
            ax.plot(xs, ys, "o--", color=color, ms=3, lw=1.0, alpha=0.6)
            ax.plot(
                [m.wall_seconds for m in tested],
                [100 * m.test_accuracy for m in tested],
                "s-", color=color, ms=4, lw=1.5, label=info.label,
            )  # fmt: skip
        else:
            ax.plot(xs, ys, "o-", color=color, ms=4, lw=1.5, label=info.label)
        s = info.summary
        if s is None:
            continue
        best = next((m for m in info.metrics if m.epoch == s.best_epoch), None)
        x_sel = best.wall_seconds if best else s.train_seconds
        if info.eval5:
            y, err = 100 * info.eval5["test_accuracy"], 100 * info.eval5["test_accuracy_stderr"]
        else:
            y, err = 100 * s.test_accuracy, 0.0
        ax.errorbar(
            [x_sel], [y], yerr=[err], fmt="*", ms=14, color=color, mec="black", capsize=4, zorder=5
        )
    any_test = any(m.test_accuracy is not None for i in runs for m in i.metrics)
    if any_test:
        for level in time_to_accuracy.THRESHOLDS:
            ax.axhline(100 * level, color="gray", lw=0.8, ls=":")
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], ls="", label=""),
        Line2D(
            [], [], ls="-", marker="o", ms=4, color="black", label="validation, after each epoch"
        ),
    ]
    if any_test:
        handles[-1] = Line2D(
            [], [], ls="--", marker="o", ms=3, color="black", label="validation, after each epoch"
        )
        handles.append(
            Line2D([], [], ls="-", marker="s", ms=4, color="black",
                   label="test, after each epoch (--test-curve; not used for selection)")
        )  # fmt: skip
    handles += [
        Line2D(
            [],
            [],
            ls="",
            marker="*",
            ms=12,
            color="white",
            mec="black",
            label="test, selected model (± s.e. if eval5.json)",
        ),
    ]
    ax.legend(
        handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0
    )
    ax.set_xlabel("cumulative training time (s)")
    ax.set_ylabel("accuracy (%)")
    ax.set_xlim(left=0)
    ax.set_title("Accuracy vs training time (cf. paper Fig. 3)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_accuracy_vs_steps(infos: list[RunInfo], path: Path) -> Path | None:
    """Test accuracy and inference time vs number of inference steps (from eval_steps.json)."""
    runs = [i for i in infos if i.eval_steps and i.eval_steps.get("rows")]
    if not runs:
        return None
    styles = ("o-", "s--", "^:", "D-.", "v-", "P--")
    solvers = list(dict.fromkeys(r["solver"] for i in runs for r in i.eval_steps["rows"]))
    fig = _figure(figsize=(12, 4.8), layout="constrained")
    ax_acc, ax_time = fig.subplots(1, 2)
    all_steps: set[int] = set()
    for info, color in zip(runs, _colors(len(runs)), strict=True):
        rows = info.eval_steps["rows"]
        for solver in dict.fromkeys(r["solver"] for r in rows):
            pts = sorted((r for r in rows if r["solver"] == solver), key=lambda r: r["steps"])
            steps = [r["steps"] for r in pts]
            all_steps.update(steps)
            acc = [100 * r.get("test_accuracy", r.get("accuracy", math.nan)) for r in pts]
            style = styles[solvers.index(solver) % len(styles)]
            kw = {"color": color, "label": f"{info.label}, {solver}", "ms": 5}
            ax_acc.plot(steps, acc, style, **kw)
            ax_time.plot(steps, [r["seconds"] for r in pts], style, **kw)
    ticks = sorted(all_steps)
    for ax in (ax_acc, ax_time):
        ax.set_xscale("log")
        ax.set_xticks(ticks if len(ticks) <= 12 else ax.get_xticks())
        _plain_log_labels(ax, "x", ticks)
        ax.set_xlabel("number of inference steps")
        ax.grid(alpha=0.3, which="both")
    ax_time.set_yscale("log")
    _plain_log_labels(ax_time, "y", [r["seconds"] for i in runs for r in i.eval_steps["rows"]])
    ax_acc.set_ylabel("test accuracy (%)")
    ax_time.set_ylabel("inference time on the test set (s)")
    ax_acc.set_title("Test accuracy vs inference steps")
    ax_time.set_title("Inference time vs inference steps")
    ax_acc.legend(fontsize=8)
    return _save(fig, path)


def _plain_log_labels(ax: Any, which: str, values: list[float]) -> None:
    """Log axis labelled 1, 20, 0.005 rather than 10^0, 2×10^1; minor labels only within a decade."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    fmt = FuncFormatter(lambda v, _: f"{v:.4g}")
    pos = [v for v in values if v > 0 and math.isfinite(v)]
    narrow = bool(pos) and max(pos) / min(pos) < 10
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(fmt if narrow else NullFormatter())


def _step_axis(info: RunInfo, n_points: int) -> tuple[list[float], str]:
    """x values of the per-step read-outs: block index t for DT/backprop, grid step for CT/FM/adjoint."""
    if info.continuous_time:
        n = int(getattr(info.config.options, "inference_steps", n_points - 1))
        idx = record_indices(n)
        if len(idx) == n_points:
            return [float(i) for i in idx], f"inference step (of {n}); t = step / {n}"
        return [i / (n_points - 1) for i in range(n_points)], "time t"
    return [float(i) for i in range(n_points)], info.config.method.cls.step_axis


def plot_per_step(info: RunInfo, path: Path) -> Path | None:
    """Accuracy of the read-out after every inference step: test (final) and validation (per epoch)."""
    from matplotlib import colormaps

    val = [(m.epoch, m.val_accuracy_per_step) for m in info.metrics if m.val_accuracy_per_step]
    test = None
    if info.eval5 and info.eval5.get("test_accuracy_per_step"):
        test = (info.eval5["test_accuracy_per_step"], f"test, mean of {info.eval5['runs']} runs")
    elif info.summary and info.summary.test_accuracy_per_step:
        test = (info.summary.test_accuracy_per_step, "test (selected model)")
    if not val and test is None:
        return None
    n_points = len(test[0]) if test else len(val[-1][1])
    xs, xlabel = _step_axis(info, n_points)
    fig = _figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    if val:
        keep = (
            sorted({round(i * (len(val) - 1) / 5) for i in range(6)})
            if len(val) > 6
            else range(len(val))
        )
        cmap = colormaps["viridis"]
        for j, k in enumerate(keep):
            epoch, acc = val[k]
            frac = j / max(len(keep) - 1, 1)
            ax.plot(
                xs[: len(acc)],
                [100 * a for a in acc],
                "o--",
                ms=3,
                lw=1,
                color=cmap(0.85 * frac),
                label=f"validation, epoch {epoch}",
            )
    if test is not None:
        ax.plot(
            xs[: len(test[0])],
            [100 * a for a in test[0]],
            "s-",
            color="black",
            lw=2,
            ms=5,
            label=test[1],
        )
    if len(xs) <= 12 and not info.continuous_time:
        ax.set_xticks(xs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy of the read-out (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Accuracy after each inference step\n{info.label}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_block_loss(info: RunInfo, path: Path) -> Path | None:
    """Mean training loss of every block per epoch (one line per block)."""
    recs = [m for m in info.metrics if m.block_loss]
    if not recs:
        return None
    epochs = [m.epoch for m in recs]
    units = len(recs[0].block_loss)
    fig = _figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    colors = _colors(units)
    values = []
    for u in range(units):
        ys = [_loss(m.block_loss, u) for m in recs]
        values += ys
        label = f"block {u + 1}" if units > 1 else "network (one unit)"
        ax.plot(epochs, ys, "o-", ms=4, color=colors[u], label=label)
    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) > 0:
        ax.set_yscale("log")
        _plain_log_labels(ax, "y", finite)
        ax.set_ylabel("mean training loss (log scale)")
    else:
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_ylabel("mean training loss (symlog scale)")
    ax.set_xlabel("epoch")
    if len(epochs) <= 12:
        ax.set_xticks(epochs)
    ax.set_title(f"Per-block training loss\n{info.label}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2 if units > 6 else 1, loc="best")
    return _save(fig, path)


def _loss(block_loss: list[float | None], u: int) -> float:
    """Block ``u``'s loss in one epoch; NaN (a gap in the line) for a block not trained then."""
    v = block_loss[u] if u < len(block_loss) else None
    return math.nan if v is None else float(v)


def _to_images(weight: Any, in_shape: tuple[int, ...], mean: Any, std: Any) -> Any:
    """W_Embed rows (m, C·H·W) in normalised units → (m, H, W[, C]) images in [0, 1] pixel units."""
    c = in_shape[0]
    w = weight.detach().float().cpu().reshape(-1, *in_shape)
    w = w * torch.tensor(std).view(1, c, 1, 1) + torch.tensor(mean).view(1, c, 1, 1)
    w = w.clamp(0, 1)
    return w[:, 0].numpy() if c == 1 else w.permute(0, 2, 3, 1).numpy()


def plot_prototypes(info: RunInfo, path: Path, device: str = "cpu") -> Path | None:
    """Initial (medoid images) and learned prototype embeddings as images, one per class."""
    if info.embedding != "prototype":
        return None
    try:
        method, cfg, task, data, _ = load_run_with_task(info.path, device)
    except DataNotFound as e:  # a run from elsewhere: the other figures need no data
        print(
            f"noprop: warning: {path.name} skipped: {info.path}'s data are not in {e.where}",
            file=sys.stderr,
        )
        return None
    in_shape = tuple(data.in_shape)
    learned = method.embedding.weight
    m = data.num_classes
    examples = class_examples(data.train, m, max_per_class=PROTOTYPE_MAX_PER_CLASS,
                              seed=cfg.train.seed)  # fmt: skip
    initial = prototype_init(*examples, m, seed=cfg.train.seed)
    names = [task.class_name(k) for k in range(m)]  # type: ignore[attr-defined]
    ncols = min(m, 10)
    nrows = math.ceil(m / ncols)
    cell = 1.2 if in_shape[-1] <= 16 else 1.4
    fig = _figure(
        figsize=(ncols * cell + 0.8, 3 * nrows * (cell + 0.3) + 1.0), layout="constrained"
    )
    fig.suptitle(f"Prototype embeddings W_Embed, one image per class\n{info.label}", fontsize=10)
    panels = fig.subfigures(3, 1, height_ratios=[1, 1, 1.15])
    best = info.summary.best_epoch if info.summary else "?"
    for sub, weight, title in (
        (panels[0], initial, "initial: class medoid of the training images"),
        (panels[1], learned, f"learned: the selected model (epoch {best})"),
    ):
        images = _to_images(weight, in_shape, data.mean, data.std)
        sub.suptitle(f"{title} — pixel values clipped to [0, 1]", fontsize=9)
        axes = sub.subplots(nrows, ncols, squeeze=False)
        for k, ax in enumerate(axes.flat):
            ax.set_axis_off()
            if k >= m:
                continue
            if in_shape[0] == 1:
                ax.imshow(images[k], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(images[k], interpolation="nearest")
            ax.set_title(names[k], fontsize=8)
    # What training changed, in pixel units (channel mean for colour images).
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    delta = ((learned.detach().cpu() - initial).reshape(-1, *in_shape) * std).mean(1).numpy()
    vmax = float(abs(delta).max()) or 1.0
    panels[2].suptitle(
        "change: learned − initial (pixel units; red brighter, blue darker)", fontsize=9
    )
    axes = panels[2].subplots(nrows, ncols, squeeze=False)
    im = None
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < m:
            im = ax.imshow(delta[k], cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
            ax.set_title(names[k], fontsize=8)
    if im is not None:
        panels[2].colorbar(im, ax=axes, shrink=0.8, aspect=12, pad=0.01)
    return _save(fig, path)


def plot_runs(run_dirs: list[str | Path], out: str | Path, *, device: str = "cpu") -> list[Path]:
    """Write every applicable figure for ``run_dirs`` into ``out``; return the written paths."""
    infos = load_infos(expand_run_dirs(run_dirs))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    _figure()  # fail early, before creating anything, when matplotlib is missing
    out.mkdir(parents=True, exist_ok=True)
    table = [
        time_to_accuracy.row(i.config, i.metrics, i.summary, i.eval5, run=i.name)
        for i in infos
        if i.metrics
    ]
    written: list[Path | None] = []
    if table:
        atomic_write_json(out / "time_to_accuracy.json", {"rows": table})
        md = time_to_accuracy.render_markdown(table)
        atomic_write_text(out / "time_to_accuracy.md", md)
        written += [out / "time_to_accuracy.md", out / "time_to_accuracy.json"]
    written += [
        plot_accuracy_vs_time(infos, out / "accuracy_vs_time.png"),
        plot_accuracy_vs_steps(infos, out / "accuracy_vs_steps.png"),
    ]
    for info in infos:
        written.append(plot_per_step(info, out / f"per_step-{info.name}.png"))
        written.append(plot_block_loss(info, out / f"block_loss-{info.name}.png"))
        written.append(plot_prototypes(info, out / f"prototypes-{info.name}.png", device))
    return [p for p in written if p is not None]


# ------------------------------------------------------------------------------------- CLI
HELP_TEXT = "PNG figures of run directories (accuracy vs time, per step, block loss, prototypes)"


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``noprop plot``."""
    p.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (or bench reproduce dirs)"
    )
    p.add_argument("--out", required=True, type=PATH, help="directory for the PNG files")
    p.add_argument("--device", default="cpu", help="device for loading models (default cpu)")
    return p


def cmd_plot(ns: argparse.Namespace) -> int:
    check_device(ns.device)
    for path in plot_runs(ns.run_dirs, ns.out, device=ns.device):
        print(path)
    return 0


def _fair_series(report: dict[str, Any], layers: int) -> list[tuple[str, str, str, list]]:
    """The per-block read-outs of the fair protocol (issue 22): back-prop's tuned lens per layer,
    and for the one-layer-per-block chains each block's own softmax p_t on one stochastic chain from
    pure noise (rows of ``test.fair.readouts`` with S = 1); absent in older reports."""
    out: list[tuple[str, str, str, list]] = []
    runs = report.get("runs", {})
    lens = (runs.get("backprop", {}).get("test") or {}).get("tuned_lens")
    if lens:
        rows = [{"position": t["depth"] / layers, "bits_per_byte": t["tuned_lens_bits_per_byte"],
                 "accuracy": t["tuned_lens_accuracy"]} for t in lens]  # fmt: skip
        out.append(("back-prop: tuned lens of h_l", "tab:blue", "^", rows))
    own = [("noprop", "NoProp-LM", "tab:red"), ("diffusionblocks", "DiffusionBlocks", "tab:green")]
    for name, label, color in own:
        fair = (runs.get(name, {}).get("test") or {}).get("fair")
        if not fair:
            continue
        rows = [r for r in fair["readouts"] if r["chains"] == 1 and r["readout"].startswith("p_")]
        if rows:
            out.append((f"{label}: block's own softmax p_t (1 stochastic chain)", color, "v", rows))
    return out


def plot_lm_trajectory(report: dict[str, Any], path: Path) -> Path:
    """``noprop lm compare``: bits per byte, accuracy and cosine to the true next byte's output vector
    vs depth — the back-prop transformer's logit lens per layer next to NoProp's read-out per block."""
    fig = _figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    series = [
        ("backprop", "back-prop: logit lens of h_l", "tab:blue", "o"),
        ("noprop", "NoProp-LM: head on z_t (deterministic chain)", "tab:red", "s"),
    ]
    panels = [
        ("bits_per_byte", "test bits per byte"),
        ("accuracy", "top-1 accuracy"),
        ("cosine_centered", "cosine to the true byte's vector\n(centered; raw dashed)"),
    ]
    layers = report.get("plan", {}).get("args", {}).get("layers")
    for ax, (key, title) in zip(axes, panels, strict=True):
        for name, label, color, marker in series:
            if name not in report["trajectory"]:  # a comparison without that model
                continue
            rows = report["trajectory"][name]
            depth = [r["depth"] for r in rows]
            ax.plot(depth, [r[key] for r in rows], marker=marker, color=color, label=label)
            if key == "cosine_centered":
                ax.plot(depth, [r["cosine"] for r in rows], ls="--", color=color, alpha=0.6)
        if key != "cosine_centered" and layers:
            for label, color, marker, rows in _fair_series(report, layers):
                x = [r["position"] * layers for r in rows]
                ax.plot(x, [r[key] for r in rows], marker=marker, ls=":", color=color,
                        label=label, alpha=0.85)  # fmt: skip
        if key == "bits_per_byte":
            ax.axhline(report["unigram_bits_per_byte"], color="grey", ls="--", label="unigram")
            ax.set_ylim(0, 8.5)
        ax.set_xlabel("depth (layer l / block t; 0 = input state)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Paths through output space on {report['dataset']} (test split)", y=1.05)
    return _save(fig, path)
