#!/usr/bin/env bash
# Issue 20: float32 vs bf16-mixed, each precision measured right after the other, nothing else running.
#   bash experiments/precision/run.sh OUT        (DATA=../shared/data/mnist by default)
# 1. `noprop bench efficiency --precision bf16-mixed`: per-step time, peak memory and inference time per
#    method in float32 and bf16-mixed -> OUT/efficiency-mnist.json.
# 2. Only where the device has native bf16 (a GPU, or a CPU with AVX512-BF16/AMX; without it bf16 is
#    10-14x slower and an epoch takes hours): one MNIST epoch of DT in each precision ->
#    OUT/dt-epoch1-{32,bf16-mixed}/ (config, metrics, summary; the checkpoint is not kept).
# Committed: experiments/precision/efficiency-mnist.json (step 1 on an AVX2-only AMD EPYC) and
# experiments/precision/amx-2026-12-03/ (both steps on an Intel Xeon with AMX-BF16; of step 2 only
# the summaries BENCHMARKS.md quotes, dt-epoch1-*/summary.json: config and metrics are not committed).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: bash experiments/precision/run.sh OUT}
DATA=${DATA:-../shared/data/mnist}
if [ -e "$OUT" ]; then echo "run.sh: $OUT exists; choose a new directory" >&2; exit 2; fi
mkdir -p "$OUT"
noprop bench efficiency --methods dt,backprop,ct,fm --dataset mnist --data-dir "$DATA" \
  --max-batches 10 --eval-samples 100 --precision bf16-mixed --out "$OUT/efficiency-mnist.json"
# whether step 1's device ran bf16 natively, as bench efficiency recorded it (no noprop internals)
native=$(python -c "import json, sys; print(int(json.load(open(sys.argv[1]))['methods']['dt']['native_bf16']))" \
  "$OUT/efficiency-mnist.json")
if [ "$native" != 1 ] && ! python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "run.sh: no native bf16 on this device: the one-epoch comparison is skipped" >&2
  exit 0
fi
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
for p in 32 bf16-mixed; do
  noprop train --method dt --dataset mnist --data-dir "$DATA" --epochs 1 --precision "$p" \
    --out "$runs/dt-$p" --no-progress
  mkdir -p "$OUT/dt-epoch1-$p"
  cp "$runs/dt-$p"/{config.json,metrics.jsonl,summary.json} "$OUT/dt-epoch1-$p/"
done
