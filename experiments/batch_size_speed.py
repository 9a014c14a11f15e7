"""Training seconds of one NoProp-DT epoch on a slice of MNIST, per mini-batch size.

``python experiments/batch_size_speed.py --data-dir ../shared/data/mnist 128 256 512`` trains a
fresh DT model (one-hot, interleaved order, 5,120 training samples, one epoch) per batch size and
prints the epoch's training seconds (validation excluded). BENCHMARKS.md, "Moonshot": on the 2-core
CPU VM larger batches were slower per sample, so batch size is no lever for time to accuracy there.
Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from noprop import make_config, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("batch_sizes", nargs="+", type=int)
    p.add_argument("--data-dir", default="../shared/data/mnist")
    p.add_argument("--samples", type=int, default=5120)
    args = p.parse_args()
    for bs in args.batch_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            cfg = make_config(method="dt", dataset="mnist", data_dir=args.data_dir, epochs=1,
                              batch_size=bs, max_train_samples=args.samples, order="interleaved")  # fmt: skip
            train(cfg, run, progress=False)
            last = [json.loads(line) for line in (run / "metrics.jsonl").open()][-1]
            print(f"batch {bs}: {last['epoch_seconds']:.1f} s training, "
                  f"val {last['val_accuracy']:.4f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
