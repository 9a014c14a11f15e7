#!/usr/bin/env bash
# Time to accuracy on full MNIST (issue 12, BENCHMARKS.md "Time to accuracy"): one-hot, seed 0, the
# paper's hyper-parameters, test accuracy after every epoch (--test-curve; reporting only, model
# selection on validation). Resumable: rerun the script and every run continues from its last
# finished epoch (bench reproduce cells, `noprop train --resume`); finished runs are skipped.
#
#   bash experiments/time_to_accuracy.sh [DATA_DIR]      # default ../shared/data/mnist
#
# Each part is written into experiments/tta/ and the table/figure are redrawn after each one:
#   noprop plot experiments/tta/{paper,ct-fm,dt-interleaved,dt-blocks2} --out experiments/tta/figures
# Every epoch records the load it was timed under (other_busy_cores in metrics.jsonl). --test-curve
# does not change the experiment: a finished cell trained without it is reused, without a curve.
set -euo pipefail
DATA=${1:-../shared/data/mnist}
OUT=experiments/tta
PY=${PYTHON:-python}
common=(--dataset mnist --data-dir "$DATA" --embeddings one-hot --seeds 0 --test-curve
        --runs 1 --train-eval-samples 1000)

redraw() {  # the runs that exist so far; a failed redraw never stops the training
  local runs=()
  for d in "$OUT"/paper/cells/* "$OUT"/ct-fm/cells/* "$OUT"/dt-interleaved/cells/* "$OUT"/dt-blocks2; do
    if [[ -f "$d/config.json" ]]; then runs+=("$d"); fi
  done
  if (( ${#runs[@]} )); then
    "$PY" -m noprop plot "${runs[@]}" --out "$OUT/figures" >/dev/null || echo "redraw failed" >&2
  fi
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
# 5. More compute at inference on the same trained models (BENCHMARKS.md, "averaging N stochastic
#    chains"): test accuracy and seconds for 1, 4, 16 chains and the deterministic chain, then the
#    figure and table of accuracy vs inference compute
for cell in "$OUT"/paper/cells/dt-one-hot-s0 "$OUT"/ct-fm/cells/ct-one-hot-s0 "$OUT"/ct-fm/cells/fm-one-hot-s0; do
  if [[ ! -f "$cell/eval_chains.json" ]]; then "$PY" -m noprop eval "$cell" --chains 1,4,16; fi
done
"$PY" experiments/chains_figure.py "$OUT"/paper/cells/dt-one-hot-s0 "$OUT"/ct-fm/cells/ct-one-hot-s0 \
  "$OUT"/ct-fm/cells/fm-one-hot-s0 --out "$OUT/figures/chains"
