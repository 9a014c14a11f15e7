"""Golden end-to-end runs for the issue-10 redesign: results must not change.

``python experiments/golden_runs.py --record`` (run at commit 3d203db, before the redesign) trains the
README's digits quickstart and a 2-epoch digits run of every method on the CPU with a fixed seed and
writes the accuracies of each ``summary.json`` to tests/golden/summaries.json. ``--check`` reruns them
with the current code and fails (exit 1) on any difference. Not a test (≈ 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "summaries.json"
RUNS = {
    "quickstart": [],
    **{f"{m}-2ep": ["--method", m, "--epochs", "2"] for m in ("dt", "backprop", "ct", "fm")},
    "adjoint-2ep": ["--method", "adjoint", "--epochs", "2", "--adjoint-steps", "20"],
}
KEYS = ("val_accuracy", "test_accuracy", "test_accuracy_deterministic", "test_accuracy_per_step",
        "best_epoch", "params_per_block")


def run_all() -> dict[str, dict]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in RUNS.items():
            run = Path(tmp) / name
            cmd = [sys.executable, "-m", "noprop", "train", "--out", str(run), "--no-progress",
                   "--device", "cpu", "--threads", "2", *flags]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            summary = json.loads((run / "summary.json").read_text())
            out[name] = {k: summary[k] for k in KEYS}
            print(name, out[name]["test_accuracy"], out[name]["test_accuracy_deterministic"], flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--record", action="store_true")
    g.add_argument("--check", action="store_true")
    ns = p.parse_args()
    results = run_all()
    if ns.record:
        GOLDEN.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        print("wrote", GOLDEN)
        return 0
    golden = json.loads(GOLDEN.read_text())
    bad = [(n, k) for n in golden for k in KEYS if golden[n][k] != results[n][k]]
    for n, k in bad:
        print(f"MISMATCH {n}.{k}: golden {golden[n][k]} now {results[n][k]}")
    print("all golden runs identical" if not bad else f"{len(bad)} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
