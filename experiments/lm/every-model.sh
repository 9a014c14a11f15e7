#!/usr/bin/env bash
# Issue 22, acceptance 2: every registered text model against the back-prop transformer at equal
# parameters and FLOPs, 3 minutes each, on the stdlib corpus (this Python's standard library source;
# its sha256 is in the report). One command, resumable (finished runs are reused):
#   bash experiments/lm/every-model.sh
# 6 runs of --minutes 3 (the FLOP budget is sized once, by the timed calibration in plan.json); the
# read-outs are evaluated on the first 256 validation and 256 test windows (--eval-windows).
set -euo pipefail
cd "$(dirname "$0")/../.."
noprop lm compare --dataset stdlib \
  --models backprop,dt,ct,fm,fm-current-token,diffusionblocks \
  --minutes 3 --eval-windows 256 --no-progress --out experiments/lm/every-model-stdlib
