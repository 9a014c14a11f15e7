"""How NoProp-CT's training defaults were chosen: a validation-only study on full MNIST.

Every configuration trains for 2 epochs (the issue's budget) with the paper's hyper-parameters, then
reports *validation* accuracy (6,000 images held out of the training set) with 100-step inference:
the default stochastic sampler (z_0 ~ N(0, I), ancestral for CT, Euler for FM) and the deterministic
one (z_0 = 0, no noise). The test set is never read here: ``train`` writes a test figure into each
run's summary.json, which this script ignores, and the runs live in a temporary directory.

Usage (one configuration takes ~75 s on 2 CPU cores; all of them ~25 min):

    python experiments/ct_validation_study.py --data-dir ../shared/data/mnist
    python experiments/ct_validation_study.py --data-dir ../shared/data/mnist --only k1-s0,k8-s0
    python experiments/ct_validation_study.py --flops    # FLOPs of one training step, K = 1 vs 8
    python experiments/ct_validation_study.py --diagnose RUN_DIR   # where a CT run's errors come from
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from noprop import build_method, evaluate, load_run, make_config, posterior_coefficients, train

EVAL_SEED = 123
STUDY: dict[str, dict[str, Any]] = {
    # one (t, z_t) draw per image and step, as Algorithm 2, vs K = 8 / 16 draws sharing h_x
    **{f"k1-s{s}": dict(t_samples=1, seed=s) for s in (0, 1, 2)},
    **{f"k8-s{s}": dict(t_samples=8, seed=s) for s in (0, 1, 2)},
    "k16-s0": dict(t_samples=16),
    # initial endpoints γ(1) = gamma_min, γ(0) = gamma_max (default −3, 3), K = 1
    **{f"k1-gmin{g}": dict(t_samples=1, gamma_min=g) for g in (-2.0, -2.5, -4.0, -5.0)},
    **{f"k1-g44-s{s}": dict(t_samples=1, gamma_min=-4.0, gamma_max=4.0, seed=s) for s in (0, 1)},
    # the same option for NoProp-FM
    "fm-k1-s0": dict(method="fm", t_samples=1),
    "fm-k8-s0": dict(method="fm", t_samples=8),
}


def run_one(name: str, flags: dict[str, Any], data_dir: str, root: Path) -> dict[str, Any]:
    cfg = dict(method="ct", dataset="mnist", data_dir=data_dir, epochs=2, inference_steps=100)
    cfg.update(flags)
    out = root / name
    start = time.perf_counter()
    train(make_config(**cfg), out, progress=False)
    seconds = time.perf_counter() - start
    method, _, data, _ = load_run(out, "cpu")
    xv, yv = data.val
    row: dict[str, Any] = {"name": name, "flags": flags, "seconds": round(seconds, 1)}
    for deterministic in (False, True):
        ev = evaluate(method, xv, yv, 1000, deterministic, EVAL_SEED)
        row["val_deterministic" if deterministic else "val"] = round(ev["accuracy"], 4)
    if hasattr(method, "schedule"):
        gamma_0, gamma_1 = method.schedule.gamma_endpoints()
        row["gamma_0"], row["gamma_1"] = round(gamma_0.item(), 2), round(gamma_1.item(), 2)
    return row


def step_flops() -> None:
    """FLOPs of one training step (forward + backward, batch 128, MNIST shapes) for K = 1 and 8."""
    x, y = torch.randn(128, 1, 28, 28), torch.arange(128) % 10
    for method in ("ct", "fm"):
        for k in (1, 8):
            model = build_method(make_config(method=method, t_samples=k), (1, 28, 28), 10, x, y)
            with FlopCounterMode(display=False) as counter:
                model.loss(x, y, 0)[0].backward()
            print(f"{method} t_samples={k}: {counter.get_total_flops() / 1e9:.2f} GFLOP per step")


@torch.no_grad()
def diagnose(run_dir: str, steps: int = 100) -> None:
    """Validation accuracy of a CT run's pieces: û at t = 0 from noise vs from z_0 = 0 (how much the
    network leans on a z that carries no label), and, after the default ancestral chain, the head on z_1
    vs the argmax of û(z_1, x, 1) (what the noise left in z_1 costs the read-out)."""
    method, _, data, _ = load_run(run_dir, "cpu")
    x, y = data.val
    torch.manual_seed(EVAL_SEED)
    h_x, W = method.block.encode_x(x), method.embedding.weight

    def acc(scores: torch.Tensor) -> float:
        return round((scores.argmax(-1) == y).float().mean().item(), 4)

    z = torch.randn(x.shape[0], W.shape[1])
    print(
        "u_hat at t=0: z_0 ~ N(0, I)",
        acc(method.block.fuse(h_x, z, 0.0)),
        "| z_0 = 0",
        acc(method.block.fuse(h_x, torch.zeros_like(z), 0.0)),
    )
    t_grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    a, b, c = posterior_coefficients(method.schedule.alpha_bar(t_grid))
    for k in range(1, steps + 1):
        z = a[k] * method.u_hat(h_x, z, t_grid[k - 1].float()) + b[k] * z
        z = z + c[k].sqrt() * torch.randn_like(z)
    print(
        f"after {steps} ancestral steps: head(z_1)",
        acc(method.head(z, W)),
        "| argmax u_hat(z_1, x, 1)",
        acc(method.block.fuse(h_x, z, 1.0)),
        "| alpha_bar(1)",
        round(method.schedule.alpha_bar(torch.tensor(1.0)).item(), 4),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="folder with the MNIST IDX files (required unless --flops)")
    p.add_argument("--flops", action="store_true", help="only count the FLOPs of one step")
    p.add_argument("--diagnose", metavar="RUN_DIR", help="only diagnose this CT run (validation)")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(STUDY)}")
    p.add_argument("--out", help="also write the rows to this JSON file")
    args = p.parse_args()
    if args.flops:
        step_flops()
        return
    if args.diagnose:
        diagnose(args.diagnose)
        return
    if not args.data_dir:
        p.error("--data-dir is required")
    names = args.only.split(",") if args.only else list(STUDY)
    unknown = [n for n in names if n not in STUDY]
    if unknown:
        p.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(STUDY)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row = run_one(name, STUDY[name], args.data_dir, Path(tmp))
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
