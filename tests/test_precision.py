"""``--precision``: the cast boundary, the float16 loss-scaling path, and the run-level contract.

The float32 path is covered by the golden tests (unchanged numbers); bf16-mixed by the conformance
suite (``TestConformanceBF16``). Here: what bf16-mixed keeps in float32, the 16-mixed path on the CPU
(one GradScaler per block, skipped steps counted, divergence only after many in a row, scaler state
across resume, fused mode), and the CLI (config.json, --resume keeps it, eval/predict take it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from noprop import Trainer, make_config
from noprop.cli import main
from noprop.errors import DivergenceError
from noprop.training import steps as steps_module
from noprop.training.checkpoint import load_checkpoint
from noprop.training.order import Step

from .problems import tiny_method

ARGS = [
    "--dataset", "digits", "--max-train-samples", "200", "--T", "2", "--block", "mlp",
    "--batch-size", "64", "--seed", "3", "--no-progress", "--threads", "1",
]  # fmt: skip
TIMING = {"epoch_seconds", "wall_seconds", "other_busy_cores"}


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = int(e.code or 0)
    out = capsys.readouterr()
    return rc, out.out, out.err


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def trainer_for(precision: str, method: str = "dt", **kw: Any) -> tuple[Trainer, Any]:
    m, cfg, (x, y) = tiny_method(method, precision=precision, **kw)
    return Trainer(m, cfg, torch.device("cpu"), progress=False), (x, y)


# ------------------------------------------------------------------ the cast boundary (bf16)


def test_bf16_keeps_weights_gradients_and_optimiser_state_float32() -> None:
    trainer, (x, y) = trainer_for("bf16-mixed")
    parts = trainer.step(x, y, 0)
    assert parts["loss"].dtype == torch.float32
    for p in trainer.method.parameters():
        assert p.dtype == torch.float32
        assert p.grad is None or p.grad.dtype == torch.float32
    for st in trainer.optimizers[0].state.values():
        assert all(v.dtype == torch.float32 for v in st.values() if torch.is_tensor(v))


def test_bf16_actually_runs_the_networks_in_bf16() -> None:
    """A test that could fail: the block's matmuls see bf16 inputs under the policy."""
    trainer, (x, y) = trainer_for("bf16-mixed")
    seen: list[torch.dtype] = []
    first = trainer.method.blocks[0]
    linear = next(m for m in first.modules() if isinstance(m, torch.nn.Linear))
    handle = linear.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    trainer.step(x, y, 0)
    handle.remove()
    assert seen == [torch.bfloat16]


@pytest.mark.parametrize("method", ["dt", "ct", "fm"])
def test_bf16_inference_reads_out_float32_and_agrees_with_fp32(method: str) -> None:
    """evaluate() under bf16: float32 read-outs; the predictions mostly agree with float32's."""
    from noprop import evaluate

    kw = {"inference_steps": 4} if method != "dt" else {}
    trainer, (x, y) = trainer_for("32", method, **kw)
    for _ in range(20):
        for u in range(trainer.method.num_units):
            trainer.step(x, y, u)
    a = evaluate(trainer.method, x, y, deterministic=True)
    b = evaluate(trainer.method, x, y, deterministic=True, precision="bf16-mixed")
    assert abs(a["accuracy"] - b["accuracy"]) <= 0.1
    from noprop.precision import autocast, float32

    with autocast("bf16-mixed", "cpu"):
        logits = float32(trainer.method.predict_steps(x, deterministic=True))
    assert logits.dtype == torch.float32


# ------------------------------------------------------------------ 16-mixed: loss scaling


def test_fp16_has_one_scaler_per_block() -> None:
    trainer, (x, y) = trainer_for("16-mixed")
    scalers = trainer.step_fn.scalers
    assert scalers is not None and len(scalers) == trainer.method.num_units == 3
    assert len({id(s) for s in scalers}) == 3


def _poison(monkeypatch: pytest.MonkeyPatch, unit: int, calls: int | None = None) -> list[int]:
    """Make ``unit``'s loss infinite (the first ``calls`` times; always if None)."""
    from noprop.methods.dt import NoPropDT

    real = NoPropDT.loss
    count = [0]

    def loss(self: NoPropDT, x: torch.Tensor, y: torch.Tensor, u: int) -> Any:
        value, parts = real(self, x, y, u)
        if u == unit and (calls is None or count[0] < calls):
            count[0] += 1
            value = value * math.inf
        return value, parts

    monkeypatch.setattr(NoPropDT, "loss", loss)
    return count


def test_fp16_overflow_skips_the_step_halves_only_that_blocks_scale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trainer, (x, y) = trainer_for("16-mixed")
    before = [p.detach().clone() for p in trainer.method.unit_parameters(0)]
    _poison(monkeypatch, unit=0, calls=2)
    for _ in range(2):
        assert trainer.step_fn(x, y, Step((0,), torch.arange(x.shape[0])), 0) == []  # skipped
    for a, b in zip(before, trainer.method.unit_parameters(0), strict=True):
        assert torch.equal(a, b)  # no update from a skipped step
    trainer.step(x, y, 0)  # the poison is spent: a real step
    trainer.step(x, y, 1)
    s = trainer.step_fn.scalers
    assert s is not None
    assert s[0].get_scale() == 2.0**16 / 4  # halved twice
    assert s[1].get_scale() == 2.0**16  # the other block keeps its scale
    assert trainer.step_fn.take_skipped() == ([2, 0, 0], [3, 1, 0])  # skipped, taken
    assert trainer.step_fn.take_skipped() == ([0, 0, 0], [0, 0, 0])  # counted per epoch


