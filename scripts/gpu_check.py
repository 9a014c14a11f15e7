"""The GPU path in one go: run on a machine with one CUDA GPU, write one JSON (issue 20, point 6).

    bash scripts/gpu-check.sh [--out gpu-check.json] [--data-dir DIR] [--dry-run] [--device cpu]

Checks, each in its own subprocess with a time limit, so one failure is recorded and the rest still
run (the whole is sized to about 8 minutes on one H200-class GPU):

1. ``tests/test_cuda.py`` (the CUDA tests; skipped, and so reported, where there is no GPU);
2. one MNIST epoch of dt, backprop, ct and fm in ``32`` and ``bf16-mixed`` (same seed): training
   seconds, ``torch.cuda.max_memory_allocated``, test accuracy with the paper's inference;
3. ``--parallel fused`` (DT, interleaved), ``--offload-blocks`` (DT, Algorithm 1);
4. block-parallel DT with 2 ranks on the one GPU (``torchrun``, ``--device cuda:0``: gloo);
5. a short ``noprop lm compare``.

``--dry-run`` prints the plan (every command) and checks that each one parses, without training:
the CPU test of this script (tests/test_gpu_check.py). ``--device cpu --smoke`` runs the whole plan
for real on the CPU at toy sizes (bundled digits, 256 examples), to check the orchestration.
Without MNIST (``--data-dir``, default ../shared/data/mnist) the runs use the bundled digits and the
JSON says so. Nothing here needs the network.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("dt", "backprop", "ct", "fm")
PRECISIONS = ("32", "bf16-mixed")
#: ct/fm validate with 10 steps each epoch; the final test keeps the paper's 1000
CT_FM_FLAGS = ["--val-inference-steps", "10"]

# A child that trains one run and reports its peak GPU memory (the CLI does not know it).
TRAIN_CHILD = """
import json, sys, torch
from noprop.cli import main
if torch.cuda.is_available():
    torch.cuda.reset_peak_memory_stats()
rc = main(sys.argv[1:])
peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
print("GPU_CHECK " + json.dumps({"rc": rc, "max_memory_allocated": peak}))
sys.exit(rc)
"""


def plan(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Every check: a name, an argv, a time limit and (for runs) the run directory."""
    py = sys.executable
    data = (
        ["--dataset", "mnist", "--data-dir", str(args.data_dir)]
        if args.data_dir is not None and Path(args.data_dir).is_dir() and not args.smoke
        else ["--dataset", "digits"]
    )
    small = ["--max-train-samples", "256"] if args.smoke else []
    common = [*data, *small, "--epochs", "1", "--seed", "0", "--device", args.device,
              "--no-progress"]  # fmt: skip
    checks: list[dict[str, Any]] = [
        {"name": "cuda-tests", "argv": [py, "-m", "pytest", "-q", "-rs", "tests/test_cuda.py"],
         "limit_s": 180},
    ]  # fmt: skip
    for m in METHODS:
        extra = CT_FM_FLAGS if m in ("ct", "fm") else []
        if args.smoke:  # toy sizes: fewer blocks, fewer inference steps
            extra = [*extra, "--inference-steps", "10"] if m in ("ct", "fm") else ["--T", "2"]
        for p in PRECISIONS:
            run = work / f"{m}-{p}"
            argv = ["train", "--method", m, *common, "--precision", p, *extra, "--out", str(run)]
            checks.append({"name": f"{m}-{p}", "train": argv, "run": str(run), "limit_s": 150})
    for name, flags in (
        ("dt-fused", ["--order", "interleaved", "--parallel", "fused"]),
        ("dt-offload-blocks", ["--offload-blocks"]),
    ):
        if args.device == "cpu" and name == "dt-offload-blocks":
            flags = []  # offloading needs a GPU; on the CPU the same run checks the plumbing
        run = work / name
        if args.smoke:
            flags = [*flags, "--T", "2"]
        argv = ["train", "--method", "dt", *common, *flags, "--out", str(run)]
        checks.append({"name": name, "train": argv, "run": str(run), "limit_s": 150})
    device = "cuda:0" if args.device == "cuda" else args.device  # both ranks on the one GPU
    run = work / "dt-blocks-2-ranks"
    tr = [py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "noprop",
          "train", "--method", "dt", *[v if v != args.device else device for v in common],
          "--parallel", "blocks", *(["--T", "2"] if args.smoke else []), "--out", str(run)]  # fmt: skip
    checks.append({"name": "dt-blocks-2-ranks", "argv": tr, "run": str(run), "limit_s": 180})
    lm = [py, "-m", "noprop", "lm", "compare", "--minutes", "0.05" if args.smoke else "0.5",
          "--device", args.device, "--out", str(work / "lm"), "--no-progress"]  # fmt: skip
    if args.smoke:
        lm += ["--layers", "2", "--width", "32", "--context", "32", "--eval-windows", "8",
               "--sample-bytes", "0"]  # fmt: skip
    checks.append({"name": "lm-compare", "argv": lm, "report": str(work / "lm"), "limit_s": 240})
    return checks


