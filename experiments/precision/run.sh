#!/usr/bin/env bash
# Issue 20: float32 vs bf16-mixed, each measured right after the other in one command, nothing else
# running. Writes experiments/precision/{efficiency-mnist.json, accuracy.txt}.
#   bash experiments/precision/run.sh            (DATA=../shared/data/mnist by default)
# Per-step time, peak memory and inference time per method come from `noprop bench efficiency
# --precision bf16-mixed`; the accuracy check trains DT and back-prop for one epoch on the first 6000
# MNIST training images in both precisions (same seed) — one full MNIST epoch in bf16 would take over
# an hour on a CPU without native bf16 (the ratio below says why).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data/mnist}
OUT=experiments/precision
noprop bench efficiency --methods dt,backprop,ct,fm --dataset mnist --data-dir "$DATA" \
  --max-batches 10 --eval-samples 100 --precision bf16-mixed --out "$OUT/efficiency-mnist.json"
: > "$OUT/accuracy.txt.tmp"
for m in dt backprop; do
  for p in 32 bf16-mixed; do
    run=$(mktemp -d)/run
    noprop train --method "$m" --dataset mnist --data-dir "$DATA" --max-train-samples 6000 \
      --epochs 1 --seed 0 --precision "$p" --no-progress --out "$run" 2>&1 | tail -1 \
      | sed "s|^|$m $p: |" >> "$OUT/accuracy.txt.tmp"
  done
done
mv "$OUT/accuracy.txt.tmp" "$OUT/accuracy.txt"
lscpu | grep -m1 'Model name' >> "$OUT/accuracy.txt"