def test_fp16_diverges_only_when_steps_keep_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(steps_module, "MAX_FAILING_STEPS", 4)
    trainer, (x, y) = trainer_for("16-mixed")
    _poison(monkeypatch, unit=1)
    step = Step((1,), torch.arange(x.shape[0]))
    for _ in range(3):
        trainer.step_fn(x, y, step, 0)
    with pytest.raises(DivergenceError, match="4 consecutive steps of block 2"):
        trainer.step_fn(x, y, step, 0)


def test_fp32_still_diverges_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, (x, y) = trainer_for("32")
    _poison(monkeypatch, unit=0)
    with pytest.raises(DivergenceError, match="loss became inf in unit 0"):
        trainer.step(x, y, 0)


def test_fp16_run_counts_skips_and_resumes_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 epochs resumed to 3 == 3 epochs straight, scaler state included; skips in metrics.jsonl."""
    _poison(monkeypatch, unit=0, calls=3)  # the first 3 steps of block 1 overflow
    flags = [*ARGS, "--precision", "16-mixed"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli(["train", *flags, "--epochs", "3", "--out", str(full)], capsys)[0] == 0
    # block 1: the 3 poisoned steps, plus any real float16 overflow while the scale settles from
    # 2^16 (DT's SNR-weighted loss is large: real overflow happens, which is what scaling is for)
    skipped = [r["skipped_steps"] for r in metrics(full)]
    assert all(len(s) == 2 for s in skipped) and skipped[0][0] >= 3
    _poison(monkeypatch, unit=0, calls=3)
    assert cli(["train", *flags, "--epochs", "2", "--out", str(part)], capsys)[0] == 0
    ckpt = load_checkpoint(part / "checkpoint.pt")["trainer"]
    assert len(ckpt["scalers"]) == 2 and ckpt["scalers"][0]["scale"] <= 2.0**16 / 8
    assert cli(["train", "--resume", str(part), "--epochs", "3"], capsys)[0] == 0
    a, b = (load_checkpoint(r / "checkpoint.pt")["trainer"] for r in (full, part))
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["scalers"] == b["scalers"]
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in metrics(full)]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in metrics(part)]
    assert json.loads((full / "config.json").read_text())["train"]["precision"] == "16-mixed"


def test_fp16_fused_saves_scaler_state_in_the_sequential_layout() -> None:
    from noprop.parallel.fused import fused_trainer

    m, cfg, (x, y) = tiny_method("dt", precision="16-mixed", order="interleaved")
    trainer = fused_trainer(m, cfg.train, torch.device("cpu"), progress=False)
    step = Step(tuple(range(3)), torch.arange(x.shape[0]))
    trainer.step_fn(x, y, step, 0)
    sd = trainer.state_dict()
    scale = trainer.step_fn.scalers[0].get_scale()
    assert [st["scale"] for st in sd["scalers"]] == [scale] * 3
    # back into a fused trainer (the smallest scale wins) and into a sequential one
    sd["scalers"][1]["scale"] = 512.0
    trainer.load_state_dict(sd)
    assert trainer.step_fn.scalers[0].get_scale() == 512.0
    m2, cfg2, _ = tiny_method("dt", precision="16-mixed", order="interleaved")
    seq = Trainer(m2, cfg2, torch.device("cpu"), progress=False)
    seq.load_state_dict(sd)
    assert [s.get_scale() for s in seq.step_fn.scalers] == [scale, 512.0, scale]


# ------------------------------------------------------------------ the run-level contract


def test_precision_is_recorded_and_resume_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    rc, _, err = cli(["train", *ARGS, "--epochs", "1", "--precision", "bf16-mixed",
                      "--out", str(run)], capsys)  # fmt: skip
    assert rc == 0, err
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == "bf16-mixed"
    before = (run / "checkpoint.pt").read_bytes()
    rc, _, err = cli(["train", "--resume", str(run), "--epochs", "2", "--precision", "32"], capsys)
    assert rc == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert "--precision 32 conflicts" in err
    assert (run / "checkpoint.pt").read_bytes() == before  # nothing written
    # inference defaults to the run's precision and takes another
    rc, out, err = cli(["eval", str(run), "--threads", "1"], capsys)
    assert rc == 0, err
    rc, out32, err = cli(["eval", str(run), "--threads", "1", "--precision", "32"], capsys)
    assert rc == 0, err
    acc = [json.loads(o.splitlines()[-1])["test_accuracy"] for o in (out, out32)]
    assert abs(acc[0] - acc[1]) < 0.05
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 1, 8, 8), dtype=np.uint8))
    rc, out, err = cli(["predict", str(run), str(x), "--precision", "bf16-mixed"], capsys)
    assert rc == 0 and len(out.splitlines()) == 2, err


def test_bad_precision_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = cli(["train", *ARGS, "--precision", "fp8", "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "--precision" in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="precision"):
        make_config(method="dt", precision="64")
