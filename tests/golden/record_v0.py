"""Record golden numbers with the code *before* the issue-10 redesign (kept for the record).

Run once at commit 3d203db: ``python tests/golden/record_v0.py``; writes tests/golden/golden.json.
Every case: a tiny fixed config (random 8x8 inputs, 4 classes, MLP block, T = 3) in float32 (and float64 for dt/backprop); the loss
parts of 6 optimiser steps (units cycled), then deterministic predictions (all read-outs) and
stochastic ones under a fixed seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from noprop import build_method
from noprop.config import make_config
from noprop.training.trainer import Trainer

CASES = [
    ("dt", "one-hot"),
    ("dt", "learned"),
    ("dt", "prototype"),
    ("backprop", "one-hot"),
    ("backprop", "learned"),
    ("ct", "one-hot"),
    ("ct", "learned"),
    ("fm", "one-hot"),
    ("fm", "learned"),
    ("adjoint", "one-hot"),
]
EXTRA = {
    "ct": dict(inference_steps=6, t_samples=2),
    "fm": dict(inference_steps=6, t_samples=2),
    "adjoint": dict(inference_steps=6, adjoint_steps=4),
}


def data(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 8, 8, generator=g, dtype=torch.float64).to(dtype)
    y = torch.arange(48) % 4
    return x, y


def run_case(method: str, embedding: str, dtype: torch.dtype) -> dict:
    x, y = data(dtype)
    cfg = make_config(
        method=method,
        embedding=embedding,
        T=3,
        block="mlp",
        embed_dim=6,
        batch_size=16,
        seed=3,
        **EXTRA.get(method, {}),
    )
    m = build_method(cfg, x.shape[1:], 4, x.float(), y).to(dtype)
    trainer = Trainer(m, cfg, torch.device("cpu"), progress=False)
    torch.manual_seed(11)
    trace = []
    for i in range(6):
        unit = i % m.num_units
        sl = slice(16 * (i % 3), 16 * (i % 3) + 16)
        parts = trainer.step(x[sl], y[sl], unit)
        trace.append({k: float(v) for k, v in sorted(parts.items())})
    m.eval()
    xt = x[:8]
    det = m.predict_steps(xt, deterministic=True)
    torch.manual_seed(5)
    sto = m.predict_steps(xt, deterministic=False)
    return {
        "method": method,
        "embedding": embedding,
        "dtype": str(dtype),
        "loss_trace": trace,
        "predict_deterministic": det.tolist(),
        "predict_stochastic": sto.tolist(),
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    # float32 for every method; float64 where the method supports it (CT/FM/adjoint hard-code float32
    # time embeddings in this version)
    out = [run_case(m, e, torch.float32) for m, e in CASES]
    out += [run_case(m, e, torch.float64) for m, e in CASES if m in ("dt", "backprop")]
    path = Path(__file__).with_name("golden.json")
    path.write_text(json.dumps({"recorded_with": "3d203db", "cases": out}, indent=1) + "\n")
    print("wrote", path, len(out), "cases")
