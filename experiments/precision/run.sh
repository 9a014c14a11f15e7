#!/usr/bin/env bash
# Issue 20: float32 vs bf16-mixed per method, each measured right after the other in one command,
# nothing else running. Writes experiments/precision/efficiency-mnist.json.
#   bash experiments/precision/run.sh            (DATA=../shared/data/mnist by default)
# Per-step time, peak memory and inference time per method come from `noprop bench efficiency
# --precision bf16-mixed`. Where the device has native bf16 (a GPU, or a CPU with AVX512-BF16/AMX;
# the JSON's `native_bf16`), follow it with one MNIST epoch per method in both precisions, e.g.
#   noprop train --method dt --dataset mnist --data-dir "$DATA" --epochs 1 --precision bf16-mixed
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data/mnist}
noprop bench efficiency --methods dt,backprop,ct,fm --dataset mnist --data-dir "$DATA" \
  --max-batches 10 --eval-samples 100 --precision bf16-mixed \
  --out experiments/precision/efficiency-mnist.json
