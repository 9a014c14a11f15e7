"""The CUDA path: what only a GPU can check (skipped without one; scripts/gpu-check.sh runs them).

CI has no GPU, so these are reported as skipped there, never as passed. On a CUDA machine they check
that training, every precision, inference and checkpoints work on the device, and that a CUDA run's
checkpoint evaluates on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from noprop import Trainer, evaluate
from noprop.cli import main

from .problems import tiny_method

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("method", ["dt", "backprop", "ct", "fm", "diffusionblocks"])
def test_a_step_and_inference_on_cuda(method: str, precision: str) -> None:
    kw = {"inference_steps": 4} if method in ("ct", "fm") else {}
    m, cfg, (x, y) = tiny_method(method, precision=precision, **kw)
    trainer = Trainer(m, cfg, CUDA, progress=False)
    x, y = x.to(CUDA), y.to(CUDA)
    for unit in range(trainer.method.num_units):
        parts = trainer.step(x, y, unit)
        assert torch.isfinite(parts["loss"]).all()
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in m.parameters())
    r = evaluate(trainer.method, x, y, precision=precision)
    assert 0.0 <= r["accuracy"] <= 1.0


def test_offload_blocks_keeps_one_block_on_the_gpu(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "digits", "--max-train-samples", "256", "--T", "3",
               "--epochs", "1", "--offload-blocks", "--device", "cuda", "--no-progress",
               "--out", str(out)])  # fmt: skip
    assert rc == 0


def test_a_cuda_run_evaluates_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "digits", "--max-train-samples", "256", "--T", "2",
               "--epochs", "1", "--precision", "bf16-mixed", "--device", "cuda", "--no-progress",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    assert main(["eval", str(out), "--device", "cpu", "--precision", "32"]) == 0
