#!/usr/bin/env bash
# Time to accuracy on full MNIST (issue 12, BENCHMARKS.md "Time to accuracy"): one-hot, seed 0, the
# paper's hyper-parameters, test accuracy after every epoch (--test-curve; reporting only, model
# selection on validation). Resumable: rerun the script and every run continues from its last
# finished epoch (bench reproduce cells, `noprop train --resume`); finished runs are skipped.
#
#   bash experiments/time_to_accuracy.sh [DATA_DIR]      # default ../shared/data/mnist
#
# Each part is written into experiments/tta/ and the table/figure are redrawn after each one:
#   noprop plot experiments/tta/* --out experiments/tta/figures
# Every epoch records the load it was timed under (other_busy_cores in metrics.jsonl).
set -euo pipefail
DATA=${1:-../shared/data/mnist}
OUT=experiments/tta
PY=${PYTHON:-python}
common=(--dataset mnist --data-dir "$DATA" --embeddings one-hot --seeds 0 --test-curve
        --runs 1 --train-eval-samples 1000)

redraw() {  # the parts that exist so far
  local parts=()
  for d in paper ct-fm dt-interleaved dt-blocks2; do
    if [[ -d "$OUT/$d/cells" || -f "$OUT/$d/config.json" ]]; then parts+=("$OUT/$d"); fi
  done
  "$PY" -m noprop plot "${parts[@]}" --out "$OUT/figures" >/dev/null
}

# 1. NoProp-DT, Algorithm 1 (blocks outer), sequential, and the back-prop twin: 10 epochs
"$PY" -m noprop bench reproduce --methods dt,backprop --epochs 10 "${common[@]}" --out "$OUT/paper"
redraw
# 2. NoProp-CT and NoProp-FM: 20 epochs (1000 inference steps for validation and test, the paper's)
"$PY" -m noprop bench reproduce --methods ct,fm --epochs 20 "${common[@]}" --out "$OUT/ct-fm"
redraw
# 3. NoProp-DT, interleaved order (every block steps on every mini-batch), sequential
"$PY" -m noprop bench reproduce --methods dt --order interleaved --epochs 10 "${common[@]}" \
  --out "$OUT/dt-interleaved"
redraw
# 4. NoProp-DT, Algorithm 1, block-parallel on 2 ranks (one core each): torchrun, not a grid
run="$OUT/dt-blocks2"
if [[ ! -f "$run/summary.json" ]]; then
  if [[ -f "$run/config.json" ]]; then where=(--resume "$run"); else where=(--out "$run"); fi
  "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m noprop train --method dt \
    --parallel blocks --dataset mnist --data-dir "$DATA" --epochs 10 --test-curve "${where[@]}"
fi
redraw
