"""In-process A/B of the training step: the current noprop vs an older copy, step by step interleaved.

The older checkout is imported as a renamed package (``noprop_old``: a copy of its ``src/noprop`` with
its absolute ``noprop.`` imports renamed), so both run in one process on the same MNIST batches and
alternate step by step (A, B, A, B, ...): machine-speed drift, which on this shared 2-core VM is ±20%
between minutes, then hits both alike. Prints the median per-step time of each and the ratio.

    cp -r OLD/src/noprop /tmp/oldpkg/noprop_old  (and rename its absolute imports, see BENCHMARKS.md)
    PYTHONPATH=/tmp/oldpkg python experiments/ab_step_interleaved.py --methods dt,backprop,ct
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def trainer_for(pkg: str, method: str, data_dir: str):
    """(step function, batch source) for ``method`` built by package ``pkg`` (noprop or noprop_old)."""
    mod = __import__(pkg)
    cfg = mod.make_config(method=method, dataset="mnist", data_dir=data_dir, download=False)
    if pkg == "noprop":
        task = mod.TASKS["classification"](cfg.data.dataset)  # public names only
        data = task.load(cfg.data, cfg.train.seed)
        method_obj = mod.build_method(cfg, task, None, *data.train)
        trainer = mod.Trainer(method_obj, cfg, torch.device("cpu"), task=task, progress=False)
    else:
        run = __import__(f"{pkg}.training.run", fromlist=["load_data"])
        data = run.load_data(cfg)
        method_obj = mod.build_method(cfg, data.in_shape, data.num_classes, *data.train)
        trainer = mod.Trainer(method_obj, cfg, torch.device("cpu"), progress=False)
    x, y = data.train
    return trainer, trainer.to_device(x[:4096]), y[:4096], method_obj.num_units


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="dt,backprop,ct")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--data-dir", default=str(Path("../shared/data/mnist").resolve()))
    args = p.parse_args()
    for method in args.methods.split(","):
        pair = [trainer_for(pkg, method, args.data_dir) for pkg in ("noprop_old", "noprop")]
        gen = torch.Generator().manual_seed(0)
        times: list[list[float]] = [[], []]
        for i in range(args.steps + 3):
            idx = torch.randint(0, 4096, (128,), generator=gen)
            order = (0, 1) if i % 2 == 0 else (1, 0)  # who goes first alternates too
            for k in order:
                trainer, x, y, units = pair[k]
                start = time.perf_counter()
                trainer.step(x[idx], y[idx], i % units)
                if i >= 3:  # the first steps allocate optimiser state
                    times[k].append(time.perf_counter() - start)
        old, new = (statistics.median(t) * 1e3 for t in times)
        print(f"{method}: median step old {old:.2f} ms, new {new:.2f} ms, new/old {new / old:.4f}")


if __name__ == "__main__":
    main()
