"""Why NoProp-DT (and its back-prop twin) learned slowly at first: the head's initialisation.

Trains each method with the head's linear layer initialised two ways — PyTorch's default uniform init
and the nearest-embedding read-out (noprop's default, see models/heads.py) — and prints the validation
accuracy after every epoch. Usage:

    python experiments/slow_start.py                                    # digits, 10 epochs
    python experiments/slow_start.py --dataset mnist --data-dir ../shared/data/mnist \
        --max-train-samples 10000 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from noprop import make_config, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir")
    p.add_argument("--max-train-samples", type=int)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--methods", default="dt,backprop")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = []
    for method in args.methods.split(","):
        for head_init in ("default", "readout"):
            cfg = make_config(
                method=method, dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
                max_train_samples=args.max_train_samples, head_init=head_init, seed=args.seed,
            )  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                summary = train(cfg, Path(tmp) / "run", progress=False)
                metrics = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").open()]
            val = [round(m["val_accuracy"], 3) for m in metrics]
            rows.append((method, head_init, val, summary["test_accuracy"]))
            print(f"{method:<9} head_init={head_init:<8} val acc per epoch {val}  "
                  f"test {summary['test_accuracy']:.4f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
