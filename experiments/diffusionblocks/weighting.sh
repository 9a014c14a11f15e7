#!/usr/bin/env bash
# DiffusionBlocks: per-sample w(σ) (the paper's Eq. 6) vs the authors' code's block-mean weighting,
# chosen on validation accuracy only. MNIST, 10,000 training images, 3 epochs, seeds 0-2, B = 3.
# Usage: bash experiments/diffusionblocks/weighting.sh [DATA_DIR]   (runs go to runs/db-weighting/)
set -euo pipefail
data=${1:-../shared/data/mnist}
for seed in 0 1 2; do
  for w in per-sample block-mean; do
    out=runs/db-weighting/$w-s$seed
    [ -f "$out/summary.json" ] && continue
    noprop train --method diffusionblocks --dataset mnist --data-dir "$data" --max-train-samples 10000 \
      --epochs 3 --db-weighting "$w" --seed "$seed" --out "$out" --overwrite --no-progress | tail -1
  done
done
python - <<'PY'
import json, pathlib
rows = {}
for p in sorted(pathlib.Path("runs/db-weighting").glob("*/summary.json")):
    s = json.loads(p.read_text())
    w, seed = p.parent.name.rsplit("-s", 1)
    rows.setdefault(w, []).append(s["best_val_accuracy"] if "best_val_accuracy" in s else s["val_accuracy"])
for w, v in rows.items():
    print(f"{w:<11} val accuracy per seed {['%.4f' % a for a in v]} mean {sum(v) / len(v):.4f}")
PY
