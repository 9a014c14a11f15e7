"""Golden numbers: the math of every method is pinned by numbers recorded before the issue-10 redesign.

tests/golden/golden.json was written by tests/golden/record_v0.py with noprop 0.1.0 (commit 3d203db):
for each case a tiny fixed config (random 8×8 inputs, 4 classes, MLP block, T = 3 for dt/backprop),
the loss parts of 6 optimiser steps, then the read-out logits of deterministic and (seeded) stochastic
inference. A change that alters any loss, update or sampler fails here. float32 for every method,
float64 for dt and backprop (the continuous-time blocks embed t in float32). Methods added later
(DiffusionBlocks) were recorded by tests/golden/record_new.py when they landed (``recorded_with``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from noprop import Trainer, build_method, make_config

GOLDEN = json.loads((Path(__file__).parent / "golden" / "golden.json").read_text())["cases"]
EXTRA = {
    "dt": {"T": 3},
    "backprop": {"T": 3},
    "ct": {"inference_steps": 6, "t_samples": 2},
    "fm": {"inference_steps": 6, "t_samples": 2},
    "adjoint": {"inference_steps": 6, "adjoint_steps": 4},
    "diffusionblocks": {"T": 3, "inference_steps": 6},
}
#: Across CPUs, not within one: the numbers were recorded on an Intel Xeon; on an AMD EPYC (AVX512
#: kernels, 2026-12-02) six Adam steps moved float32 results by up to 1.3e-3 (relative) and float64
#: ones by up to 2.2e-7 (the learned/prototype embeddings start from float32 statistics). A change to
#: a loss, a coefficient or a sampler moves them by 1e-2 or more.
TOL = {"torch.float32": 5e-3, "torch.float64": 1e-6}


def run_case(method: str, embedding: str, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 8, 8, generator=g, dtype=torch.float64).to(dtype)
    y = torch.arange(48) % 4
    cfg = make_config(
        method=method, embedding=embedding, block="mlp", embed_dim=6, batch_size=16, seed=3,
        **EXTRA[method],
    )  # fmt: skip
    m = build_method(cfg, x.shape[1:], 4, x.float(), y).to(dtype)
    trainer = Trainer(m, cfg, torch.device("cpu"), progress=False)
    torch.manual_seed(11)
    trace = []
    for i in range(6):
        sl = slice(16 * (i % 3), 16 * (i % 3) + 16)
        parts = trainer.step(x[sl], y[sl], i % m.num_units)
        trace.append({k: float(v) for k, v in sorted(parts.items())})
    m.eval()
    det = m.predict_steps(x[:8], deterministic=True)
    torch.manual_seed(5)
    sto = m.predict_steps(x[:8], deterministic=False)
    return {"loss_trace": trace, "predict_deterministic": det, "predict_stochastic": sto}


@pytest.mark.parametrize(
    "case", GOLDEN, ids=[f"{c['method']}-{c['embedding']}-{c['dtype'][6:]}" for c in GOLDEN]
)
def test_golden_numbers(case, one_thread):
    dtype = getattr(torch, case["dtype"].removeprefix("torch."))
    got = run_case(case["method"], case["embedding"], dtype)
    rtol = TOL[case["dtype"]]
    assert len(got["loss_trace"]) == len(case["loss_trace"])
    for step, (a, b) in enumerate(zip(got["loss_trace"], case["loss_trace"], strict=True)):
        assert a.keys() == b.keys(), step
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=rtol, abs=rtol), (step, k)
    for key in ("predict_deterministic", "predict_stochastic"):
        want = torch.tensor(case[key], dtype=torch.float64)
        torch.testing.assert_close(got[key].double(), want, rtol=rtol, atol=rtol, msg=key)


def test_golden_cases_cover_every_method():
    from noprop import METHODS

    assert {c["method"] for c in GOLDEN} == set(METHODS) - {"toy"}
