"""Test accuracy vs inference compute for runs evaluated with ``noprop eval RUN --chains ...``.

Reads each run's ``eval_chains.json`` with the FLOPs of one chain per image that ``noprop eval
--chains`` counted (``torch.utils.flop_counter.FlopCounterMode``, the method's default inference on 8
test images; older files without them are counted here, which needs the run's checkpoint), and
writes a PNG (accuracy vs GFLOP per image, one line per method, the deterministic chain as a marker)
and a Markdown table (chains, GFLOP per image, seconds for the test set, accuracy).

    python experiments/chains_figure.py RUN... --out figures/chains
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from noprop import RunDir, load, load_dataset


def flops_per_image(run: Path) -> float:
    model = load(run, device="cpu")
    d = model.config.data
    data = load_dataset(d.dataset, d.data_dir, download=False)
    x = data.test[0][:8]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.method.predict_steps(x, deterministic=False)
    return counter.get_total_flops() / x.shape[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True, help="path prefix for .png and .md")
    args = p.parse_args()
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        "| method | chains | GFLOP / image | seconds (test set) | test accuracy |",
        "|---|---|---|---|---|",
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    loads: list[str] = []
    for run in map(Path, args.runs):
        result = RunDir(run).read_eval_chains()
        if result is None:
            raise SystemExit(f"{run}: no eval_chains.json; run noprop eval {run} --chains 1,4,16")
        cfg = RunDir(run).config()
        method = cfg.method.cls.label + (
            " (interleaved)" if cfg.train.order == "interleaved" else ""
        )
        f = result.get("gflop_per_chain_per_image") or flops_per_image(run) / 1e9
        rows = result["rows"]
        det = [r for r in rows if r["chains"] == 0]
        sto = [r for r in rows if r["chains"] > 0]
        line = ax.plot(
            [f * r["chains"] for r in sto], [r["test_accuracy"] for r in sto], "o-", label=method
        )
        for r in det:
            ax.plot([f], [r["test_accuracy"]], "*", ms=12, color=line[0].get_color())
        for r in rows:
            name = "deterministic" if r["chains"] == 0 else str(r["chains"])
            lines.append(
                f"| {method} | {name} | {f * max(r['chains'], 1):.3g} | {r['seconds']:.1f} | {r['test_accuracy']:.4f} |"
            )
        if result.get("other_busy_cores") is not None:
            loads.append(f"{method}: {result['other_busy_cores']} other busy cores while timed")
    if loads:
        lines += ["", "Load: " + "; ".join(loads) + "."]
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("inference GFLOP per image (chains × one chain)")
    ax.set_ylabel("test accuracy")
    ax.set_title("N stochastic chains averaged (★: deterministic chain)")
    ax.legend()
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out.with_suffix(".png"), dpi=120)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
