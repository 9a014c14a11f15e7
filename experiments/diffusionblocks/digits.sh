#!/usr/bin/env bash
# DiffusionBlocks next to NoProp-DT, -CT and -FM on scikit-learn's bundled digits (issue 21): one-hot,
# 20 epochs, seeds 0-2, each method's defaults (DT T = 10, Algorithm 1: 10 passes per epoch;
# DiffusionBlocks B = 3, Algorithm 1's order: 3 passes per epoch; CT/FM one pass, 1000 inference
# steps), model selection on validation. Resumable (bench reproduce skips finished cells).
#   bash experiments/diffusionblocks/digits.sh
set -euo pipefail
PY=${PYTHON:-python}
"$PY" -m noprop bench reproduce --methods dt,ct,fm,diffusionblocks --dataset digits --epochs 20 \
  --embeddings one-hot --seeds 0,1,2 --out experiments/diffusionblocks/digits
