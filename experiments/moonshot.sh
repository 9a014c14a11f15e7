#!/usr/bin/env bash
# Moonshot of issue 12 (BENCHMARKS.md "Moonshot"): NoProp-DT, full MNIST, one-hot, seed 0, at >= 0.99
# test accuracy within 10 minutes of training on 2 CPU cores. Beyond the paper's recipe: 2 epochs,
# block-parallel on 2 ranks (one core each; the fastest DT layout measured, 0.89x the sequential
# time), cosine learning-rate decay to 0.1*lr, and a learning rate chosen on VALIDATION accuracy
# among the values below. The test curve (--test-curve) is reported, never used for the choice.
# Resumable: a finished run is skipped, an unfinished one continues from its last epoch.
#
#   bash experiments/moonshot.sh [DATA_DIR] [LR ...]      # default ../shared/data/mnist 3e-3 2e-3 1e-3
set -euo pipefail
DATA=${1:-../shared/data/mnist}
shift || true
LRS=("$@")
if (( ${#LRS[@]} == 0 )); then LRS=(3e-3 2e-3 1e-3); fi
OUT=experiments/moonshot
PY=${PYTHON:-python}
for lr in "${LRS[@]}"; do
  run="$OUT/dt-blocks2-cosine-lr$lr"
  if [[ -f "$run/summary.json" ]]; then continue; fi
  if [[ -f "$run/config.json" ]]; then where=(--resume "$run"); else where=(--out "$run"); fi
  "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m noprop train --method dt \
    --parallel blocks --dataset mnist --data-dir "$DATA" --epochs 2 --lr "$lr" --lr-schedule cosine \
    --test-curve --no-progress "${where[@]}"
  runs=()
  for d in "$OUT"/dt-blocks2-cosine-lr*; do if [[ -f "$d/summary.json" ]]; then runs+=("$d"); fi; done
  "$PY" -m noprop plot "${runs[@]}" --out "$OUT/figures" >/dev/null || echo "redraw failed" >&2
done
