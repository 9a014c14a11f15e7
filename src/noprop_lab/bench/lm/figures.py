"""The depth-sweep figure of ``lm compare`` (the trajectory figure is :func:`noprop_lab.plots.
plot_lm_trajectory`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ... import plots
from .report import depth_sweep, specs


def has_depth_sweep(report: dict[str, Any]) -> bool:
    return depth_sweep(report) is not None


def _reported(run: dict[str, Any]) -> dict[str, Any]:
    test = run.get("test") or {}
    return test.get("fair", test)


def plot_depth(report: dict[str, Any], path: Path) -> Path:
    """Test bits per byte vs layers per block k: one line per block-wise method (calibrated on
    validation solid, raw dashed), the one-network models (back-prop, CT, FM) as horizontal lines,
    the unigram baseline grey. Runs not evaluated yet have no point. The reported (fair) read-out
    where the report has it, else the legacy one (reports written before issue 22)."""
    sweep = depth_sweep(report)
    assert sweep is not None
    sp, runs = specs(report), report["runs"]
    fig = plots._figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    colors = plots._colors(len(sweep["methods"]) + len(sweep["others"]))
    for (_, by_k), color in zip(sweep["methods"].items(), colors, strict=False):
        label = sp[next(iter(by_k.values()))].entry.short
        for key, style, suffix in (("bits_per_byte_calibrated", "o-", False),
                                   ("bits_per_byte", "o--", True)):  # fmt: skip
            pts = [(k, _reported(runs[n])[key]) for k, n in sorted(by_k.items())
                   if _reported(runs[n]).get(key) is not None]  # fmt: skip
            if pts:
                ax.plot(*zip(*pts, strict=True), style, color=color,
                        label="_nolegend_" if suffix else label, alpha=0.5 if suffix else 1.0)  # fmt: skip
    for name, color in zip(sweep["others"], colors[len(sweep["methods"]) :], strict=True):
        test = _reported(runs[name])
        value = test.get("bits_per_byte_calibrated", test.get("bits_per_byte"))
        if value is not None:
            black = sp[name].entry.name == "backprop"
            ax.axhline(value, color="black" if black else color, ls="-" if black else ":",
                       label=f"{sp[name].short} (one network)")  # fmt: skip
    ax.axhline(report["unigram_bits_per_byte"], color="grey", ls="--", label="unigram")
    ax.set_xscale("log")
    ax.set_xticks(sweep["ks"], [str(k) for k in sweep["ks"]])
    ax.minorticks_off()
    layers = report["plan"]["args"]["layers"]
    ax.set_xlabel(f"layers per block k (T = {layers} / k blocks)")
    ax.set_ylabel("test bits per byte (calibrated; raw dashed)")
    ax.set_title(f"How much depth a block needs ({report['dataset']}, {layers} layers in all)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return plots._save(fig, path)
