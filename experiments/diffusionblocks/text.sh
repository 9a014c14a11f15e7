#!/usr/bin/env bash
# DiffusionBlocks on tiny-shakespeare (issue 21): bits per byte of the chain started at pure noise
# (z = 80·ε, 6 Euler steps, one per block; the summary's test_scores), next to NoProp-LM's numbers in
# BENCHMARKS.md "NoProp-LM vs a back-prop transformer". The blocks are NoProp-LM's (one transformer
# layer of width 100, 4 heads, context 128, one-hot W_Embed) with a c_noise branch; B = 6 blocks,
# γ = 0.1 (the authors' text setting), AdamW lr 1e-3 with the cosine decay, batch 32 windows,
# Algorithm 1's order (each block passes over the data once per epoch), 2 epochs.
# Resumable: rerun to continue. The run directory is not committed (.gitignore); its summary.json,
# the result BENCHMARKS.md quotes, is copied to experiments/diffusionblocks/tiny-shakespeare.json.
#   bash experiments/diffusionblocks/text.sh [DATA_DIR]      # default ../shared/data/tinyshakespeare
set -euo pipefail
DATA=${1:-../shared/data/tinyshakespeare}
OUT=experiments/diffusionblocks/tiny-shakespeare
PY=${PYTHON:-python}
if [[ ! -f "$OUT/summary.json" ]]; then
  if [[ -f "$OUT/config.json" ]]; then where=(--resume "$OUT"); else where=(--out "$OUT"); fi
  "$PY" -m noprop train --method diffusionblocks --dataset tiny-shakespeare --data-dir "$DATA" \
    --T 6 --width 100 --heads 4 --block-layers 1 --db-overlap 0.1 --batch-size 32 \
    --lr-schedule cosine --epochs 2 "${where[@]}"
fi
cp "$OUT/summary.json" "$OUT.json"
