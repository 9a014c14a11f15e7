"""Seconds of a full-MNIST test evaluation (10,000 images) per method × embedding, default settings.

What ``noprop eval RUN`` does at the defaults (one stochastic inference run, ``--eval-batch-size
1000``, CT/FM/adjoint ``--inference-steps 1000``), timed on freshly built (seeded, untrained) models:
the cost of inference does not depend on the weights (every solver here takes fixed steps). Each cell
also counts the inference FLOPs on a small batch with ``torch.utils.flop_counter`` and reports the
achieved FLOP/s, so a slow cell's floor is explained by its FLOPs, not guessed.

A cell whose projected time exceeds ``--max-seconds`` is timed on the first ``--probe-images`` test
images only and its full-test time is projected linearly (inference is per image; stated as
"projected" in the table). Run it alone on a quiet machine:

    python experiments/eval_time_table.py --data-dir ../shared/data/mnist --out experiments/eval_time_table.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from noprop import TASKS, build_method, evaluate, make_config

METHODS = ("dt", "backprop", "ct", "fm", "adjoint")
EMBEDDINGS = ("one-hot", "learned", "prototype")


def load_data(cfg):
    """The task and data splits of ``cfg`` (an image data set) through the public API."""
    task = TASKS["classification"](cfg.data.dataset)
    return task, task.load(cfg.data, cfg.train.seed)


def flops_per_image(method, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            method.predict_steps(x, deterministic=False)
    return fc.get_total_flops() / x.shape[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(Path("../shared/data/mnist").resolve()))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--embeddings", default=",".join(EMBEDDINGS))
    p.add_argument("--max-seconds", type=float, default=240.0)
    p.add_argument("--probe-images", type=int, default=500)
    p.add_argument("--out", default="experiments/eval_time_table.json")
    args = p.parse_args()
    rows = []
    device = torch.device("cpu")
    for name in args.methods.split(","):
        for emb in args.embeddings.split(","):
            cfg = make_config(method=name, embedding=emb, dataset="mnist", data_dir=args.data_dir,
                              download=False)  # fmt: skip
            task, data = load_data(cfg)
            method = build_method(cfg, task, None, *data.train)
            method = task.prepare_model(method.eval())
            x, y = (task.to_device(t, device) for t in data.test)
            flops = flops_per_image(method, x[:8])
            bs = cfg.train.eval_batch_size
            # a probe of one batch-size's worth (or fewer) images gives the projection
            n_probe = min(args.probe_images, x.shape[0])
            start = time.perf_counter()
            evaluate(method, x[:n_probe], y[:n_probe], bs, False, 0, task=task)
            probe_s = time.perf_counter() - start
            projected = probe_s * x.shape[0] / n_probe
            if projected <= args.max_seconds:
                start = time.perf_counter()
                acc = evaluate(method, x, y, bs, False, 0, task=task, progress=True)["accuracy"]
                seconds, how = time.perf_counter() - start, "measured"
            else:
                seconds, how, acc = projected, f"projected from {n_probe} images", None
            row = {
                "method": name, "embedding": emb, "seconds": round(seconds, 1), "how": how,
                "inference_flops_per_image": flops,
                "achieved_flops_per_s": flops * x.shape[0] / seconds,
                "accuracy_untrained": acc,
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},  # fmt: skip
        "test_images": 10000,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
