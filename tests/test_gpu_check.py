"""scripts/gpu-check.sh, as far as a CPU can check it: the plan parses, the JSON is written.

The real run needs a CUDA GPU (issue 20, point 6); CI has none, so here: ``--dry-run`` (every
command of the plan parses), one check run for real on the CPU at toy size (the orchestration, the
result parsing and the JSON), and the choice of backend for ranks that share one GPU.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

from noprop.parallel.distributed import LaunchEnv, backend_for

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
NAMES = {
    "cuda-tests", "dt-32", "dt-bf16-mixed", "backprop-32", "backprop-bf16-mixed", "ct-32",
    "ct-bf16-mixed", "fm-32", "fm-bf16-mixed", "dt-fused", "dt-offload-blocks",
    "dt-blocks-2-ranks", "lm-compare",
}  # fmt: skip


def test_dry_run_prints_a_plan_that_parses() -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    names = {line.split()[0] for line in proc.stdout.splitlines()}
    assert names == NAMES


def test_one_check_runs_on_the_cpu_and_writes_the_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check.json"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--smoke", "--only", "dt-32", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    check = r["checks"]["dt-32"]
    assert r["failed"] == [] and check["rc"] == 0 and 0.0 <= check["test_accuracy"] <= 1.0
    # never overwrites an earlier result
    again = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--smoke", "--only", "dt-32",
                            "--out", str(out)], capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 2 and "exists" in again.stderr


def test_ranks_sharing_one_gpu_use_gloo() -> None:
    two = LaunchEnv(rank=0, world_size=2, local_rank=0, local_world_size=2)
    cuda0 = torch.device("cuda", 0)
    assert backend_for("cuda:0", cuda0, two) == "gloo"  # NCCL refuses two ranks on one GPU
    assert backend_for("cuda", cuda0, two) == "nccl"  # one GPU per local rank
    assert backend_for("cpu", torch.device("cpu"), two) == "gloo"
