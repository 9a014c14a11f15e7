#!/usr/bin/env bash
# Time to accuracy on full MNIST (issue 12, BENCHMARKS.md "Time to accuracy"): one-hot, seed 0, the
# paper's hyper-parameters, test accuracy after every epoch (--test-curve; reporting only, model
# selection on validation). Resumable: rerun the script and every run continues from its last
# finished epoch (bench reproduce cells, `noprop train --resume`); finished runs are skipped.
#
#   bash experiments/time_to_accuracy.sh [DATA_DIR]      # default ../shared/data/mnist
#
# Each part is written into experiments/tta/ and the table/figure are redrawn after each one (the run
# directories and per-run figures are not committed, .gitignore; the tables and figures/ are):
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
  for d in "$OUT"/paper/cells/* "$OUT"/ct-fm/cells/* "$OUT"/dt-interleaved/cells/* "$OUT"/dt-blocks2 \
           "$OUT"/diffusionblocks/cells/*; do
    if [[ -f "$d/config.json" ]]; then runs+=("$d"); fi
  done
  if (( ${#runs[@]} )); then
    "$PY" -m noprop plot "${runs[@]}" --out "$OUT/figures" >/dev/null || echo "redraw failed" >&2
  fi
}

chains() {  # more compute at inference (BENCHMARKS.md, "averaging N stochastic chains"): test
  # accuracy and seconds for 1, 4, 16 chains and the deterministic chain, on a trained model. It runs
  # right after the model is trained because run directories and checkpoints are not committed: a
  # fresh clone has none, so the evaluation must happen in the session that trained the model.
  local cell
  for cell in "$@"; do
    if [[ -f "$cell/eval_chains.json" ]]; then continue; fi
    if [[ -f "$cell/checkpoint.pt" ]]; then "$PY" -m noprop eval "$cell" --chains 1,4,16
    else echo "skipping --chains for $cell: no checkpoint here (trained in another workspace)" >&2; fi
  done
}

# 1. NoProp-DT, Algorithm 1 (blocks outer), sequential, and the back-prop twin: 10 epochs
"$PY" -m noprop bench reproduce --methods dt,backprop --epochs 10 "${common[@]}" --out "$OUT/paper"
redraw
# 2. NoProp-CT and NoProp-FM: 20 epochs (1000 inference steps for validation and test, the paper's)
"$PY" -m noprop bench reproduce --methods ct,fm --epochs 20 "${common[@]}" --out "$OUT/ct-fm"
redraw
chains "$OUT"/ct-fm/cells/ct-one-hot-s0 "$OUT"/ct-fm/cells/fm-one-hot-s0
# 3. NoProp-DT, Algorithm 1, block-parallel on 2 ranks (one core each): torchrun, not a grid. Its model
#    is the DT of the inference-compute figure (the same method as step 1's; only the layout differs).
run="$OUT/dt-blocks2"
if [[ ! -f "$run/summary.json" ]]; then
  if [[ -f "$run/config.json" ]]; then where=(--resume "$run"); else where=(--out "$run"); fi
  "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m noprop train --method dt \
    --parallel blocks --dataset mnist --data-dir "$DATA" --epochs 10 --test-curve "${where[@]}"
fi
redraw
chains "$run"
figure=()
for cell in "$run" "$OUT"/ct-fm/cells/ct-one-hot-s0 "$OUT"/ct-fm/cells/fm-one-hot-s0; do
  if [[ -f "$cell/eval_chains.json" ]]; then figure+=("$cell"); fi
done
if (( ${#figure[@]} )); then "$PY" experiments/chains_figure.py "${figure[@]}" --out "$OUT/figures/chains"; fi
# 4. NoProp-DT, interleaved order (every block steps on every mini-batch), sequential
"$PY" -m noprop bench reproduce --methods dt --order interleaved --epochs 10 "${common[@]}" \
  --out "$OUT/dt-interleaved"
redraw
# 5. DiffusionBlocks (issue 21): B = 3, the authors' order (one random block per mini-batch), so an
#    epoch is one block evaluation per image, as for CT and FM: 20 epochs. Then its inference-steps
#    sweep (Euler steps; N = 3 is the default, one per block) on the selected model.
"$PY" -m noprop bench reproduce --methods diffusionblocks --order random --epochs 20 "${common[@]}" \
  --out "$OUT/diffusionblocks"
redraw
cell="$OUT/diffusionblocks/cells/diffusionblocks-one-hot-s0"
if [[ ! -f "$cell/eval_steps.json" && -f "$cell/checkpoint.pt" ]]; then
  "$PY" -m noprop eval "$cell" --steps 1,2,3,6,12,30,100
fi
# the sweep's result, kept in git next to the grid's table (run directories are not committed)
if [[ -f "$cell/eval_steps.json" ]]; then cp "$cell/eval_steps.json" "$OUT/diffusionblocks/eval_steps.json"; fi
