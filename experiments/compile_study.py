"""Does ``torch.compile`` (inductor, CPU) speed noprop up? (issue 12, item 3)

``--target dt`` (default): on full-MNIST batches of 128 in one process, the eager training step of one
DT block and the same step with the block compiled (``torch.compile(block)``; the loss, backward and
AdamW stay eager), interleaved step by step after the compiled version's warm-up.
``--target backprop``: the same for the back-prop twin's whole loss (``torch.compile(method.loss)``:
the chain of T blocks and the head, forward and backward).
``--target ct`` / ``--target fm``: inference (``predict_steps``, ``--infer-steps`` steps on
``--infer-images`` test images) with the block's per-step part compiled (``torch.compile(block.fuse)``;
the image features are computed once, eagerly), eager and compiled runs alternated.
Every target reports compile time separately and checks that the compiled code computes the same
outputs (eval mode, no dropout) within tolerance.

    python experiments/compile_study.py --data-dir ../shared/data/mnist --steps 30 --target backprop
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from noprop import TASKS, Trainer, build_method, make_config


def load_data(cfg):
    """The task and data splits of ``cfg`` (an image data set) through the public API."""
    task = TASKS["classification"](cfg.data.dataset)
    return task, task.load(cfg.data, cfg.train.seed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(Path("../shared/data/mnist").resolve()))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--target", default="dt", choices=("dt", "backprop", "ct", "fm"))
    p.add_argument("--infer-images", type=int, default=1000)
    p.add_argument("--infer-steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="ct/fm: alternated timed inference rounds")
    p.add_argument("--embedding", default="one-hot", help="ct/fm: the label embedding")
    args = p.parse_args()
    if args.target in ("ct", "fm"):
        return inference(args)
    cfg = make_config(method=args.target, dataset="mnist", data_dir=args.data_dir, download=False)
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
    if args.target == "dt":
        compiled.blocks[0] = torch.compile(block)
    else:  # the whole back-prop loss: T chained blocks and the head
        compiled.loss = torch.compile(compiled.loss)
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
    z = torch.randn(256, eager.embedding.dim)
    with torch.no_grad():
        if args.target == "dt":
            # exactness: the same weights through the eager and the compiled block, eval mode
            ref = copy.deepcopy(block).eval()
            compiled.blocks[0].eval()
            diff = (compiled.blocks[0](xd[:256], z) - ref(xd[:256], z)).abs().max().item()
        else:  # the same loss from the same weights and noise, eval mode
            ref_m = copy.deepcopy(compiled).eval()
            ref_m.loss = type(ref_m).loss.__get__(ref_m)  # the eager method
            compiled.eval()
            xb, yb = batch()
            torch.manual_seed(1)
            a = compiled.loss(xb, yb, 0)[0]
            torch.manual_seed(1)
            b = ref_m.loss(xb, yb, 0)[0]
            diff = (a - b).abs().item()
    what = "DT block step" if args.target == "dt" else "back-prop twin step (T blocks)"
    print(f"compile (first step, forward + backward): {compile_s:.1f} s")
    print(f"median {what}: eager {e:.1f} ms, compiled {c:.1f} ms, compiled/eager {c / e:.3f}")
    print(f"max |output difference| compiled vs eager (eval mode): {diff:.2e}")


def inference(args: argparse.Namespace) -> None:
    """CT/FM inference with the block's per-step part compiled vs eager (module docstring)."""
    cfg = make_config(method=args.target, dataset="mnist", data_dir=args.data_dir, download=False,
                      inference_steps=args.infer_steps, embedding=args.embedding)  # fmt: skip
    task, data = load_data(cfg)
    x, y = data.train
    eager = build_method(cfg, task, None, x, y).eval()
    compiled = copy.deepcopy(eager).eval()
    xt = task.to_device(data.test[0][: args.infer_images], torch.device("cpu"))
    eager = task.prepare_model(eager)
    compiled = task.prepare_model(compiled)
    compiled.block.fuse = torch.compile(compiled.block.fuse)

    def run(m) -> tuple[float, torch.Tensor]:
        torch.manual_seed(0)
        start = time.perf_counter()
        out = m.predict_steps(xt, deterministic=True)
        return time.perf_counter() - start, out

    start = time.perf_counter()
    run(compiled)  # compiles (the first steps)
    compile_s = time.perf_counter() - start
    times: list[list[float]] = [[], []]
    outs = {}
    for r in range(args.rounds):
        order = ((0, eager), (1, compiled)) if r % 2 == 0 else ((1, compiled), (0, eager))
        for k, m in order:
            t, outs[k] = run(m)
            times[k].append(t)
    e, c = (statistics.median(t) for t in times)
    diff = (outs[0] - outs[1]).abs().max().item()
    print(f"compile + first run of {args.infer_steps} steps: {compile_s:.1f} s")
    print(f"{args.target} inference, {args.infer_images} images × {args.infer_steps} steps "
          f"(deterministic): eager {e:.2f} s, compiled {c:.2f} s, compiled/eager {c / e:.3f}")  # fmt: skip
    print(f"max |logit difference| compiled vs eager: {diff:.2e}")


if __name__ == "__main__":
    main()
