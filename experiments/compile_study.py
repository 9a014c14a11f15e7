"""Does ``torch.compile`` (inductor, CPU) speed up the NoProp-DT block step? (issue 12, item 3)

Times, on full-MNIST batches of 128 in one process, the eager training step of one DT block and the
same step with the block compiled (``torch.compile(block)``; the loss, backward and AdamW stay eager),
interleaved step by step after the compiled version's warm-up; reports compile time separately and
checks that the compiled block computes the same logits (eval mode, no dropout) within tolerance.

    python experiments/compile_study.py --data-dir ../shared/data/mnist --steps 30
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from noprop import Trainer, build_method, make_config
from noprop.runs import load_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(Path("../shared/data/mnist").resolve()))
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    cfg = make_config(method="dt", dataset="mnist", data_dir=args.data_dir, download=False)
    task, data = load_data(cfg)
    x, y = data.train
    eager = build_method(cfg, task, None, x, y)
    compiled = copy.deepcopy(eager)
    t_eager = Trainer(eager, cfg, torch.device("cpu"), task=task, progress=False)
    t_comp = Trainer(compiled, cfg, torch.device("cpu"), task=task, progress=False)
    xd = t_eager.to_device(x[:4096])
    gen = torch.Generator().manual_seed(0)

    def batch():
        idx = torch.randint(0, 4096, (128,), generator=gen)
        return xd[idx], y[:4096][idx]

    block = compiled.blocks[0]
    compiled.blocks[0] = torch.compile(block)
    start = time.perf_counter()
    t_comp.step(*batch(), 0)  # compiles forward and backward
    compile_s = time.perf_counter() - start
    t_eager.step(*batch(), 0)
    times: list[list[float]] = [[], []]
    for i in range(args.steps):
        xb, yb = batch()
        for k, tr in ((0, t_eager), (1, t_comp)) if i % 2 == 0 else ((1, t_comp), (0, t_eager)):
            start = time.perf_counter()
            tr.step(xb, yb, 0)
            times[k].append(time.perf_counter() - start)
    e, c = (statistics.median(t) * 1e3 for t in times)
    # exactness: the same weights through the eager and the compiled block, eval mode
    ref = copy.deepcopy(block).eval()
    compiled.blocks[0].eval()
    z = torch.randn(256, eager.embedding.dim)
    with torch.no_grad():
        diff = (compiled.blocks[0](xd[:256], z) - ref(xd[:256], z)).abs().max().item()
    print(f"compile (first step, forward + backward): {compile_s:.1f} s")
    print(f"median DT block step: eager {e:.1f} ms, compiled {c:.1f} ms, compiled/eager {c / e:.3f}")
    print(f"max |logit difference| compiled vs eager (eval mode): {diff:.2e}")


if __name__ == "__main__":
    main()