def parses(check: dict[str, Any]) -> str | None:
    """None if the check's noprop command line parses (dry run), else the parser's complaint."""
    from noprop.cli import build_parser

    argv = check.get("train")
    if argv is None:
        argv = check["argv"]
        if "noprop" not in argv:
            return None  # pytest
        argv = argv[argv.index("noprop") + 1 :]
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:
        return f"does not parse (exit {e.code})"
    return None


def run_check(check: dict[str, Any]) -> dict[str, Any]:
    argv = (
        check["argv"] if "argv" in check else [sys.executable, "-c", TRAIN_CHILD, *check["train"]]
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=check["limit_s"])  # fmt: skip
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = 124, str(e.stdout or ""), f"timed out after {check['limit_s']} s"
    result: dict[str, Any] = {"rc": rc, "wall_seconds": round(time.perf_counter() - start, 1)}
    if rc != 0:
        result["error"] = (err.strip().splitlines() or out.strip().splitlines() or ["?"])[-1]
    for line in out.splitlines():
        if line.startswith("GPU_CHECK "):
            result["max_memory_allocated"] = json.loads(line[10:])["max_memory_allocated"]
    if check["name"] == "cuda-tests":
        result["summary"] = (out.strip().splitlines() or [""])[-1]
    if "run" in check and rc == 0:
        summary = json.loads((Path(check["run"]) / "summary.json").read_text())
        for k in ("test_accuracy", "test_accuracy_deterministic", "train_seconds", "device"):
            result[k] = summary.get(k)
    if "report" in check and rc == 0:
        report = json.loads((Path(check["report"]) / "report.json").read_text())
        result["bits_per_byte"] = {
            name: r.get("test", {}).get("bits_per_byte") for name, r in report["runs"].items()
        }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu-check.json", help="the JSON to write")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan and parse it; run nothing"
    )
    p.add_argument("--smoke", action="store_true", help="toy sizes (the CPU test of this script)")
    p.add_argument("--only", help="comma-separated check names (default: all)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.dry_run:
        print(f"gpu-check: error: {out} exists; remove it or pass another --out", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        checks = plan(args, Path(tmp))
        if args.only:
            keep = set(args.only.split(","))
            checks = [c for c in checks if c["name"] in keep]
        if args.dry_run:
            bad = {c["name"]: e for c in checks if (e := parses(c)) is not None}
            for c in checks:
                cmd = c.get("argv") or ["noprop", *c["train"]]
                print(f"{c['name']:<20} ≤{c['limit_s']:>4} s  {shlex.join(cmd)}")
            if bad:
                print(f"gpu-check: error: {bad}", file=sys.stderr)
                return 2
            return 0
        import torch

        result: dict[str, Any] = {
            "machine": {
                "platform": platform.platform(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "cuda_available": torch.cuda.is_available(),
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "cpu_count": os.cpu_count(),
            },
            "device": args.device,
            "smoke": args.smoke,
            "checks": {},
        }
        start = time.perf_counter()
        for c in checks:
            print(f"gpu-check: {c['name']} ...", file=sys.stderr, flush=True)
            result["checks"][c["name"]] = r = run_check(c)
            print(f"gpu-check: {c['name']}: rc {r['rc']} in {r['wall_seconds']} s",
                  file=sys.stderr, flush=True)  # fmt: skip
        result["wall_seconds"] = round(time.perf_counter() - start, 1)
        result["failed"] = [n for n, r in result["checks"].items() if r["rc"] != 0]
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    tmp_out.replace(out)
    print(f"gpu-check: {len(result['failed'])} failed; written to {out}", file=sys.stderr)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
