"""A/B per-step training time of two checkouts of noprop, alternating, on a quiet machine.

``python experiments/ab_step_time.py --a /path/to/old/src --b src --methods dt,ct --rounds 5``
runs ``noprop bench efficiency --methods M --max-batches N`` from checkout A, then from B, R times
in alternation, and prints per method the median block-steps/s of each and the ratio B/A. Alternating
rounds and taking medians is what makes a few-percent comparison possible on a machine whose speed
drifts by ±20% between minutes (measured: the same code gave DT epochs of 279-400 s in four runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def one(src: str, method: str, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eff.json"
        cmd = [sys.executable, "-m", "noprop", "bench", "efficiency", "--dataset", args.dataset,
               "--data-dir", args.data_dir, "--methods", method, "--max-batches", str(args.max_batches),
               "--out", str(out)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, cwd=tmp)
        return json.loads(out.read_text())["methods"][method]["block_steps_per_s"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="src/ directory of checkout A (the baseline)")
    p.add_argument("--b", required=True, help="src/ directory of checkout B")
    p.add_argument("--methods", default="dt,ct")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--max-batches", type=int, default=30)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default="../shared/data/mnist")
    args = p.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    result = {}
    for method in args.methods.split(","):
        a, b = [], []
        for r in range(args.rounds):
            a.append(one(args.a, method, args))
            b.append(one(args.b, method, args))
            print(f"{method} round {r + 1}: A {a[-1]:.2f}  B {b[-1]:.2f} block-steps/s", flush=True)
        ma, mb = statistics.median(a), statistics.median(b)
        result[method] = {"a": a, "b": b, "median_a": ma, "median_b": mb, "ratio_b_over_a": mb / ma}
        print(f"{method}: median A {ma:.2f}, B {mb:.2f} block-steps/s, B/A = {mb / ma:.3f}", flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
