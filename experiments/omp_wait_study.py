"""Which OpenMP wait setting keeps DT fast on a quiet machine *and* on a busy one?

Runs ``noprop bench efficiency --methods dt --background-load 1`` (quiet, then with one competing
single-threaded busy process) under several libgomp settings, alternating them for ``--rounds``
rounds (this machine's speed drifts by ±20% between minutes, so alternation and medians matter), and
prints per setting the median quiet and loaded training samples/s and loaded/quiet.
``spin`` is libgomp's own default (no variable set). Results of one run: omp_wait_study.log.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin": {},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
    "spin100k": {"GOMP_SPINCOUNT": "100000"},
}


def one(env_extra: dict[str, str], args: argparse.Namespace) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eff.json"
        cmd = [sys.executable, "-m", "noprop", "bench", "efficiency", "--dataset", "mnist",
               "--data-dir", args.data_dir, "--methods", "dt", "--max-batches", str(args.max_batches),
               "--background-load", "1", "--background-seconds", "300", "--out", str(out)]  # fmt: skip
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = json.loads(out.read_text())["methods"]["dt"]
        return r["train_samples_per_s"], r["loaded"]["train_samples_per_s"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-batches", type=int, default=40)
    p.add_argument("--data-dir", default=str(Path("../shared/data/mnist").resolve()))
    args = p.parse_args()
    names = args.settings.split(",")
    rows: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names:
            rows[n].append(one(SETTINGS[n], args))
            q, lo = rows[n][-1]
            print(f"round {r + 1} {n:<9} quiet {q:7.1f}  loaded {lo:7.1f}  ratio {lo / q:.2f}", flush=True)
    summary = {}
    for n, vals in rows.items():
        q = statistics.median(v[0] for v in vals)
        lo = statistics.median(v[1] for v in vals)
        summary[n] = {"quiet": q, "loaded": lo, "loaded_over_quiet": lo / q, "runs": vals}
        print(f"{n:<9} median quiet {q:7.1f}  loaded {lo:7.1f}  loaded/quiet {lo / q:.2f}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
